//! Runs one parsed `engram` command and writes its result; the coordination objects'
//! commands are run by [`coordination`].

mod coordination;

use std::io::Write;
use std::time::{Duration, Instant};

use engram_client::{Client, SetCondition, SetOptions, SetOutcome};
use engram_proto::credentials::credential_line;

use crate::cli::{Cli, Command, CounterCommand, TIMEOUT_MS_DEFAULT};
use crate::cluster_view;
use crate::failure::Failure;
use crate::info_view;
use coordination::{write_value, Wait};

/// Random bytes in a token: 256 bits, beyond any guessing, so its unsalted SHA-256 in a
/// credentials file gives nothing away.
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// A new token: random bytes as hex, printable in any shell or file.
fn random_token() -> String {
    let bytes: [u8; TOKEN_RANDOM_BYTES] = rand::random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Connects as `cli` says and runs its command, writing results to `out`.
pub async fn run(cli: Cli, out: &mut impl Write) -> Result<(), Failure> {
    let timeout_ms = cli.timeout_ms.unwrap_or(TIMEOUT_MS_DEFAULT);
    if timeout_ms == 0 {
        return Err(Failure::Usage("--timeout-ms must be positive".into()));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let wait = Wait {
        given: cli.timeout_ms.map(Duration::from_millis),
        default: timeout,
    };
    if let Command::Token {
        name,
        rights,
        namespaces,
    } = &cli.command
    {
        // The line goes where a file is appended to and the token elsewhere, so the
        // token never lands in the file by accident.
        let token = random_token();
        writeln!(out, "{}", credential_line(name, token.as_bytes(), *rights, namespaces))?;
        eprintln!("{token}");
        return Ok(());
    }
    let tls = cli.tls.client_tls().map_err(Failure::Usage)?;
    if let Command::Cluster(command) = cli.command {
        let credentials = cli.credentials.into_bytes();
        return cluster_view::run(command, &credentials, timeout, tls, out).await;
    }
    // Direct routing degrades by itself to sending everything to --addr when the node
    // cannot serve a slot map, so the CLI needs no fallback of its own.
    let mut builder = Client::builder(cli.addr)
        .namespace(cli.namespace)
        .credentials(cli.credentials)
        .timeout(timeout)
        .direct(!cli.front_only);
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    let client = builder.connect().await?;
    match cli.command {
        Command::Ping => {
            let started = Instant::now();
            client.ping().await?;
            let round_trip = started.elapsed();
            writeln!(out, "PONG {:.3} ms", round_trip.as_secs_f64() * 1_000.0)?;
        }
        Command::Set {
            key,
            value,
            ttl_ms,
            if_absent,
            if_version,
        } => {
            let condition = match (if_absent, if_version) {
                (true, _) => SetCondition::IfAbsent,
                (false, Some(version)) => SetCondition::IfVersion(version),
                (false, None) => SetCondition::Always,
            };
            let options = SetOptions {
                ttl: ttl_ms.map(Duration::from_millis),
                condition,
            };
            match client.bytes(key).set_with(value, options).await? {
                SetOutcome::Written { version } => writeln!(out, "{version}")?,
                SetOutcome::Conflict { current_version } => {
                    return Err(Failure::ConditionFailed(conflict_text(condition, current_version)))
                }
            }
        }
        Command::Get { key } => {
            let value = client
                .bytes(key)
                .get()
                .await?
                .ok_or_else(|| Failure::Missing("key not found".into()))?;
            write_value(out, &value.value)?;
        }
        Command::Del { key } => {
            let existed = client.bytes(key).del().await?;
            writeln!(out, "{}", u8::from(existed))?;
        }
        Command::Incr { key, delta } => writeln!(out, "{}", client.counter(key).add(delta).await?)?,
        Command::Counter(CounterCommand::Get { key }) => writeln!(out, "{}", client.counter(key).get().await?)?,
        Command::Counter(CounterCommand::Set { key, value }) => {
            client.counter(key).set(value).await?;
            writeln!(out, "{value}")?;
        }
        Command::Counter(CounterCommand::Cas { key, expected, new }) => {
            let outcome = client.counter(key).compare_and_set(expected, new).await?;
            writeln!(out, "{}", outcome.current)?;
            if !outcome.swapped {
                return Err(Failure::ConditionFailed(format!(
                    "not swapped: counter holds {}, not {expected}",
                    outcome.current
                )));
            }
        }
        Command::Lock(command) => coordination::lock(&client, command, out).await?,
        Command::Semaphore(command) => coordination::semaphore(&client, command, out).await?,
        Command::Barrier(command) => coordination::barrier(&client, command, wait, out).await?,
        Command::Latch(command) => coordination::latch(&client, command, wait, out).await?,
        Command::Future(command) => coordination::future(&client, command, wait, out).await?,
        Command::Queue(command) => coordination::queue(&client, command, wait, out).await?,
        Command::Map(command) => coordination::map(&client, command, out).await?,
        Command::Cluster(_) | Command::Token { .. } => unreachable!("answered above, without a connection"),
        Command::Info { json } => {
            let info = client.info().await?;
            if json {
                writeln!(out, "{}", info_view::to_json(&info)?)?;
            } else {
                out.write_all(info_view::to_table(&info).as_bytes())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn conflict_text(condition: SetCondition, current_version: u64) -> String {
    match (condition, current_version) {
        (SetCondition::IfAbsent, _) => format!("not written: key exists (version {current_version})"),
        (SetCondition::IfVersion(expected), 0) => format!("not written: key is absent, not at version {expected}"),
        (SetCondition::IfVersion(expected), _) => {
            format!("not written: key is at version {current_version}, not {expected}")
        }
        (SetCondition::IfPresent, _) => "not written: key is absent".to_string(),
        (SetCondition::Always, _) => format!("not written (version {current_version})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicts_explain_themselves() {
        assert_eq!(
            conflict_text(SetCondition::IfAbsent, 3),
            "not written: key exists (version 3)"
        );
        assert_eq!(
            conflict_text(SetCondition::IfVersion(2), 0),
            "not written: key is absent, not at version 2"
        );
        assert_eq!(
            conflict_text(SetCondition::IfVersion(2), 5),
            "not written: key is at version 5, not 2"
        );
    }
}
