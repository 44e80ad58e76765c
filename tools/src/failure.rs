//! What can make an `engram` command fail, and the exit code of each.

use engram_client::{ErrorCode, ServerCode};

/// Exit code when there is nothing to print: `get` of a missing key, a missing map field,
/// an empty queue or an unset future (without waiting), a lock nobody holds.
pub const EXIT_CODE_MISSING: u8 = 1;
/// Exit code when a conditional write or compare-and-set did not apply.
pub const EXIT_CODE_CONDITION_FAILED: u8 = 2;
/// Exit code for every other failure (connection, server error, a lost slot, bad
/// arguments, call timeout). A lost slot shares it: a script cannot fix one by retrying
/// or waiting, only an operator can, and the message says how.
pub const EXIT_CODE_ERROR: u8 = 3;
/// Exit code when a wait ran out at the server: a lock or permits stayed taken, a barrier
/// did not fill, a latch did not open, a future was not completed, a queue stayed empty.
pub const EXIT_CODE_WAIT_TIMED_OUT: u8 = 4;

/// The exit-code table shown in `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  nothing there: get/map get of a missing key or field, future get or queue pop
     without --timeout-ms that found nothing, lock holder of a free lock
  2  the condition failed: set --if-absent/--if-version, counter cas, latch set of a
     latch still counting down
  3  any other error (unreachable server, server error such as NotHolder or
     BarrierBroken, call timeout, bad arguments), and a lost slot (SlotLost: the
     key's data is gone; `engram cluster reclaim` returns the slot, empty)
  4  a wait ran out: lock/sem acquire (held), barrier wait, latch wait, future get or
     queue pop with --timeout-ms";

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// What was not there ("key not found", "queue is empty", ...).
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    ConditionFailed(String),
    /// The server's account of the wait that ran out.
    #[error("{0}")]
    WaitTimedOut(String),
    /// A key's slot is lost: what that means and how to fix it.
    #[error("{0}")]
    SlotLost(String),
    #[error(transparent)]
    Client(engram_client::Error),
    /// A cluster administration call to engram-control failed.
    #[error(transparent)]
    Admin(#[from] engram_client::admin::AdminError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl From<engram_client::Error> for Failure {
    /// A server `Timeout` is a wait that ran out (what `Error::is_wait_timeout` tests),
    /// which scripts branch on, so it gets its own exit code; a lost slot gets a message
    /// that tells the operator what to do; every other client error is a plain failure.
    fn from(error: engram_client::Error) -> Self {
        match error {
            engram_client::Error::Server {
                code: ServerCode::Known(ErrorCode::Timeout),
                message,
                ..
            } => Failure::WaitTimedOut(message),
            engram_client::Error::SlotLost { slot, map_epoch, .. } => {
                Failure::SlotLost(slot_lost_text(slot, map_epoch))
            }
            // Not expected (only keys have slots); the server's words then.
            engram_client::Error::Server {
                code: ServerCode::Known(ErrorCode::SlotLost),
                message,
                ..
            } => Failure::SlotLost(format!(
                "{message}; `engram cluster reclaim SLOTS` returns lost slots to service, empty"
            )),
            error => Failure::Client(error),
        }
    }
}

/// What a lost slot means, and the command that fixes it.
fn slot_lost_text(slot: u32, map_epoch: u64) -> String {
    format!(
        "slot {slot} is lost (map epoch {map_epoch}): its data is gone (its node died or \
         restarted with empty memory), and it fails every operation until an operator returns \
         it to service, empty, with `engram cluster reclaim {slot}`"
    )
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Missing(_) => EXIT_CODE_MISSING,
            Failure::ConditionFailed(_) => EXIT_CODE_CONDITION_FAILED,
            Failure::WaitTimedOut(_) => EXIT_CODE_WAIT_TIMED_OUT,
            // Documented with the other errors under exit code 3.
            Failure::SlotLost(_) => EXIT_CODE_ERROR,
            _ => EXIT_CODE_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use engram_client::Error;

    use super::*;

    fn server(code: ErrorCode, message: &str) -> Error {
        Error::Server {
            code: ServerCode::Known(code),
            message: message.into(),
            map_epoch: 1,
        }
    }

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        assert_eq!(Failure::Missing("x".into()).exit_code(), 1);
        assert_eq!(Failure::ConditionFailed("x".into()).exit_code(), 2);
        assert_eq!(Failure::Usage("x".into()).exit_code(), 3);
        assert_eq!(Failure::from(Error::Config("x".into())).exit_code(), 3);
        assert_eq!(Failure::WaitTimedOut("x".into()).exit_code(), 4);
        for code in [
            EXIT_CODE_MISSING,
            EXIT_CODE_CONDITION_FAILED,
            EXIT_CODE_ERROR,
            EXIT_CODE_WAIT_TIMED_OUT,
        ] {
            assert!(EXIT_CODES_HELP.contains(&format!("  {code}  ")));
        }
    }

    #[test]
    fn a_server_wait_timeout_exits_4_with_the_server_message_and_other_errors_3() {
        let error = server(ErrorCode::Timeout, "lock wait timed out");
        assert!(error.is_wait_timeout());
        let failure = Failure::from(error);
        assert_eq!(failure.exit_code(), EXIT_CODE_WAIT_TIMED_OUT);
        assert_eq!(failure.to_string(), "lock wait timed out");
        let failure = Failure::from(server(ErrorCode::NotHolder, "fence 3 does not hold the lock"));
        assert_eq!(failure.exit_code(), EXIT_CODE_ERROR);
        assert!(failure
            .to_string()
            .contains("NotHolder: fence 3 does not hold the lock"));
        let call_timeout = Error::Timeout {
            after: std::time::Duration::from_secs(1),
            last_error: None,
        };
        assert_eq!(Failure::from(call_timeout).exit_code(), EXIT_CODE_ERROR);
    }

    #[test]
    fn a_lost_slot_exits_3_naming_the_slot_and_the_command_that_reclaims_it() {
        let error = Error::SlotLost {
            slot: 4242,
            message: "the slot map at epoch 7 marks it lost".into(),
            map_epoch: 7,
        };
        let failure = Failure::from(error);
        assert_eq!(failure.exit_code(), 3);
        let text = failure.to_string();
        assert!(text.starts_with("slot 4242 is lost (map epoch 7)"), "{text}");
        assert!(text.contains("`engram cluster reclaim 4242`"), "{text}");
        let failure = Failure::from(server(ErrorCode::SlotLost, "lost"));
        assert_eq!(failure.exit_code(), 3);
        assert!(
            failure.to_string().contains("engram cluster reclaim SLOTS"),
            "{failure}"
        );
        assert!(EXIT_CODES_HELP.contains("lost slot"));
    }
}
