//! Engram command-line tools. The binaries are thin: argument parsing and output here,
//! everything about talking to the cluster in `engram-client`.
//!
//! Layout:
//! - [`cli`]: the `engram` command line (clap derive; every flag also an `ENGRAM_*` variable).
//! - [`commands`]: runs one parsed command against a client and writes its output.
//! - [`cluster_view`]: `engram cluster` status, rebalance, drain and reclaim, through `engram_client::admin`.
//! - [`control_plane_view`]: the control-plane processes (leader, standby, unreachable) and the state store, as status shows them.
//! - [`info_view`]: node info as a human table or JSON (the wire type, with engram-proto's `serde` feature).
//! - [`failure`]: the CLI error enum and its exit codes.
//! - [`tls_args`]: the TLS flags of the CLI and the bench (CA, client certificate).
//! - [`bench`]: the `engram-bench` load generator (Engram, Redis and TCP-echo drivers).
//! - [`demo`]: demos, e.g. Monte Carlo π across worker processes with a shared counter and barrier.
//! - `bin/engram`: the `engram` binary: parse, run on a current-thread runtime, exit.
//! - `bin/engram-bench`: the `engram-bench` binary: parse, run the load or the echo server.
//! - `bin/engram-demo`: the `engram-demo` binary (`engram-demo pi`).

pub mod bench;
pub mod cli;
pub mod cluster_view;
pub mod commands;
pub mod control_plane_view;
pub mod demo;
pub mod failure;
pub mod info_view;
pub mod tls_args;
