//! Where the `engramd` and `engram` binaries are.

use std::path::PathBuf;

/// Set to a directory holding `engramd` and `engram` to test other builds.
pub const BIN_DIR_ENV: &str = "ENGRAM_BIN_DIR";

/// The directory holding the workspace binaries: `ENGRAM_BIN_DIR`, or the profile
/// directory of the running test executable (`target/<profile>/deps/<test>` lives one
/// level below `target/<profile>/`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe.parent().expect("test executable has a directory").to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir
}

/// Path of one binary, checked to exist.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace --bins` first (same profile as the tests), \
             or point {BIN_DIR_ENV} at a directory holding engramd and engram",
            path.display()
        );
    }
    path
}

pub fn engramd() -> PathBuf {
    binary("engramd")
}

pub fn engram_cli() -> PathBuf {
    binary("engram")
}
