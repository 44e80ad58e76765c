//! What can make an `engram` command fail, and the exit code of each.

/// Exit code when `get` finds no value.
pub const EXIT_CODE_MISSING: u8 = 1;
/// Exit code when a conditional write or compare-and-set did not apply.
pub const EXIT_CODE_CONDITION_FAILED: u8 = 2;
/// Exit code for every other failure (connection, server error, bad arguments, timeout).
pub const EXIT_CODE_ERROR: u8 = 3;

/// The exit-code table shown in `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  get: the key does not exist
  2  set --if-absent/--if-version or counter cas: the condition failed
  3  any other error (unreachable server, server error, timeout, bad arguments)";

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("key not found")]
    Missing,
    #[error("{0}")]
    ConditionFailed(String),
    #[error(transparent)]
    Client(#[from] engram_client::Error),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Usage(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Missing => EXIT_CODE_MISSING,
            Failure::ConditionFailed(_) => EXIT_CODE_CONDITION_FAILED,
            _ => EXIT_CODE_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_documented() {
        assert_eq!(Failure::Missing.exit_code(), 1);
        assert_eq!(Failure::ConditionFailed("x".into()).exit_code(), 2);
        assert_eq!(Failure::Usage("x".into()).exit_code(), 3);
        assert_eq!(Failure::Client(engram_client::Error::Config("x".into())).exit_code(), 3);
        for code in [EXIT_CODE_MISSING, EXIT_CODE_CONDITION_FAILED, EXIT_CODE_ERROR] {
            assert!(EXIT_CODES_HELP.contains(&format!("  {code}  ")));
        }
    }
}
