//! The lifecycle of environments/shop-aws.yaml against the fake cloud with realistic
//! timings (RDS restore 10–25 min, boot 30–90 s, deletes 30–90 s), on tokio's paused
//! clock: the run's virtual wall time beside the plan's critical path, the Describe
//! calls per polling interval, and 50 concurrent runs in one process under the account's
//! request rate limits (throttling absorbed, memory).
//! Run with `cargo bench --bench fake_lifecycle` (part of `make bench`).

use std::path::Path;

use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::events::Silent;
use rehearse::engine::lifecycle::{self, Options};
use rehearse::providers::aws::AwsProvider;
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_cloud::{FakeCloud, Faults};
use rehearse::testkit::fake_s3::{FakeS3, S3Faults};

fn description(dir: &Path) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-aws.yaml")).unwrap();
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "");
    let path = dir.join("shop-aws.yaml");
    std::fs::write(&path, text).unwrap();
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

/// The AWS provider over the fake, with the standard polling, its work in `dir/work`.
fn provider(cloud: &FakeCloud, dir: &Path) -> AwsProvider<FakeCloud> {
    AwsProvider::new(cloud.clone(), rehearse::providers::aws::POLL_FIRST, rehearse::providers::aws::POLL_MAX)
        .with_work_root(&dir.join("work"))
}

/// A run of v2, torn down always, its state in `dir/state`, its work in `dir/work`.
fn options(
    run_id: String,
    dir: &Path,
    state: &str,
    shared: Option<std::sync::Arc<dyn rehearse::engine::store::ObjectStore>>,
) -> Options {
    Options {
        run_id,
        release: "v2".into(),
        destroy: DestroyPolicy::Always,
        cold: false,
        up_only: false,
        state_root: dir.join(state),
        work_root: dir.join("work"),
        run_as: None,
        exit_code: rehearse::commands::exit_code,
        name: None,
        shared,
        stage: None,
        pins: Default::default(),
        change: None,
        member: None,
        from: None,
        twin: None,
        deploy_twin: false,
        chaos: None,
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    let dir = tempfile::Builder::new()
        .prefix("rehearse-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let loaded = description(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();

    let mut ratios = Vec::new();
    let mut per_interval = Vec::new();
    for seed in 0..20u64 {
        let (ratio, calls_per_interval) = rt.block_on(async {
            let cloud = FakeCloud::new(seed, Faults::none());
            let provider = provider(&cloud, dir.path());
            let opts = options(format!("r-20261125-000000-{seed:06x}"), dir.path(), &format!("one-{seed}"), None);
            let start = tokio::time::Instant::now();
            let signals = Signals::none();
            let outcome = lifecycle::run(&provider, &loaded, &opts, &Silent, &signals).await.unwrap();
            assert!(outcome.report.teardown.leftovers.is_empty());
            let wall = start.elapsed();
            // The critical path: the restore, then the slowest boot, then the slowest
            // of the instance terminations and the database deletion (groups go at once).
            let critical = cloud.longest("db", "create")
                + cloud.longest("instance", "create")
                + cloud.longest("instance", "delete").max(cloud.longest("db", "delete"));
            let describes = cloud.calls().iter().filter(|c| c.op.starts_with("Describe")).count() as f64;
            // Polling intervals reach 15 s; count intervals on that scale.
            let intervals = wall.as_secs_f64() / 15.0;
            (wall.as_secs_f64() / critical.as_secs_f64(), describes / intervals)
        });
        ratios.push(ratio);
        per_interval.push(calls_per_interval);
    }
    ratios.sort_by(f64::total_cmp);
    per_interval.sort_by(f64::total_cmp);
    println!(
        "virtual wall time ÷ critical path, 20 seeded runs: median {:.4}, max {:.4} (target ≤ 1.03)",
        ratios[ratios.len() / 2],
        ratios[ratios.len() - 1]
    );
    println!(
        "Describe calls per 15 s of run, all services together: median {:.2}, max {:.2}",
        per_interval[per_interval.len() / 2],
        per_interval[per_interval.len() - 1]
    );

    // The shared state store: the same 20 seeded runs with their journal also in S3
    // (the fake, with S3's usual latencies of 15–60 ms per call): the virtual wall time
    // it adds, and its calls.
    let mut added = Vec::new();
    let mut calls: std::collections::BTreeMap<&'static str, Vec<u64>> = Default::default();
    for seed in 0..20u64 {
        let mut walls = Vec::new();
        for with_store in [false, true] {
            let (wall, s3_calls) = rt.block_on(async {
                let cloud = FakeCloud::new(seed, Faults::none());
                let provider = provider(&cloud, dir.path());
                let s3 = std::sync::Arc::new(FakeS3::new(seed, S3Faults::realistic()));
                let opts = options(
                    format!("r-20261125-00000{}-{seed:06x}", 3 + u8::from(with_store)),
                    dir.path(),
                    &format!("store-{seed}-{with_store}"),
                    with_store.then(|| s3.clone() as std::sync::Arc<dyn rehearse::engine::store::ObjectStore>),
                );
                let start = tokio::time::Instant::now();
                let outcome = lifecycle::run(&provider, &loaded, &opts, &Silent, &Signals::none()).await.unwrap();
                assert!(outcome.report.teardown.leftovers.is_empty());
                (start.elapsed(), s3.calls())
            });
            walls.push(wall);
            if with_store {
                for (op, n) in s3_calls {
                    calls.entry(op).or_default().push(n);
                }
            }
        }
        added.push(walls[1].as_secs_f64() - walls[0].as_secs_f64());
    }
    added.sort_by(f64::total_cmp);
    let per_op: Vec<String> = calls
        .iter_mut()
        .map(|(op, v)| {
            v.sort();
            format!("{op} {}", v[v.len() / 2])
        })
        .collect();
    println!(
        "shared state store (fake S3, 15–60 ms a call), 20 seeded runs each way: added virtual wall time min {:.2} s, \
         median {:.2} s, max {:.2} s; S3 calls per run (median): {}",
        added[0],
        added[added.len() / 2],
        added[added.len() - 1],
        per_op.join(", ")
    );

    // 50 concurrent runs in one process, against an account with EC2's and RDS's
    // documented request rate limits, plus throttling bursts and 5xx answers.
    let before = peak_rss_mb();
    let faults = Faults { rate_limits: true, throttle: 0.05, server_error: 0.02, ..Faults::none() };
    let (left, steps_failed, throttle_errors, throttled, injected, retried, slowest) = rt.block_on(async {
        let cloud = FakeCloud::new(99, faults);
        let (outcomes, retried) =
            rehearse::testkit::scenarios::concurrent_runs(&cloud, &loaded, 50, "r-20261125-000001", dir.path()).await;
        let results: Vec<_> = outcomes
            .iter()
            .map(|(outcome, took)| {
                let text = serde_json::to_string(&outcome.report).unwrap();
                let failed = outcome.report.steps.iter().filter(|s| !s.ok).count();
                let throttle = ["Throttling", "RequestLimitExceeded", "InternalError"].iter().any(|w| text.contains(w));
                (outcome.report.teardown.leftovers.len(), failed, usize::from(throttle), *took)
            })
            .collect();
        assert!(cloud.leftovers().is_empty());
        (
            results.iter().map(|r| r.0).sum::<usize>(),
            results.iter().map(|r| r.1).sum::<usize>(),
            results.iter().map(|r| r.2).sum::<usize>(),
            cloud.throttled(),
            cloud.injected(),
            retried,
            results.iter().map(|r| r.3).max().unwrap_or_default(),
        )
    });
    println!(
        "50 concurrent runs in one process, account rate limits + 5 % throttling bursts + 2 % 5xx: \
         {throttled} calls refused by the rate limits, {injected} faults injected, {retried} calls sent again by the providers \
         (failed describes of the pollers wait for their next round instead); \
         {steps_failed} steps failed, {throttle_errors} runs with a throttling error in their report, {left} resources left; \
         slowest run {:.1} virtual min; peak RSS {:.0} MB (before them {:.0} MB; target < 200 MB)",
        slowest.as_secs_f64() / 60.0,
        peak_rss_mb(),
        before
    );
}
