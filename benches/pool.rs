//! A dry run's time to a ready copy with a warm pool against without, on the fake cloud
//! with realistic timings (RDS restore 10–25 min, a modification 20–60 s: the new
//! password and, for a member, the run's group), on tokio's paused clock: for each
//! seed, one member made as a run of its own and recorded in a fake S3; then two
//! `up`s of environments/shop-db-aws.yaml, the first claiming the member, the second
//! finding the pool empty and restoring. The same calls but for the claim; the time is
//! from the run's start to its copy's `secure` step ending (private, its own password).
//! Run with `cargo bench --bench pool` (part of `make bench`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::events::{Event, Reporter, Silent};
use rehearse::engine::lifecycle::{self, Options};
use rehearse::engine::pool::{self as members, Member, MemberRun, State};
use rehearse::engine::provider::{Pin, Provider};
use rehearse::engine::store::ObjectStore;
use rehearse::providers::aws::{self, AwsProvider};
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_cloud::{FakeCloud, Faults};
use rehearse::testkit::fake_s3::{FakeS3, S3Faults};

fn description(dir: &Path) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-db-aws.yaml")).unwrap();
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "");
    let path = dir.join("shop-db-aws.yaml");
    std::fs::write(&path, text).unwrap();
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

fn options(run_id: &str, dir: &Path, destroy: DestroyPolicy, member: Option<MemberRun>) -> Options {
    Options {
        run_id: run_id.to_string(),
        release: "v2".into(),
        destroy,
        cold: false,
        up_only: true,
        state_root: dir.join(format!("state-{run_id}")),
        work_root: dir.join("work"),
        run_as: None,
        exit_code: rehearse::commands::exit_code,
        name: None,
        shared: None,
        stage: None,
        pins: Default::default(),
        change: None,
        member,
    }
}

/// When the copy was ready: its `secure` step ended.
struct Ready {
    start: tokio::time::Instant,
    at: Mutex<Option<Duration>>,
}

impl Reporter for Ready {
    fn event(&self, ev: Event) {
        if let Event::Finished { resource, action, ok: true, .. } = ev {
            if resource == "database.db" && action == "secure" {
                *self.at.lock().unwrap() = Some(self.start.elapsed());
            }
        }
    }
}

fn stats(xs: &mut [f64]) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[0], xs[xs.len() / 2], xs[xs.len() - 1])
}

fn main() {
    let seeds = 20u64;
    let (mut pooled, mut restored) = (Vec::new(), Vec::new());
    for seed in 0..seeds {
        let dir = tempfile::tempdir().unwrap();
        let loaded = description(dir.path());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let (p, r) = rt.block_on(async {
            let faults = Faults { modify: (Duration::from_secs(20), Duration::from_secs(60)), ..Faults::none() };
            let cloud = FakeCloud::new(seed, faults);
            let store: Arc<dyn ObjectStore> = Arc::new(FakeS3::new(seed, S3Faults::realistic()));
            let provider = |s: u64| {
                AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX)
                    .seeded(s)
                    .with_work_root(&dir.path().join("work"))
                    .with_pool_store(store.clone())
            };
            let Some(Pin::Snapshot(snapshot)) = provider(0).pin_sources(&loaded).await.unwrap().get("db").cloned()
            else {
                panic!("no snapshot")
            };
            let member = format!("r-20261207-040000-{seed:06x}");
            let made = MemberRun { database: "db".into(), keep_for: Duration::from_secs(24 * 3600) };
            let opts = options(&member, dir.path(), DestroyPolicy::Never, Some(made));
            lifecycle::run(&provider(1), &loaded, &opts, &Silent, &Signals::none()).await.expect("starts");
            let record = Member {
                member: member.clone(),
                instance: AwsProvider::<()>::rds_id(&member, "db"),
                snapshot,
                taken_at: None,
                masking: None,
                class: "db.t3.medium".into(),
                made_at: chrono::Utc::now(),
                state: State::Ready { ready_at: chrono::Utc::now() },
            };
            members::write(store.as_ref(), &members::key("shop-db", "db", &member), &record, None).await.unwrap();
            let mut ready = Vec::new();
            for (i, method) in ["pool", "cold"].iter().enumerate() {
                let run = format!("r-20261207-05000{i}-{seed:06x}");
                let r = Ready { start: tokio::time::Instant::now(), at: Mutex::new(None) };
                let o = lifecycle::run(
                    &provider(2 + i as u64),
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
            (ready[0], ready[1])
        });
        pooled.push(p);
        restored.push(r);
    }
    let (pmin, pmed, pmax) = stats(&mut pooled);
    let (rmin, rmed, rmax) = stats(&mut restored);
    println!("{seeds} seeds, virtual seconds from the run's start to its copy ready (min / median / max):");
    println!("  `up` claiming a pool member: {pmin:.0} / {pmed:.0} / {pmax:.0} s");
    println!("  `up` restoring (the pool empty): {rmin:.0} / {rmed:.0} / {rmax:.0} s");
    println!("  ratio of medians (pool / restore): {:.3}", pmed / rmed);
}
