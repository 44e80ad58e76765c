//! `engram-bench`: one load shape driven against Engram, Redis or a raw TCP echo, with
//! latency from HDR histograms (open loop without coordinated omission on `--rate`), plus
//! Engram's locks and barriers; and the reports of the benchmark scripts.
//!
//! Layout:
//! - [`cli`]: flags (each also `ENGRAM_BENCH_*`), targets, limits.
//! - [`settings`]: the flags of a run, checked and resolved.
//! - [`runner`]: connections, prefill, the measured phase, merging results.
//! - [`lane`]: a load task's plan: stop condition, warmup cut, open-loop pacer, progress slot.
//! - [`timer`]: a timerfd sleep with microsecond resolution for the open-loop pacer.
//! - [`workload`]: workloads, the SET:GET ratio and the request sequence of a task; the
//!   lock owner and shared barrier of the lock and barrier workloads (Engram only).
//! - [`keys`]: key patterns and allocation-free key formatting.
//! - [`stats`]: per-task histograms and counts (also per operation for lock and barrier),
//!   the run summary, JSON and human output.
//! - [`engram_driver`]: Engram through `engram-client`, one client per connection.
//! - [`redis_driver`]: a RESP2 connection with pipelined batches and a buffered reply reader.
//! - [`resp`]: RESP2 command encoding and the incremental reply parser.
//! - [`echo`]: the TCP ping-pong floor: client driver and echo server.
//! - [`progress`]: the terminal progress bar.
//! - [`report`]: `engram-bench report`, the statistics of the scripts in `tools/` from
//!   the raw results they leave.
//! - [`error`]: the error enum.

pub mod cli;
pub mod echo;
pub mod engram_driver;
pub mod error;
pub mod keys;
pub mod lane;
pub mod progress;
pub mod redis_driver;
pub mod report;
pub mod resp;
pub mod runner;
pub mod settings;
pub mod stats;
pub mod timer;
pub mod workload;
