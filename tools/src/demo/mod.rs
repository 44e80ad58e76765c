//! Demos of Engram used the way the research vision behind it describes: remote
//! memory and coordination used as transparently as local ones.
//!
//! - [`pi`]: the compute-disaggregation experiment: a Monte Carlo estimate of π split
//!   across worker *processes* that share a hit counter and meet at a barrier between
//!   rounds, next to the same computation with local threads, `AtomicU64` and
//!   `std::sync::Barrier`.

pub mod pi;
