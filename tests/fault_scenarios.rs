//! Crash safety under faults: seeded scenarios of the shop's lifecycle against the
//! fault-injecting fake cloud on tokio's paused clock (virtual time). Three in four are
//! killed at a random point and then torn down from their journal as `rehearse down`
//! does; one in four is interrupted in process (as by Ctrl-C) the moment a create's
//! answer is on its way, and tears itself down — a teardown it calls complete must have
//! left nothing. Every scenario must end with nothing left and no mutating call on an
//! untagged resource. Every run keeps its journal in a shared state store too (the fake
//! S3, with lost answers, 409s, 5xx and lagging listings), and `down` runs as on
//! another machine: from the journal it fetches from the store, never the local one.
//! A failing seed is printed; `REHEARSE_SEED=N` reruns just that one.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common;
use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::events::Silent;
use rehearse::engine::journal::Journal;
use rehearse::engine::lifecycle::{self, Options};
use rehearse::engine::store::records::RemoteJournal;
use rehearse::engine::teardown;
use rehearse::providers::aws::AwsProvider;
use rehearse::sys::signals::Signals;
use rehearse::sys::timing::Clock;
use rehearse::testkit::fake_cloud::{FakeCloud, Faults};
use rehearse::testkit::fake_dns::{DnsFaults, FakeDns};
use rehearse::testkit::fake_s3::{FakeS3, S3Faults};

/// environments/shop-aws.yaml without what needs reachable hosts (health checks,
/// masking, suites): the fake cloud's addresses are not real. With `aurora`, its
/// database is a copy-on-write clone of the production Aurora cluster instead.
fn description(dir: &Path, aurora: bool) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-aws.yaml")).unwrap();
    let mut text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "");
    if aurora {
        text = rehearse::testkit::scenarios::aurora_variant(&text, "shop-prod-aurora");
    }
    let path = dir.join(if aurora { "shop-aurora.yaml" } else { "shop-aws.yaml" });
    std::fs::write(&path, text).unwrap();
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

/// What a scenario exercised.
struct Seen {
    /// Killed before the run ended.
    killed: bool,
    faults: u64,
    /// The scenario had an outage longer than the provider's patience.
    outage: bool,
    /// The run ended on a service error that patience could not absorb.
    surfaced: bool,
    /// Interrupted in process while a create was in flight.
    interrupted_in_flight: bool,
}

fn scenario(seed: u64, loaded: &description::Loaded, state: &Path) -> Result<Seen, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        // Every fourth scenario is interrupted in process while creates are in flight
        // (their answers come late more often there).
        let interrupt = seed % 4 == 3;
        let faults = if interrupt { Faults { slow_answer: 0.5, ..Faults::chaos() } } else { Faults::chaos() };
        let cloud = FakeCloud::new(seed, faults);
        let production = cloud.production();
        let provider =
            AwsProvider::new(cloud.clone(), rehearse::providers::aws::POLL_FIRST, rehearse::providers::aws::POLL_MAX)
                .seeded(seed)
                .with_work_root(&state.join("work"));
        let run_id = format!("r-20261125-000000-{seed:06x}");
        let s3 = Arc::new(FakeS3::new(seed, S3Faults::chaos()));
        let opts = Options {
            up_only: false,
            state_root: state.to_path_buf(),
            shared: Some(s3.clone()),
            ..rehearse::testkit::pool::options(&run_id, state, DestroyPolicy::Always, None)
        };
        let (signals, trigger) = Signals::manual();
        let run = lifecycle::run(&provider, loaded, &opts, &Silent, &signals);
        let (finished, interrupted_in_flight) = if interrupt {
            // Ctrl-C the moment a create's answer is on its way: the run must wait for
            // it, journal what it made, and tear that down too.
            let mut fired = false;
            let watcher = async {
                while cloud.creates_in_flight() == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                trigger.interrupt();
                std::future::pending::<()>().await;
            };
            let outcome = tokio::select! {
                o = run => o,
                _ = watcher => unreachable!("the watcher never ends"),
            };
            if signals.count() > 0 {
                fired = true;
            }
            let outcome = outcome.map_err(|e| format!("the run did not start: {e}"))?;
            if outcome.report.teardown.status == rehearse::report::model::TeardownStatus::Complete {
                // Deletions in progress finish in virtual time.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                let left = cloud.leftovers();
                if !left.is_empty() {
                    return Err(format!("the run's own teardown said complete but left {left:?}"));
                }
            }
            (Some(Ok(outcome)), fired)
        } else {
            // Kill at a random virtual instant within the run's usual length (~40 min).
            let kill_at = Duration::from_secs(seed.wrapping_mul(2_654_435_761) % 2400);
            (tokio::time::timeout(kill_at, run).await.ok(), false)
        };
        let killed = finished.is_none();
        let report = finished.and_then(Result::ok).map(|o| serde_json::to_string(&o.report).unwrap());
        let surfaced = report.is_some_and(|r| {
            ["Throttling", "RequestLimitExceeded", "InternalError", "may have run"].iter().any(|w| r.contains(w))
        });
        drop(provider);

        // `rehearse down RUN_ID` on another machine, from the journal in the shared
        // store, with a fresh provider; an operator runs it again while it reports
        // leftovers (faults also hit teardown).
        let elsewhere = state.join("elsewhere").join(&run_id);
        std::fs::create_dir_all(&elsewhere).unwrap();
        let in_store = rehearse::engine::store::sync::pull_journal(s3.as_ref(), &run_id, &elsewhere)
            .await
            .map_err(|e| format!("the journal cannot be fetched from the store: {e}"))?;
        let journal_path = elsewhere.join("journal.jsonl");
        if in_store == 0 {
            // Killed before its first record reached the store: then nothing may have
            // been attempted — the local journal holds the run's record at most.
            let local = state.join("runs").join(&run_id).join("journal.jsonl");
            let n = rehearse::engine::journal::read(&local).map(|r| r.len()).unwrap_or(0);
            if n > 1 {
                return Err(format!("the store has no journal, but the run journaled {n} records locally"));
            }
            std::fs::copy(&local, &journal_path).map_err(|e| format!("no journal anywhere: {e}"))?;
        }
        let journal = Journal::open(&journal_path).map_err(|e| format!("no journal: {e}"))?;
        let journal = journal
            .mirror_to(RemoteJournal::after(s3.clone(), &run_id, in_store))
            .await
            .map_err(|e| format!("cannot append to the journal in the store: {e}"))?;
        let down =
            AwsProvider::new(cloud.clone(), rehearse::providers::aws::POLL_FIRST, rehearse::providers::aws::POLL_MAX)
                .seeded(!seed)
                .with_work_root(&state.join("work"));
        let mut complete = false;
        for _ in 0..6 {
            let out = teardown::run(&down, &journal, &Silent, &Signals::none(), 1, &Clock::new()).await;
            if std::env::var("REHEARSE_SEED").is_ok() {
                for d in &out.destroyed {
                    eprintln!("destroy {} {}: {:?}", d.kind, d.id, d.error);
                }
            }
            if out.complete() {
                complete = true;
                break;
            }
        }
        // Deletions in progress finish in virtual time.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let left = cloud.leftovers();
        let violations = cloud.violations();
        if std::env::var("REHEARSE_SEED").is_ok() {
            eprintln!("{}", std::fs::read_to_string(&journal_path).unwrap_or_default());
            eprintln!("calls: {:?}", cloud.calls().iter().filter(|c| c.mutating).collect::<Vec<_>>());
        }
        // Every RunInstances call carried a client token that the journal in the store
        // (read back by the other machine) held with the intent before the call.
        let records = rehearse::engine::journal::read(&journal_path).map_err(|e| e.to_string())?;
        let keys: Vec<String> = records
            .iter()
            .filter_map(|r| match r {
                rehearse::engine::journal::Record::Intent { key: Some(k), .. } => Some(k.clone()),
                _ => None,
            })
            .collect();
        if let Some(c) = cloud.calls().iter().find(|c| c.op == "RunInstances" && !keys.contains(&c.target)) {
            return Err(format!("RunInstances with client token {} not in the journal", c.target));
        }
        if !complete || !left.is_empty() {
            return Err(format!("left behind: {left:?} (down complete: {complete})"));
        }
        if !violations.is_empty() {
            return Err(format!(
                "violations (a change to what the run does not own, or a copy exposed): {violations:?}"
            ));
        }
        if cloud.production() != production {
            return Err("production changed".into());
        }
        Ok(Seen { killed, faults: cloud.injected(), outage: cloud.has_outage(), surfaced, interrupted_in_flight })
    })
}

/// Seeded rehearsals of the shop on the fake cloud with faults, killed at random or run
/// to the end, then torn down (500 in `make test-full`, 125 in `make test`:
/// `common::seeds`): nothing is left and production is never touched.
#[test]
fn seeded_fault_scenarios_leave_nothing_and_never_touch_production() {
    // Journals on tmpfs when there is one: 500 runs fsync a few thousand records.
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let dir = tempfile::Builder::new().prefix("rehearse-faults-").tempdir_in(base).unwrap();
    // Even seeds restore the newest snapshot, odd seeds clone the Aurora cluster.
    let variants = [description(dir.path(), false), description(dir.path(), true)];
    let seeds = common::seeds(0..500);
    let n = seeds.len();
    let (mut failures, mut killed, mut faults, mut outages, mut surfaced, mut in_flight) = (Vec::new(), 0, 0, 0, 0, 0);
    for seed in seeds {
        let state = dir.path().join(format!("s{seed}"));
        match scenario(seed, &variants[(seed % 2) as usize], &state) {
            Ok(seen) => {
                killed += usize::from(seen.killed);
                faults += seen.faults;
                outages += usize::from(seen.outage);
                surfaced += usize::from(seen.surfaced);
                in_flight += usize::from(seen.interrupted_in_flight);
            }
            Err(e) => failures.push(format!(
                "seed {seed}: {e} (rerun: REHEARSE_SEED={seed} cargo nextest run seeded_fault_scenarios)"
            )),
        }
    }
    assert!(failures.is_empty(), "{} failing scenario(s):\n{}", failures.len(), failures.join("\n"));
    eprintln!(
        "{n} scenarios: {killed} killed mid-run, {in_flight} interrupted with a create in flight, {} ran to the \
         end; {faults} faults injected; {outages} with an outage, {surfaced} runs ended on a service error patience \
         could not absorb",
        n - killed - in_flight
    );
    if n >= 20 {
        // The scenarios really vary: many runs are killed, many are not, faults hit,
        // and some outages outlast the provider's patience (so its failure paths run).
        assert!(killed > n / 10 && killed < n * 9 / 10, "{killed} of {n} killed");
        assert!(in_flight > n / 10, "only {in_flight} of {n} interrupted with a create in flight");
        assert!(faults > n as u64, "only {faults} faults in {n} scenarios");
        assert!(surfaced > 0 && surfaced <= outages, "{surfaced} surfaced, {outages} outages");
    }
}

/// Fifty rehearsals at once in one process, against an account with EC2's and RDS's
/// documented request rate limits and, on top, throttling bursts and 5xx answers from
/// elsewhere: every step of every run succeeds, everything is torn down, and no
/// throttling error reaches the user.
#[test]
fn fifty_concurrent_runs_under_rate_limits_see_no_throttling_error() {
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let dir = tempfile::Builder::new().prefix("rehearse-limits-").tempdir_in(base).unwrap();
    let loaded = description(dir.path(), false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let faults = Faults { rate_limits: true, throttle: 0.05, server_error: 0.02, ..Faults::none() };
        let cloud = FakeCloud::new(7, faults);
        let production = cloud.production();
        let (outcomes, retried) =
            rehearse::testkit::scenarios::concurrent_runs(&cloud, &loaded, 50, "r-20261125-000002", dir.path()).await;
        let outcomes: Vec<(i32, String)> =
            outcomes.iter().map(|(o, _)| (o.report.exit_code, serde_json::to_string(&o.report).unwrap())).collect();
        let throttled = cloud.throttled();
        assert!(throttled > 50, "the rate limits were hardly reached ({throttled} calls refused)");
        for (i, (code, report)) in outcomes.iter().enumerate() {
            for word in ["Throttling", "RequestLimitExceeded", "InternalError"] {
                assert!(!report.contains(word), "run {i}: `{word}` reached the report: {report}");
            }
            // No suites here (the fake's hosts cannot be reached), so no run can pass;
            // every step must have succeeded and nothing but that be held against it.
            let r: serde_json::Value = serde_json::from_str(report).unwrap();
            assert!(r["failure"].is_null(), "run {i} failed: {report}");
            assert_eq!(r["reason"], "the description has no suites: nothing judged the release", "run {i}");
            let steps = r["steps"].as_array().unwrap();
            assert!(steps.len() >= 8 && steps.iter().all(|s| s["ok"] == true), "run {i}: {report}");
            assert_eq!(*code, 1, "run {i}");
        }
        assert!(cloud.leftovers().is_empty(), "left behind: {:?}", cloud.leftovers());
        assert!(cloud.violations().is_empty(), "{:?}", cloud.violations());
        assert_eq!(cloud.production(), production);
        eprintln!(
            "50 concurrent runs: {throttled} calls refused by the rate limits, {} faults injected; {} calls sent again \
             by the providers (the pollers' describes are retried at their next round instead)",
            cloud.injected(),
            retried
        );
    });
}

/// An outage longer than the provider's patience, starting once the database copy is
/// being restored: the run fails naming the throttling, and `down` afterwards removes
/// everything.
#[test]
fn an_outage_longer_than_patience_fails_the_run_by_name_and_down_cleans_up() {
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let dir = tempfile::Builder::new().prefix("rehearse-outage-").tempdir_in(base).unwrap();
    let loaded = description(dir.path(), false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(11, Faults::none()).with_outage(Duration::from_secs(60), Duration::from_secs(3600));
        let provider =
            AwsProvider::new(cloud.clone(), rehearse::providers::aws::POLL_FIRST, rehearse::providers::aws::POLL_MAX)
                .with_work_root(&dir.path().join("work"));
        let opts = Options {
            up_only: false,
            state_root: dir.path().join("state"),
            ..rehearse::testkit::pool::options("r-20261125-000003-000000", dir.path(), DestroyPolicy::Always, None)
        };
        let outcome = lifecycle::run(&provider, &loaded, &opts, &Silent, &Signals::none()).await.unwrap();
        // The database never became visible as available, and the timeout says why.
        let reason = outcome.report.reason.clone().unwrap_or_default();
        assert!(reason.contains("timed out waiting for") && reason.contains("Throttling"), "{reason}");
        // Teardown, in the outage too, could not finish: exit 4, leftovers listed with
        // the command that removes them.
        assert_eq!(outcome.report.exit_code, 4, "{reason}");
        assert!(!outcome.report.teardown.leftovers.is_empty());
        assert!(reason.contains("rehearse down r-20261125-000003-000000"), "{reason}");
        // Once the outage is over, `down` from the journal removes everything.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let journal = Journal::open(&dir.path().join("state/runs/r-20261125-000003-000000/journal.jsonl")).unwrap();
        let down =
            AwsProvider::new(cloud.clone(), rehearse::providers::aws::POLL_FIRST, rehearse::providers::aws::POLL_MAX)
                .with_work_root(&dir.path().join("work"));
        let out = teardown::run(&down, &journal, &Silent, &Signals::none(), 1, &Clock::new()).await;
        assert!(out.complete());
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(cloud.leftovers().is_empty(), "{:?}", cloud.leftovers());
        assert!(cloud.violations().is_empty());
    });
}

/// A stage's generations built on the fake cloud, as `rehearse rebuild` builds them:
/// the lifecycle keeps what it built (`up`), and the acceptance — the suites, which the
/// fake's hosts cannot serve — is a seeded coin (three in four pass). Teardown is
/// `rehearse down` on another machine: from the journal in the shared store.
struct FakeGenerations<'a> {
    cloud: FakeCloud,
    s3: Arc<FakeS3>,
    loaded: &'a description::Loaded,
    state: std::path::PathBuf,
    seed: u64,
    rng: std::cell::Cell<u64>,
    /// Every generation that passed its acceptance, by run id.
    passed: std::cell::RefCell<std::collections::BTreeSet<String>>,
    /// The final rebuild's generation passes whatever the coin says.
    force_pass: std::cell::Cell<bool>,
    downs: std::cell::Cell<u64>,
}

impl FakeGenerations<'_> {
    fn draw(&self) -> f64 {
        let mut state = self.rng.get();
        let d = rehearse::testkit::draw(&mut state);
        self.rng.set(state);
        d
    }

    fn provider(&self, salt: u64) -> AwsProvider<FakeCloud> {
        AwsProvider::new(self.cloud.clone(), rehearse::providers::aws::POLL_FIRST, rehearse::providers::aws::POLL_MAX)
            .seeded(self.seed ^ salt)
            .with_work_root(&self.state.join("work"))
    }

    /// `rehearse down RUN_ID` from the journal in the store, run again while it leaves
    /// something (faults hit teardown too).
    async fn down(&self, run_id: &str) -> Result<(), String> {
        let n = self.downs.get() + 1;
        self.downs.set(n);
        let elsewhere = self.state.join("elsewhere").join(format!("{run_id}-{n}"));
        std::fs::create_dir_all(&elsewhere).unwrap();
        let in_store = rehearse::engine::store::sync::pull_journal(self.s3.as_ref(), run_id, &elsewhere)
            .await
            .map_err(|e| format!("the journal of {run_id} cannot be fetched: {e}"))?;
        let journal_path = elsewhere.join("journal.jsonl");
        if in_store == 0 {
            // Killed before its first record reached the store: nothing was attempted.
            let local = self.state.join("runs").join(run_id).join("journal.jsonl");
            if !local.exists() {
                return Ok(());
            }
            std::fs::copy(&local, &journal_path).map_err(|e| e.to_string())?;
        }
        let journal = Journal::open(&journal_path)
            .map_err(|e| e.to_string())?
            .mirror_to(RemoteJournal::after(self.s3.clone(), run_id, in_store))
            .await
            .map_err(|e| e.to_string())?;
        let down = self.provider(!n);
        for _ in 0..6 {
            let out = teardown::run(&down, &journal, &Silent, &Signals::none(), 1, &Clock::new()).await;
            if out.complete() {
                return Ok(());
            }
            if std::env::var("REHEARSE_SEED").is_ok() {
                eprintln!("journal: {}", std::fs::read_to_string(&journal_path).unwrap_or_default());
                for d in out.destroyed.iter() {
                    eprintln!("down {run_id}: {} {}: {:?}", d.kind, d.id, d.error);
                }
            }
        }
        Err(format!("down {run_id} left resources"))
    }
}

impl rehearse::engine::rebuild::Generations for FakeGenerations<'_> {
    fn build<'a>(
        &'a self,
        spec: &'a rehearse::engine::rebuild::Spec,
    ) -> rehearse::engine::rebuild::LocalFuture<'a, rehearse::engine::rebuild::Built> {
        let (number, run_id) = (spec.number, spec.run_id.as_str());
        use rehearse::engine::rebuild::Built;
        use rehearse::report::model::Verdict;
        Box::pin(async move {
            let provider = self.provider(number);
            let opts = Options {
                state_root: self.state.clone(),
                shared: Some(self.s3.clone()),
                stage: Some(spec.run("staging")),
                ..rehearse::testkit::pool::options(run_id, &self.state, DestroyPolicy::Always, None)
            };
            let failed = |verdict, reason: String| Built {
                verdict,
                reason: Some(reason),
                backups: Vec::new(),
                connection: None,
                kept: false,
            };
            let outcome = match lifecycle::run(&provider, self.loaded, &opts, &Silent, &Signals::none()).await {
                Ok(o) => o,
                Err(e) => return failed(Verdict::BuildFailed, e.to_string()),
            };
            if outcome.report.verdict != Verdict::Passed {
                return failed(outcome.report.verdict, outcome.report.reason.unwrap_or_default());
            }
            if !self.force_pass.get() && self.draw() < 0.25 {
                return failed(Verdict::Failed, "the acceptance suites failed (seeded)".into());
            }
            let dir = self.state.join("runs").join(run_id);
            match rehearse::engine::connection::Connection::read(&dir, run_id) {
                Ok(c) => {
                    self.passed.borrow_mut().insert(run_id.to_string());
                    Built {
                        verdict: Verdict::Passed,
                        reason: None,
                        backups: Vec::new(),
                        connection: Some(c),
                        kept: true,
                    }
                }
                Err(e) => failed(Verdict::BuildFailed, e.to_string()),
            }
        })
    }

    fn tear_down<'a>(
        &'a self,
        run_id: &'a str,
        _number: u64,
    ) -> rehearse::engine::rebuild::LocalFuture<'a, Result<(), rehearse::engine::rebuild::TearDownError>> {
        Box::pin(async move { self.down(run_id).await.map_err(Into::into) })
    }
}

/// The stable names as the fake Route 53 has them: every name and the marker must say
/// the same generation, one that passed its acceptance and still exists.
fn check_names(
    dns: &FakeDns,
    record: Option<&rehearse::engine::stage::StageRecord>,
    gens: &FakeGenerations<'_>,
    ever_pointed: &mut bool,
) -> Result<(), String> {
    use rehearse::providers::aws::dns::RecordKind;
    let records = dns.records();
    if records.is_empty() {
        return if *ever_pointed { Err("the stable names are gone".into()) } else { Ok(()) };
    }
    let marker = records.iter().find(|r| r.kind == RecordKind::Txt).ok_or("names without a generation marker")?;
    let n: u64 =
        marker.values[0].trim_matches('"').trim_start_matches("generation=").parse().map_err(|_| "bad marker")?;
    let record = record.ok_or("names exist, the stage's record does not")?;
    let gen = record.generation(n).ok_or(format!("the names point at generation {n}, which the record lacks"))?;
    if !gens.passed.borrow().contains(&gen.run_id) {
        return Err(format!("the names point at generation {n} ({}), which did not pass", gen.run_id));
    }
    if records.len() != 3 {
        return Err(format!("expected 2 names and the marker, found {records:?}"));
    }
    for r in &records {
        let want: Vec<String> = match r.kind {
            RecordKind::Txt => continue,
            RecordKind::Cname => gen.targets["db"].iter().map(|t| t.rsplit_once(':').unwrap().0.to_string()).collect(),
            RecordKind::A => gen.targets["web"].iter().map(|t| t.rsplit_once(':').unwrap().0.to_string()).collect(),
        };
        if r.values != want {
            return Err(format!("{} {:?} is {:?}, generation {n} is at {want:?}", r.name, r.kind, r.values));
        }
    }
    let live = gens.cloud.leftovers_by_run();
    let alive = live.get(&gen.run_id).map(Vec::as_slice).unwrap_or_default();
    if !alive.iter().any(|r| r.starts_with("db ") || r.contains("DBInstance"))
        && !alive.iter().any(|r| r.contains("instance"))
    {
        return Err(format!("the names point at generation {n}, which no longer exists: {live:?}"));
    }
    *ever_pointed = true;
    Ok(())
}

/// The current generation as the stage's record says, read without a call.
fn current_in(s3: &FakeS3) -> Option<u64> {
    let body = s3.peek(&rehearse::engine::stage::record_key("staging"))?;
    serde_json::from_slice::<rehearse::engine::stage::StageRecord>(&body).ok()?.current
}

/// What a stage scenario exercised.
#[derive(Default)]
struct StageSeen {
    kills: u64,
    promotions: u64,
    failed: u64,
    errors: u64,
}

fn stage_scenario(seed: u64, loaded: &description::Loaded, state: &Path) -> Result<StageSeen, String> {
    use rehearse::engine::rebuild::{destroy, fresh_record, rebuild, Outcome, Plan, Stagehand};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(seed, Faults::chaos());
        let production = cloud.production();
        let s3 = Arc::new(FakeS3::new(seed, S3Faults::chaos()));
        let dns = Arc::new(FakeDns::new(seed, DnsFaults::chaos()));
        let stage = loaded.desc.stage.clone().expect("the description has a stage");
        let names = rehearse::providers::aws::dns::Route53Names {
            api: dns.clone(),
            zone: stage.zone.clone().unwrap(),
            ttl: stage.record_ttl.as_secs(),
            names: stage.names.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
            databases: vec!["db".into()],
        };
        let gens = FakeGenerations {
            cloud: cloud.clone(),
            s3: s3.clone(),
            loaded,
            state: state.to_path_buf(),
            seed,
            rng: std::cell::Cell::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d)),
            passed: Default::default(),
            force_pass: std::cell::Cell::new(false),
            downs: std::cell::Cell::new(0),
        };
        let drain = Duration::from_secs(300);
        // The stage's clock follows virtual time: a drain's end is seen when it comes.
        let (wall0, virtual0) = (chrono::Utc::now(), tokio::time::Instant::now());
        let now = move || wall0 + chrono::Duration::from_std(virtual0.elapsed()).unwrap();
        let hand = Stagehand { store: s3.as_ref(), names: &names, gens: &gens, reporter: &Silent, now: &now };
        let fresh = || fresh_record(&stage, &loaded.desc.name, "aws", &loaded.desc.databases, drain);
        let mut seen = StageSeen::default();
        let mut ever_pointed = false;
        // Three nightly rebuilds, each killed at a random instant three times in four;
        // then rebuilds until one promotes its generation (a rebuild may fail under
        // an outage, as a night's can: the next night's follows an hour later here).
        let mut promoted_last = false;
        for step in 0..18u64 {
            let last = step >= 3;
            if last && promoted_last {
                break;
            }
            gens.force_pass.set(last);
            let run_id = format!("r-20261127-{step:06}-{seed:06x}");
            let plan = Plan { stage: &stage, fresh: fresh(), release: "v2".into(), run_id: run_id.clone(), drain };
            let signals = Signals::none();
            let run = rebuild(&hand, plan, "stage-password-0123456789", &signals);
            // Killed three times in four: at a random instant within a rebuild's usual
            // length (a restore, instances, the drain: ~45 min), or at the instants
            // that matter most — right after the promotion reached the record, or
            // while a change of the names is on its way.
            let kill = !last && gens.draw() < 0.75;
            let result = if kill {
                let how = gens.draw();
                let promoted_before = current_in(&s3);
                let (mut writes, mut applied) = (s3.writes(), dns.applied());
                let watcher = async {
                    if how < 0.5 {
                        tokio::time::sleep(Duration::from_secs_f64(gens.draw() * 2700.0)).await;
                    } else if how < 0.75 {
                        // The moment the promotion is in the record, before any name moved.
                        while current_in(&s3) == promoted_before {
                            if writes.changed().await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        }
                    } else if applied.changed().await.is_err() {
                        // The moment a change of the names is applied, before INSYNC.
                        std::future::pending::<()>().await;
                    }
                };
                // `biased`: when both are ready, the run is polled first, every time
                // (tokio picks at random otherwise, and the seed must say everything).
                tokio::select! {
                    biased;
                    r = run => Some(r),
                    () = watcher => None,
                }
            } else {
                Some(run.await)
            };
            if std::env::var("REHEARSE_SEED").is_ok() {
                eprintln!("step {step} at {:?}: {result:?}", tokio::time::Instant::now());
                eprintln!("  live: {:?}", cloud.leftovers_by_run());
                eprintln!("  dns: {:?} calls {:?}", dns.records(), dns.calls());
                let body = s3.peek(&rehearse::engine::stage::record_key("staging")).unwrap_or_default();
                if let Ok(r) = serde_json::from_slice::<rehearse::engine::stage::StageRecord>(&body) {
                    for g in &r.generations {
                        eprintln!("  gen {} {:?} {:?}", g.number, g.fate, g.reason);
                    }
                }
                eprintln!(
                    "  calls: {:?}",
                    cloud.calls().iter().filter(|c| c.mutating && c.target.contains("-db")).collect::<Vec<_>>()
                );
            }
            match &result {
                None => {
                    seen.kills += 1;
                    // Half the time an operator runs `down` on the killed generation
                    // before the next rebuild (which tidies it up either way) — which
                    // `down` refuses when it is the stage's current generation.
                    let record = rehearse::engine::stage::load(s3.as_ref(), "staging").await.ok().flatten();
                    let current = record.is_some_and(|(r, _)| r.is_current_run(&run_id));
                    if gens.draw() < 0.5 && !current && gens.down(&run_id).await.is_err() {
                        seen.errors += 1;
                    }
                }
                Some(Ok(Outcome::Promoted { current, .. })) => {
                    seen.promotions += 1;
                    promoted_last = last && current.run_id == run_id;
                }
                Some(Ok(Outcome::NotPromoted { .. })) => seen.failed += 1,
                Some(Err(_)) => seen.errors += 1,
            }
            let record = rehearse::engine::stage::load(s3.as_ref(), "staging").await.map_err(|e| e.to_string())?;
            check_names(&dns, record.as_ref().map(|(r, _)| r), &gens, &mut ever_pointed)
                .map_err(|e| format!("after step {step} ({}): {e}", if kill { "killed" } else { "ran" }))?;
            // The next night's rebuild comes later: drains have ended by then.
            tokio::time::sleep(Duration::from_secs_f64(gens.draw() * 7200.0)).await;
        }
        if !promoted_last {
            return Err("fifteen rebuilds in a row without a kill did not promote a generation".into());
        }
        // Nothing leaks: only the current generation is left, then nothing at all.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let (record, _) = rehearse::engine::stage::load(s3.as_ref(), "staging").await.unwrap().unwrap();
        let current = record.current_generation().unwrap().run_id.clone();
        let live = cloud.leftovers_by_run();
        if live.keys().any(|run| *run != current) {
            return Err(format!("generations other than the current one ({current}) left: {live:?}"));
        }
        destroy(&hand, &record).await.map_err(|e| format!("destroy: {e}"))?;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        if !cloud.leftovers().is_empty() {
            return Err(format!("left after stage destroy: {:?}", cloud.leftovers()));
        }
        if !dns.records().is_empty() {
            return Err(format!("records left after stage destroy: {:?}", dns.records()));
        }
        if s3.keys().iter().any(|k| k.starts_with("stages/")) {
            return Err(format!("the stage's objects left: {:?}", s3.keys()));
        }
        // The shipped policy refuses an unconditional write or delete of a stage's
        // objects (issue 23, attack 10): rehearse sends none.
        let blind: Vec<String> = s3.unconditional().into_iter().filter(|w| !is_report_or_log_write(w)).collect();
        if !blind.is_empty() {
            return Err(format!("writes without If-None-Match/If-Match: {blind:?}"));
        }
        if !cloud.violations().is_empty() {
            return Err(format!("violations: {:?}", cloud.violations()));
        }
        if cloud.production() != production {
            return Err("production changed".into());
        }
        Ok(seen)
    })
}

/// Whether an unconditional write (`PutObject KEY`) is of a run's report or logs, the
/// one kind the shipped policy lets rehearse write again without a condition.
fn is_report_or_log_write(w: &str) -> bool {
    let Some(key) = w.strip_prefix("PutObject runs/") else { return false };
    matches!(key.split('/').nth(1), Some("report" | "logs"))
}

/// Seeded nightly rebuilds of a stage (200 in `make test-full`, 50 in `make test`:
/// `common::seeds`) on the fake cloud, Route 53 and S3 (all
/// with faults), killed at random instants and followed by `down` or the next
/// rebuild: the stable names always point at one generation that passed its
/// acceptance and still exists — never at none once they existed, never at two — and
/// in the end only the current generation is left, then nothing.
#[test]
fn seeded_rebuilds_killed_at_random_keep_the_names_on_a_generation_that_passed() {
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let dir = tempfile::Builder::new().prefix("rehearse-stages-").tempdir_in(base).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/staging-aws.yaml")).unwrap();
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "");
    let path = dir.path().join("staging-aws.yaml");
    std::fs::write(&path, text).unwrap();
    let loaded = description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()));
    let seeds = common::seeds(0..200);
    let n = seeds.len();
    let (mut failures, mut total) = (Vec::new(), StageSeen::default());
    for seed in seeds {
        match stage_scenario(seed, &loaded, &dir.path().join(format!("s{seed}"))) {
            Ok(s) => {
                total.kills += s.kills;
                total.promotions += s.promotions;
                total.failed += s.failed;
                total.errors += s.errors;
            }
            Err(e) => failures
                .push(format!("seed {seed}: {e} (rerun: REHEARSE_SEED={seed} cargo nextest run seeded_rebuilds)")),
        }
    }
    assert!(failures.is_empty(), "{} failing scenario(s):\n{}", failures.len(), failures.join("\n"));
    eprintln!(
        "{n} stage scenarios: {} rebuilds killed, {} promoted, {} not promoted, {} ended on an error",
        total.kills, total.promotions, total.failed, total.errors
    );
    if n >= 20 {
        assert!(
            total.kills as usize > n / 2 && total.promotions as usize > n && total.failed as usize > n / 4,
            "too little variety"
        );
    }
}
