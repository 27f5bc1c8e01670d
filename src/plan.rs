//! The plan: a description compiled into a graph of concrete resources.
//!
//! Like `terraform plan`, it says what will be created, from which production source,
//! in which order, at what estimated cost — computed from the description alone,
//! without calling any cloud API. The engine executes exactly this graph: every
//! resource has a stable id, a kind, provider attributes, rendered templates and the
//! ids it depends on. Production identifiers appear only as read-only `source`s, never
//! as dependencies: nothing in a plan can wait on, or change, production.

pub mod graph;
pub mod price;
pub mod render;

pub use graph::*;
