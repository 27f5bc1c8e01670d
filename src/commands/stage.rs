//! `rehearse rebuild` and `rehearse stage`: a stage rebuilt as cattle.
//!
//! A rebuild holds the stage's lock from start to end: it tidies what earlier rebuilds
//! left (a generation whose rebuild died mid-build is torn down, a drained one
//! retired), builds generation N+1 as a run of the description with the stage's stable
//! password, judges it by the suites, and only when they pass promotes it in the
//! stage's record (compare-and-swap) and points every stable name at it at once. The
//! generation it replaced serves the connections opened before the switch for the
//! drain, then is torn down. Whatever fails before the promotion leaves generation N
//! current and serving.
//!
//! The decisions are the engine's (`engine::rebuild`, `engine::stage`): this file
//! parses, picks the stage's names by its provider, calls one engine operation per
//! subcommand, prints its outcome and maps it to an exit code. What it still borrows
//! from other commands — a run, `down`, the store's locks, `env`'s printing — goes
//! through one adapter each (at the end of the file).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{load_or_report, print_json, reporter, runtime};
use crate::cli::{Format, Global, RebuildArgs, StageCommand};
use crate::description::{format_duration, Loaded, Stage};
use crate::engine::connection::Connection;
use crate::engine::events::Reporter;
use crate::engine::lifecycle::Options;
use crate::engine::rebuild::{
    destroy as engine_destroy, fresh_record, rebuild as engine_rebuild, Outcome, Plan, RebuildError, Stagehand,
};
use crate::engine::stage::connection::{self as stage_env, EnvError, NamesSeen};
use crate::engine::stage::password::password;
use crate::engine::stage::rollback::{Rollback, RollbackError};
use crate::engine::stage::{self as st, Fate, Generation, StageRecord};
use crate::engine::store::ObjectStore;
use crate::exit;
use crate::sys::signals::Signals;
use crate::sys::state::{self, StateUrl};
use names::{libpq_takes_require_auth, stable_names};
use runs::Runs;

mod names;
mod runs;

/// The stage's store and names, opened for a command.
struct Opened {
    store: Arc<dyn ObjectStore>,
    shared: Option<Arc<dyn ObjectStore>>,
    url: Option<StateUrl>,
}

async fn open(g: &Global) -> Result<Opened, i32> {
    let url = super::store::url(g)?;
    let shared = super::store::shared_for(url.clone()).await?;
    let store = super::store::lock_store_for(g, url.as_ref(), shared.clone())?;
    Ok(Opened { store, shared, url })
}

fn store_error(store: &dyn ObjectStore, what: &str, e: impl std::fmt::Display) -> i32 {
    errln!("error: {what} in the state store {}: {e}", store.url());
    exit::BUILD_FAILED
}

/// "still on generation 2 (release v1, backup …)", or that nothing serves yet.
fn still_on(current: Option<&Generation>, stage: &str) -> String {
    match current {
        Some(cur) => format!("stage `{stage}` still on {}", cur.describe()),
        None => format!("stage `{stage}` has no generation serving yet"),
    }
}

/// What `rebuild` was asked, parsed.
struct Asked<'a> {
    loaded: Loaded,
    stage: Stage,
    release: String,
    drain: Duration,
    lease: Duration,
    args: &'a RebuildArgs,
}

fn asked(args: &RebuildArgs) -> Result<Asked<'_>, i32> {
    let loaded = load_or_report(&args.file, args.release.as_deref())?;
    let Some(stage) = loaded.desc.stage.clone() else {
        errln!(
            "error: {} has no `stage:` section; a stage needs its name and a stable name per database and \
             service (see environments/staging.yaml)",
            args.file.display()
        );
        return Err(exit::USAGE);
    };
    let Some(release) = loaded.release_version(args.release.as_deref()) else {
        errln!(
            "error: no release version: pass `--release VERSION` or set `release.version` in {}",
            args.file.display()
        );
        return Err(exit::USAGE);
    };
    let drain = args.drain.unwrap_or(stage.drain);
    let lease = super::store::lease()?;
    Ok(Asked { loaded, stage, release, drain, lease, args })
}

pub(crate) fn rebuild(g: &Global, args: &RebuildArgs) -> i32 {
    let asked = match asked(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let g = &super::edge::run::described(g, &asked.loaded);
    super::with_signals(g, async |reporter, signals| {
        let opened = match open(g).await {
            Ok(o) => o,
            Err(code) => return code,
        };
        let purpose = format!("rehearse rebuild {} --release {}", args.file.display(), asked.release);
        let stage = asked.stage.name.as_str();
        locked(&opened, stage, &purpose, asked.lease, rebuild_locked(g, &asked, &opened, reporter, signals)).await
    })
}

/// A rebuild under the stage's lock: the engine's, with generations built as runs of
/// the description and torn down by `rehearse down`.
async fn rebuild_locked(
    g: &Global,
    asked: &Asked<'_>,
    opened: &Opened,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> i32 {
    let Asked { loaded, stage, release, drain, args, .. } = asked;
    let store = opened.store.as_ref();
    let name = stage.name.as_str();
    let fresh = fresh_record(stage, &loaded.desc.name, loaded.desc.provider().as_str(), &loaded.desc.databases, *drain);
    let names = match stable_names(g, opened, name, &fresh).await {
        Ok(n) => n,
        Err(e) => return e.said(),
    };
    let password = match password(store, name).await {
        Ok(p) => p,
        Err(e) => return store_error(store, "cannot read or make the stage's password", e),
    };
    let gens = Runs::new(g, Some((loaded, *args)), release, opened, reporter, signals, name);
    let plan = Plan { stage, fresh, release: release.clone(), run_id: state::new_run_id(), drain: *drain };
    let hand = Stagehand { store, names: names.as_ref(), gens: &gens, reporter, now: &Utc::now };
    match engine_rebuild(&hand, plan, &password, signals).await {
        Ok(Outcome::Promoted { current, switched_in, interrupted, .. }) => {
            errln!(
                "rehearse: stage `{name}` now on {}: every stable name switched {} ms after its acceptance passed",
                current.describe(),
                switched_in.as_millis()
            );
            if interrupted {
                exit::INTERRUPTED
            } else {
                exit::PASSED
            }
        }
        Ok(Outcome::NotPromoted { number, still_on: current, .. }) => {
            errln!("rehearse: generation {number} was not promoted; {}", still_on(current.as_ref(), name));
            // The run's own exit code says why; a run that "passed" without its
            // connection details is a build that failed.
            match gens.last_code.get() {
                Some(exit::PASSED) | None => exit::BUILD_FAILED,
                Some(code) => code,
            }
        }
        Err(e) => {
            errln!("error: stage `{name}`: {e}");
            match e {
                RebuildError::TearDown { .. } => exit::LEFTOVERS,
                _ => exit::BUILD_FAILED,
            }
        }
    }
}

pub(crate) fn stage(g: &Global, command: &StageCommand) -> i32 {
    match command {
        StageCommand::Status { stage } => with_record(g, stage, |opened, record| status(g, opened, stage, record)),
        StageCommand::Env { stage } => with_record(g, stage, |opened, record| env(g, opened, stage, record)),
        StageCommand::Rollback { stage } => with_record(g, stage, |opened, record| rollback(g, opened, stage, record)),
        StageCommand::Destroy { stage } => with_record(g, stage, |opened, record| destroy(g, opened, stage, record)),
        StageCommand::Forward { dir } => runtime().block_on(async {
            // A stage's name (its systemd unit's `rehearse stage forward staging`), or the
            // stage's directory (as `rebuild` starts it).
            let dir = match dir.to_str() {
                Some(name) if crate::description::decode::KeyRule::Identifier.check(name).is_ok() => {
                    super::store::local_root(g).join("stages").join(name)
                }
                _ => dir.clone(),
            };
            if let Err(e) = crate::sys::state::private_dir(&dir) {
                errln!("error: the stage's directory: {e}");
                return exit::USAGE;
            }
            match crate::providers::local::forward::serve(&dir).await {
                Ok(()) => exit::PASSED,
                Err(e) => {
                    errln!("error: {e}");
                    exit::BUILD_FAILED
                }
            }
        }),
    }
}

/// Runs `f` with the stage's record, or says there is no such stage.
fn with_record<F>(g: &Global, stage: &str, f: impl FnOnce(Opened, StageRecord) -> F) -> i32
where
    F: std::future::Future<Output = i32>,
{
    runtime().block_on(async {
        let opened = match open(g).await {
            Ok(o) => o,
            Err(code) => return code,
        };
        match st::load(opened.store.as_ref(), stage).await {
            Ok(Some((record, _))) => f(opened, record).await,
            Ok(None) => {
                errln!(
                    "error: no stage `{stage}` in the state store {} (a stage begins with `rehearse rebuild FILE`; \
                     pass --state if its description names another store)",
                    opened.store.url()
                );
                exit::USAGE
            }
            Err(e) => store_error(opened.store.as_ref(), &format!("cannot read the stage `{stage}`"), e),
        }
    })
}

async fn status(g: &Global, opened: Opened, stage: &str, record: StageRecord) -> i32 {
    let seen = match stable_names(g, &opened, stage, &record).await {
        Ok(names) => stage_env::seen(names.as_ref()).await,
        // Said; the record is still worth showing.
        Err(e) => {
            e.said();
            NamesSeen {
                pointing_at: None,
                unanswered: vec!["its stable names cannot be checked (see above)".to_string()],
            }
        }
    };
    // Names answered by something else than rehearse's are a failure of the stage.
    let code = if seen.unanswered.is_empty() { exit::PASSED } else { exit::BUILD_FAILED };
    if g.format == Format::Json {
        let value = serde_json::json!({
            "stage": record, "names_point_at": seen.pointing_at, "names_unanswered": seen.unanswered
        });
        return print_json(&value).map_or_else(|code| code, |()| code);
    }
    print_status(stage, &record, &seen);
    code
}

/// `stage status` as text: the current generation, the names, every generation.
fn print_status(stage: &str, record: &StageRecord, seen: &NamesSeen) {
    let now = Utc::now();
    // To the second: an age, not a measurement.
    let ago = |t: chrono::DateTime<Utc>| {
        format_duration(Duration::from_secs((now - t).to_std().unwrap_or_default().as_secs()))
    };
    outln!("stage {} ({} provider, environment {})", record.stage, record.provider, record.environment);
    match record.current_generation() {
        Some(cur) => {
            let promoted =
                cur.promoted_at.map(|t| format!(", promoted {} ({} ago)", t.format("%Y-%m-%d %H:%M UTC"), ago(t)));
            outln!("current: {}{}", cur.describe(), promoted.unwrap_or_default());
            for b in &cur.backups {
                if let Some(t) = b.taken_at {
                    outln!("  backup of `{}` is {} old", b.database, ago(t));
                }
            }
        }
        None => outln!("current: none (no generation has passed its acceptance yet)"),
    }
    outln!("stable names:");
    let targets = record.current_generation().map(|c| c.targets.clone()).unwrap_or_default();
    for (component, stable) in &record.names {
        let to = targets.get(component).map(|t| t.join(", ")).unwrap_or_else(|| "nothing".into());
        outln!("  {component:<12} {stable} -> {to}");
    }
    match (seen.pointing_at, record.current) {
        (Some(p), Some(c)) if p == c => outln!("  (they point at generation {p})"),
        (p, c) => outln!(
            "  warning: the names point at {}, the stage's record says {}; `rehearse rebuild` or `rehearse stage \
             rollback` points them again",
            p.map_or("nothing".to_string(), |p| format!("generation {p}")),
            c.map_or("none".to_string(), |c| format!("generation {c}"))
        ),
    }
    for why in &seen.unanswered {
        outln!("  error: {why}");
    }
    if !seen.unanswered.is_empty() {
        outln!("  {}", unanswered_remedy(stage));
    }
    outln!("generations:");
    for gen in record.generations.iter().rev() {
        let when = match gen.fate {
            Fate::Draining => gen.retire_at.map(|t| format!("retired after {}", t.format("%Y-%m-%d %H:%M:%S UTC"))),
            Fate::Retired => gen.retired_at.map(|t| format!("retired {}", t.format("%Y-%m-%d %H:%M UTC"))),
            Fate::Current => gen.promoted_at.map(|t| format!("promoted {}", t.format("%Y-%m-%d %H:%M UTC"))),
            _ => gen.reason.clone(),
        };
        outln!(
            "  {:>3}  {:<11} release {:<10} {}  {}",
            gen.number,
            gen.fate.as_str(),
            gen.release,
            gen.run_id,
            when.unwrap_or_default()
        );
    }
}

/// What to do when a stage's names are not answered by its forwarder alone.
fn unanswered_remedy(stage: &str) -> String {
    format!(
        "a client of the stable names would reach whatever answers them, and hand it the stage's password: stop any \
         process that is not rehearse's on those ports, then start the forwarder (`systemctl start \
         rehearse-forward@{stage}`, or `rehearse stage forward {stage}`; README: Staging as cattle)"
    )
}

/// How to reach the stage through its stable names, its password included.
async fn env(g: &Global, opened: Opened, stage: &str, record: StageRecord) -> i32 {
    let said = |e: EnvError| match e {
        EnvError::NoCurrent(_) => {
            errln!("error: {e}");
            exit::USAGE
        }
        EnvError::Unanswered { why, .. } => {
            for why in &why {
                errln!("error: stage `{stage}`: {why}");
            }
            errln!("error: not handing out the stage's connection: {}", unanswered_remedy(stage));
            exit::BUILD_FAILED
        }
        EnvError::Password(e) => store_error(opened.store.as_ref(), "cannot read the stage's password", e),
    };
    if let Err(e) = stage_env::serving(&record) {
        return said(e);
    }
    let names = match stable_names(g, &opened, stage, &record).await {
        Ok(n) => n,
        Err(e) => return e.said(),
    };
    match stage_env::env(opened.store.as_ref(), names.as_ref(), &record, libpq_takes_require_auth()).await {
        Ok(env) => print_stage_connection(g, &env.connection, &env.extra),
        Err(e) => said(e),
    }
}

async fn rollback(g: &Global, opened: Opened, stage: &str, record: StageRecord) -> i32 {
    let store = opened.store.as_ref();
    let said = |e: RollbackError| match e {
        RollbackError::NothingToReturnTo { .. } | RollbackError::Refused { .. } => {
            errln!("error: {e}");
            exit::USAGE
        }
        RollbackError::Record(e) => store_error(store, "cannot roll back", e),
        RollbackError::NotSwitched(_) => {
            errln!("error: {e}");
            exit::BUILD_FAILED
        }
    };
    let back = match Rollback::of(&record) {
        Ok(b) => b,
        Err(e) => return said(e),
    };
    let names = match stable_names(g, &opened, stage, &record).await {
        Ok(n) => n,
        Err(e) => return e.said(),
    };
    let drain = Duration::from_secs(record.drain_secs);
    match back.run(store, names.as_ref(), stage, drain, Utc::now()).await {
        Ok(done) => {
            let cur = done.record.current_generation().map(Generation::describe).unwrap_or_default();
            outln!(
                "stage `{stage}` rolled back to {cur}; generation {} drains until {} and is retired by the next \
                 rebuild",
                done.from,
                done.retire_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            exit::PASSED
        }
        Err(e) => said(e),
    }
}

/// Everything of the stage: every generation still there, the names, the record.
async fn destroy(g: &Global, opened: Opened, stage: &str, record: StageRecord) -> i32 {
    let lease = match super::store::lease() {
        Ok(l) => l,
        Err(code) => return code,
    };
    let purpose = format!("rehearse stage destroy {stage}");
    locked(&opened, stage, &purpose, lease, destroy_locked(g, &opened, stage, &record)).await
}

async fn destroy_locked(g: &Global, opened: &Opened, name: &str, record: &StageRecord) -> i32 {
    let names = match stable_names(g, opened, name, record).await {
        Ok(n) => n,
        Err(e) => return e.said(),
    };
    let reporter = reporter(g);
    let signals = Signals::none();
    let gens = Runs::new(g, None, "", opened, reporter.as_ref(), &signals, name);
    let store = opened.store.as_ref();
    let hand = Stagehand { store, names: names.as_ref(), gens: &gens, reporter: reporter.as_ref(), now: &Utc::now };
    match engine_destroy(&hand, record).await {
        Ok(n) => {
            outln!("stage `{name}` destroyed: {n} generation(s) removed, its stable names and its record");
            exit::PASSED
        }
        Err(e) => {
            errln!("error: stage `{name}`: {e}");
            match e {
                RebuildError::TearDown { .. } | RebuildError::Names(_) => exit::LEFTOVERS,
                _ => exit::BUILD_FAILED,
            }
        }
    }
}

// What this command still borrows from the others, one adapter each: a run of the
// description, `down` of one generation, the store's locks, `env`'s printing.

/// A generation built as `rehearse run` builds a run (its verdict becoming its exit
/// code as a run's does): its exit code.
async fn run_generation(runs: &Runs<'_>, loaded: &Loaded, opts: Options) -> i32 {
    let opts = Options { exit_code: super::edge::run::exit_code, ..opts };
    super::edge::run::rehearse(runs.g, loaded, &opts, runs.opened.store.clone(), runs.reporter, runs.signals).await.code
}

/// `rehearse down RUN` of a generation (see [`super::edge::down::down_fetched`]): said,
/// and what happened.
pub(super) async fn down_generation(
    g: &Global,
    run_id: &str,
    generation: Option<st::StageRef>,
) -> super::edge::down::Down {
    super::edge::down::down_fetched(g, run_id, generation.as_ref()).await
}

/// `body` under the stage's lock (taken for `purpose`, given back after): its exit
/// code, or the lock's refusal.
async fn locked(
    opened: &Opened,
    stage: &str,
    purpose: &str,
    lease: Duration,
    body: impl std::future::Future<Output = i32>,
) -> i32 {
    let lock = st::lock_name(stage);
    let held = match super::edge::lock::take(opened.store.clone(), &lock, purpose, None, lease).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let code = body.await;
    super::edge::lock::give_back(held, &lock).await;
    code
}

/// The stage's connection printed as `rehearse env` prints a run's.
fn print_stage_connection(g: &Global, c: &Connection, extra: &[(&str, &str)]) -> i32 {
    super::edge::connection::print_connection_with(g, c, extra)
}
