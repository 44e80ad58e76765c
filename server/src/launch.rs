//! A shard's thread from start to stop: joins the node's shard mesh, builds the
//! [`Shard`], serves its peers, accepts connections on the shard's own port and on the
//! front port, and keeps the shard's time until the node shuts down. It starts the
//! connections, so it sits above both `shard` and `connection`.

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::connection;
use crate::events::{NodeEvent, NodeEvents};
use crate::runtime::{self, MeshBuilder, TcpListener};
use crate::shard::{Forwarded, Shard, ShardSetup};

/// How long a shard waits before accepting again after an accept failed.
pub const ACCEPT_RETRY_MS: u64 = 10;

/// Everything a shard thread needs to start; all of it is `Send`.
pub struct ShardLaunch {
    pub setup: ShardSetup,
    pub shard_listener: StdListener,
    pub front_listener: StdListener,
    pub mesh: MeshBuilder<Forwarded>,
    pub shutdown: Arc<AtomicBool>,
}

/// The shard's main future: serves until `shutdown` is set, then returns, which drops
/// its listeners and connections.
pub async fn run(launch: ShardLaunch, events: NodeEvents) {
    let shard_id = launch.setup.shard_id;
    let (peers, receivers) = match launch.mesh.join().await {
        Ok(mesh) => mesh,
        Err(error) => {
            tracing::error!(shard = shard_id, %error, "could not join the shard mesh");
            return;
        }
    };
    let shard = Rc::new(Shard::new(launch.setup, peers));
    shard.serve_peers(receivers);
    let shard_listener = runtime::adopt_listener(launch.shard_listener);
    let front_listener = runtime::adopt_listener(launch.front_listener);
    runtime::spawn_detached(accept_loop(shard.clone(), shard_listener, false));
    runtime::spawn_detached(accept_loop(shard.clone(), front_listener, true));
    events.send(NodeEvent::ShardStarted { shard: shard_id });
    shard.keep_time(&launch.shutdown).await;
    tracing::debug!(shard = shard_id, "shard stopped");
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, front: bool) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                runtime::spawn_detached(connection::serve(shard.clone(), stream, front));
            }
            Err(error) => {
                // Out of file descriptors and the like: keep serving existing
                // connections and try again shortly rather than spinning.
                tracing::warn!(shard = shard.id(), %error, "accept failed");
                runtime::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}
