//! Who this node is: its id and the incarnation of its data directory.
//!
//! The CRDT actor is `<id>~<incarnation>`. An incarnation (milliseconds since
//! the epoch, base 36, plus random bits) is made when a data directory is
//! first created, so a node whose disk was wiped comes back as a new actor:
//! peers still hold its old totals under the old actor, and its new
//! increments, counted from zero under the new one, add to them instead of
//! hiding below them.
//!
//! The same holds for a data directory that lost its end (a truncated torn
//! tail, a copy restored from a backup): writing on from a lower seq as the
//! same actor would be hidden by what peers already hold. So an incarnation
//! is kept across a restart only when the `clean-stop` marker proves the log
//! ends where the node stopped ([`IdentityFile::settle`]); otherwise the node
//! starts a new one before it accepts writes. The writer renews it at run
//! time too when peers show this actor further along than the node itself
//! ([`IdentityFile::renew`]).
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crdt_core::{ActorId, CounterMap};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::wal::TornTail;

const FILE: &str = "identity.json";
/// Written by a clean stop, removed by the next start.
pub const CLEAN_STOP_FILE: &str = "clean-stop";

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the identity file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not hold a valid identity.
    #[error("{path}: not a valid identity file: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The clean-stop marker could not be written or removed.
    #[error("{path}: {source}")]
    Marker {
        /// The marker file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// `--id` differs from the id this data directory belongs to.
    #[error("data directory {dir} belongs to node {stored:?}, not {requested:?}; pass the matching --id or another --data-dir")]
    Mismatch {
        /// The directory.
        dir: PathBuf,
        /// Id found on disk.
        stored: String,
        /// Id asked for.
        requested: String,
    },
}

/// A node's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The node id.
    pub id: String,
    /// The data directory's incarnation.
    pub incarnation: String,
    /// When the data directory was created (ms since the epoch); kept
    /// across incarnations. 0 for directories of before it was recorded,
    /// which read as older than anything (see [`crate::forgotten`]).
    #[serde(default)]
    pub created_ms: u64,
}

impl Identity {
    /// The CRDT actor this node writes as.
    pub fn actor(&self) -> ActorId {
        // Both parts were validated when the identity was made.
        ActorId::new(&format!("{}~{}", self.id, self.incarnation)).expect("validated identity")
    }

    /// Loads the identity kept in `dir`, or creates one (with `requested`
    /// or a generated id) and writes it durably.
    pub fn load_or_create(dir: &Path, requested: Option<&str>) -> Result<Self, IdentityError> {
        let path = dir.join(FILE);
        let io = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let identity: Identity =
                    serde_json::from_slice(&bytes).map_err(|e| IdentityError::Invalid {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                validate_id(&identity.id)
                    .map_err(|error| error.to_string())
                    .and_then(|()| {
                        let actor = format!("{}~{}", identity.id, identity.incarnation);
                        ActorId::new(&actor).map(drop).map_err(|e| e.to_string())
                    })
                    .map_err(|reason| IdentityError::Invalid {
                        path: path.clone(),
                        reason,
                    })?;
                match requested {
                    Some(requested) if requested != identity.id => Err(IdentityError::Mismatch {
                        dir: dir.to_owned(),
                        stored: identity.id,
                        requested: requested.to_owned(),
                    }),
                    _ => Ok(identity),
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let id = match requested {
                    Some(id) => id.to_owned(),
                    None => format!("node-{:06x}", rand::thread_rng().gen::<u32>() & 0xff_ffff),
                };
                validate_id(&id).map_err(|error| IdentityError::Invalid {
                    path: path.clone(),
                    reason: error.to_string(),
                })?;
                let identity = Identity {
                    id,
                    incarnation: new_incarnation(),
                    created_ms: tally_protocol::clock::now_ms(),
                };
                std::fs::create_dir_all(dir).map_err(io)?;
                write_durably(
                    &path,
                    &serde_json::to_vec_pretty(&identity).unwrap_or_default(),
                )
                .map_err(io)?;
                // A new directory has written nothing: as clean as a stop at seq 0.
                write_clean_stop(
                    dir,
                    &CleanStop {
                        incarnation: identity.incarnation.clone(),
                        last_seq: 0,
                    },
                )?;
                Ok(identity)
            }
            Err(error) => Err(io(error)),
        }
    }
}

pub use tally_protocol::validate_node_id as validate_id;

/// What a clean stop leaves in the data directory: the incarnation it ran as
/// and the last seq it wrote as that actor, with every record before it synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanStop {
    /// The incarnation that stopped.
    pub incarnation: String,
    /// Its actor's last seq.
    pub last_seq: u64,
}

/// Whether a start may keep `identity`'s incarnation: only after a clean stop
/// of that incarnation at exactly the seq the log recovered, with nothing
/// truncated. Otherwise the reason to start a new one.
pub fn check_clean_stop(
    identity: &Identity,
    marker: Result<Option<CleanStop>, String>,
    recovered_last_seq: u64,
    torn: Option<&TornTail>,
) -> Result<(), String> {
    if let Some(torn) = torn {
        return Err(format!(
            "recovery truncated {} bytes off {} at offset {}",
            torn.dropped_bytes,
            torn.file.display(),
            torn.offset
        ));
    }
    let marker = match marker? {
        Some(marker) => marker,
        None => {
            return Err(
                "the last stop was not clean (a crash, a kill, or a copy of a \
                        running node's data directory)"
                    .into(),
            )
        }
    };
    if marker.incarnation != identity.incarnation {
        return Err(format!(
            "the clean-stop marker is for incarnation {:?}, not {:?}",
            marker.incarnation, identity.incarnation
        ));
    }
    if marker.last_seq != recovered_last_seq {
        return Err(format!(
            "the clean-stop marker says the last seq was {}, the log holds {}",
            marker.last_seq, recovered_last_seq
        ));
    }
    Ok(())
}

/// A data directory's identity, able to change it durably: the start-up check
/// ([`Self::settle`]), a new incarnation ([`Self::renew`]) and the clean-stop
/// marker ([`Self::mark_clean_stop`]).
#[derive(Debug, Clone)]
pub struct IdentityFile {
    dir: PathBuf,
    identity: Identity,
}

impl IdentityFile {
    /// The identity loaded from data directory `dir`.
    pub fn new(dir: PathBuf, identity: Identity) -> Self {
        Self { dir, identity }
    }

    /// The current identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// At start, once the log is recovered into `recovered`: keeps the
    /// incarnation if [`check_clean_stop`] allows it, else starts a new one
    /// (logging why); then removes the marker durably, so only the next clean
    /// stop can vouch for the log again. Call it before accepting writes.
    pub fn settle(
        &mut self,
        recovered: &CounterMap,
        torn: Option<&TornTail>,
    ) -> Result<(), IdentityError> {
        let actor = self.identity.actor();
        let last_seq = recovered.last_seq(actor.as_str());
        let marker = read_clean_stop(&self.dir);
        let no_marker = matches!(marker, Ok(None));
        match check_clean_stop(&self.identity, marker, last_seq, torn) {
            Ok(()) => {
                tracing::info!(%actor, last_seq, "clean stop: keeping the incarnation")
            }
            Err(reason) => {
                self.renew()?;
                let new = self.identity.actor();
                if no_marker {
                    tracing::info!(old = %actor, %new, %reason, "starting a new incarnation");
                } else {
                    tracing::warn!(old = %actor, %new, %reason, "starting a new incarnation");
                }
            }
        }
        let path = self.dir.join(CLEAN_STOP_FILE);
        remove_durably(&path).map_err(|source| IdentityError::Marker { path, source })
    }

    /// Moves to a new incarnation, written durably before it is returned, so
    /// nothing is ever stamped with an actor a restart would not find.
    pub fn renew(&mut self) -> Result<ActorId, IdentityError> {
        let renewed = Identity {
            id: self.identity.id.clone(),
            incarnation: new_incarnation(),
            created_ms: self.identity.created_ms,
        };
        let path = self.dir.join(FILE);
        let bytes = serde_json::to_vec_pretty(&renewed).unwrap_or_default();
        write_durably(&path, &bytes).map_err(|source| IdentityError::Io { path, source })?;
        self.identity = renewed;
        Ok(self.identity.actor())
    }

    /// Records a clean stop: every record is synced and the current actor's
    /// last seq is `last_seq`.
    pub fn mark_clean_stop(&self, last_seq: u64) -> Result<(), IdentityError> {
        let marker = CleanStop {
            incarnation: self.identity.incarnation.clone(),
            last_seq,
        };
        write_clean_stop(&self.dir, &marker)
    }
}

fn write_clean_stop(dir: &Path, marker: &CleanStop) -> Result<(), IdentityError> {
    let path = dir.join(CLEAN_STOP_FILE);
    let bytes = serde_json::to_vec(marker).unwrap_or_default();
    write_durably(&path, &bytes).map_err(|source| IdentityError::Marker { path, source })
}

/// The marker, if any; an unreadable one is a reason not to trust it.
fn read_clean_stop(dir: &Path) -> Result<Option<CleanStop>, String> {
    let path = dir.join(CLEAN_STOP_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is not a valid clean-stop marker: {e}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("{} cannot be read: {error}", path.display())),
    }
}

fn new_incarnation() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{}{:04x}",
        to_base36(millis),
        rand::thread_rng().gen::<u16>()
    )
}

fn to_base36(mut n: u128) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Writes via a temporary file, fsync and rename, then fsyncs the directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    sync_parent(path)
}

/// Removes `path` (if it is there) and makes the removal durable.
fn remove_durably(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_kept_and_a_wiped_dir_gets_a_new_actor() {
        let dir = tempfile::tempdir().unwrap();
        let first = Identity::load_or_create(dir.path(), Some("n1")).unwrap();
        assert_eq!(Identity::load_or_create(dir.path(), None).unwrap(), first);
        assert!(matches!(
            Identity::load_or_create(dir.path(), Some("n2")),
            Err(IdentityError::Mismatch { .. })
        ));
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        let second = Identity::load_or_create(dir.path(), Some("n1")).unwrap();
        assert_eq!(second.id, "n1");
        assert_ne!(second.actor(), first.actor());
    }

    fn marker(incarnation: &str, last_seq: u64) -> Result<Option<CleanStop>, String> {
        Ok(Some(CleanStop {
            incarnation: incarnation.into(),
            last_seq,
        }))
    }

    #[test]
    fn only_a_matching_clean_stop_keeps_the_incarnation() {
        let identity = Identity {
            id: "n1".into(),
            incarnation: "abc".into(),
            created_ms: 1,
        };
        assert_eq!(
            check_clean_stop(&identity, marker("abc", 7), 7, None),
            Ok(())
        );
        let torn = TornTail {
            file: "wal-1.log".into(),
            offset: 10,
            dropped_bytes: 3,
        };
        let refused = [
            check_clean_stop(&identity, marker("abc", 7), 7, Some(&torn)),
            check_clean_stop(&identity, Ok(None), 7, None),
            check_clean_stop(&identity, Err("unreadable".into()), 7, None),
            check_clean_stop(&identity, marker("xyz", 7), 7, None),
            // A restored copy older than the marker, or a marker older than the log.
            check_clean_stop(&identity, marker("abc", 9), 7, None),
            check_clean_stop(&identity, marker("abc", 5), 7, None),
        ];
        for (i, verdict) in refused.iter().enumerate() {
            assert!(verdict.is_err(), "case {i} kept the incarnation");
        }
    }

    fn actor_map(actor: &ActorId, seq: u64) -> CounterMap {
        let name = crdt_core::CounterName::new("c").unwrap();
        let entry = crdt_core::Entry {
            inc: u128::from(seq),
            dec: 0,
            seq,
            since: 0,
        };
        CounterMap::single(&name, actor, entry)
    }

    #[test]
    fn settle_keeps_a_clean_stop_once_and_renews_after_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let created = Identity::load_or_create(dir.path(), Some("n1")).unwrap();
        let mut file = IdentityFile::new(dir.path().to_owned(), created.clone());
        // A new directory is as clean as a stop at seq 0.
        file.settle(&CounterMap::new(), None).unwrap();
        assert_eq!(file.identity(), &created);
        assert!(!dir.path().join(CLEAN_STOP_FILE).exists());

        let written = actor_map(&created.actor(), 4);
        file.mark_clean_stop(4).unwrap();
        let mut restarted = IdentityFile::new(dir.path().to_owned(), created.clone());
        restarted.settle(&written, None).unwrap();
        assert_eq!(
            restarted.identity(),
            &created,
            "a clean stop keeps the actor"
        );

        // The marker is gone: the same start again (a crash since) renews,
        // and the new incarnation is what identity.json now holds.
        let mut crashed = IdentityFile::new(dir.path().to_owned(), created.clone());
        crashed.settle(&written, None).unwrap();
        assert_ne!(crashed.identity().actor(), created.actor());
        let reloaded = Identity::load_or_create(dir.path(), Some("n1")).unwrap();
        assert_eq!(&reloaded, crashed.identity());

        // A marker that does not match the log (a restored older copy) renews too.
        crashed.mark_clean_stop(9).unwrap();
        let mut restored = IdentityFile::new(dir.path().to_owned(), reloaded.clone());
        restored
            .settle(&actor_map(&reloaded.actor(), 3), None)
            .unwrap();
        assert_ne!(restored.identity(), &reloaded);
    }

    #[test]
    fn an_identity_file_whose_actor_is_invalid_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            br#"{"id": "n1", "incarnation": "has space\u0007"}"#,
        )
        .unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path(), None),
            Err(IdentityError::Invalid { .. })
        ));
    }

    #[test]
    fn bad_ids_are_refused() {
        assert!(validate_id("node-1").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id(&"x".repeat(65)).is_err());
    }
}
