//! The engine: runs a plan through its lifecycle with a provider, keeps the journal,
//! and tears down on every exit path. It owns the contract providers implement
//! ([`provider`]) and never names a provider: commands hand it one.
//!
//! - [`provider`]: the contract — what a provider creates and destroys, and what it
//!   reports back (created with a handle, nothing created, or maybe created);
//! - [`lifecycle`]: the run loop (graph-driven, concurrent, cancellable), returning the
//!   run's report;
//! - [`run`]: the run operation (`run`, `up`, a rebuild's generation): its lease, the
//!   lifecycle, its report's files, teardown after a crash — a typed outcome;
//! - [`compare`]: the compare operation: twins built at once, the same load, the
//!   statistics and the judge — a typed outcome and compare.json;
//! - [`journal`]: intent before every create, the identifier after it, fsynced; only the
//!   engine writes it;
//! - [`teardown`]: destroy from the journal in rank order, leftovers with commands;
//! - [`events`]: progress as it happens, for a terminal or a log;
//! - [`connection`]: how to reach a kept environment, secrets included, for its owner;
//! - operations, one module each, typed outcome in, nothing printed: [`down`] (from the
//!   journal or from discovery), [`discover`] (a run's resources by its marks),
//!   [`extend`] (a kept environment's expiry moved), [`inventory`] (the runs and their status; a stage's current generation protected),
//!   [`sweep`] (what has expired, one candidate list, removed by rank).

mod assemble;
pub mod chaos;
pub mod compare;
pub mod connection;
pub mod deploy;
pub mod discover;
pub mod down;
pub mod events;
pub mod extend;
pub mod inventory;
pub mod journal;
pub mod lifecycle;
pub mod pool;
pub mod provider;
pub mod rebuild;
pub mod requests;
pub mod run;
pub mod stage;
mod steps;
pub mod store;
pub mod sweep;
pub mod teardown;
