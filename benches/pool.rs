//! A dry run's time to a ready copy with a warm pool against without, on the fake cloud
//! with realistic timings (RDS restore 10–25 min, a modification 20–60 s: the new
//! password and, for a member, the run's group; a stopped instance's start 2–8 min), on
//! tokio's paused clock: for each seed, a member made as a run of its own and recorded
//! in a fake S3, and an `up` of environments/shop-db-aws.yaml claiming it; then a
//! member stopped as `keep: stopped` stops it, and an `up` claiming (and starting) it;
//! then an `up` finding the pool empty and restoring. The same calls but for the claim
//! (and the start); the time is from the run's start to its copy's `secure` step ending
//! (private, its own password).
//! Run with `cargo bench --bench pool` (part of `make bench`).

use std::sync::Arc;

use rehearse::description::DestroyPolicy;
use rehearse::engine::lifecycle;
use rehearse::engine::store::ObjectStore;
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_cloud::FakeCloud;
use rehearse::testkit::fake_s3::{FakeS3, S3Faults};
use rehearse::testkit::pool::{fill, options, provider, realistic, shop_db, Ready};

fn stats(xs: &mut [f64]) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[0], xs[xs.len() / 2], xs[xs.len() - 1])
}

fn main() {
    let seeds = 20u64;
    let (mut pooled, mut stopped, mut restored) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 0..seeds {
        let dir = tempfile::tempdir().unwrap();
        let loaded = shop_db(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let (p, s, r) = rt.block_on(async {
            let cloud = FakeCloud::new(seed, realistic());
            let store: Arc<dyn ObjectStore> = Arc::new(FakeS3::new(seed, S3Faults::realistic()));
            let mut ready = Vec::new();
            for (i, method) in ["pool", "pool", "cold"].iter().enumerate() {
                if i < 2 {
                    let member = format!("r-20261207-04000{i}-{seed:06x}");
                    fill(&cloud, &store, &loaded, dir.path(), std::slice::from_ref(&member)).await;
                    if i == 1 {
                        let instance = rehearse::providers::aws::AwsProvider::<()>::rds_id(&member, "db");
                        let p = provider(&cloud, 1, dir.path());
                        p.stop_member("shop-db/db", &member, &instance).await.expect("the member stops");
                    }
                }
                let run = format!("r-20261207-05000{i}-{seed:06x}");
                let r = Ready::now();
                let o = lifecycle::run(
                    &provider(&cloud, 2 + i as u64, dir.path()).with_pool_store(store.clone()),
                    &loaded,
                    &options(&run, dir.path(), DestroyPolicy::Always, None),
                    &r,
                    &Signals::none(),
                )
                .await
                .expect("starts");
                assert_eq!(o.report.backups[0].method, *method, "seed {seed}");
                ready.push(r.at.lock().unwrap().expect("ready").as_secs_f64());
            }
            (ready[0], ready[1], ready[2])
        });
        pooled.push(p);
        stopped.push(s);
        restored.push(r);
    }
    let (pmin, pmed, pmax) = stats(&mut pooled);
    let (smin, smed, smax) = stats(&mut stopped);
    let (rmin, rmed, rmax) = stats(&mut restored);
    println!("{seeds} seeds, virtual seconds from the run's start to its copy ready (min / median / max):");
    println!("  `up` claiming a pool member kept running: {pmin:.0} / {pmed:.0} / {pmax:.0} s");
    println!("  `up` claiming a pool member kept stopped (started by the claim): {smin:.0} / {smed:.0} / {smax:.0} s");
    println!("  `up` restoring (the pool empty): {rmin:.0} / {rmed:.0} / {rmax:.0} s");
    println!("  ratio of medians (pool / restore): {:.3} running, {:.3} stopped", pmed / rmed, smed / rmed);
}
