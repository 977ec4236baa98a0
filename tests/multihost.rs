//! Nodes on separate "hosts": each `tally node` runs in its own Linux
//! network namespace with its own address on a bridge this test creates
//! (198.18.0.0/15, the benchmarking range: nothing leaves the machine).
//! Nodes listen on `0.0.0.0`, advertise their namespace address, and join
//! through a hostname seed that each namespace's own `/etc/hosts` resolves
//! (`ip netns exec` bind-mounts `/etc/netns/<ns>/hosts` over it).
//!
//! The scenario: writes on every node converge; a node moves to a new
//! address (restart, same data dir) and the cluster finds it again; one
//! namespace's link is cut and healed and everyone converges to the exact sum.
//!
//! It needs root and iproute2. Where network namespaces are unavailable it
//! prints `multihost: skipped: <reason>` and passes, unless
//! `TALLY_REQUIRE_NETNS=1`, which turns the skip into a failure.
mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_until, ChildLog};
use serde_json::Value;

/// Every name this test gives a namespace, an interface or an
/// `/etc/netns` folder starts with this, then the test process's pid.
const PREFIX: &str = "tmh";
/// Each node has a network stack of its own, so all use the same ports.
const GOSSIP_PORT: u16 = 9000;
const HTTP_PORT: u16 = 8010;
/// The longest any one step may take.
const STEP: Duration = Duration::from_secs(20);
/// The counter every write goes to.
const COUNTER: &str = "multihost";
/// Where `ip netns add` pins namespaces (and `setns` opens them).
const NETNS_RUN_DIR: &str = "/var/run/netns";
const ETC_NETNS: &str = "/etc/netns";
const NODES: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn nodes_in_separate_network_namespaces_converge_move_and_heal() {
    let run = format!("{PREFIX}{}", std::process::id());
    if let Err(reason) = namespaces_available(&run) {
        let required = std::env::var("TALLY_REQUIRE_NETNS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "multihost: network namespaces are required (TALLY_REQUIRE_NETNS=1) but unavailable: {reason}"
        );
        // Straight to stderr, past the test harness's capture: a skip
        // must be seen even though the test passes.
        let _ = writeln!(std::io::stderr(), "multihost: skipped: {reason}");
        return;
    }
    remove_leftovers();

    let mut bed = Testbed::new(run);
    bed.build_network();
    for i in 1..=NODES {
        bed.start_node(i);
    }
    for i in 1..=NODES {
        bed.wait_ready(i).await;
    }

    // Writes on every node converge.
    bed.increment(1, 1).await;
    bed.increment(2, 20).await;
    bed.increment(3, 300).await;
    bed.converge(&[1, 2, 3], 321, "after a write on every node")
        .await;

    // n3 moves: stops, gets a new address, its name follows, it restarts
    // with the same data dir, and the cluster finds it there.
    bed.stop_node(3);
    let old = bed.ip(3);
    bed.move_node(3, 23);
    bed.start_node(3);
    bed.wait_ready(3).await;
    bed.increment(3, 4_000).await;
    bed.increment(1, 50_000).await;
    bed.converge(&[1, 2, 3], 54_321, "after n3 moved").await;
    bed.lists_at_new_address(1, 3, &old).await;
    bed.lists_at_new_address(2, 3, &old).await;

    // n2's link is cut: both sides take writes, only n1 and n3 still talk.
    bed.set_link(2, false);
    bed.increment_inside(2, 600_000);
    bed.increment(1, 7_000_000).await;
    bed.converge(&[1, 3], 7_054_321, "on n1's side of the cut")
        .await;
    bed.stays_apart(2, 654_321, Duration::from_secs(1));

    // Healed: everyone has every write, each counted once.
    bed.set_link(2, true);
    bed.converge(&[1, 2, 3], 7_654_321, "after the link healed")
        .await;
}

/// Whether this machine can run the test: root, `ip`, and a namespace and
/// a bridge can be made (both are removed at once). The reason when not.
fn namespaces_available(run: &str) -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err(format!(
            "not root (effective uid {}); network namespaces need root",
            euid.unwrap_or("unknown")
        ));
    }
    match Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => {}
        _ => return Err("no usable `ip` command (install iproute2)".into()),
    }
    let probe = format!("{run}n0");
    ip(&["netns", "add", &probe]).map_err(|e| format!("`ip netns add` failed: {e}"))?;
    let _ = ip(&["netns", "delete", &probe]);
    let bridge = format!("{run}br");
    ip(&["link", "add", &bridge, "type", "bridge"])
        .map_err(|e| format!("cannot create a bridge: {e}"))?;
    let _ = ip(&["link", "delete", &bridge]);
    Ok(())
}

/// Runs `ip args`: Ok, or its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `ip args`, panicking when it fails.
fn ip_ok(args: &[&str]) -> String {
    ip(args).unwrap_or_else(|e| panic!("multihost setup: {e}"))
}

/// The pid in a name this test made (`tmh<pid><kind>`), for names of the
/// exact shapes it makes: `…br`, `…n<i>`, `…v<i>`.
fn run_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (pid, kind) = rest.split_at(digits);
    let pid: u32 = pid.parse().ok()?;
    let shaped = kind == "br"
        || kind.len() >= 2
            && (kind.starts_with('n') || kind.starts_with('v'))
            && kind[1..].chars().all(|c| c.is_ascii_digit());
    shaped.then_some(pid)
}

/// Whether `name` was made by a run of this test that is no longer alive.
fn is_leftover(name: &str) -> bool {
    run_pid(name).is_some_and(|pid| {
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// Removes what crashed runs of this test left behind: their namespaces
/// (and any process still in them), bridges, veths and `/etc/netns`
/// folders. Only names of this test's exact shape, whose pid is dead.
fn remove_leftovers() {
    const MOST: usize = 64;
    let namespaces = ip(&["netns", "list"]).unwrap_or_default();
    let stale = namespaces
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| is_leftover(name))
        .take(MOST);
    for ns in stale {
        kill_everything_in(ns);
        let _ = ip(&["netns", "delete", ns]);
    }
    let links = ip(&["-o", "link", "show"]).unwrap_or_default();
    let stale = links
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
        .filter(|name| is_leftover(name))
        .take(MOST);
    for link in stale {
        let _ = ip(&["link", "delete", link]);
    }
    if let Ok(dirs) = std::fs::read_dir(ETC_NETNS) {
        let stale = dirs
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_str().is_some_and(is_leftover))
            .take(MOST);
        for entry in stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// SIGKILLs every process in namespace `ns`.
fn kill_everything_in(ns: &str) {
    let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
    for pid in pids.split_whitespace() {
        if pid.parse::<u32>().is_ok() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// One node's process, started inside its namespace.
struct NsNode {
    id: String,
    data_dir: PathBuf,
    child: Option<Child>,
    /// Its output, printed when the test fails; dropped after the process.
    log: ChildLog,
}

impl NsNode {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The namespaces, their links, the bridge, the hosts files and the nodes
/// of one run. Drop stops the nodes and removes everything it made, also
/// when the test panics.
struct Testbed {
    /// `tmh<pid>`: the start of every name it makes.
    run: String,
    /// The third octet of this run's subnet, 198.18.<net>.0/24.
    net: u8,
    /// The last octet of each node's address (index 0 is node 1).
    hosts: Vec<u8>,
    bridge: Option<String>,
    namespaces: Vec<String>,
    etc_dirs: Vec<PathBuf>,
    made_etc_netns: bool,
    client: reqwest::Client,
    nodes: Vec<NsNode>,
    data: tempfile::TempDir,
}

impl Testbed {
    fn new(run: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(1))
            .no_proxy()
            .build()
            .expect("client");
        Self {
            run,
            net: 0,
            hosts: (1..=NODES).map(|i| 10 + i as u8).collect(),
            bridge: None,
            namespaces: Vec::new(),
            etc_dirs: Vec::new(),
            made_etc_netns: false,
            client,
            nodes: Vec::new(),
            data: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.run)
    }

    /// The root end of node `i`'s veth pair (on the bridge).
    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.run)
    }

    fn ip(&self, i: usize) -> String {
        format!("198.18.{}.{}", self.net, self.hosts[i - 1])
    }

    fn hostname(i: usize) -> String {
        format!("n{i}.tally.test")
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}:{HTTP_PORT}{path}", self.ip(i))
    }

    /// The bridge (198.18.<net>.1/24 in this namespace, so the test reaches
    /// every node), a namespace per node with `lo` and `eth0` up, and the
    /// hosts files.
    fn build_network(&mut self) {
        self.net = free_subnet();
        let bridge = format!("{}br", self.run);
        ip_ok(&["link", "add", &bridge, "type", "bridge"]);
        self.bridge = Some(bridge.clone());
        let gateway = format!("198.18.{}.1/24", self.net);
        ip_ok(&["addr", "add", &gateway, "dev", &bridge]);
        ip_ok(&["link", "set", &bridge, "up"]);
        if !Path::new(ETC_NETNS).exists() {
            std::fs::create_dir_all(ETC_NETNS).expect("create /etc/netns");
            self.made_etc_netns = true;
        }
        for i in 1..=NODES {
            let (ns, veth) = (self.ns(i), self.veth(i));
            let etc = Path::new(ETC_NETNS).join(&ns);
            std::fs::create_dir_all(&etc).expect("create /etc/netns/<ns>");
            self.etc_dirs.push(etc);
            ip_ok(&["netns", "add", &ns]);
            self.namespaces.push(ns.clone());
            let peer = ["type", "veth", "peer", "name", "eth0", "netns", &ns];
            ip_ok(&[&["link", "add", &veth][..], &peer[..]].concat());
            ip_ok(&["link", "set", &veth, "master", &bridge]);
            ip_ok(&["link", "set", &veth, "up"]);
            let addr = format!("{}/24", self.ip(i));
            ip_ok(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        self.write_hosts_files();
    }

    /// Every namespace's `/etc/hosts`: localhost and each node's name at
    /// its current address. Written in place (same inode), so that a
    /// process already running, which sees the file through a bind mount,
    /// reads the new names.
    fn write_hosts_files(&self) {
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for i in 1..=NODES {
            hosts.push_str(&format!("{} {}\n", self.ip(i), Self::hostname(i)));
        }
        for etc in &self.etc_dirs {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(etc.join("hosts"))
                .expect("open a namespace's hosts file");
            file.write_all(hosts.as_bytes())
                .expect("write a namespace's hosts file");
        }
    }

    /// Starts node `i` in its namespace: listening on 0.0.0.0, advertising
    /// its namespace address, seeded by a hostname (n1 by n2's, every
    /// other node by n1's).
    fn start_node(&mut self, i: usize) {
        let id = format!("n{i}");
        let seed = format!(
            "{}:{GOSSIP_PORT}",
            Self::hostname(if i == 1 { 2 } else { 1 })
        );
        let ip = self.ip(i);
        let ns = self.ns(i);
        let gossip_bind = format!("0.0.0.0:{GOSSIP_PORT}");
        let http_bind = format!("0.0.0.0:{HTTP_PORT}");
        if !self.nodes.iter().any(|node| node.id == id) {
            self.nodes.push(NsNode {
                id: id.clone(),
                data_dir: self.data.path().join(&id),
                child: None,
                log: ChildLog::new(&id),
            });
        }
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.id == id)
            .expect("the node");
        let mut command = common::command_for("ip", &node.log);
        command
            .args(["netns", "exec", &ns, common::TALLY, "node", "--id", &id])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--gossip-addr", &gossip_bind, "--http-addr", &http_bind])
            .args(["--seed", &seed, "--gossip-interval", "100ms"])
            .args(["--gossip-advertise", &format!("{ip}:{GOSSIP_PORT}")])
            .args(["--http-advertise", &format!("{ip}:{HTTP_PORT}")]);
        node.child = Some(command.spawn().expect("spawn ip netns exec tally node"));
    }

    fn node(&mut self, i: usize) -> &mut NsNode {
        &mut self.nodes[i - 1]
    }

    /// SIGTERM, and waits (bounded) for the exit.
    fn stop_node(&mut self, i: usize) {
        let node = self.node(i);
        let mut child = node.child.take().expect("a running node");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STEP;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("n{i} did not exit within {STEP:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Gives node `i`'s namespace the address 198.18.<net>.<host> instead
    /// of its own, and points its name there in every hosts file.
    fn move_node(&mut self, i: usize, host: u8) {
        let ns = self.ns(i);
        let old = format!("{}/24", self.ip(i));
        self.hosts[i - 1] = host;
        let new = format!("{}/24", self.ip(i));
        // Deleting first: a primary address takes the secondaries of its
        // subnet with it.
        ip_ok(&["-n", &ns, "addr", "del", &old, "dev", "eth0"]);
        ip_ok(&["-n", &ns, "addr", "add", &new, "dev", "eth0"]);
        self.write_hosts_files();
    }

    /// Takes node `i`'s link to the bridge down (`up` false) or up.
    fn set_link(&self, i: usize, up: bool) {
        let veth = self.veth(i);
        ip_ok(&["link", "set", &veth, if up { "up" } else { "down" }]);
    }

    /// Waits until node `i` answers `GET /ready` with 200 (recovered,
    /// listening, joined a peer), asked over the bridge.
    async fn wait_ready(&mut self, i: usize) {
        let url = self.url(i, "/ready");
        let deadline = Instant::now() + STEP;
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            if let Some(Ok(Some(exit))) = self.node(i).child.as_mut().map(|c| c.try_wait()) {
                panic!("n{i} exited ({exit}) before it was ready");
            }
            match self.client.get(&url).send().await {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => {
                    let status = response.status();
                    last = format!("{status} {}", response.text().await.unwrap_or_default());
                }
                Err(e) => last = format!("no answer: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let exit = self.node(i).child.as_mut().map(|c| c.try_wait());
        panic!(
            "n{i} (in {}, at {}) was not ready within {STEP:?}: last answer {last}; exit status {exit:?}",
            self.ns(i),
            self.ip(i)
        );
    }

    /// Adds `amount` to the counter on node `i`, over the bridge.
    async fn increment(&self, i: usize, amount: u64) {
        let url = self.url(i, &format!("/counters/{COUNTER}/increment"));
        let body = format!("{{\"amount\": {amount}}}");
        let response = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert!(
            response.status().is_success(),
            "POST {url}: {}",
            response.status()
        );
    }

    /// Adds `amount` on node `i` from inside its namespace (its link may
    /// be cut).
    fn increment_inside(&self, i: usize, amount: u64) {
        let path = format!("/counters/{COUNTER}/increment");
        let body = format!("{{\"amount\": {amount}}}");
        let (status, text) = http_inside(&self.ns(i), self.ip(i), "POST", &path, &body)
            .unwrap_or_else(|e| panic!("POST {path} inside {}: {e}", self.ns(i)));
        assert_eq!(status, 200, "POST {path} inside {}: {text}", self.ns(i));
    }

    /// The counter on node `i`, None while it does not answer.
    async fn value(&self, i: usize) -> Option<i64> {
        let url = self.url(i, &format!("/counters/{COUNTER}"));
        let response = self.client.get(url).send().await.ok()?;
        response.json::<Value>().await.ok()?["value"].as_i64()
    }

    /// The counter on node `i`, asked from inside its namespace.
    fn value_inside(&self, i: usize) -> Option<i64> {
        let path = format!("/counters/{COUNTER}");
        let (_, text) = http_inside(&self.ns(i), self.ip(i), "GET", &path, "").ok()?;
        serde_json::from_str::<Value>(&text).ok()?["value"].as_i64()
    }

    async fn values(&self, nodes: &[usize]) -> Vec<Option<i64>> {
        let mut values = Vec::new();
        for &i in nodes {
            values.push(self.value(i).await);
        }
        values
    }

    /// Waits until each of `nodes` shows `expected`.
    async fn converge(&self, nodes: &[usize], expected: i64, when: &str) {
        let converged = wait_until(STEP, || async {
            self.values(nodes)
                .await
                .iter()
                .all(|v| *v == Some(expected))
        })
        .await;
        if !converged {
            let values = self.values(nodes).await;
            panic!(
                "{when}: nodes {nodes:?} did not all reach {expected} within {STEP:?}; they show {values:?}"
            );
        }
    }

    /// Checks for `duration` that cut-off node `i` keeps showing `alone`.
    fn stays_apart(&self, i: usize, alone: i64, duration: Duration) {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            let value = self.value_inside(i);
            assert_eq!(
                value,
                Some(alone),
                "n{i} is cut off, yet shows {value:?} instead of its own {alone}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Checks that node `at` lists node `i` as alive at its current
    /// addresses, and nobody at its `old` address any more.
    async fn lists_at_new_address(&self, at: usize, i: usize, old: &str) {
        let (id, gossip, http) = (
            format!("n{i}"),
            format!("{}:{GOSSIP_PORT}", self.ip(i)),
            format!("{}:{HTTP_PORT}", self.ip(i)),
        );
        let old_gossip = format!("{old}:{GOSSIP_PORT}");
        let deadline = Instant::now() + STEP;
        let mut seen = Value::Null;
        let mut listed = false;
        while !listed && Instant::now() < deadline {
            if let Ok(response) = self.client.get(self.url(at, "/peers")).send().await {
                seen = response.json().await.unwrap_or(Value::Null);
            }
            listed = seen.as_array().is_some_and(|members| {
                members.iter().any(|m| {
                    m["id"] == id.as_str()
                        && m["gossip_addr"] == gossip.as_str()
                        && m["http_addr"] == http.as_str()
                        && m["status"] == "alive"
                }) && !members
                    .iter()
                    .any(|m| m["gossip_addr"] == old_gossip.as_str())
            });
            if !listed {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert!(
            listed,
            "n{at} does not list {id} alive at {gossip} (moved from {old}) within {STEP:?}: {seen}"
        );
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let mut failures = Vec::new();
        // A namespace goes away only when nothing refers to it any more
        // (sockets may linger): its links are deleted here and now.
        for i in 1..=self.namespaces.len() {
            let _ = ip(&["link", "delete", &self.veth(i)]);
        }
        for ns in &self.namespaces {
            kill_everything_in(ns);
            if let Err(e) = ip(&["netns", "delete", ns]) {
                failures.push(e);
            }
        }
        if let Some(bridge) = &self.bridge {
            if let Err(e) = ip(&["link", "delete", bridge]) {
                failures.push(e);
            }
        }
        for etc in &self.etc_dirs {
            if let Err(e) = std::fs::remove_dir_all(etc) {
                failures.push(format!("remove {}: {e}", etc.display()));
            }
        }
        if self.made_etc_netns {
            // Only if empty: another run may be using it.
            let _ = std::fs::remove_dir(ETC_NETNS);
        }
        if !failures.is_empty() {
            eprintln!("multihost: cleanup incomplete: {}", failures.join("; "));
        }
    }
}

/// The third octet of a 198.18.<n>.0/24 no address in this namespace is in
/// (0 unless another run is going on).
fn free_subnet() -> u8 {
    let addrs = ip_ok(&["-o", "-4", "addr", "show"]);
    (0..=255u8)
        .find(|n| !addrs.contains(&format!("inet 198.18.{n}.")))
        .expect("a free /24 in 198.18.0.0/16")
}

/// One HTTP/1.1 request to the node at `ip` from inside namespace `ns`
/// (on a thread of its own that enters the namespace): status and body.
fn http_inside(
    ns: &str,
    ip: String,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), String> {
    extern "C" {
        fn setns(fd: i32, nstype: i32) -> i32;
    }
    const CLONE_NEWNET: i32 = 0x4000_0000;
    let handle = Path::new(NETNS_RUN_DIR).join(ns);
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {ip}:{HTTP_PORT}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let worker = std::thread::spawn(move || -> Result<(u16, String), String> {
        let file = File::open(&handle).map_err(|e| format!("open {}: {e}", handle.display()))?;
        // SAFETY: setns(2) with a namespace fd we hold open; it changes only
        // this thread's network namespace, and the thread ends after it.
        if unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let addr: SocketAddr = format!("{ip}:{HTTP_PORT}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .map_err(|e| format!("receive: {e}"))?;
        parse_http_answer(&answer)
    });
    worker
        .join()
        .map_err(|_| "the request thread panicked".to_string())?
}

/// Status and body of an HTTP/1.1 answer read to the end (plain or chunked).
fn parse_http_answer(answer: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    if !chunked {
        return Ok((status, body.to_owned()));
    }
    let mut decoded = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("chunk: {e}"))?;
        if size == 0 || after.len() < size {
            break;
        }
        decoded.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    Ok((status, decoded))
}
