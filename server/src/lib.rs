//! engramd: Engram's data node. One glommio executor per core, each a shard that owns
//! its slots' objects outright, so every object is linearizable without locks.
//!
//! Layout:
//! - [`store`]: the sans-I/O keyspace state machine (bytes, counters, TTL, memory, exactly-once records).
pub mod store;
