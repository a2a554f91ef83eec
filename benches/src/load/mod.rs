//! The open-loop load generator behind `shardlog-load`: configuration,
//! arrival schedules, latency recording, the drivers for each call shape,
//! and verification of what was produced.
//!
//! Open loop means every request is sent at its scheduled time whatever the
//! replies, and its latency is measured from that scheduled time, so a
//! stalled server shows up as latency instead of a slower sender
//! (no coordinated omission). Service time (from the actual send) is
//! recorded next to it. `--closed-loop N` instead runs N producers that each
//! send the next batch only after the previous ack. The `producer` shape
//! hands single records to the client library's batching `Producer`.

pub mod config;
pub mod driver;
mod producer;
pub mod schedule;
pub mod stats;
pub mod verify;

pub use config::{AckMode, KeyDistribution, LoadConfig, ScheduleKind, Shape};
pub use driver::{LoadError, run_load};
pub use stats::RunReport;
