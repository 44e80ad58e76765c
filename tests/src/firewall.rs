//! [`Cut`]: iptables rules on the loopback interface that cut every connection between
//! two processes, each started under a group (gid) of its own (see
//! [`crate::ServerOptions::group`]), both ways, until dropped: what either opens to the
//! other's address, and the answers.
//!
//! Every process on loopback connects out from 127.0.0.1 whatever address it binds, so
//! the rules cannot tell the two processes' packets by their source address. They tell
//! them by the socket's owner instead, which only the OUTPUT chain knows: a rule there
//! marks the connection (conntrack), and a rule in INPUT drops every packet of a marked
//! connection, whichever way it goes. The packets leave and vanish, as on a broken
//! link: no refusal, no reset. Everything else still reaches both processes.
//!
//! The rules carry a comment naming this test process (`engram-test-<pid>`); the drop
//! deletes exactly the rules it added, also when the test panics.

use std::net::Ipv4Addr;
use std::process::Command;

/// The connection mark of this process's cuts: apart from other test processes', so
/// one's rules never drop another's connections.
fn mark() -> u32 {
    const MARK_BASE: u32 = 0x00e6_0000;
    MARK_BASE | (std::process::id() & 0xffff)
}

/// Groups a test process may run its children under: [`test_group`]`(n)` for `n`
/// below this.
pub const TEST_GROUPS: u32 = 16;

/// The `n`th group of this test process, apart from other test processes' and from
/// the groups of the machine's own users.
pub fn test_group(n: u32) -> u32 {
    const GROUP_BASE: u32 = 0x0e60_0000;
    assert!(n < TEST_GROUPS, "a test process has {TEST_GROUPS} groups");
    GROUP_BASE | ((std::process::id() & 0xffff) * TEST_GROUPS) | n
}

/// One side of a [`Cut`]: the group its process runs under, and the address it binds.
#[derive(Clone, Copy, Debug)]
pub struct Side {
    pub group: u32,
    pub address: Ipv4Addr,
}

/// Rules that drop the traffic between two processes, in both directions, while this
/// lives.
pub struct Cut {
    /// Each rule as `chain` followed by its specification, as added.
    rules: Vec<Vec<String>>,
}

impl Cut {
    /// Adds the rules; fails the test, with what iptables said, when it cannot (the
    /// test needs them: not being able to cut is no reason to pass).
    pub fn between(one: Side, other: Side) -> Cut {
        let comment = format!("engram-test-{}", std::process::id());
        let mark = format!("{:#x}", mark());
        let tagged = |rule: &[&str]| -> Vec<String> {
            rule.iter()
                .map(|part| part.to_string())
                .chain(["-m", "comment", "--comment", &comment].map(str::to_string))
                .collect()
        };
        // The drop first: a connection is never marked without being dropped.
        let mut rules = vec![tagged(&[
            "INPUT", "-i", "lo", "-m", "connmark", "--mark", &mark, "-j", "DROP",
        ])];
        for (from, to) in [(one, other), (other, one)] {
            let (group, address) = (from.group.to_string(), to.address.to_string());
            rules.push(tagged(&[
                "OUTPUT",
                "-o",
                "lo",
                "-d",
                &address,
                "-m",
                "owner",
                "--gid-owner",
                &group,
                "-j",
                "CONNMARK",
                "--set-mark",
                &mark,
            ]));
        }
        let mut cut = Cut { rules: Vec::new() };
        for rule in rules {
            if let Err(error) = iptables("-I", &rule) {
                panic!(
                    "cannot cut {one:?} off from {other:?} with iptables (the test runs as root with \
                     iptables installed: scripts/test.sh installs it): {error}"
                );
            }
            cut.rules.push(rule);
        }
        cut
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for rule in self.rules.drain(..).rev() {
            if let Err(error) = iptables("-D", &rule) {
                eprintln!("could not delete the iptables rule {rule:?}: {error}");
            }
        }
    }
}

/// `iptables -w ACTION RULE...`; what went wrong, when it did.
fn iptables(action: &str, rule: &[String]) -> Result<(), String> {
    let output = Command::new("iptables")
        .arg("-w")
        .arg(action)
        .args(rule)
        .output()
        .map_err(|error| format!("cannot run iptables: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "iptables {action} {} exited with {}: {}",
        rule.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}
