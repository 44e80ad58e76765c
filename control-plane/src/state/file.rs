//! The state in a file of a data directory that one process holds at a time (`--data`,
//! for development and single-process deployments).
//!
//! A write is atomic (temporary file, fsync, rename, fsync of the directory), so a crash
//! leaves the old state or the new one, never a torn one. A write that fails before the
//! rename leaves the old state in force: an ordinary error. One that fails after it leaves
//! the process unable to tell which state the next start will read, so it must stop
//! changing anything and let that start (`reconcile`) settle whichever it finds.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{SaveError, StateError};

const STATE_FILE: &str = "state.bin";
const LOCK_FILE: &str = "lock";

/// The data directory's state file, locked against a second process for as long as this
/// value lives: two control planes on one file would each commit migrations the other
/// does not know of.
pub struct StateFile {
    data_dir: PathBuf,
    _lock: File,
}

impl StateFile {
    /// Locks `data_dir` (creating it) and reads the state saved there, if any.
    pub fn open(data_dir: &Path) -> Result<(StateFile, Option<Vec<u8>>), StateError> {
        let unusable = |path: PathBuf| move |source| StateError::DataDir { path, source };
        std::fs::create_dir_all(data_dir).map_err(unusable(data_dir.to_path_buf()))?;
        let lock_path = data_dir.join(LOCK_FILE);
        let lock = File::create(&lock_path).map_err(unusable(lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StateError::DataDirInUse {
                path: data_dir.to_path_buf(),
            });
        }
        let path = data_dir.join(STATE_FILE);
        let saved = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(StateError::DataDir { path, source }),
        };
        let file = StateFile {
            data_dir: data_dir.to_path_buf(),
            _lock: lock,
        };
        Ok((file, saved))
    }

    pub fn path(&self) -> PathBuf {
        self.data_dir.join(STATE_FILE)
    }

    pub fn save(&self, bytes: &[u8]) -> Result<(), SaveError> {
        let path = self.path();
        let temporary = self.data_dir.join(format!("{STATE_FILE}.tmp"));
        let written = File::create(&temporary)
            .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &path));
        if let Err(source) = written {
            return Err(SaveError::NotWritten { path, source });
        }
        File::open(&self.data_dir)
            .and_then(|directory| directory.sync_all())
            .map_err(|source| SaveError::Unsynced { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir(test: &str) -> PathBuf {
        std::env::temp_dir().join(format!("engram-control-{test}-{}", std::process::id()))
    }

    #[test]
    fn a_second_process_on_the_same_data_dir_is_refused_until_the_first_is_gone() {
        let dir = data_dir("lock");
        let (first, _) = StateFile::open(&dir).expect("first opens");
        assert!(matches!(StateFile::open(&dir), Err(StateError::DataDirInUse { .. })));
        drop(first);
        StateFile::open(&dir).expect("opens once the first is gone");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn what_is_saved_is_read_back_and_replaces_what_was_there() {
        let dir = data_dir("save");
        let _ = std::fs::remove_dir_all(&dir);
        let (file, saved) = StateFile::open(&dir).expect("opens");
        assert_eq!(saved, None, "a new directory holds no state");
        file.save(b"first").expect("saves");
        file.save(b"second").expect("saves again");
        drop(file);
        let (_file, saved) = StateFile::open(&dir).expect("reopens");
        assert_eq!(saved.as_deref(), Some(&b"second"[..]));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_failed_write_leaves_the_previous_state_in_force() {
        let dir = data_dir("failed");
        let _ = std::fs::remove_dir_all(&dir);
        let (file, _) = StateFile::open(&dir).expect("opens");
        file.save(b"kept").expect("saves");
        // A directory where the temporary file goes makes its creation fail.
        std::fs::create_dir(dir.join(format!("{STATE_FILE}.tmp"))).expect("blocks the temporary file");
        assert!(matches!(file.save(b"lost"), Err(SaveError::NotWritten { .. })));
        drop(file);
        let (_file, saved) = StateFile::open(&dir).expect("reopens");
        assert_eq!(saved.as_deref(), Some(&b"kept"[..]));
        let _ = std::fs::remove_dir_all(dir);
    }
}
