//! The seam between Engram and its async runtime, glommio (thread-per-core executors on
//! io_uring): the one module that names it. Everything else starts executors, spawns,
//! sleeps, yields, talks to the node's other shards and holds sockets through what this
//! module gives, so a change of runtime, or of how Engram uses it, happens here.

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::time::Duration;

use glommio::channels::channel_mesh::{self, Full};
use glommio::{ExecutorJoinHandle, GlommioError, LocalExecutorBuilder, Placement, ResourceType};

/// Memory the runtime registers with io_uring per shard for its DMA buffers. Engram
/// does no file I/O, so this stays small, which keeps the locked-memory need within the
/// common 8 MiB default even for several shards.
pub const SHARD_IO_MEMORY_BYTES: usize = 512 * 1024;

/// A socket served by a shard's ring. Reads are readiness-based: a read dropped before
/// it completes has taken no bytes, so a read may lose a race without losing data.
pub type TcpStream = glommio::net::TcpStream;

/// A listening socket served by a shard's ring. Its accept sets `O_NONBLOCK` around a
/// direct `accept(2)` and restores the old flags afterwards, so a listener that several
/// shards share (duplicates of one open file description) must be non-blocking already,
/// or two shards can race into a blocking `accept(2)`.
pub type TcpListener = glommio::net::TcpListener;

/// Takes over a listener bound on a plain thread, for the shard whose thread calls this.
pub fn adopt_listener(listener: StdListener) -> TcpListener {
    // SAFETY: the fd comes from a listening socket this thread now owns alone
    // (`into_raw_fd` gives up the std handle).
    unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

/// Ends every exchange on the socket behind `fd` at once: a listener refuses further
/// connections, a connection's reads see its end and its writes fail. The ring keeps a
/// socket it has an operation pending on open past the close of its descriptor (until
/// the operation is cancelled, at the latest when the executor's ring is torn down, which
/// the kernel finishes on its own time), so a shard that stops shuts its sockets down
/// first: their peers and their ports know at once. The descriptor stays open; its owner
/// closes it. `fd` must be open: held by something that has not closed it yet.
pub fn shut_down_socket(fd: RawFd) {
    // SAFETY: shutdown(2) on an open descriptor touches no memory; on one that is not a
    // socket it fails, harmlessly.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Why an executor could not start, or ended abnormally.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(String);

/// An executor thread of its own, pinned to a CPU.
pub struct Executor(ExecutorJoinHandle<()>);

impl Executor {
    /// Starts an executor named `name`, pinned to `cpu`, that runs the future `start`
    /// makes until it completes. With a `spin` above zero the executor polls that long
    /// for work before it parks.
    pub fn spawn<Start, Run>(name: &str, cpu: usize, spin: Duration, start: Start) -> Result<Executor, RuntimeError>
    where
        Start: FnOnce() -> Run + Send + 'static,
        Run: Future<Output = ()> + 'static,
    {
        LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(name)
            .io_memory(SHARD_IO_MEMORY_BYTES)
            .spin_before_park(spin)
            .spawn(move || {
                // A spinning shard's connections poll their sockets with reads of their
                // own (`--spin-us`), which a receive armed through the ring would race.
                glommio::net::set_receive_through_ring(spin.is_zero());
                start()
            })
            .map(Executor)
            .map_err(|error| RuntimeError(error.to_string()))
    }

    /// Waits for the executor's thread to end.
    pub fn join(self) -> Result<(), RuntimeError> {
        self.0.join().map_err(|error| RuntimeError(error.to_string()))
    }
}

/// Runs `future` on the calling thread's executor alongside its other tasks; nobody
/// awaits it, and it ends with the executor at the latest.
pub fn spawn_detached(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// The tasks of one shard, so that the shard's end can outwait them. A task still
/// waiting when its executor ends is never dropped (it and the pending operation of the
/// socket it waits on hold each other), so it would keep its sockets open, and the shard
/// it holds, for the life of the process. Clones share the tasks.
#[derive(Clone)]
pub struct Tasks(glommio::sync::Gate);

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks(glommio::sync::Gate::new())
    }
}

/// One of a shard's [`Tasks`], which its shard may cancel.
pub struct TaskHandle(glommio::task::JoinHandle<()>);

impl Tasks {
    /// Runs `future` on the calling thread's executor as one of these tasks; `None`, and
    /// `future` dropped unrun, once [`Tasks::ended`] was called.
    pub fn spawn(&self, future: impl Future<Output = ()> + 'static) -> Option<TaskHandle> {
        self.0.spawn(future).ok().map(|task| TaskHandle(task.detach()))
    }

    /// Completes once every task ended (ran to its end, or was cancelled); no task
    /// starts afterwards.
    pub async fn ended(&self) {
        // Only a second call fails, finding the tasks ended already.
        let _ = self.0.close().await;
    }
}

impl TaskHandle {
    /// Drops the task's future where it waits, the next time the executor runs it; a
    /// task that ended already stays as it is.
    pub fn cancel(&self) {
        self.0.cancel();
    }
}

/// Completes after `duration`.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await
}

/// Lets the executor's other tasks run when this one has had its share of the core.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await
}

/// The bounded queues between every pair of a node's shards, before the shards joined.
pub type MeshBuilder<T> = channel_mesh::MeshBuilder<T, Full>;
/// A shard's ends of the queues to every other shard.
pub type MeshSenders<T> = channel_mesh::Senders<T>;
/// A shard's ends of the queues from every other shard.
pub type MeshReceivers<T> = channel_mesh::Receivers<T>;

/// A mesh of `shards` shards whose queues hold `queue_depth` messages each.
pub fn full_mesh<T: Send + 'static>(shards: usize, queue_depth: usize) -> MeshBuilder<T> {
    MeshBuilder::full(shards, queue_depth)
}

/// Sends `message` to shard `peer`, waiting while its queue is full, which pushes back
/// on the sender; `false` when the peer no longer takes messages.
pub async fn send_to_peer<T: Send>(senders: &MeshSenders<T>, peer: usize, message: T) -> bool {
    match senders.try_send_to(peer, message) {
        Ok(()) => true,
        Err(GlommioError::WouldBlock(ResourceType::Channel(message))) => senders.send_to(peer, message).await.is_ok(),
        Err(_) => false,
    }
}

/// A signal any number of tasks of one executor wait for, given once.
pub struct CloseSignal(glommio::sync::Semaphore);

impl Default for CloseSignal {
    fn default() -> CloseSignal {
        // No permit is ever given: closing is what wakes the waiters.
        CloseSignal(glommio::sync::Semaphore::new(0))
    }
}

impl CloseSignal {
    pub fn close(&self) {
        self.0.close();
    }

    /// Completes once [`CloseSignal::close`] was called.
    pub async fn closed(&self) {
        let _ = self.0.acquire(1).await;
    }
}

/// Runs `future` to completion on an executor of the calling thread, not pinned.
#[cfg(test)]
pub(crate) fn run_unpinned(future: impl Future<Output = ()>) {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(SHARD_IO_MEMORY_BYTES)
        .make()
        .expect("executor")
        .run(future);
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    #[test]
    fn a_close_signal_wakes_every_waiter_and_stays_given() {
        run_unpinned(async {
            let signal = Rc::new(CloseSignal::default());
            let woken = Rc::new(Cell::new(0));
            for _ in 0..3 {
                let (signal, woken) = (signal.clone(), woken.clone());
                spawn_detached(async move {
                    signal.closed().await;
                    woken.set(woken.get() + 1);
                });
            }
            sleep(Duration::from_millis(1)).await;
            assert_eq!(woken.get(), 0, "nobody wakes before the close");
            signal.close();
            while woken.get() < 3 {
                sleep(Duration::from_millis(1)).await;
            }
            signal.closed().await;
        });
    }

    #[test]
    fn a_message_to_a_full_queue_waits_for_room() {
        let mesh = full_mesh::<u32>(2, 1);
        let receiving_mesh = mesh.clone();
        let receiver = std::thread::spawn(move || {
            let mut got = Vec::new();
            run_unpinned(async {
                let (_senders, mut receivers) = receiving_mesh.join().await.expect("joined");
                let (_, queue) = receivers.streams().pop().expect("a queue from the other shard");
                // The sender fills the one-message queue and waits meanwhile.
                sleep(Duration::from_millis(20)).await;
                for _ in 0..3 {
                    got.extend(queue.recv().await);
                }
            });
            got
        });
        run_unpinned(async move {
            let (senders, _receivers) = mesh.join().await.expect("joined");
            let peer = 1 - senders.peer_id();
            for message in 1..=3 {
                assert!(send_to_peer(&senders, peer, message).await, "message {message} sent");
            }
            assert!(
                !send_to_peer(&senders, senders.peer_id(), 4).await,
                "no queue to itself"
            );
        });
        assert_eq!(receiver.join().expect("receiver"), [1, 2, 3]);
    }
}
