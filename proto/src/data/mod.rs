//! The data family: what a client asks of the objects it shares. One enum per kind of
//! object, each owning, in one place, which key it addresses, whether it mutates (and
//! so is deduplicated by operation id), how long it may wait at the shard, and its name
//! in logs and metrics.
//!
//! Compatibility rule, as for every payload: variants and fields are only ever
//! appended, because rkyv encodes variants by position.
//!
//! - [`bytes`], [`counter`], [`lock`], [`semaphore`], [`barrier`], [`latch`],
//!   [`future`], [`map`], [`queue`]: one object each.
//! - [`key`]: what any key answers, whatever it holds (its kind, its expiry), and the
//!   listing and counting of keys.
//! - [`glob`]: the glob patterns a key listing filters names with.

pub mod barrier;
pub mod bytes;
pub mod counter;
pub mod future;
pub mod glob;
pub mod key;
pub mod latch;
pub mod lock;
pub mod map;
pub mod queue;
pub mod semaphore;

use rkyv::{Archive, Deserialize, Serialize};

use crate::rights::Right;

pub use barrier::{ArchivedBarrierCommand, BarrierCommand};
pub use bytes::{ArchivedBytesCommand, ArchivedSetCondition, BytesCommand, SetCondition};
pub use counter::{ArchivedCounterCommand, CounterCommand};
pub use future::{ArchivedFutureCommand, FutureCommand};
pub use glob::glob_matches;
pub use key::{
    cluster_scan_cursor, split_cluster_scan_cursor, ArchivedKeyCommand, ExpireCondition, KeyCommand, ObjectKind,
    SHARD_SCAN_CURSOR_BITS,
};
pub use latch::{ArchivedLatchCommand, LatchCommand};
pub use lock::{ArchivedLockCommand, LockCommand};
pub use map::{ArchivedMapCommand, MapCommand};
pub use queue::{ArchivedQueueCommand, ArchivedQueueEnd, QueueCommand, QueueEnd};
pub use semaphore::{ArchivedSemaphoreCommand, SemaphoreCommand};

/// Gives an object's command enum its key accessors. Every variant carries a `key`
/// field, so the list of variants here is the only one to keep in step.
macro_rules! keyed_variants {
    ($command:ident { $($variant:ident),+ $(,)? }) => {
        impl $command {
            /// The key the command addresses, which selects its slot.
            pub fn key(&self) -> &[u8] {
                match self {
                    $($command::$variant { key, .. } => key,)+
                }
            }

            pub fn key_mut(&mut self) -> &mut Vec<u8> {
                match self {
                    $($command::$variant { key, .. } => key,)+
                }
            }
        }
    };
}
pub(crate) use keyed_variants;

/// One operation on one object.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum DataCommand {
    Bytes(BytesCommand),
    Counter(CounterCommand),
    Lock(LockCommand),
    Semaphore(SemaphoreCommand),
    Barrier(BarrierCommand),
    Latch(LatchCommand),
    Future(FutureCommand),
    Map(MapCommand),
    Queue(QueueCommand),
    Key(KeyCommand),
}

/// Applies `$action` to the object command inside a [`DataCommand`] (one list, so a new
/// object cannot be left out of an accessor).
macro_rules! on_object {
    ($data:expr, $object:ident => $action:expr) => {
        match $data {
            DataCommand::Bytes($object) => $action,
            DataCommand::Counter($object) => $action,
            DataCommand::Lock($object) => $action,
            DataCommand::Semaphore($object) => $action,
            DataCommand::Barrier($object) => $action,
            DataCommand::Latch($object) => $action,
            DataCommand::Future($object) => $action,
            DataCommand::Map($object) => $action,
            DataCommand::Queue($object) => $action,
            DataCommand::Key($object) => $action,
        }
    };
}

impl DataCommand {
    pub fn key(&self) -> &[u8] {
        on_object!(self, object => object.key())
    }

    /// Every key the command names: its key, then a pop's other keys (a pop of several
    /// keys is the only command that names more than one).
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        let more: &[Vec<u8>] = match self {
            DataCommand::Queue(QueueCommand::PopAny { more_keys, .. }) => more_keys,
            _ => &[],
        };
        std::iter::once(self.key()).chain(more.iter().map(Vec::as_slice))
    }

    pub fn key_mut(&mut self) -> &mut Vec<u8> {
        on_object!(self, object => object.key_mut())
    }

    /// Whether the command changes state (and so is deduplicated by operation id).
    pub fn is_mutation(&self) -> bool {
        on_object!(self, object => object.is_mutation())
    }

    /// How long the command may be parked at the shard before it is answered; a client
    /// adds this to its call timeout.
    pub fn wait_ms(&self) -> u64 {
        on_object!(self, object => object.wait_ms())
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        on_object!(self, object => object.name())
    }

    /// The right a credential needs to send the command: every command of a
    /// coordination object is `coordinate`, the others `write` when they mutate and
    /// `read` when they do not.
    pub fn right(&self) -> Right {
        match self {
            DataCommand::Lock(_)
            | DataCommand::Semaphore(_)
            | DataCommand::Barrier(_)
            | DataCommand::Latch(_)
            | DataCommand::Future(_) => Right::Coordinate,
            _ if self.is_mutation() => Right::Write,
            _ => Right::Read,
        }
    }
}

macro_rules! into_data_command {
    ($($command:ident => $variant:ident),+ $(,)?) => {
        $(
            impl From<$command> for DataCommand {
                fn from(command: $command) -> DataCommand {
                    DataCommand::$variant(command)
                }
            }
        )+
    };
}

into_data_command!(
    BytesCommand => Bytes,
    CounterCommand => Counter,
    LockCommand => Lock,
    SemaphoreCommand => Semaphore,
    BarrierCommand => Barrier,
    LatchCommand => Latch,
    FutureCommand => Future,
    MapCommand => Map,
    QueueCommand => Queue,
    KeyCommand => Key,
);
