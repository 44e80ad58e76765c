//! How a node is told to stop: a [`Shutdown`] its owner triggers from any thread. Shards,
//! the heartbeat and a joining node look at it; engramd's signal thread triggers it on the
//! first SIGINT or SIGTERM, and interrupts the node's wait on the second. No runtime is
//! involved, so a test stops an in-process node with a plain call.
//!
//! Each node watches a child of the signal it was given, which the node triggers alone
//! when its start fails or its handle is dropped: one signal given to several nodes stops
//! them all, and one node stopping on its own leaves the others serving.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::events::NodeEvents;

/// Tells one or more nodes to stop. Clones share the signal. Each node started with it
/// leaves a few words here (its own signal and its event channel's sender) for as long as
/// the signal lives.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<State>);

#[derive(Default)]
struct State {
    triggered: AtomicBool,
    links: Mutex<Links>,
}

/// Who else hears this signal.
#[derive(Default)]
struct Links {
    /// Whether an interruption came, for listeners that come later.
    interrupted: bool,
    /// The event channels of the nodes waiting on this signal, told of an interruption.
    listeners: Vec<NodeEvents>,
    /// Signals this one triggers and interrupts too: one per node started with it.
    children: Vec<Shutdown>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks the nodes to stop: each shard stops accepting and ends, dropping its
    /// connections, within one maintenance interval. Returns at once; the node's
    /// [`RunningNode::wait`](crate::node::RunningNode::wait) says when it stopped.
    pub fn trigger(&self) {
        if !self.0.triggered.swap(true, Relaxed) {
            for child in &self.lock_links().children {
                child.trigger();
            }
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.0.triggered.load(Relaxed)
    }

    /// Ends the nodes' waits at once with `ServerError::Interrupted`, without waiting for
    /// their shards: engramd's second signal, after which the process exits.
    pub(crate) fn interrupt(&self) {
        let mut links = self.lock_links();
        links.interrupted = true;
        for events in &links.listeners {
            events.interrupt();
        }
        for child in &links.children {
            child.interrupt();
        }
    }

    /// Makes `events` hear an interruption, also one that came before.
    pub(crate) fn listen(&self, events: NodeEvents) {
        let mut links = self.lock_links();
        if links.interrupted {
            events.interrupt();
        }
        links.listeners.push(events);
    }

    /// A signal triggered and interrupted with this one (at once when this one already
    /// was), which can also be triggered alone.
    pub(crate) fn child(&self) -> Shutdown {
        let child = Shutdown::new();
        {
            let mut links = self.lock_links();
            if links.interrupted {
                child.interrupt();
            }
            links.children.push(child.clone());
        }
        // After the push: a trigger that set the flag before it either finds the child in
        // the list or is seen here.
        if self.is_triggered() {
            child.trigger();
        }
        child
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, Links> {
        // The lock guards flags and lists that no holder leaves half-changed.
        self.0.links.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NodeEvent;

    #[test]
    fn clones_share_the_trigger() {
        let shutdown = Shutdown::new();
        let shard_view = shutdown.clone();
        assert!(!shard_view.is_triggered());
        shutdown.trigger();
        assert!(shard_view.is_triggered());
    }

    #[test]
    fn an_interruption_reaches_listeners_before_and_after_it() {
        let shutdown = Shutdown::new();
        let (early, early_heard) = NodeEvents::channel(1);
        shutdown.listen(early);
        shutdown.interrupt();
        let (late, late_heard) = NodeEvents::channel(1);
        shutdown.listen(late);
        assert!(matches!(early_heard.try_recv(), Ok(NodeEvent::Interrupted)));
        assert!(matches!(late_heard.try_recv(), Ok(NodeEvent::Interrupted)));
        assert!(!shutdown.is_triggered(), "an interruption is not a request to stop");
    }

    #[test]
    fn a_child_follows_its_parent_but_stops_alone() {
        let parent = Shutdown::new();
        let (first, second) = (parent.child(), parent.child());
        first.trigger();
        assert!(first.is_triggered());
        assert!(!second.is_triggered() && !parent.is_triggered(), "a child stops alone");
        let (heard, hearing) = NodeEvents::channel(1);
        second.listen(heard);
        parent.interrupt();
        assert!(matches!(hearing.try_recv(), Ok(NodeEvent::Interrupted)));
        parent.trigger();
        assert!(second.is_triggered());
        assert!(
            parent.child().is_triggered(),
            "a child of a triggered signal starts triggered"
        );
    }
}
