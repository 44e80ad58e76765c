//! One shard: a glommio executor pinned to a core, owning a [`Store`] and serving its
//! own port, its share of front-port connections, and requests forwarded by peers.
//!
//! A shard's data is touched only by its own thread. Other shards reach it through the
//! bounded channel mesh, so a full queue slows the sender down instead of growing.

use std::cell::{Cell, RefCell};
use std::net::TcpListener as StdListener;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use engram_proto::{ErrorCode, ErrorReply, Request, Response, SlotMap};
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::net::TcpListener;

use crate::connection;
use crate::stats::NodeStats;
use crate::store::Store;

/// Depth of each shard-to-shard request queue.
pub const FORWARD_QUEUE_DEPTH: usize = 1024;
/// How often a shard expires keys and publishes its figures.
pub const MAINTENANCE_INTERVAL_MS: u64 = 100;
/// Keys one maintenance step may expire before it yields to requests.
pub const EXPIRE_KEYS_PER_STEP_MAX: usize = 2_000;

/// A request handed to the shard that owns its slot.
pub struct Forwarded {
    pub client_id: u64,
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// What every shard shares with its connections.
pub struct Shard {
    pub shard_id: usize,
    pub store: RefCell<Store>,
    pub map: Rc<SlotMap>,
    /// Slot to index of the owning shard in `map.shards`.
    pub owner_table: Rc<Vec<u32>>,
    pub node: Arc<NodeStats>,
    pub auth_token: Option<Vec<u8>>,
    pub peers: Senders<Forwarded>,
    operations: Cell<u64>,
}

impl Shard {
    pub fn now_ms(&self) -> u64 {
        self.node.started.elapsed().as_millis() as u64
    }

    pub fn map_epoch(&self) -> u64 {
        self.map.epoch
    }

    pub fn count_operations(&self, count: u64) {
        self.operations.set(self.operations.get() + count);
    }

    /// Makes the shard's figures visible to INFO on any shard.
    pub fn publish_stats(&self) {
        let own = &self.node.shards[self.shard_id];
        let stats = self.store.borrow().stats();
        own.keys.store(stats.keys, Relaxed);
        own.memory_used_bytes.store(stats.memory_used_bytes, Relaxed);
        own.memory_limit_bytes.store(stats.memory_limit_bytes, Relaxed);
        own.operations_total.store(self.operations.get(), Relaxed);
    }

    /// Applies a request whose slot this shard owns.
    pub fn apply(&self, client_id: u64, request: &Request) -> Response {
        let now_ms = self.now_ms();
        let mut response = self.store.borrow_mut().apply(client_id, request, now_ms);
        if let Response::Error(reply) = &mut response {
            reply.map_epoch = self.map.epoch;
        }
        response
    }

    /// Hands a request to the shard that owns it and waits for the answer.
    pub async fn forward(&self, owner: usize, client_id: u64, request: Request) -> Response {
        let (reply, answer) = oneshot::channel();
        if self
            .peers
            .send_to(
                owner,
                Forwarded {
                    client_id,
                    request,
                    reply,
                },
            )
            .await
            .is_err()
        {
            return self.error(
                ErrorCode::ShuttingDown,
                format!("shard {owner} is not accepting requests"),
            );
        }
        match answer.await {
            Ok(response) => response,
            Err(_) => self.error(
                ErrorCode::ShuttingDown,
                format!("shard {owner} stopped before answering"),
            ),
        }
    }

    pub fn error(&self, code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error(ErrorReply {
            code: code.as_u16(),
            message: message.into(),
            map_epoch: self.map.epoch,
        })
    }
}

/// Everything a shard thread needs to start; all of it is `Send`.
pub struct ShardLaunch {
    pub shard_id: usize,
    pub shard_listener: StdListener,
    pub front_listener: StdListener,
    pub map: SlotMap,
    pub node: Arc<NodeStats>,
    pub memory_limit_bytes: u64,
    pub auth_token: Option<Vec<u8>>,
    pub hash_seed: u64,
    pub mesh: MeshBuilder<Forwarded, glommio::channels::channel_mesh::Full>,
    pub shutdown: Arc<AtomicBool>,
}

/// The shard's main future: serves until `shutdown` is set, then returns, which drops
/// its listeners and connections.
pub async fn run(launch: ShardLaunch, ready: std::sync::mpsc::SyncSender<Result<usize, crate::node::ServerError>>) {
    let (peers, receivers) = match launch.mesh.join().await {
        Ok(mesh) => mesh,
        Err(error) => {
            tracing::error!(shard = launch.shard_id, %error, "could not join the shard mesh");
            return;
        }
    };
    let owner_table = Rc::new(launch.map.owner_table());
    let shard = Rc::new(Shard {
        shard_id: launch.shard_id,
        store: RefCell::new(Store::new(launch.memory_limit_bytes, launch.hash_seed)),
        map: Rc::new(launch.map),
        owner_table,
        node: launch.node,
        auth_token: launch.auth_token,
        peers,
        operations: Cell::new(0),
    });
    shard.publish_stats();
    serve_peers(&shard, receivers);
    // SAFETY: each fd comes from a listening socket this thread now owns alone
    // (`into_raw_fd` gives up the std handle).
    let shard_listener = unsafe { TcpListener::from_raw_fd(launch.shard_listener.into_raw_fd()) };
    let front_listener = unsafe { TcpListener::from_raw_fd(launch.front_listener.into_raw_fd()) };
    glommio::spawn_local(accept_loop(shard.clone(), shard_listener, false)).detach();
    glommio::spawn_local(accept_loop(shard.clone(), front_listener, true)).detach();
    let _ = ready.send(Ok(shard.shard_id));
    maintain(&shard, &launch.shutdown).await;
    tracing::debug!(shard = shard.shard_id, "shard stopped");
}

fn serve_peers(shard: &Rc<Shard>, mut receivers: Receivers<Forwarded>) {
    for (_, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(forwarded) = receiver.recv().await {
                let response = shard.apply(forwarded.client_id, &forwarded.request);
                shard.count_operations(1);
                // The asker may have gone (connection closed); its answer is moot then.
                let _ = forwarded.reply.send(response);
            }
        })
        .detach();
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, front: bool) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(connection::serve(shard.clone(), stream, front)).detach();
            }
            Err(error) => {
                // Out of file descriptors and the like: keep serving existing
                // connections and try again shortly rather than spinning.
                tracing::warn!(shard = shard.shard_id, %error, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn maintain(shard: &Rc<Shard>, shutdown: &AtomicBool) {
    while !shutdown.load(Relaxed) {
        glommio::timer::sleep(Duration::from_millis(MAINTENANCE_INTERVAL_MS)).await;
        loop {
            let now_ms = shard.now_ms();
            let removed = shard.store.borrow_mut().expire_due(now_ms, EXPIRE_KEYS_PER_STEP_MAX);
            if removed < EXPIRE_KEYS_PER_STEP_MAX {
                break;
            }
            glommio::yield_if_needed().await;
        }
        shard.publish_stats();
    }
}
