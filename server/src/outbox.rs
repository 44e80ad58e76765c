//! Where answers go: a connection's [`Outbox`] of encoded answers waiting to be written
//! (native frames, or Redis replies in the order their commands came), and the
//! [`Destination`] of one request's answer (a connection of this shard, or the shard that
//! forwarded the request here).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use engram_proto::{encode_message, encode_response, ErrorCode, FrameKind, ProtocolError, Response};
use futures::channel::oneshot;

use crate::resp::order::ReplyOrder;
use crate::runtime::CloseSignal;

/// Answers waiting to be written to one connection.
pub struct Outbox {
    frames: RefCell<Vec<u8>>,
    /// Requests of this connection that were submitted and not answered yet.
    pending: Cell<usize>,
    writer: RefCell<Option<Waker>>,
    map_epoch: u64,
    /// Closed when the connection ends, which wakes every task
    /// awaiting a forwarded answer for it, so they let go and the owner shard takes
    /// back what it would have handed to nobody.
    closed: CloseSignal,
    /// A Redis-protocol connection's places in line: its answers become replies, in
    /// the order of their commands (request ids are place numbers).
    replies: Option<RefCell<ReplyOrder>>,
    /// When the connection last read requests or had the last of its waiting requests
    /// answered (at first, when it opened), for `--idle-timeout-ms`.
    last_active: Cell<Instant>,
    /// Set when the last waiting request was answered; the idle sweep takes it as
    /// activity at its own time, so no answer reads the clock.
    answered_since_sweep: Cell<bool>,
}

impl Default for Outbox {
    fn default() -> Outbox {
        Outbox::new(0)
    }
}

impl Outbox {
    /// An empty outbox whose frames carry `map_epoch`.
    pub fn new(map_epoch: u64) -> Outbox {
        Outbox {
            frames: RefCell::default(),
            pending: Cell::default(),
            writer: RefCell::default(),
            map_epoch,
            closed: CloseSignal::default(),
            replies: None,
            last_active: Cell::new(Instant::now()),
            answered_since_sweep: Cell::new(false),
        }
    }

    /// Notes that the connection read requests at `at`.
    pub fn heard_from(&self, at: Instant) {
        self.last_active.set(at);
    }

    /// How long the connection has been idle at `now`: since it last read requests or
    /// had its last waiting request answered, while none waits (a connection parked on a
    /// lock or a barrier is busy, however long it waits, and the answer that ends a long
    /// wait is written before the connection can count as idle again).
    pub fn idle_for(&self, now: Instant) -> Duration {
        if self.answered_since_sweep.replace(false) {
            // Counted from this sweep rather than the answer: later, never earlier.
            self.last_active.set(now);
        }
        match self.pending.get() {
            0 => now.saturating_duration_since(self.last_active.get()),
            _ => Duration::ZERO,
        }
    }

    /// An empty outbox of a Redis-protocol connection.
    pub fn for_replies() -> Outbox {
        Outbox {
            replies: Some(RefCell::default()),
            ..Outbox::new(0)
        }
    }

    /// The reply order of a Redis-protocol connection's outbox.
    pub fn replies(&self) -> Option<std::cell::RefMut<'_, ReplyOrder>> {
        self.replies.as_ref().map(RefCell::borrow_mut)
    }

    /// Runs `write` on the queued bytes (a Redis-protocol connection writes its replies
    /// there directly).
    pub fn with_bytes<T>(&self, write: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        write(&mut self.frames.borrow_mut())
    }

    /// Queues the answer of a submitted request; `wake` when the connection's task is
    /// not the caller (an answer arriving while it waits on the socket).
    pub fn deliver(&self, request_id: u64, response: &Response, wake: bool) {
        let pending = self.pending.get().saturating_sub(1);
        self.pending.set(pending);
        if pending == 0 {
            self.answered_since_sweep.set(true);
        }
        match &self.replies {
            Some(replies) => replies
                .borrow_mut()
                .answer(request_id, response, &mut self.frames.borrow_mut()),
            None => self.push_response(request_id, response),
        }
        if wake {
            if let Some(waker) = self.writer.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// Queues a frame that answers no submitted request (a handshake reply, an answer
    /// given at once).
    pub fn push<T>(&self, kind: FrameKind, request_id: u64, message: &T)
    where
        T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<Vec<u8>, rkyv::ser::allocator::ArenaHandle<'a>, rkyv::rancor::Error>,
        >,
    {
        let mut frames = self.frames.borrow_mut();
        if let Err(error) = encode_message(kind, request_id, self.map_epoch, message, &mut frames) {
            self.push_unencodable(request_id, &error, &mut frames);
        }
    }

    /// [`Outbox::push`] for a client's answer, through the encoder that writes a read's
    /// answer without rkyv's serializer.
    pub fn push_response(&self, request_id: u64, response: &Response) {
        let mut frames = self.frames.borrow_mut();
        if let Err(error) = encode_response(request_id, self.map_epoch, response, &mut frames) {
            self.push_unencodable(request_id, &error, &mut frames);
        }
    }

    /// Only an answer larger than a frame fails to encode (a value near the limit plus
    /// framing); the client is told instead of sent a broken frame.
    fn push_unencodable(&self, request_id: u64, error: &ProtocolError, frames: &mut Vec<u8>) {
        let fallback = Response::Error(engram_proto::ErrorReply {
            code: ErrorCode::Internal.as_u16(),
            message: format!("answer could not be encoded: {error}"),
            map_epoch: self.map_epoch,
        });
        let _ = encode_message(FrameKind::Response, request_id, self.map_epoch, &fallback, frames);
    }

    /// Requests submitted and not answered yet.
    pub fn pending(&self) -> usize {
        self.pending.get()
    }

    /// Counts a request whose answer will come through [`Outbox::deliver`].
    pub fn expect_answer(&self) {
        self.pending.set(self.pending.get() + 1);
    }

    /// Bytes of answers waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.frames.borrow().len()
    }

    /// Hands the queued answers over in `spare`'s place (which must be empty), so
    /// answers arriving while they are written queue up behind them.
    pub fn swap_frames(&self, spare: &mut Vec<u8>) {
        std::mem::swap(&mut *self.frames.borrow_mut(), spare);
    }

    #[cfg(test)]
    pub(crate) fn take_frames(&self) -> Vec<u8> {
        std::mem::take(&mut *self.frames.borrow_mut())
    }

    /// Completes when there is something to write.
    pub async fn ready(&self) {
        poll_fn(|context| {
            if !self.frames.borrow().is_empty() {
                return Poll::Ready(());
            }
            *self.writer.borrow_mut() = Some(context.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The connection ended: every task awaiting [`Outbox::closed`] wakes.
    pub fn close(&self) {
        self.closed.close();
    }

    /// Completes once the connection has ended.
    pub async fn closed(&self) {
        self.closed.closed().await
    }
}

/// Where the answer of a request goes once the store has it.
pub enum Destination {
    /// A connection of this shard; gone connections simply drop the answer.
    Connection { outbox: Weak<Outbox>, request_id: u64 },
    /// A request another shard forwarded; the answer goes back over its oneshot.
    Forwarded(oneshot::Sender<Response>),
}

impl Destination {
    /// Hands the answer over; gives it back when the asker is gone.
    pub fn deliver(self, response: Response, wake: bool) -> Result<(), Response> {
        match self {
            Destination::Connection { outbox, request_id } => match outbox.upgrade() {
                Some(outbox) => {
                    outbox.deliver(request_id, &response, wake);
                    Ok(())
                }
                None => Err(response),
            },
            Destination::Forwarded(reply) => reply.send(response),
        }
    }

    /// Hands over an answer given at once. Gives it back when it was only copied (into
    /// a connection's outbox) or its asker is gone, so its buffers can serve the next
    /// read.
    pub fn deliver_immediate(self, response: Response) -> Option<Response> {
        match self {
            Destination::Connection { outbox, request_id } => {
                if let Some(outbox) = outbox.upgrade() {
                    outbox.deliver(request_id, &response, false);
                }
                Some(response)
            }
            Destination::Forwarded(reply) => reply.send(response).err(),
        }
    }

    /// Whether the answer goes to `outbox`'s connection.
    pub fn is_for(&self, outbox: &Rc<Outbox>) -> bool {
        matches!(self, Destination::Connection { outbox: parked, .. } if std::ptr::eq(parked.as_ptr(), Rc::as_ptr(outbox)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value() -> Response {
        Response::Value {
            value: b"v".to_vec(),
            version: 1,
        }
    }

    #[test]
    fn an_immediate_answer_comes_back_unless_it_was_handed_over() {
        // Copied into a live connection's outbox: queued there, and given back.
        let outbox = Rc::new(Outbox::default());
        let live = Destination::Connection {
            outbox: Rc::downgrade(&outbox),
            request_id: 1,
        };
        assert_eq!(live.deliver_immediate(value()), Some(value()));
        assert!(outbox.queued_bytes() > 0, "the answer is queued for the connection");
        // The connection is gone: given back.
        let gone = Destination::Connection {
            outbox: Rc::downgrade(&Rc::new(Outbox::default())),
            request_id: 2,
        };
        assert_eq!(gone.deliver_immediate(value()), Some(value()));
        // Moved to the forwarding shard: not given back, and received there.
        let (reply, mut answer) = oneshot::channel();
        assert_eq!(Destination::Forwarded(reply).deliver_immediate(value()), None);
        assert_eq!(answer.try_recv().unwrap(), Some(value()));
        // Its forwarding shard stopped waiting: given back.
        let (reply, answer) = oneshot::channel();
        drop(answer);
        assert_eq!(Destination::Forwarded(reply).deliver_immediate(value()), Some(value()));
    }

    #[test]
    fn a_destination_knows_its_connection() {
        let outbox = Rc::new(Outbox::default());
        let other = Rc::new(Outbox::default());
        let destination = Destination::Connection {
            outbox: Rc::downgrade(&outbox),
            request_id: 1,
        };
        assert!(destination.is_for(&outbox));
        assert!(!destination.is_for(&other));
        let (reply, _answer) = oneshot::channel();
        assert!(!Destination::Forwarded(reply).is_for(&outbox));
    }
}
