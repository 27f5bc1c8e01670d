//! Test doubles and scenario drivers: compiled for the crate's own unit tests and, with
//! the `testkit` feature, for the integration tests and benchmarks (which enable it
//! through the crate's dev-dependency on itself). A default `cargo build` — what ships —
//! compiles none of it.
//!
//! - [`fake_cloud`]: a fault-injecting fake of EC2 and RDS on tokio's pausable clock;
//! - [`scenarios`]: descriptions made runnable against it, and many runs at once.

pub mod fake_cloud;
pub mod fake_dns;
pub mod fake_s3;
pub mod scenarios;
