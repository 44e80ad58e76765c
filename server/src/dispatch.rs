//! Where a client's keyed request goes from the connection that read it: this shard's
//! store, another shard of this node over the mesh, or another node's shard through the
//! connection's proxy links. Its answer reaches the connection's [`Outbox`] in every
//! case. The native and the Redis-protocol connections both send their requests here.

use std::cell::OnceCell;
use std::rc::Rc;
use std::time::Instant;

use engram_proto::{Command, DataCommand, DataRequest, ErrorCode, QueueCommand, Request};
use futures::channel::oneshot;
use futures::future::Either;
use futures_lite::AsyncWriteExt;

use crate::outbox::{Destination, Outbox};
use crate::proxy::Proxies;
use crate::shard::{Forwarded, Shard, Submitted, Target};
use crate::stream::Stream;

/// How a handled request counts toward its read's duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The store answered it at once: timed with the rest of the read.
    AnsweredAtOnce,
    /// Not timed: answered without the store (a handshake, a node command, a refusal),
    /// or not yet (it waits at a shard, or went to another shard).
    Untimed,
}

/// A keyed request's place: its slot, the shard that serves it, and whom it answers.
pub struct Placed {
    pub slot: u32,
    pub target: Target,
    pub client_id: u64,
    pub request_id: u64,
}

/// What a connection lends the dispatch of one request.
pub struct Door<'a> {
    pub shard: &'a Rc<Shard>,
    pub outbox: &'a Rc<Outbox>,
    /// The session's `[namespace length][namespace]`, put in front of keys stored here.
    pub key_prefix: &'a [u8],
    /// The connection's links to other nodes, made on first need.
    pub proxies: &'a OnceCell<Proxies>,
    pub client_id: u64,
    pub namespace: &'a [u8],
}

impl Door<'_> {
    /// Applies a placed request here, or hands it to its shard. Gives the command back
    /// when it was only read (its key buffer can serve the next request).
    pub async fn dispatch(
        &self,
        placed: Placed,
        request: DataRequest,
        received: Instant,
    ) -> (Handled, Option<DataCommand>) {
        match placed.target {
            Target::Local(owner) if owner == self.shard.id() => {
                let (handled, command) = self.apply_here(placed.client_id, placed.request_id, request, received);
                (handled, Some(command))
            }
            _ => self.dispatch_elsewhere(placed, request).await,
        }
    }

    /// Applies a request whose slot this shard serves, at once: most requests on a
    /// well-routed client, so they take no future of their own.
    pub fn apply_here(
        &self,
        client_id: u64,
        request_id: u64,
        mut request: DataRequest,
        received: Instant,
    ) -> (Handled, DataCommand) {
        prefix_key(&mut request.command, self.key_prefix);
        let outbox = Rc::downgrade(self.outbox);
        let destination = Destination::Connection { outbox, request_id };
        let handled = match self.shard.submit(client_id, &request, destination, received) {
            Submitted::Answered => Handled::AnsweredAtOnce,
            Submitted::Parked => Handled::Untimed,
        };
        (handled, request.command)
    }

    /// Hands a request to another shard of this node, or to another node's shard.
    async fn dispatch_elsewhere(&self, placed: Placed, mut request: DataRequest) -> (Handled, Option<DataCommand>) {
        let Placed {
            slot,
            target,
            client_id,
            request_id,
        } = placed;
        match target {
            Target::Local(owner) => {
                prefix_key(&mut request.command, self.key_prefix);
                self.forward(owner, slot, client_id, request_id, request).await;
                (Handled::Untimed, None)
            }
            Target::Remote { routing, index } => {
                // The owner prefixes the key with the namespace the link's Hello names.
                let epoch = routing.epoch();
                let request = Request::from(request);
                self.proxies()
                    .forward(routing.address(index), request_id, epoch, &request)
                    .await;
                // The wire's `Request` cannot say it holds a data command, so this
                // match has an arm that never runs: the one place where giving the key
                // buffer back costs that, instead of an allocation per proxied request.
                let spent = match request.command {
                    Command::Data(command) => Some(command),
                    Command::Admin(_) => None,
                };
                (Handled::Untimed, spent)
            }
        }
    }

    /// This connection's proxy links, speaking for its client: same client id and
    /// namespace, this node's credentials.
    fn proxies(&self) -> &Proxies {
        self.proxies.get_or_init(|| {
            let credentials = self.shard.link_credentials();
            Proxies::new(
                self.client_id,
                self.namespace,
                credentials,
                Rc::downgrade(self.outbox),
                self.shard.tasks().clone(),
                self.shard.peer_tls().cloned(),
            )
        })
    }

    /// Hands a request to the shard that owns its slot. Sending happens here, in
    /// arrival order (waiting here if that shard's queue is full, which pushes back on
    /// the connection); the answer is awaited by a task of its own, so the connection
    /// keeps serving meanwhile.
    async fn forward(&self, owner: usize, slot: u32, client_id: u64, request_id: u64, request: DataRequest) {
        let (reply, answer) = oneshot::channel();
        let forwarded = Forwarded {
            client_id,
            slot,
            request,
            reply,
        };
        let sent = self.shard.forward(owner, forwarded).await;
        let outbox = self.outbox.clone();
        let shard = self.shard.clone();
        // A shard that is stopping starts nothing: the answer is dropped, with the
        // connection it was for.
        let _ = self.shard.spawn(async move {
            let closed = std::pin::pin!(outbox.closed());
            let response = match futures::future::select(answer, closed).await {
                Either::Left((Ok(response), _)) if sent => response,
                Either::Left(_) => shard.error(ErrorCode::ShuttingDown, format!("shard {owner} is not answering")),
                // The connection is gone: dropping `answer` tells the owner shard.
                Either::Right(_) => return,
            };
            outbox.deliver(request_id, &response, true);
        });
    }
}

/// Writes everything queued in `outbox` to `stream`, through `spare` (the outbox's
/// previous buffer, swapped in so answers arriving meanwhile queue up behind), and lets
/// go of a spare a burst grew past `spare_bytes_max`, so it does not pin memory for the
/// life of an idle connection.
pub async fn write_out(
    outbox: &Outbox,
    stream: &mut Stream,
    spare: &mut Vec<u8>,
    spare_bytes_max: usize,
) -> std::io::Result<()> {
    while outbox.queued_bytes() > 0 {
        outbox.swap_frames(spare);
        let written = stream.write_all(spare).await;
        spare.clear();
        written?;
    }
    // TLS keeps what the socket did not take yet; plain TCP has nothing to flush.
    stream.flush().await?;
    if spare.capacity() > spare_bytes_max {
        *spare = Vec::new();
    }
    Ok(())
}

/// What every connection does as it ends, after its last reply: closes its socket and
/// outbox (ending the tasks awaiting answers for it), closes its proxy links (so their
/// owners withdraw what they parked for it), and leaves the shard's books.
pub async fn end_connection(shard: &Shard, stream: &mut Stream, outbox: &Rc<Outbox>, proxies: &mut OnceCell<Proxies>) {
    let _ = stream.close().await;
    outbox.close();
    drop(proxies.take());
    shard.forget_connection(outbox);
}

/// Namespaces become part of the stored key: `[namespace length][namespace][key]`.
/// The prefix goes in front in place: a key built in a recycled buffer usually has the
/// room already.
pub fn prefix_key(command: &mut DataCommand, prefix: &[u8]) {
    if prefix.is_empty() {
        return;
    }
    prefix_one(command.key_mut(), prefix);
    if let DataCommand::Queue(QueueCommand::PopAny { more_keys, .. }) = command {
        for key in more_keys {
            prefix_one(key, prefix);
        }
    }
}

fn prefix_one(key: &mut Vec<u8>, prefix: &[u8]) {
    let key_bytes = key.len();
    key.reserve_exact(prefix.len());
    key.resize(key_bytes + prefix.len(), 0);
    key.copy_within(..key_bytes, prefix.len());
    key[..prefix.len()].copy_from_slice(prefix);
}
