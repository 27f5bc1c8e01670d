//! The engine: runs a plan through its lifecycle with a provider, keeps the journal,
//! and tears down on every exit path.
//!
//! - [`lifecycle`]: the run loop (graph-driven, concurrent, cancellable);
//! - [`journal`]: intent before every create, the identifier after it, fsynced;
//! - [`teardown`]: reverse-order destroy from the journal, leftovers with commands;
//! - [`signals`]: first SIGINT/SIGTERM tears down, the second stops teardown;
//! - [`process`], [`timing`], [`state`], [`events`]: the pieces they share;
//! - [`secure_fs`]: directories and files other local users can neither read nor steer.

pub mod events;
pub mod journal;
pub mod lifecycle;
pub mod process;
pub mod secure_fs;
pub mod signals;
pub mod state;
pub mod teardown;
pub mod timing;
