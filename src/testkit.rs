//! Test doubles and scenario drivers: compiled for the crate's own unit tests and, with
//! the `testkit` feature, for the integration tests and benchmarks (which enable it
//! through the crate's dev-dependency on itself). A default `cargo build` — what ships —
//! compiles none of it.
//!
//! - [`fake_cloud`]: a fault-injecting fake of EC2 and RDS on tokio's pausable clock;
//! - [`fake_ssm`]: SSM Run Command that really runs the commands here, with seeded
//!   visibility delays, run times and throttling;
//! - [`scenarios`]: descriptions made runnable against it, and many runs at once;
//! - [`pool`]: a warm pool on it, for the pool's tests and benchmark.

pub mod fake_cloud;
pub mod fake_dns;
pub mod fake_s3;
pub mod fake_ssm;
pub mod pool;
pub mod scenarios;

/// A uniform draw in [0, 1) from a seeded state (SplitMix64: small, reproducible).
pub fn draw(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as f64 / u64::MAX as f64
}
