//! The client's connections, one per server address, opened on first use and reopened
//! after a failure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;

use crate::connection::{Connection, Handshake};
use crate::error::Error;

pub struct Pool {
    handshake: Handshake,
    runtime: Handle,
    /// Bounded by the addresses of the current slot map plus the seed: entries for
    /// addresses that left the map are dropped by [`Pool::retain`].
    slots: Mutex<HashMap<String, Arc<Slot>, foldhash::fast::RandomState>>,
}

#[derive(Default)]
struct Slot {
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while connecting, so callers racing for a dead connection open one, not many.
    opening: tokio::sync::Mutex<()>,
}

impl Slot {
    fn usable(&self) -> Option<Arc<Connection>> {
        lock(&self.current)
            .as_ref()
            .filter(|connection| connection.is_usable())
            .cloned()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single read or assignment, so a poisoned lock
    // still holds a consistent value.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    pub fn new(handshake: Handshake, runtime: Handle) -> Pool {
        Pool {
            handshake,
            runtime,
            slots: Mutex::new(HashMap::default()),
        }
    }

    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// The usable connection to `address`, if one is open: [`Pool::get`]'s common case,
    /// without a future to wrap in a timeout, and without allocating a key.
    pub fn open_connection(&self, address: &str) -> Option<Arc<Connection>> {
        let slot = lock(&self.slots).get(address).cloned()?;
        slot.usable()
    }

    /// A usable connection to `address`, opening one if needed.
    pub async fn get(&self, address: &str) -> Result<Arc<Connection>, Error> {
        if let Some(connection) = self.open_connection(address) {
            return Ok(connection);
        }
        let slot = Arc::clone(lock(&self.slots).entry(address.to_string()).or_default());
        let _opening = slot.opening.lock().await;
        if let Some(connection) = slot.usable() {
            return Ok(connection);
        }
        let connection = Connection::open(address, &self.handshake, &self.runtime).await?;
        *lock(&slot.current) = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// Forgets the connections to addresses for which `keep` is false. Calls in flight
    /// on them finish; the connections close when the last one does.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.slots).retain(|address, _| keep(address));
    }
}
