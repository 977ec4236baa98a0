//! Puts a node together: identity → WAL recovery → replica → write path →
//! gossip → discovery → HTTP API, and takes it down gracefully.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tally_protocol::access::{AccessPolicy, ApiTokens};
use tally_protocol::cluster_key::ClusterKeys;
use tally_protocol::http_server::{self, PerIpLimit, ServerLimits};
use tally_protocol::request_auth::server::RequestVerifier;
use tally_protocol::watch::{CounterSource, WatchHub};
use tally_protocol::HostPort;
use tokio::net::TcpListener;

use crate::api::{self, ApiState};
use crate::data_dir::{DataDirError, DataDirLock};
use crate::dns_seeds;
use crate::forgotten::Forgotten;
use crate::gossip::{Gossip, GossipConfig, RemoteSink};
use crate::identity::{Identity, IdentityError, IdentityFile};
use crate::journal::{self, JournalError};
use crate::metrics::Metrics;
use crate::protocol::MemberRecord;
use crate::readiness::Readiness;
use crate::registration::{self, Registration};
use crate::replica::{Replica, ReplicaState};
use crate::retirement::Retirement;
use crate::transport::{GossipKeys, PeerIdentity, Tcp};
use crate::wal::{Wal, WalOptions};
use crate::writer::{self, WriterConfig};

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node id; generated and kept in the data dir when absent.
    pub id: Option<String>,
    /// Where to accept gossip.
    pub gossip_addr: SocketAddr,
    /// Where to serve HTTP.
    pub http_addr: SocketAddr,
    /// The gossip address peers are told (`--gossip-advertise`); `None`:
    /// the bound one, which then may not be unspecified (`0.0.0.0`).
    pub gossip_advertise: Option<HostPort>,
    /// The HTTP address discovery and gateways are told (`--http-advertise`).
    pub http_advertise: Option<HostPort>,
    /// Discovery server base URLs.
    pub discovery: Vec<String>,
    /// Static peers' gossip addresses (names resolved at each dial).
    pub seeds: Vec<HostPort>,
    /// Names whose every A/AAAA record is a seed (`--seed-dns`).
    pub seed_dns: Vec<HostPort>,
    /// How often `seed_dns` names are resolved again.
    pub dns_refresh: Duration,
    /// A node that finds no peer within this long of its start becomes
    /// ready anyway (see [`crate::readiness`]).
    pub join_timeout: Duration,
    /// After SIGTERM, how long the node keeps serving while not ready, so
    /// gateways and load balancers stop sending before it closes.
    pub drain_period: Duration,
    /// How long idempotency keys are kept: a retry with the same key within
    /// this long of the first attempt is answered from it, never applied twice.
    pub idempotency_window: Duration,
    /// Time between garbage-collection rounds of removed counters
    /// ([`crate::garbage`]).
    pub gc_interval: Duration,
    /// How far apart nodes' clocks may be (`--max-clock-skew`): peers
    /// further off are refused, and housekeeping waits twice this.
    pub max_clock_skew: Duration,
    /// The whole graceful stop (drain, in-flight requests, deregistration,
    /// final sync) must finish within this long, else the node gives up
    /// with an error (acknowledged writes are on disk either way).
    pub shutdown_timeout: Duration,
    /// Data directory (identity + WAL).
    pub data_dir: PathBuf,
    /// Gossip tuning.
    pub gossip: GossipConfig,
    /// Discovery heartbeat period.
    pub heartbeat: Duration,
    /// Cluster name (peers of another cluster are refused).
    pub cluster: String,
    /// The cluster secret(s); `None` only with `--insecure`.
    pub cluster_keys: Option<ClusterKeys>,
    /// API tokens (`--api-tokens-file`); `None` leaves the HTTP API open.
    pub api_tokens: Option<ApiTokens>,
    /// Origins allowed to write and open streams (`--allowed-origin`); empty = same origin.
    pub allowed_origins: Vec<String>,
    /// Enables `/admin/partition`.
    pub allow_fault_injection: bool,
    /// How long a `?w=`/`?r=` above 1 waits for other replicas (then 504).
    pub write_timeout: Duration,
    /// Largest gossip frame.
    pub max_frame: usize,
    /// WAL segment size.
    pub segment_bytes: u64,
    /// Snapshot after this many log bytes.
    pub snapshot_bytes: u64,
    /// The HTTP server's bounds: connection cap, header/body/idle timeouts.
    pub http: ServerLimits,
    /// `--max-counters`: local writes may not create counters beyond this
    /// many (merges from peers are never refused). `None`: unlimited.
    pub max_counters: Option<usize>,
    /// Largest encoded snapshot chunk on `/ws`
    /// ([`tally_protocol::events::SNAPSHOT_CHUNK_BYTES`] by default).
    pub stream_chunk_bytes: usize,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A port could not be bound.
    #[error("cannot listen for {what} on {addr} (is another process using port {port}?)", port = addr.port())]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The data directory's identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The WAL could not be replayed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Any other I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The discovery URLs are unusable.
    #[error("discovery: {0}")]
    Discovery(String),
    /// Bound to every interface with no address to tell peers.
    #[error(
        "{bind_flag} {addr} listens on every interface, which nobody can dial: \
         give {advertise_flag} HOST:PORT, the address others should use"
    )]
    NothingToAdvertise {
        /// The listen flag.
        bind_flag: &'static str,
        /// The flag that fixes it.
        advertise_flag: &'static str,
        /// The unspecified address.
        addr: SocketAddr,
    },
    /// Peers refuse this node's data, or it found it older than the
    /// cluster's ([`crate::retirement`]).
    #[error("stopped: {0}")]
    Refused(String),
    /// The graceful stop took longer than `--shutdown-timeout`.
    #[error("graceful shutdown did not finish within {0:?}; stopping anyway (acknowledged writes are on disk)")]
    ShutdownTimedOut(Duration),
}

/// A running node's listening addresses.
#[derive(Debug, Clone)]
pub struct Running {
    /// Node id.
    pub id: String,
    /// Bound gossip address.
    pub gossip_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// The gossip address peers are told.
    pub gossip_advertised: HostPort,
    /// The HTTP address discovery and gateways are told.
    pub http_advertised: HostPort,
}

/// Runs a node until `shutdown` resolves. `on_ready` hears the bound addresses.
pub async fn run(
    config: NodeConfig,
    on_ready: impl FnOnce(&Running),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    check_advertised(&config)?;
    // Before anything in the directory is read or changed; held until `run` returns.
    let _lock = DataDirLock::acquire(&config.data_dir)?;
    let identity = Identity::load_or_create(&config.data_dir, config.id.as_deref())?;
    let started = std::time::Instant::now();
    let (wal, state) = recover(
        config.data_dir.join("wal"),
        WalOptions {
            segment_bytes: config.segment_bytes,
        },
    )
    .await?;
    // The incarnation survives only a clean stop; settled before any write.
    let mut identity_file = IdentityFile::new(config.data_dir.clone(), identity);
    identity_file.settle(&state.map, wal.truncated_tail())?;
    let identity = identity_file.identity().clone();
    tracing::info!(
        node = %identity.id,
        actor = %identity.actor(),
        counters = state.map.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered from the write-ahead log"
    );

    let gossip_listener = bind("gossip", config.gossip_addr).await?;
    let http_listener = bind("HTTP", config.http_addr).await?;
    let (gossip_addr, http_addr) = (gossip_listener.local_addr()?, http_listener.local_addr()?);
    let running = Running {
        id: identity.id.clone(),
        gossip_addr,
        http_addr,
        gossip_advertised: (config.gossip_advertise.clone()).unwrap_or_else(|| gossip_addr.into()),
        http_advertised: (config.http_advertise.clone()).unwrap_or_else(|| http_addr.into()),
    };

    let metrics = Arc::new(Metrics::default());
    let replica = Arc::new(Replica::new(identity.actor(), state));
    let writer = writer::start(
        wal,
        Arc::clone(&replica),
        Arc::clone(&metrics),
        WriterConfig {
            snapshot_bytes: config.snapshot_bytes,
            key_window: config.idempotency_window,
        },
        identity_file,
    );
    let retirement = Arc::new(Retirement::load(&config.data_dir, Arc::clone(&replica))?);
    let forgotten = Arc::new(Forgotten::load(
        &config.data_dir,
        &identity.id,
        identity.created_ms,
    )?);
    let keys = match &config.cluster_keys {
        Some(keys) => GossipKeys::from_cluster(keys),
        None => GossipKeys::insecure(),
    };
    let me = PeerIdentity {
        cluster: config.cluster.clone(),
        keys,
        member: MemberRecord {
            id: identity.id.clone(),
            gossip_addr: running.gossip_advertised.to_string(),
            http_addr: running.http_advertised.to_string(),
            heartbeat: boot_heartbeat(),
        },
        max_frame: config.max_frame,
        idle_timeout: Duration::from_secs(30).max(config.gossip.interval * 20),
        retirement,
        forgotten,
        max_clock_skew_ms: u64::try_from(config.max_clock_skew.as_millis()).unwrap_or(u64::MAX),
    };
    let sink: Arc<dyn RemoteSink> = Arc::new(writer.clone());
    let gossip = Gossip::new(
        Tcp,
        me,
        config.gossip.clone(),
        Arc::clone(&replica),
        config.seeds.iter().map(HostPort::to_string).collect(),
        Some(sink),
        Arc::clone(&metrics),
    );
    gossip.start(gossip_listener);
    let refusing_gossip = Arc::clone(&gossip);
    let dns_seeds = (!config.seed_dns.is_empty()).then(|| {
        let own = vec![
            running.gossip_advertised.to_string(),
            gossip_addr.to_string(),
        ];
        dns_seeds::start(
            config.seed_dns.clone(),
            own,
            config.dns_refresh,
            Arc::clone(&gossip),
        )
    });

    let registration = if config.discovery.is_empty() {
        None
    } else {
        let mut client = tally_discovery::DiscoveryClient::new(config.discovery.clone())
            .map_err(|e| NodeError::Discovery(e.to_string()))?;
        if let Some(keys) = &config.cluster_keys {
            client = client.signed_with(keys.clone());
        }
        let member = registration::member(
            &identity.id,
            running.gossip_advertised.clone(),
            running.http_advertised.clone(),
        );
        Some(Registration::start(
            client,
            member,
            config.heartbeat,
            Arc::clone(&gossip),
        ))
    };

    let alone_by_config =
        config.seeds.is_empty() && config.seed_dns.is_empty() && config.discovery.is_empty();
    let readiness = Arc::new(Readiness::new(alone_by_config, config.join_timeout));
    crate::expiry::spawn(Arc::clone(&replica), writer.clone());
    crate::garbage::spawn(
        Arc::clone(&replica),
        Arc::clone(&gossip),
        Arc::clone(&metrics),
        config.gc_interval,
        config.max_clock_skew,
    );
    let watch = WatchHub::new();
    crate::replica::feed_watch(&replica, Arc::clone(&watch));
    watch.spawn(Arc::clone(&replica) as Arc<dyn CounterSource>);
    let http_connections = Arc::clone(&metrics.http_connections);
    let app = api::router(ApiState {
        node: identity.id.clone(),
        replica,
        writer: writer.clone(),
        gossip,
        metrics,
        allow_fault_injection: config.allow_fault_injection,
        access: Arc::new(AccessPolicy {
            tokens: config.api_tokens.clone(),
            allowed_origins: config.allowed_origins.clone(),
            internal: (config.cluster_keys.clone())
                .map(|keys| Arc::new(RequestVerifier::new(keys))),
        }),
        cluster_keys: config.cluster_keys.clone(),
        subscribers: Arc::new(tokio::sync::Semaphore::new(api::MAX_SUBSCRIBERS)),
        subscribers_per_ip: PerIpLimit::new(api::MAX_SUBSCRIBERS_PER_IP),
        counter_limit: api::CounterLimit::new(config.max_counters),
        stream_chunk_bytes: config.stream_chunk_bytes,
        readiness: Arc::clone(&readiness),
        in_flight: Arc::new(crate::idempotency::InFlightKeys::from_env()),
        watch,
        write_timeout: config.write_timeout,
    });
    on_ready(&running);
    tracing::info!(
        node = %running.id,
        gossip = %running.gossip_addr,
        http = %running.http_addr,
        gossip_advertised = %running.gossip_advertised,
        http_advertised = %running.http_advertised,
        "node is serving"
    );

    // The graceful stop: not ready and out of discovery at once, requests
    // still served for the drain period (gateways see `/ready` fail and the
    // draining header, and stop sending), then no new connection, requests
    // in flight finish, the WAL is synced and the clean stop recorded.
    let (signalled, deadline_starts) = tokio::sync::oneshot::channel::<()>();
    // A node refused by its peers stops as if signalled, then says why.
    let refusal = Arc::new(std::sync::Mutex::new(None::<String>));
    let shutdown = {
        let (refusal, gossip) = (Arc::clone(&refusal), Arc::clone(&refusing_gossip));
        async move {
            tokio::select! {
                () = shutdown => {}
                reason = gossip.refused() => {
                    *refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                }
            }
        }
    };
    let registration = Arc::new(tokio::sync::Mutex::new(registration));
    let stop_serving = {
        let (readiness, registration) = (Arc::clone(&readiness), Arc::clone(&registration));
        let drain_period = config.drain_period;
        async move {
            shutdown.await;
            let _ = signalled.send(());
            readiness.start_draining();
            tracing::info!(
                drain_ms = drain_period.as_millis() as u64,
                "draining: not ready, still serving"
            );
            if let Some(registration) = registration.lock().await.take() {
                registration.leave().await;
            }
            tokio::time::sleep(drain_period).await;
        }
    };
    let stop = async {
        http_server::serve(
            http_listener,
            app,
            config.http.clone(),
            http_connections,
            stop_serving,
        )
        .await?;
        // Syncs and records the clean stop while the directory is still locked.
        writer.shutdown().await;
        if let Some(registration) = registration.lock().await.take() {
            registration.leave().await;
        }
        Ok::<(), NodeError>(())
    };
    let deadline = async {
        if deadline_starts.await.is_err() {
            // Serving ended without a signal: no deadline applies.
            return std::future::pending().await;
        }
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    tokio::select! {
        stopped = stop => stopped?,
        () = deadline => return Err(NodeError::ShutdownTimedOut(config.shutdown_timeout)),
    }
    if let Some(task) = dns_seeds {
        task.abort();
    }
    if let Some(reason) = refusal.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(NodeError::Refused(reason));
    }
    tracing::info!(node = %running.id, "node stopped");
    Ok(())
}

/// Refuses an unspecified listen address (`0.0.0.0`, `[::]`) with nothing
/// advertised: peers and gateways would be told an address nobody can dial.
fn check_advertised(config: &NodeConfig) -> Result<(), NodeError> {
    let checks = [
        (
            config.gossip_addr,
            &config.gossip_advertise,
            "--gossip-addr",
            "--gossip-advertise",
        ),
        (
            config.http_addr,
            &config.http_advertise,
            "--http-addr",
            "--http-advertise",
        ),
    ];
    for (addr, advertise, bind_flag, advertise_flag) in checks {
        if addr.ip().is_unspecified() && advertise.is_none() {
            return Err(NodeError::NothingToAdvertise {
                bind_flag,
                advertise_flag,
                addr,
            });
        }
    }
    Ok(())
}

/// Opens the WAL and replays it into a fresh replica state.
async fn recover(dir: PathBuf, options: WalOptions) -> Result<(Wal, ReplicaState), NodeError> {
    let joined = tokio::task::spawn_blocking(move || {
        let mut state = ReplicaState::default();
        let wal =
            Wal::open::<JournalError>(&dir, options, |record| journal::replay(&mut state, record))?;
        // Counters dropped as garbage are gone from the log, not their seqs.
        state.map.raise_seq_floor(&state.watermarks);
        Ok::<_, NodeError>((wal, state))
    })
    .await;
    joined.map_err(|e| NodeError::Io(std::io::Error::other(e.to_string())))?
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// Heartbeats start at boot time in ms, so a restarted node's are newer than its old ones.
fn boot_heartbeat() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}
