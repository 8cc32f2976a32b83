//! GLORY-CL's monitoring logic, shared by the agent (collection), the group master
//! (statistics store, rule evaluation) and the cluster master.
//!
//! - [`collect`]: node metrics of a real host (sysinfo and /proc).
//! - [`simulated`]: seeded, realistic series for simulated hosts.
//! - [`batch`]: numbering series once per session for compact sample batches.
//! - [`buffer`]: the agent's recent samples, for backfilling a group master.
//! - [`procs`]: process monitors: matching, usage from /proc, restarts.
//! - [`rules`]: one alert's life under one rule (pending, firing, hysteresis,
//!   keep-firing, inhibition), pure, time passed in; group aggregates.
//! - [`evaluate`]: a group master's monitors over its nodes' samples.
//! - [`rollup`] and [`store`]: history in SQLite (raw 6 h, 1-minute rollups 7 days,
//!   1-hour rollups 90 days), one row per node and interval.
//!
//! Architecture invariant: no I/O but the store's SQLite file and the collector's
//! reads of /proc; no sockets, no clocks (time is passed in). The wire types it works on
//! are `glory_protocol::monitoring`'s.
#![forbid(unsafe_code)]

pub mod batch;
pub mod buffer;
pub mod collect;
pub mod evaluate;
pub mod items;
pub mod procs;
pub mod rollup;
pub mod rules;
pub mod simulated;
pub mod store;
