//! Every integration test, in one test binary: one link of the crate and its AWS SDK
//! instead of one per file (Cargo.toml sets `autotests = false`; BENCHMARKS.md, "Test
//! time", has the measurement). Each file of tests/ stays a module of its own, named
//! after the file: `cargo nextest run -E 'test(/^compare::/)'` or
//! `cargo test --test all compare::` runs one of them.
//!
//! A new file tests/NAME.rs is compiled only once it is listed below (`mod NAME;`);
//! it reaches the shared helpers with `use crate::common;` (and `use crate::emulator;`
//! for the moto server), not with `mod common;`. The test at the end fails when a file
//! is not listed.
//!
//! The runner is cargo-nextest (`make test`): every test runs in a process of its own,
//! so a test that sets a process-wide environment variable or working directory, or a
//! static shared by the tests of one file, touches no other test. Under `cargo test`
//! the tests of every file share one process.

mod common;
#[path = "common/emulator.rs"]
mod emulator;

mod adversary;
mod aws_data_plane;
mod aws_emulator;
mod chaos;
mod chaos_cloud;
mod cli;
mod compare;
mod cow;
mod deploy;
mod fault_scenarios;
mod first_run;
mod fuzz_validate;
mod github;
mod hooks;
mod iam_policy;
mod journal_damage;
mod local_run;
mod pool;
mod portal_browser;
mod report_browser;
mod report_render;
mod scenarios_down_sweep;
mod scenarios_stage;
mod schema;
mod serve;
mod slack;
mod ssm_emulator;
mod stage;
mod state_store;
mod store_forgery;
mod untrusted_store;

/// Every tests/*.rs is a module of this binary: a file left out would never compile
/// nor run, silently.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let this = std::fs::read_to_string(dir.join("all.rs")).unwrap();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".rs")) else {
            continue;
        };
        if name != "all" && !this.lines().any(|l| l == format!("mod {name};")) {
            missing.push(name.to_string());
        }
    }
    assert!(missing.is_empty(), "add `mod NAME;` to tests/all.rs for: {missing:?}");
}
