//! A connection's outgoing frames. The calling task writes its frame to the socket
//! itself when nothing else is being written (a non-blocking write, no task hop); when
//! the socket is busy or takes only part of a frame, the rest queues for the
//! connection's writer task, which coalesces everything queued into few writes.
//!
//! The queue holds only frames whose requests hold an in-flight place on the
//! connection (`IN_FLIGHT_REQUESTS_PER_CONNECTION_MAX`), so it is bounded by that.
//!
//! Under TLS every frame goes through the writer task: encryption needs the stream
//! itself, not a shared socket, and what rustls holds back must be flushed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;

use crate::error::ConnectionError;
use crate::limits::WRITE_BATCH_BYTES_MAX;
use crate::pending::PendingTable;

pub struct Outbound {
    stream: WriteSide,
    state: Mutex<State>,
    writer_wanted: Notify,
}

#[derive(Default)]
struct State {
    /// Whole frames, or the unwritten rest of one, oldest first.
    queue: VecDeque<Vec<u8>>,
    /// A task (a caller writing inline, or the writer task) owns the socket's write
    /// side. Whenever `queue` is not empty this is true, so the queue always has a
    /// task that will drain it.
    writing: bool,
    /// The socket failed; nothing more is written.
    failed: bool,
}

/// The connection's write side.
pub enum WriteSide {
    /// A socket any task may write to without waiting.
    Plain(OwnedWriteHalf),
    /// TLS, written by the writer task alone (the lock is never contended).
    Tls(tokio::sync::Mutex<WriteHalf<TlsStream<TcpStream>>>),
}

impl Outbound {
    pub fn new(stream: WriteSide) -> Outbound {
        Outbound {
            stream,
            state: Mutex::default(),
            writer_wanted: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent (every change is
        // a single push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `frame` without waiting: written now if the socket is free, queued for the
    /// writer task otherwise. Synchronous, so a cancelled caller leaves either nothing
    /// or the whole frame on its way. Fails once the socket has failed.
    pub fn send(&self, frame: Vec<u8>, pending: &PendingTable) -> Result<(), ConnectionError> {
        let socket = {
            let mut state = self.state();
            if state.failed {
                return Err(pending.failure().unwrap_or(ConnectionError::Closed));
            }
            let WriteSide::Plain(socket) = &self.stream else {
                state.queue.push_back(frame);
                if !std::mem::replace(&mut state.writing, true) {
                    drop(state);
                    self.writer_wanted.notify_one();
                }
                return Ok(());
            };
            if state.writing {
                state.queue.push_back(frame);
                return Ok(());
            }
            state.writing = true;
            socket
        };
        let written = match socket.try_write(&frame) {
            Ok(written) => written,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(error) => {
                let failure = ConnectionError::from(error);
                self.fail(pending, failure.clone());
                return Err(failure);
            }
        };
        let mut state = self.state();
        if written < frame.len() {
            let mut rest = frame;
            rest.drain(..written);
            state.queue.push_front(rest);
        }
        if state.queue.is_empty() {
            state.writing = false;
        } else {
            // Frames queued behind this write, or its own rest: the writer task takes
            // over the write side (`writing` stays true for it).
            drop(state);
            self.writer_wanted.notify_one();
        }
        Ok(())
    }

    fn fail(&self, pending: &PendingTable, failure: ConnectionError) {
        let mut state = self.state();
        state.failed = true;
        state.queue.clear();
        drop(state);
        pending.fail_all(failure);
    }

    /// Takes queued frames, up to about `WRITE_BATCH_BYTES_MAX`, into `batch`; `false`
    /// (and the write side released) when nothing is queued.
    fn take_batch(&self, batch: &mut Vec<u8>) -> bool {
        let mut state = self.state();
        batch.clear();
        while batch.len() < WRITE_BATCH_BYTES_MAX {
            let Some(frame) = state.queue.pop_front() else { break };
            if batch.is_empty() && state.queue.is_empty() {
                // A lone frame: take its buffer rather than copying it.
                *batch = frame;
                break;
            }
            batch.extend_from_slice(&frame);
        }
        if batch.is_empty() {
            state.writing = false;
        }
        !batch.is_empty()
    }

    async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        let socket = match &self.stream {
            WriteSide::Plain(socket) => socket,
            WriteSide::Tls(stream) => {
                let mut stream = stream.lock().await;
                stream.write_all(bytes).await?;
                return stream.flush().await;
            }
        };
        while !bytes.is_empty() {
            socket.writable().await?;
            match socket.try_write(bytes) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => bytes = &bytes[written..],
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The connection's writer task: whenever a caller hands over the write side, writes
/// everything queued, coalesced, until the queue is empty.
pub async fn write_queued(outbound: Arc<Outbound>, pending: Arc<PendingTable>) {
    let mut batch = Vec::new();
    loop {
        outbound.writer_wanted.notified().await;
        while outbound.take_batch(&mut batch) {
            if let Err(error) = outbound.write_all(&batch).await {
                outbound.fail(&pending, error.into());
                return;
            }
            // Keep one batch's worth, not the largest burst ever seen.
            if batch.capacity() > 2 * WRITE_BATCH_BYTES_MAX {
                batch = Vec::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    const FRAME_BYTES: usize = 10_000;

    /// A frame whose every 4-byte word is its index, so the reader can tell frames
    /// apart and see one cut or interleaved with another.
    fn frame(index: u32) -> Vec<u8> {
        index.to_le_bytes().iter().copied().cycle().take(FRAME_BYTES).collect()
    }

    async fn connected() -> (Arc<Outbound>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read_half, write_half) = client.into_split();
        // The read half may go: the write half alone keeps the socket open for writing.
        (Arc::new(Outbound::new(WriteSide::Plain(write_half))), server)
    }

    /// Frames sent by several tasks while the peer is not reading (so writes are cut
    /// short and frames queue behind them) all arrive, each whole, none twice, and each
    /// task's in the order it sent them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frames_from_many_callers_arrive_whole_once_each_when_the_socket_is_full() {
        let (outbound, mut server) = connected().await;
        let pending = Arc::new(PendingTable::default());
        tokio::spawn(write_queued(Arc::clone(&outbound), Arc::clone(&pending)));
        let tasks_count = 4u32;
        let frames_per_task = 500u32;
        let mut senders = Vec::new();
        for task in 0..tasks_count {
            let outbound = Arc::clone(&outbound);
            let pending = Arc::clone(&pending);
            senders.push(tokio::spawn(async move {
                for sequence in 0..frames_per_task {
                    outbound
                        .send(frame(task * frames_per_task + sequence), &pending)
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            }));
        }
        for sender in senders {
            sender.await.unwrap();
        }
        // 20 MB were sent into a socket nobody read: far more than its buffers hold, so
        // most of it waited in the queue.
        let total_frames = (tasks_count * frames_per_task) as usize;
        let mut received = vec![0u8; total_frames * FRAME_BYTES];
        server.read_exact(&mut received).await.unwrap();
        let mut seen = vec![false; total_frames];
        let mut next_sequence = vec![0u32; tasks_count as usize];
        for chunk in received.chunks(FRAME_BYTES) {
            let index = u32::from_le_bytes(chunk[..4].try_into().unwrap());
            assert_eq!(chunk, frame(index).as_slice(), "frame {index} arrived cut or mixed");
            assert!(!seen[index as usize], "frame {index} arrived twice");
            seen[index as usize] = true;
            let (task, sequence) = ((index / frames_per_task) as usize, index % frames_per_task);
            assert_eq!(
                sequence, next_sequence[task],
                "task {task}'s frames arrived out of order"
            );
            next_sequence[task] += 1;
        }
        assert!(seen.iter().all(|&arrived| arrived));
        assert!(
            !outbound.state().writing,
            "the write side is released once the queue is empty"
        );
        assert!(outbound.state().queue.is_empty());
    }

    #[tokio::test]
    async fn a_frame_on_a_free_socket_is_written_by_its_caller() {
        let (outbound, mut server) = connected().await;
        let pending = PendingTable::default();
        // No writer task runs: the frame can only arrive through the caller's own write.
        outbound.send(frame(7), &pending).unwrap();
        let mut received = vec![0u8; FRAME_BYTES];
        server.read_exact(&mut received).await.unwrap();
        assert_eq!(received, frame(7));
        assert!(!outbound.state().writing);
    }

    #[tokio::test]
    async fn once_the_socket_fails_sends_fail_and_so_do_the_waiting_calls() {
        let (outbound, server) = connected().await;
        let pending = Arc::new(PendingTable::default());
        tokio::spawn(write_queued(Arc::clone(&outbound), Arc::clone(&pending)));
        drop(server);
        // The first writes may still be taken by the kernel; a reset peer fails a later one.
        let mut failure = None;
        for index in 0..10_000 {
            if let Err(error) = outbound.send(frame(index), &pending) {
                failure = Some(error);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(failure.is_some(), "writing to a closed peer kept succeeding");
        assert!(pending.has_failed());
        assert!(outbound.send(frame(0), &pending).is_err());
    }
}
