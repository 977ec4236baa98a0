//! One process per data directory: an exclusive `flock` on `<data-dir>/LOCK`,
//! taken before anything in the directory is read or changed, and held until
//! the process exits (the kernel releases it however the process ends).
//!
//! Two nodes on one directory would otherwise corrupt each other: the second
//! one's recovery deletes the first's temporary snapshot and truncates the
//! live segment it is appending to.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file; it holds the pid of the process that has the lock.
pub const LOCK_FILE: &str = "LOCK";

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error(
        "data directory {} is in use by another tally process (pid {})",
        dir.display(),
        pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string())
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, as it wrote it in the lock file.
        pid: Option<u32>,
    },
    /// The directory or its lock file could not be created, opened or locked.
    #[error("cannot lock data directory {}: {source}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _lock: Flock<File>,
}

impl DataDirLock {
    /// Creates `dir` if needed and locks it, or fails at once if another
    /// process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, DataDirError> {
        let io = |source| DataDirError::Io {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                return Err(DataDirError::InUse {
                    dir: dir.to_owned(),
                    pid,
                });
            }
            Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
        };
        // Only the holder writes it, so the pid read above is the holder's
        // (or nothing, in the instant between its lock and this write).
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(io)?;
        Ok(Self { _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_the_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("n1");
        let held = DataDirLock::acquire(&data).unwrap();
        // flock locks belong to the open file description: a second open in
        // this process conflicts just as another process would.
        let error = DataDirLock::acquire(&data).unwrap_err();
        assert!(
            matches!(&error, DataDirError::InUse { pid: Some(pid), .. } if *pid == std::process::id()),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!(
                "data directory {} is in use by another tally process (pid {})",
                data.display(),
                std::process::id()
            )
        );
        drop(held);
        DataDirLock::acquire(&data).unwrap();
    }
}
