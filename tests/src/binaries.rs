//! Where the `engramd` and `engram` binaries are, and this crate's own
//! `engram-test-worker` and `engram-example-invocation-lock`.

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
    profile_dir()
}

/// The profile directory of the running test executable (`target/<profile>/`), where
/// `cargo build --workspace --bins` puts the binaries of this build.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let mut dir = exe.parent().expect("test executable has a directory").to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    dir
}

/// Path of one binary in [`bin_dir`], checked to exist.
pub fn binary(name: &str) -> PathBuf {
    existing(
        bin_dir().join(name),
        &format!(", or point {BIN_DIR_ENV} at a directory holding engramd and engram"),
    )
}

/// `path`, panicking with how to build it when it is not there.
fn existing(path: PathBuf, alternative: &str) -> PathBuf {
    if !path.is_file() {
        panic!(
            "{} not found: run `cargo build --workspace --bins` first (same profile as the tests){alternative}",
            path.display()
        );
    }
    path
}

pub fn engramd() -> PathBuf {
    binary("engramd")
}

pub fn engram_control() -> PathBuf {
    binary("engram-control")
}

pub fn engram_cli() -> PathBuf {
    binary("engram")
}

/// The worker process of the multi-process tests (`tests/src/bin/engram-test-worker.rs`).
/// It is part of this test crate, not of the build under test, so it is always taken from
/// [`profile_dir`], even when `ENGRAM_BIN_DIR` points elsewhere.
pub fn test_worker() -> PathBuf {
    existing(profile_dir().join("engram-test-worker"), "")
}

/// The README's lock example (`client/examples/invocation_lock.rs`), which this crate also
/// builds as a binary; like the worker, always taken from [`profile_dir`].
pub fn example_invocation_lock() -> PathBuf {
    existing(profile_dir().join("engram-example-invocation-lock"), "")
}
