//! What the thread that waits for a node hears while it runs: shards starting and
//! stopping, and an interruption (engramd's second stop signal). One channel carries them
//! all, as [`NodeEvent`]s.

use std::sync::mpsc::{self, Receiver, SyncSender};

use crate::error::ServerError;

/// One thing the node's main thread waits for.
#[derive(Debug)]
pub enum NodeEvent {
    /// The shard serves.
    ShardStarted { shard: usize },
    /// The shard's thread ended: after a shutdown, or a start it could not finish.
    ShardStopped { shard: usize },
    /// A shard's thread could not start, or panicked.
    ShardFailed(ServerError),
    /// An interruption (engramd's second SIGINT or SIGTERM): the wait ends without the
    /// shards.
    Interrupted,
}

/// The sending side of the node's events; every shard, every shard's watcher and the
/// node's [`Shutdown`](crate::shutdown::Shutdown) hold a clone.
#[derive(Clone)]
pub struct NodeEvents(SyncSender<NodeEvent>);

impl NodeEvents {
    /// A channel with room for every event `shards` shards send (a start and a stop
    /// each) and one interruption, so no sender waits for the main thread.
    pub fn channel(shards: usize) -> (NodeEvents, Receiver<NodeEvent>) {
        let (sender, receiver) = mpsc::sync_channel(shards * 2 + 1);
        (NodeEvents(sender), receiver)
    }

    /// Tells the main thread; a main thread that stopped listening has nothing to hear.
    pub fn send(&self, event: NodeEvent) {
        let _ = self.0.send(event);
    }

    /// Tells the main thread to stop at once. Never waits: a second interruption while
    /// the first is unread adds nothing.
    pub fn interrupt(&self) {
        let _ = self.0.try_send(NodeEvent::Interrupted);
    }
}

/// Waits until every shard served, and says how many of them stopped already (a node
/// told to stop while it started). The node's `Shutdown` keeps the channel open, so a
/// start that every shard left is told by counting the stops, not by the channel closing.
pub fn await_start(events: &Receiver<NodeEvent>, shard_count: usize) -> Result<usize, ServerError> {
    let (mut started, mut stopped) = (0, 0);
    while started < shard_count {
        match events.recv() {
            Ok(NodeEvent::ShardStarted { .. }) => started += 1,
            Ok(NodeEvent::ShardStopped { .. }) if stopped + 1 < shard_count => stopped += 1,
            Ok(NodeEvent::ShardFailed(error)) => return Err(error),
            Ok(NodeEvent::Interrupted) => return Err(ServerError::Interrupted),
            Ok(NodeEvent::ShardStopped { .. }) | Err(_) => {
                return Err(ServerError::ShardStart {
                    shard: 0,
                    reason: "shards exited during start".into(),
                })
            }
        }
    }
    Ok(stopped)
}

/// Waits until `shard_count` more shards stopped (after a shutdown).
pub fn await_stop(events: &Receiver<NodeEvent>, shard_count: usize) -> Result<(), ServerError> {
    let mut stopped = 0;
    while stopped < shard_count {
        match events.recv() {
            Ok(NodeEvent::ShardFailed(error)) => return Err(error),
            Ok(NodeEvent::Interrupted) => return Err(ServerError::Interrupted),
            Ok(NodeEvent::ShardStarted { .. } | NodeEvent::ShardStopped { .. }) => stopped += 1,
            Err(_) => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A channel holding `events`, and the sender that keeps it open, as the node's
    /// `Shutdown` does in a running node.
    fn heard(events: Vec<NodeEvent>) -> (NodeEvents, Receiver<NodeEvent>) {
        let (sender, receiver) = NodeEvents::channel(events.len());
        for event in events {
            sender.send(event);
        }
        (sender, receiver)
    }

    fn failure() -> NodeEvent {
        NodeEvent::ShardFailed(ServerError::Thread(std::io::Error::other("no thread")))
    }

    #[test]
    fn a_start_ends_when_every_shard_serves_and_fails_once_every_shard_stopped() {
        use NodeEvent::{ShardStarted, ShardStopped};
        let (_open, started) = heard(vec![
            ShardStopped { shard: 0 },
            ShardStarted { shard: 1 },
            ShardStarted { shard: 0 },
        ]);
        assert_eq!(
            await_start(&started, 2).unwrap(),
            1,
            "shard 0 stopped while shard 1 started"
        );
        let (_open, all_stopped) = heard(vec![ShardStopped { shard: 0 }, ShardStopped { shard: 1 }]);
        let error = await_start(&all_stopped, 2).unwrap_err();
        assert!(error.to_string().contains("shards exited during start"), "{error}");
    }

    #[test]
    fn a_failure_or_an_interruption_ends_the_wait_at_once() {
        use NodeEvent::{Interrupted, ShardStarted, ShardStopped};
        let (_open, failed) = heard(vec![ShardStarted { shard: 0 }, failure()]);
        assert!(matches!(await_start(&failed, 2), Err(ServerError::Thread(_))));
        let (_open, interrupted) = heard(vec![Interrupted]);
        assert!(matches!(await_start(&interrupted, 1), Err(ServerError::Interrupted)));
        let (_open, interrupted) = heard(vec![ShardStopped { shard: 0 }, Interrupted]);
        assert!(matches!(await_stop(&interrupted, 2), Err(ServerError::Interrupted)));
        let (_open, stopped) = heard(vec![ShardStopped { shard: 1 }, ShardStopped { shard: 0 }]);
        assert!(await_stop(&stopped, 2).is_ok());
    }
}
