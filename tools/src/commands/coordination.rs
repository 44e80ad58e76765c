//! Runs the coordination objects' subcommands (lock, sem, barrier, latch, future, queue,
//! map) and writes their output.

use std::io::Write;
use std::time::Duration;

use engram_client::{Client, LockHolder};
use serde::Serialize;

use crate::cli::{
    BarrierCommand, FutureCommand, LatchCommand, LockCommand, MapCommand, QueueCommand, SemaphoreCommand,
};
use crate::failure::Failure;

/// How long a barrier, latch, future or queue command waits at the server: the global
/// `--timeout-ms` when given (`given`), otherwise the command's own default.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    pub given: Option<Duration>,
    /// Used by waits whose whole point is waiting (barrier, latch) when none is given.
    pub default: Duration,
}

pub async fn lock(client: &Client, command: LockCommand, out: &mut impl Write) -> Result<(), Failure> {
    match command {
        LockCommand::Acquire {
            name,
            owner,
            lease_ms,
            wait_ms,
        } => {
            let lease = Duration::from_millis(lease_ms);
            let guard = client
                .lock(name)
                .acquire(owner, lease, Duration::from_millis(wait_ms))
                .await?;
            // The guard is only a receipt: the lock stays held until released or its
            // lease ends, which is what a script acquiring from the shell wants.
            writeln!(out, "{}", guard.fence())?;
        }
        LockCommand::Release { name, owner, token } => {
            client.lock(name).release_with(owner, token).await?;
            writeln!(out, "OK")?;
        }
        LockCommand::Renew {
            name,
            owner,
            token,
            lease_ms,
        } => {
            client
                .lock(name)
                .renew_with(owner, token, Duration::from_millis(lease_ms))
                .await?;
            writeln!(out, "{token}")?;
        }
        LockCommand::Holder { name, json } => {
            let holder = client
                .lock(name)
                .holder()
                .await?
                .ok_or_else(|| Failure::Missing("lock is not held".into()))?;
            let view = HolderView::from(&holder);
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&view)?)?;
            } else {
                out.write_all(view.to_text().as_bytes())?;
            }
        }
    }
    Ok(())
}

/// A lock's holder as `engram lock holder` prints it. An owner id that is not UTF-8 is
/// shown with replacement characters.
#[derive(Debug, Serialize)]
pub struct HolderView {
    pub owner: String,
    pub fence: u64,
    pub lease_remaining_ms: u64,
}

impl From<&LockHolder> for HolderView {
    fn from(holder: &LockHolder) -> Self {
        HolderView {
            owner: String::from_utf8_lossy(&holder.owner).into_owned(),
            fence: holder.fence,
            lease_remaining_ms: u64::try_from(holder.lease_remaining.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl HolderView {
    /// One labeled field per line.
    pub fn to_text(&self) -> String {
        format!(
            "owner: {}\nfence: {}\nlease remaining: {} ms\n",
            self.owner, self.fence, self.lease_remaining_ms
        )
    }
}

pub async fn semaphore(client: &Client, command: SemaphoreCommand, out: &mut impl Write) -> Result<(), Failure> {
    match command {
        SemaphoreCommand::Acquire {
            name,
            capacity,
            permits,
            owner,
            lease_ms,
            wait_ms,
        } => {
            let lease = Duration::from_millis(lease_ms);
            let permit = client
                .semaphore(name, capacity)
                .acquire(owner, permits, lease, Duration::from_millis(wait_ms))
                .await?;
            writeln!(out, "{}", permit.id())?;
        }
        SemaphoreCommand::Release { name, capacity, permit } => {
            client.semaphore(name, capacity).release_with(permit).await?;
            writeln!(out, "OK")?;
        }
        SemaphoreCommand::Renew {
            name,
            capacity,
            permit,
            lease_ms,
        } => {
            client
                .semaphore(name, capacity)
                .renew_with(permit, Duration::from_millis(lease_ms))
                .await?;
            writeln!(out, "{permit}")?;
        }
        SemaphoreCommand::Available { name, capacity } => {
            writeln!(out, "{}", client.semaphore(name, capacity).available().await?)?;
        }
    }
    Ok(())
}

pub async fn barrier(
    client: &Client,
    command: BarrierCommand,
    wait: Wait,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let BarrierCommand::Wait { name, parties } = command;
    let passage = client
        .barrier(name, parties)
        .wait(wait.given.unwrap_or(wait.default))
        .await?;
    writeln!(out, "{} {}", passage.generation, passage.arrival_index)?;
    Ok(())
}

pub async fn latch(client: &Client, command: LatchCommand, wait: Wait, out: &mut impl Write) -> Result<(), Failure> {
    match command {
        LatchCommand::Set { name, count } => {
            let latch = client.latch(name);
            if !latch.try_set_count(count).await? {
                let current = latch.count().await?;
                return Err(Failure::ConditionFailed(format!(
                    "not set: latch is still counting down (at {current}); its count is set only at zero"
                )));
            }
            writeln!(out, "{count}")?;
        }
        LatchCommand::CountDown { name } => writeln!(out, "{}", client.latch(name).count_down().await?)?,
        LatchCommand::Count { name } => writeln!(out, "{}", client.latch(name).count().await?)?,
        LatchCommand::Wait { name } => {
            client.latch(name).wait(wait.given.unwrap_or(wait.default)).await?;
            writeln!(out, "OK")?;
        }
    }
    Ok(())
}

pub async fn future(client: &Client, command: FutureCommand, wait: Wait, out: &mut impl Write) -> Result<(), Failure> {
    match command {
        FutureCommand::Set { name, value } => {
            client.future(name).complete(value).await?;
            writeln!(out, "OK")?;
        }
        FutureCommand::Get { name } => {
            let future = client.future(name);
            let value = match wait.given {
                Some(timeout) => future.get(timeout).await?,
                None => future
                    .try_get()
                    .await?
                    .ok_or_else(|| Failure::Missing("future is not completed".into()))?,
            };
            write_value(out, &value)?;
        }
    }
    Ok(())
}

pub async fn queue(client: &Client, command: QueueCommand, wait: Wait, out: &mut impl Write) -> Result<(), Failure> {
    match command {
        QueueCommand::Push { name, value, front } => {
            let queue = client.queue(name);
            let length = if front {
                queue.push_front(value).await?
            } else {
                queue.push_back(value).await?
            };
            writeln!(out, "{length}")?;
        }
        QueueCommand::Pop { name, back } => {
            let queue = client.queue(name);
            let popped = if back {
                queue.pop_back(wait.given).await?
            } else {
                queue.pop_front(wait.given).await?
            };
            let value = popped.ok_or_else(|| match wait.given {
                Some(timeout) => Failure::WaitTimedOut(format!("queue stayed empty for {} ms", timeout.as_millis())),
                None => Failure::Missing("queue is empty".into()),
            })?;
            write_value(out, &value)?;
        }
        QueueCommand::Len { name } => writeln!(out, "{}", client.queue(name).len().await?)?,
    }
    Ok(())
}

pub async fn map(client: &Client, command: MapCommand, out: &mut impl Write) -> Result<(), Failure> {
    match command {
        MapCommand::Set { name, field, value } => writeln!(out, "{}", client.map(name).set(field, value).await?)?,
        MapCommand::Get { name, field } => {
            let value = client
                .map(name)
                .get(field)
                .await?
                .ok_or_else(|| Failure::Missing("field not found".into()))?;
            write_value(out, &value)?;
        }
        MapCommand::Del { name, field } => writeln!(out, "{}", u8::from(client.map(name).del(field).await?))?,
        MapCommand::All { name } => {
            for (field, value) in client.map(name).get_all().await? {
                out.write_all(&field)?;
                out.write_all(b"\t")?;
                write_value(out, &value)?;
            }
        }
        MapCommand::Incr { name, field, delta } => writeln!(out, "{}", client.map(name).incr(field, delta).await?)?,
    }
    Ok(())
}

/// A value as stored (it may not be text), then a newline.
pub fn write_value(out: &mut impl Write, value: &[u8]) -> std::io::Result<()> {
    out.write_all(value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> HolderView {
        HolderView::from(&LockHolder {
            owner: b"invocation 7".to_vec(),
            fence: 42,
            lease_remaining: Duration::from_millis(9_500),
        })
    }

    #[test]
    fn the_holder_is_printed_with_labels() {
        assert_eq!(
            holder().to_text(),
            "owner: invocation 7\nfence: 42\nlease remaining: 9500 ms\n"
        );
    }

    #[test]
    fn the_holder_as_json_names_its_fields() {
        let json = serde_json::to_value(holder()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"owner": "invocation 7", "fence": 42, "lease_remaining_ms": 9500})
        );
    }
}
