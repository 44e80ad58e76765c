//! A scratch work directory for the tests of the reports, removed when dropped.

use std::path::{Path, PathBuf};

pub struct WorkDir(PathBuf);

impl WorkDir {
    /// A fresh directory under the system's temporary one, named after the test and
    /// this process, so that tests running at once never share one.
    pub fn new(name: &str) -> WorkDir {
        let path = std::env::temp_dir().join(format!("engram-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        WorkDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.0.join(name)).unwrap();
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
