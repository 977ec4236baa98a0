//! Who this node is: its id and the incarnation of its data directory.
//!
//! The CRDT actor is `<id>~<incarnation>`. The incarnation is fixed when a
//! data directory is first created (milliseconds since the epoch, base 36,
//! plus random bits), so a node whose disk was wiped comes back as a new
//! actor: peers still hold its old totals under the old actor, and its new
//! increments, counted from zero under the new one, add to them instead of
//! hiding below them.
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crdt_core::ActorId;
use rand::Rng;
use serde::{Deserialize, Serialize};

const FILE: &str = "identity.json";

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
                validate_id(&identity.id).map_err(|error| IdentityError::Invalid {
                    path: path.clone(),
                    reason: error.to_string(),
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
                };
                std::fs::create_dir_all(dir).map_err(io)?;
                write_durably(
                    &path,
                    &serde_json::to_vec_pretty(&identity).unwrap_or_default(),
                )
                .map_err(io)?;
                Ok(identity)
            }
            Err(error) => Err(io(error)),
        }
    }
}

pub use tally_protocol::validate_node_id as validate_id;

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
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
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

    #[test]
    fn bad_ids_are_refused() {
        assert!(validate_id("node-1").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id(&"x".repeat(65)).is_err());
    }
}
