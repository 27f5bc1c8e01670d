//! Game days on the fake cloud (tokio's paused clock): seeded rehearsals of the shop
//! whose faults hit its own instances and database at random instants — one web instance
//! terminated, the other stopped and started again, the worker rebooted, the database
//! rebooted (an RDS copy) or its Aurora cluster failed over — on an account that also
//! throttles, fails and loses or delays answers, the fault calls' too. A third run to their end; a third are
//! interrupted (Ctrl-C) at a random instant after their first fault was journaled; a
//! third are killed then (as by SIGKILL). Then `rehearse down`'s teardown from the
//! journal. Every fault ends reverted or with its resource torn down, nothing is left,
//! no call changes an untagged resource, production is unchanged. A failing seed is
//! printed; `REHEARSE_SEED=N` reruns just that one.

use std::path::Path;
use std::time::Duration;

use crate::common;
use common::Draw;
use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::events::Silent;
use rehearse::engine::journal::{self, Journal, Record};
use rehearse::engine::lifecycle::{self, Options};
use rehearse::engine::teardown;
use rehearse::providers::aws::AwsProvider;
use rehearse::sys::signals::Signals;
use rehearse::sys::timing::Clock;
use rehearse::testkit::fake_cloud::{FakeCloud, Faults};

/// environments/shop-aws.yaml without what needs reachable hosts, with a game day whose
/// faults start at the seed's instants (Aurora for odd seeds).
fn description(dir: &Path, seed: u64, draw: &mut Draw) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-aws.yaml")).unwrap();
    let mut text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "");
    let aurora = seed % 2 == 1;
    if aurora {
        text = rehearse::testkit::scenarios::aurora_variant(&text, "shop-prod-aurora");
    }
    let mut at = || draw.below(600);
    let db = if aurora {
        format!("    db-failover: {{database: db, kind: failover, at: {}s}}\n", at())
    } else {
        format!("    db-reboot: {{database: db, kind: reboot, at: {}s}}\n", at())
    };
    let (terminate, stop, reboot) = (at(), at(), at());
    let duration = 60 + draw.below(540);
    text.push_str(&format!(
        "\nchaos:\n  steady: 0s\n  settle: 30s\n  faults:\n\
         {db}    web-terminate: {{service: web, instance: 0, kind: terminate, at: {terminate}s}}\n    \
         web-stop: {{service: web, instance: 1, kind: stop, at: {stop}s, duration: {duration}s}}\n    \
         worker-reboot: {{service: worker, kind: reboot, at: {reboot}s}}\n"
    ));
    let path = dir.join(format!("gameday-{seed}.yaml"));
    std::fs::write(&path, text).unwrap();
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

/// How a scenario ended, and what it saw.
#[derive(Default)]
struct Seen {
    interrupted: bool,
    killed: bool,
    /// Killed with a fault journaled and not yet reverted (left for `down`).
    killed_during_a_fault: bool,
    /// Faults that ran to their end in runs that did.
    ran: usize,
    /// The fault calls the cloud received.
    fault_calls: usize,
    /// The build failed (the cloud's faults) before the game day began.
    not_reached: bool,
    /// A stopped instance was started again when its fault ended.
    restarted: bool,
}

/// The journal's ids whose last record is not `deleted`.
fn open_ids(path: &Path) -> Vec<String> {
    let records = journal::read(path).unwrap_or_default();
    let state = journal::State::from_records(&records);
    state.remaining().into_iter().map(|e| e.id.clone()).collect()
}

fn scenario(seed: u64, dir: &Path) -> Result<Seen, String> {
    let mut draw = Draw(seed ^ 0x6A09_E667_F3BC_C908);
    let loaded = description(dir, seed, &mut draw);
    let state = dir.join(format!("s{seed}"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        // The API's faults (throttling, 5xx, lost and late answers) on every call, the
        // game day's included; not those that end a build before its game day (no
        // capacity, a failed restore, an outage longer than patience: the fault
        // scenarios have them).
        let faults = Faults { capacity: 0.0, failed_restore: 0.0, outage: 0.0, ..Faults::chaos() };
        let cloud = FakeCloud::new(seed, faults);
        let production = cloud.production();
        let provider =
            AwsProvider::new(cloud.clone(), rehearse::providers::aws::POLL_FIRST, rehearse::providers::aws::POLL_MAX)
                .seeded(seed)
                .with_work_root(&state.join("work"));
        let run_id = format!("r-20261208-000000-{seed:06x}");
        let journal_path = state.join("runs").join(&run_id).join("journal.jsonl");
        let opts = Options {
            up_only: false,
            state_root: state.clone(),
            chaos: Some(Vec::new()),
            ..rehearse::testkit::pool::options(&run_id, &state, DestroyPolicy::Always, None)
        };
        let (signals, trigger) = Signals::manual();
        let mode = seed % 3;
        let after_first_fault = draw.below(300);
        let run = lifecycle::run(&provider, &loaded, &opts, &Silent, &signals);
        // Waits until the first fault is journaled, then a while more.
        let first_fault = async {
            loop {
                let text = std::fs::read_to_string(&journal_path).unwrap_or_default();
                if text.contains("\"chaos.") {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tokio::time::sleep(Duration::from_secs(after_first_fault)).await;
        };
        let mut seen = Seen::default();
        let outcome = match mode {
            0 => Some(run.await),
            1 => {
                let watcher = async {
                    first_fault.await;
                    trigger.interrupt();
                    std::future::pending::<()>().await;
                };
                let o = tokio::select! {
                    o = run => o,
                    _ = watcher => unreachable!("the watcher never ends"),
                };
                seen.interrupted = signals.count() > 0;
                Some(o)
            }
            _ => {
                tokio::select! {
                    o = run => Some(o),
                    _ = first_fault => None,
                }
            }
        };
        drop(provider);
        match outcome {
            Some(o) => {
                let o = o.map_err(|e| format!("the run did not start: {e}"))?;
                // Whatever it did, the run's own end reverted every fault or tore its
                // resource down: no fault is left journaled.
                let open: Vec<String> =
                    open_ids(&journal_path).into_iter().filter(|i| i.starts_with("chaos.")).collect();
                if !open.is_empty() {
                    return Err(format!("the run ended with faults still journaled: {open:?}"));
                }
                let chaos = &o.report.chaos;
                let Some(chaos) = chaos else {
                    // Only a build the cloud's faults broke (no capacity, a failed
                    // restore) ends without its game day.
                    if mode == 0 && o.report.failure.is_none() {
                        return Err("a run to its end without its game day, and no failure".into());
                    }
                    seen.not_reached = true;
                    return Ok(seen);
                };
                seen.ran = chaos.faults.iter().filter(|f| f.skipped.is_none() && f.ended_ms.is_some()).count();
                // A stop that ran its course was reverted: its instance started again.
                let stop = chaos.faults.iter().find(|f| f.name == "web-stop");
                if stop.is_some_and(|f| f.skipped.is_none() && f.ended_ms.is_some()) && !seen.interrupted {
                    let calls = cloud.calls();
                    let stopped = calls.iter().position(|c| c.op == "StopInstances");
                    let started = calls.iter().rposition(|c| c.op == "StartInstances");
                    if !matches!((stopped, started), (Some(a), Some(b)) if a < b) {
                        return Err("web-stop ran its course, but its instance was not started again".into());
                    }
                    seen.restarted = true;
                }
            }
            None => {
                seen.killed = true;
                seen.killed_during_a_fault = open_ids(&journal_path).iter().any(|i| i.starts_with("chaos."));
            }
        }
        seen.fault_calls = cloud
            .calls()
            .iter()
            .filter(|c| {
                ["StopInstances", "StartInstances", "RebootInstances", "RebootDBInstance", "FailoverDBCluster"]
                    .contains(&c.op)
            })
            .count();
        // `rehearse down RUN_ID`, with a fresh provider, until it says complete.
        let journal = Journal::open(&journal_path).map_err(|e| format!("no journal: {e}"))?;
        let down =
            AwsProvider::new(cloud.clone(), rehearse::providers::aws::POLL_FIRST, rehearse::providers::aws::POLL_MAX)
                .seeded(!seed)
                .with_work_root(&state.join("work"));
        let mut complete = false;
        for _ in 0..6 {
            if teardown::run(&down, &journal, &Silent, &Signals::none(), 1, &Clock::new()).await.complete() {
                complete = true;
                break;
            }
        }
        // Deletions in progress finish in virtual time.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        if std::env::var("REHEARSE_SEED").is_ok() {
            eprintln!("{}", std::fs::read_to_string(&journal_path).unwrap_or_default());
            eprintln!("calls: {:?}", cloud.calls().iter().filter(|c| c.mutating).collect::<Vec<_>>());
        }
        let left = cloud.leftovers();
        if !complete || !left.is_empty() {
            return Err(format!("left behind: {left:?} (down complete: {complete})"));
        }
        let open = open_ids(&journal_path);
        if !open.is_empty() {
            return Err(format!("down left journaled: {open:?}"));
        }
        // The journal says each fault started before its call and ended after.
        let records = journal::read(&journal_path).map_err(|e| e.to_string())?;
        let fault_records =
            records.iter().filter(|r| matches!(r, Record::Intent { id, .. } if id.starts_with("chaos."))).count();
        if seen.fault_calls > 0 && fault_records == 0 {
            return Err("faults were injected without being journaled".into());
        }
        let violations = cloud.violations();
        if !violations.is_empty() {
            return Err(format!("violations (a change to what the run does not own): {violations:?}"));
        }
        if cloud.production() != production {
            return Err("production changed".into());
        }
        Ok(seen)
    })
}

/// Seeded game days on the fake cloud (240 in `make test-full`, 60 in `make test`).
#[test]
fn seeded_game_days_on_the_cloud_revert_every_fault_and_leave_nothing() {
    let base = if Path::new("/dev/shm").is_dir() { Path::new("/dev/shm") } else { Path::new("/tmp") };
    let dir = tempfile::Builder::new().prefix("rehearse-gamedays-").tempdir_in(base).unwrap();
    let seeds = common::seeds(0..240);
    let n = seeds.len();
    let mut failures = Vec::new();
    let (mut interrupted, mut killed, mut killed_during, mut ran, mut calls, mut not_reached, mut restarted) =
        (0, 0, 0, 0, 0, 0, 0);
    for seed in seeds {
        match scenario(seed, dir.path()) {
            Ok(s) => {
                interrupted += usize::from(s.interrupted);
                killed += usize::from(s.killed);
                killed_during += usize::from(s.killed_during_a_fault);
                ran += s.ran;
                calls += s.fault_calls;
                not_reached += usize::from(s.not_reached);
                restarted += usize::from(s.restarted);
            }
            Err(e) => failures.push(format!(
                "seed {seed}: {e} (rerun: REHEARSE_SEED={seed} cargo nextest run seeded_game_days_on_the_cloud)"
            )),
        }
    }
    assert!(failures.is_empty(), "{} failing scenario(s):\n{}", failures.len(), failures.join("\n"));
    eprintln!(
        "{n} game days: {interrupted} interrupted during a fault, {killed} killed ({killed_during} with a fault \
         journaled and not reverted, left to `down`), {not_reached} failed to build before their game day; {ran} \
         faults ran to their end ({restarted} stopped instances started again); {calls} fault calls sent"
    );
    if n >= 20 {
        assert!(interrupted > n / 6 && killed > n / 6, "{interrupted} interrupted, {killed} killed of {n}");
        assert!(killed_during > 0, "no run was killed while a fault lasted");
        assert!(ran > n, "only {ran} faults ran to their end in {n} game days");
        assert!(restarted > 0, "no stopped instance was started again");
    }
}
