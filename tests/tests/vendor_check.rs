//! `scripts/check-vendor.sh` catches a vendored glommio that is not glommio 0.9.0 plus
//! `vendor/glommio-engram.patch`: it passes on a copy of the tree as it is, and fails,
//! naming what differs, on a copy with a changed file, an added file or a changed
//! execute bit. The check needs the published crate: from cargo's cache, the script's
//! cache in the target directory (`scripts/test.sh` fills it before the tests run), or
//! crates.io.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// A copy of `vendor/glommio`, permissions kept, removed when dropped.
struct TreeCopy {
    scratch: PathBuf,
}

impl TreeCopy {
    fn new(name: &str) -> TreeCopy {
        let scratch = std::env::temp_dir().join(format!("engram-vendor-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).expect("scratch folder");
        // Made first, so that a failed copy is cleaned up too.
        let copy = TreeCopy { scratch };
        let copied = Command::new("cp")
            .arg("-a")
            .arg(repository().join("vendor/glommio"))
            .arg(copy.tree())
            .status()
            .expect("cp runs");
        assert!(copied.success(), "copying vendor/glommio failed");
        copy
    }

    fn tree(&self) -> PathBuf {
        self.scratch.join("glommio")
    }

    fn check(&self) -> Output {
        Command::new("bash")
            .arg(repository().join("scripts/check-vendor.sh"))
            .env("ENGRAM_VENDOR_TREE", self.tree())
            .output()
            .expect("bash runs the check")
    }
}

impl Drop for TreeCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The check fails on `copy` and its complaint contains `expected`.
fn assert_refused(copy: &TreeCopy, expected: &str) {
    let output = copy.check();
    let complaint = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "the check passed a changed tree:\n{complaint}"
    );
    assert!(
        complaint.contains(expected),
        "the complaint does not name {expected:?}:\n{complaint}"
    );
}

#[test]
fn the_vendor_check_passes_the_tree_as_it_is_and_names_every_kind_of_change() {
    let unchanged = TreeCopy::new("unchanged");
    let output = unchanged.check();
    assert!(
        output.status.success(),
        "the check refused an unchanged copy:\n{}",
        stderr(&output)
    );

    let edited = TreeCopy::new("edited");
    let reactor = edited.tree().join("src/reactor.rs");
    let mut text = std::fs::read_to_string(&reactor).expect("the vendored reactor");
    text.push_str("// one more line\n");
    std::fs::write(&reactor, text).expect("edited reactor");
    assert_refused(&edited, "src/reactor.rs");

    let added = TreeCopy::new("added");
    std::fs::write(added.tree().join("src/stray.rs"), "").expect("added file");
    assert_refused(&added, "stray.rs");

    let executable = TreeCopy::new("executable");
    let made_executable = Command::new("chmod")
        .arg("u+x")
        .arg(executable.tree().join("src/lib.rs"))
        .status()
        .expect("chmod runs");
    assert!(made_executable.success());
    assert_refused(&executable, "execute permissions");
}
