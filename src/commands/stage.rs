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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{load_or_report, print_json, reporter, runtime};
use crate::cli::{Format, Global, RebuildArgs, StageCommand};
use crate::description::{format_duration, DestroyPolicy, Loaded, Stage};
use crate::engine::connection::Connection;
use crate::engine::events::Reporter;
use crate::engine::lifecycle::Options;
use crate::engine::rebuild::{
    destroy as engine_destroy, fresh_record, rebuild as engine_rebuild, Built, Generations, LocalFuture, Outcome, Plan,
    RebuildError, Spec, Stagehand, TearDownError,
};
use crate::engine::stage::connection::{self as stage_env, EnvError, NamesSeen};
use crate::engine::stage::password::password;
use crate::engine::stage::rollback::{Rollback, RollbackError};
use crate::engine::stage::{self as st, Fate, Generation, GenerationBackup, RecordFault, StableNames, StageRecord};
use crate::engine::store::ObjectStore;
use crate::exit;
use crate::report::model::{RunReport, Verdict};
use crate::sys::signals::Signals;
use crate::sys::state::{self, StateUrl};

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

/// Why a stage's stable names cannot be reached from here.
#[derive(Debug, thiserror::Error)]
enum NamesOpenError {
    #[error("the stage `{stage}`: {source}")]
    Record {
        stage: String,
        #[source]
        source: RecordFault,
    },
    #[error("the stage's record names `{stable}` for `{name}`, which is not a local port")]
    NotAPort { name: String, stable: String },
    #[error("the stage's directory {}: {why}", .dir.display())]
    Directory { dir: PathBuf, why: String },
    #[error("the stage `{0}` names no Route 53 zone (`stage.zone`)")]
    NoZone(String),
    #[error("the stage `{stage}`: {why}")]
    OutsideZone { stage: String, why: String },
    #[error("the stage `{stage}` is on the unknown provider `{provider}`")]
    UnknownProvider { stage: String, provider: String },
}

impl NamesOpenError {
    /// Said, and its exit code.
    fn said(&self) -> i32 {
        errln!("error: {self}");
        match self {
            NamesOpenError::NotAPort { .. } => exit::BUILD_FAILED,
            _ => exit::USAGE,
        }
    }
}

/// The stage `stage`'s stable names as its record (checked against `stage` when it
/// was loaded) or, for a rebuild, its description has them, on the record's provider.
/// The stage's directory is built from `stage`, the name given on the command line or
/// in the description.
async fn stable_names(
    g: &Global,
    opened: &Opened,
    stage: &str,
    record: &StageRecord,
) -> Result<Box<dyn StableNames>, NamesOpenError> {
    record.check(stage).map_err(|source| NamesOpenError::Record { stage: stage.to_string(), source })?;
    match record.provider.as_str() {
        "local" => {
            let mut ports = BTreeMap::new();
            for (name, stable) in &record.names {
                let port = stable.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                let Some(p) = port else {
                    return Err(NamesOpenError::NotAPort { name: name.clone(), stable: stable.clone() });
                };
                ports.insert(name.clone(), p);
            }
            let dir = super::store::local_root_for(g, opened.url.as_ref()).join("stages").join(stage);
            match crate::providers::local::forward::LocalNames::new(&dir, ports) {
                Ok(n) => Ok(Box::new(n)),
                Err(why) => Err(NamesOpenError::Directory { dir, why }),
            }
        }
        "aws" => {
            let zone = record.zone.clone().ok_or_else(|| NamesOpenError::NoZone(record.stage.clone()))?;
            let names = crate::providers::aws::dns::Route53Names {
                api: crate::providers::aws::sdk::route53::Route53::new().await,
                zone,
                // The description allows 1 s to an hour; the record is anyone's.
                ttl: record.record_ttl_secs.clamp(1, 3600),
                names: record.names.clone(),
                databases: record.databases.keys().cloned().collect(),
            };
            // Every name it will upsert or delete must lie inside the zone.
            match names.check_in_zone().await {
                Ok(()) => Ok(Box::new(names)),
                Err(why) => Err(NamesOpenError::OutsideZone { stage: stage.to_string(), why }),
            }
        }
        other => Err(NamesOpenError::UnknownProvider { stage: record.stage.clone(), provider: other.to_string() }),
    }
}

fn read_report(state_root: &std::path::Path, run_id: &str) -> Option<RunReport> {
    crate::report::read_report(&state::run_dir(state_root, run_id).join("report")).ok()
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
    let drain = match &args.drain {
        None => stage.drain,
        Some(text) => {
            crate::description::bounded_duration("--drain", text, Duration::ZERO, crate::description::MAX_DRAIN)
                .map_err(|why| {
                    errln!("error: {why}");
                    exit::USAGE
                })?
        }
    };
    let lease = super::store::lease()?;
    Ok(Asked { loaded, stage, release, drain, lease, args })
}

pub(crate) fn rebuild(g: &Global, args: &RebuildArgs) -> i32 {
    let asked = match asked(args) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let g = &super::run::described(g, &asked.loaded);
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

/// Generations as runs of the description on this machine's provider.
struct Runs<'a> {
    g: &'a Global,
    /// The description and the command's arguments (a rebuild); none to tear down only.
    build_from: Option<(&'a Loaded, &'a RebuildArgs)>,
    release: &'a str,
    opened: &'a Opened,
    reporter: &'a dyn Reporter,
    signals: &'a Signals,
    stage: &'a str,
    /// The exit code of the last run built: the rebuild's, when its generation is not
    /// promoted.
    last_code: std::cell::Cell<Option<i32>>,
}

impl<'a> Runs<'a> {
    fn new(
        g: &'a Global,
        build_from: Option<(&'a Loaded, &'a RebuildArgs)>,
        release: &'a str,
        opened: &'a Opened,
        reporter: &'a dyn Reporter,
        signals: &'a Signals,
        stage: &'a str,
    ) -> Runs<'a> {
        Runs { g, build_from, release, opened, reporter, signals, stage, last_code: Default::default() }
    }

    /// What a run of generation `spec` came to, from its exit code and its report.
    fn built(&self, code: i32, state_root: &std::path::Path, run_id: &str) -> Built {
        let report = read_report(state_root, run_id);
        let backups = report
            .as_ref()
            .map(|r| {
                r.backups
                    .iter()
                    .map(|b| GenerationBackup {
                        database: b.database.clone(),
                        backup: b.backup.clone(),
                        taken_at: b.taken_at,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let verdict = report.as_ref().map_or(Verdict::BuildFailed, |r| r.verdict);
        let connection = (code == exit::PASSED && verdict == Verdict::Passed)
            .then(|| Connection::read(&state::run_dir(state_root, run_id), run_id))
            .transpose();
        match connection {
            Ok(connection) => Built {
                verdict,
                kept: report.as_ref().is_some_and(|r| r.teardown.status == "kept"),
                reason: report.and_then(|r| r.reason),
                backups,
                connection,
            },
            Err(e) => {
                self.last_code.set(Some(exit::BUILD_FAILED));
                Built {
                    verdict: Verdict::BuildFailed,
                    reason: Some(format!("its connection details cannot be read: {e}")),
                    backups,
                    connection: None,
                    kept: false,
                }
            }
        }
    }
}

impl Generations for Runs<'_> {
    fn build<'a>(&'a self, spec: &'a Spec) -> LocalFuture<'a, Built> {
        let run_id = spec.run_id.as_str();
        Box::pin(async move {
            self.last_code.set(None);
            let Some((loaded, args)) = self.build_from else {
                return Built {
                    verdict: Verdict::BuildFailed,
                    reason: Some("no description to build from".into()),
                    backups: Vec::new(),
                    connection: None,
                    kept: false,
                };
            };
            let opts = Options {
                run_id: run_id.to_string(),
                release: self.release.to_string(),
                destroy: if args.keep_failed { DestroyPolicy::Passing } else { DestroyPolicy::Always },
                cold: args.cold,
                up_only: false,
                state_root: super::store::local_root_for(self.g, self.opened.url.as_ref()),
                work_root: state::work_dir(),
                run_as: args.run_as.clone(),
                exit_code: super::run::exit_code,
                name: None,
                shared: self.opened.shared.clone(),
                stage: Some(spec.run(self.stage)),
                pins: Default::default(),
            };
            let code = run_generation(self, loaded, &opts).await;
            self.last_code.set(Some(code));
            self.built(code, &opts.state_root, run_id)
        })
    }

    fn tear_down<'a>(&'a self, run_id: &'a str, number: u64) -> LocalFuture<'a, Result<(), TearDownError>> {
        Box::pin(async move {
            let generation = st::StageRef { stage: self.stage.to_string(), generation: number };
            match down_generation(self.g, run_id, Some(generation)).await {
                exit::PASSED => Ok(()),
                code => Err(TearDownError::Failed(Box::new(DownExited { run_id: run_id.to_string(), code }))),
            }
        })
    }
}

/// `rehearse down` of a generation ended with an exit code (it said why as it ran).
#[derive(Debug, thiserror::Error)]
#[error("`rehearse down {run_id}` exited with {code}")]
struct DownExited {
    run_id: String,
    code: i32,
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
    if let Err(why) = crate::description::decode::KeyRule::Identifier.check(stage) {
        errln!("error: `{stage}` is not a stage name: {why}");
        return exit::USAGE;
    }
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

/// Whether this machine's libpq takes `require_auth` (16 and later): asked of its
/// `psql` itself, with a connection string that cannot connect anywhere — libpq 15 says
/// "invalid connection option" before trying.
fn libpq_takes_require_auth() -> bool {
    let psql = crate::providers::local::postgres::PgBin::find()
        .map(|b| b.dir.join("psql"))
        .unwrap_or_else(|_| std::path::PathBuf::from("psql"));
    let out = std::process::Command::new(psql)
        .args(["-X", "-w", "-d", "host=/nonexistent/rehearse-probe require_auth=scram-sha-256", "-c", ""])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output();
    out.is_ok_and(|o| {
        let err = String::from_utf8_lossy(&o.stderr);
        !err.is_empty() && !err.contains("require_auth")
    })
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

/// A generation built as `rehearse run` builds a run: its exit code.
async fn run_generation(runs: &Runs<'_>, loaded: &Loaded, opts: &Options) -> i32 {
    super::run::rehearse(runs.g, loaded, opts, runs.opened.store.clone(), runs.reporter, runs.signals).await.code
}

/// `rehearse down RUN` from a blocking thread (it runs its own runtime); with
/// `generation`, allowed to remove that generation of a stage — and only if the run's
/// journal says it is that generation.
pub(super) async fn down_generation(g: &Global, run_id: &str, generation: Option<st::StageRef>) -> i32 {
    let (g, run_id) = (g.clone(), run_id.to_string());
    tokio::task::spawn_blocking(move || {
        super::store::fetched(&g, Some(&run_id), &[super::store::Part::Journal, super::store::Part::Connection], || {
            super::down::down_run(&g, &run_id, None, generation.as_ref())
        })
        .unwrap_or_else(|code| code)
    })
    .await
    .unwrap_or(exit::BUILD_FAILED)
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
    let held = match super::lock::take(opened.store.clone(), &lock, purpose, None, lease).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let code = body.await;
    super::lock::give_back(held, &lock).await;
    code
}

/// The stage's connection printed as `rehearse env` prints a run's.
fn print_stage_connection(g: &Global, c: &Connection, extra: &[(&str, &str)]) -> i32 {
    super::access::print_connection_with(g, c, extra)
}

/// Whether the run is a stage's current generation (which `down` and `sweep` leave to
/// `rehearse stage destroy`): the stage's name, when it is.
/// A record that cannot be read counts as saying yes: removing a stage's serving
/// generation by mistake is the worse error.
pub(super) async fn current_generation_of(g: &Global, run_id: &str, stage: &st::StageRef) -> Option<String> {
    let unknown = || Some(format!("{} (its record cannot be read now)", stage.stage));
    let Ok(opened) = open(g).await else { return unknown() };
    match st::load(opened.store.as_ref(), &stage.stage).await {
        Ok(Some((record, _))) => record.is_current_run(run_id).then(|| stage.stage.clone()),
        Ok(None) => None,
        Err(_) => unknown(),
    }
}
