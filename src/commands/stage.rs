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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{load_or_report, print_json, reporter, runtime};
use crate::cli::{Format, Global, RebuildArgs, StageCommand};
use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::description::{format_duration, DestroyPolicy, Loaded, Stage};
use crate::engine::connection::Connection;
use crate::engine::events::Reporter;
use crate::engine::lifecycle::Options;
use crate::engine::rebuild::{
    destroy as engine_destroy, fresh_record, rebuild as engine_rebuild, Built, Generations, LocalFuture, Outcome, Plan,
    RebuildError, Spec, Stagehand,
};
use crate::engine::stage::{self as st, Fate, Generation, GenerationBackup, StableNames, StageRecord};
use crate::engine::store::{put_checked, retrying, Condition, ObjectStore, StoreError};
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

/// The stage `stage`'s stable names as its record (checked against `stage` when it
/// was loaded) or, for a rebuild, its description has them. The stage's directory is
/// built from `stage`, the name given on the command line or in the description.
async fn stable_names(
    g: &Global,
    opened: &Opened,
    stage: &str,
    record: &StageRecord,
) -> Result<Box<dyn StableNames>, i32> {
    if let Err(why) = record.check(stage) {
        errln!("error: the stage `{stage}`: {why}");
        return Err(exit::USAGE);
    }
    match record.provider.as_str() {
        "local" => {
            let mut ports = BTreeMap::new();
            for (name, stable) in &record.names {
                let port = stable.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                match port {
                    Some(p) => ports.insert(name.clone(), p),
                    None => {
                        errln!("error: the stage's record names `{stable}` for `{name}`, which is not a local port");
                        return Err(exit::BUILD_FAILED);
                    }
                };
            }
            let dir = super::store::local_root_for(g, opened.url.as_ref()).join("stages").join(stage);
            crate::providers::local::forward::LocalNames::new(&dir, ports)
                .map(|n| Box::new(n) as Box<dyn StableNames>)
                .map_err(|e| {
                    errln!("error: the stage's directory {}: {e}", dir.display());
                    exit::USAGE
                })
        }
        "aws" => {
            let Some(zone) = record.zone.clone() else {
                errln!("error: the stage `{}` names no Route 53 zone (`stage.zone`)", record.stage);
                return Err(exit::USAGE);
            };
            let names = crate::providers::aws::dns::Route53Names {
                api: crate::providers::aws::sdk::route53::Route53::new().await,
                zone,
                // The description allows 1 s to an hour; the record is anyone's.
                ttl: record.record_ttl_secs.clamp(1, 3600),
                names: record.names.clone(),
                databases: record.databases.keys().cloned().collect(),
            };
            // Every name it will upsert or delete must lie inside the zone.
            if let Err(why) = names.check_in_zone().await {
                errln!("error: the stage `{stage}`: {why}");
                return Err(exit::USAGE);
            }
            Ok(Box::new(names))
        }
        other => {
            errln!("error: the stage `{}` is on the unknown provider `{other}`", record.stage);
            Err(exit::USAGE)
        }
    }
}

/// The stage's database password: made once, kept in the store, the same for every
/// generation (a client configured once keeps working).
async fn password(store: &dyn ObjectStore, stage: &str) -> Result<String, StoreError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Secret {
        password: String,
    }
    let key = st::secret_key(stage);
    if let Some(o) = retrying(|| store.get(&key)).await? {
        if let Ok(s) = serde_json::from_slice::<Secret>(&o.body) {
            return Ok(s.password);
        }
    }
    let mine = Secret { password: crate::secrets::generate() };
    let body = serde_json::to_vec(&mine).map_err(|e| StoreError::Failed(e.to_string()))?;
    match put_checked(store, &key, &body, Condition::Absent).await {
        Ok(_) => Ok(mine.password),
        // Someone else made it first: theirs is the stage's.
        Err(StoreError::PreconditionFailed) => {
            let o = retrying(|| store.get(&key)).await?.ok_or(StoreError::PreconditionFailed)?;
            serde_json::from_slice::<Secret>(&o.body).map(|s| s.password).map_err(|e| StoreError::Failed(e.to_string()))
        }
        Err(e) => Err(e),
    }
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

pub(crate) fn rebuild(g: &Global, args: &RebuildArgs) -> i32 {
    let loaded = match load_or_report(&args.file, args.release.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(stage) = loaded.desc.stage.clone() else {
        errln!(
            "error: {} has no `stage:` section; a stage needs its name and a stable name per database and \
             service (see environments/staging.yaml)",
            args.file.display()
        );
        return exit::USAGE;
    };
    let Some(release) = loaded.release_version(args.release.as_deref()) else {
        errln!(
            "error: no release version: pass `--release VERSION` or set `release.version` in {}",
            args.file.display()
        );
        return exit::USAGE;
    };
    let drain = match &args.drain {
        None => stage.drain,
        Some(text) => {
            match crate::description::bounded_duration("--drain", text, Duration::ZERO, crate::description::MAX_DRAIN) {
                Ok(d) => d,
                Err(why) => {
                    errln!("error: {why}");
                    return exit::USAGE;
                }
            }
        }
    };
    let lease = match super::store::lease() {
        Ok(l) => l,
        Err(code) => return code,
    };
    let g = &super::run::described(g, &loaded);
    super::with_signals(g, async |reporter, signals| {
        let opened = match open(g).await {
            Ok(o) => o,
            Err(code) => return code,
        };
        let lock = st::lock_name(&stage.name);
        let purpose = format!("rehearse rebuild {} --release {release}", args.file.display());
        let held = match super::lock::take(opened.store.clone(), &lock, &purpose, None, lease).await {
            Ok(l) => l,
            Err(code) => return code,
        };
        let code = rebuild_locked(g, &loaded, &stage, release, drain, args, &opened, reporter, signals).await;
        super::lock::give_back(held, &lock).await;
        code
    })
}

/// A rebuild under the stage's lock: the engine's, with generations built as runs of
/// the description and torn down by `rehearse down`.
#[allow(clippy::too_many_arguments)]
async fn rebuild_locked(
    g: &Global,
    loaded: &Loaded,
    stage: &Stage,
    release: String,
    drain: Duration,
    args: &RebuildArgs,
    opened: &Opened,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> i32 {
    let store = opened.store.as_ref();
    let name = stage.name.as_str();
    let fresh = fresh_record(stage, &loaded.desc.name, loaded.desc.provider().as_str(), &loaded.desc.databases, drain);
    let names = match stable_names(g, opened, name, &fresh).await {
        Ok(n) => n,
        Err(code) => return code,
    };
    let password = match password(store, name).await {
        Ok(p) => p,
        Err(e) => return store_error(store, "cannot read or make the stage's password", e),
    };
    let gens =
        Runs { g, loaded: Some(loaded), release: &release, args: Some(args), opened, reporter, signals, stage: name };
    let plan = Plan { stage, fresh, release: release.clone(), run_id: state::new_run_id(), drain };
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
        Ok(Outcome::NotPromoted { number, exit_code, still_on: current }) => {
            errln!("rehearse: generation {number} was not promoted; {}", still_on(current.as_ref(), name));
            if exit_code == exit::PASSED {
                exit::BUILD_FAILED
            } else {
                exit_code
            }
        }
        Err(e) => {
            errln!("error: stage `{name}`: {e}");
            match e {
                RebuildError::TearDown(_) => exit::LEFTOVERS,
                _ => exit::BUILD_FAILED,
            }
        }
    }
}

/// Generations as runs of the description on this machine's provider.
struct Runs<'a> {
    g: &'a Global,
    /// The description and the command's arguments (a rebuild); none to tear down only.
    loaded: Option<&'a Loaded>,
    release: &'a str,
    args: Option<&'a RebuildArgs>,
    opened: &'a Opened,
    reporter: &'a dyn Reporter,
    signals: &'a Signals,
    stage: &'a str,
}

impl Generations for Runs<'_> {
    fn build<'a>(&'a self, spec: &'a Spec) -> LocalFuture<'a, Built> {
        let run_id = spec.run_id.as_str();
        Box::pin(async move {
            let (Some(loaded), Some(args)) = (self.loaded, self.args) else {
                return Built {
                    verdict: Verdict::BuildFailed,
                    exit_code: exit::BUILD_FAILED,
                    reason: Some("no description to build from".into()),
                    backups: Vec::new(),
                    connection: None,
                    kept: false,
                };
            };
            let url = self.opened.url.as_ref();
            let opts = Options {
                run_id: run_id.to_string(),
                release: self.release.to_string(),
                destroy: if args.keep_failed { DestroyPolicy::Passing } else { DestroyPolicy::Always },
                cold: args.cold,
                up_only: false,
                state_root: super::store::local_root_for(self.g, url),
                work_root: state::work_dir(),
                run_as: args.run_as.clone(),
                exit_code: super::run::exit_code,
                name: None,
                shared: self.opened.shared.clone(),
                stage: Some(spec.run(self.stage)),
                pins: Default::default(),
            };
            let code =
                super::run::rehearse(self.g, loaded, &opts, self.opened.store.clone(), self.reporter, self.signals)
                    .await
                    .code;
            let report = read_report(&opts.state_root, run_id);
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
                .then(|| Connection::read(&state::run_dir(&opts.state_root, run_id), run_id))
                .transpose();
            match connection {
                Ok(connection) => Built {
                    verdict,
                    exit_code: code,
                    kept: report.as_ref().is_some_and(|r| r.teardown.status.as_str() == "kept"),
                    reason: report.and_then(|r| r.reason),
                    backups,
                    connection,
                },
                Err(e) => Built {
                    verdict: Verdict::BuildFailed,
                    exit_code: exit::BUILD_FAILED,
                    reason: Some(format!("its connection details cannot be read: {e}")),
                    backups,
                    connection: None,
                    kept: false,
                },
            }
        })
    }

    fn tear_down<'a>(&'a self, run_id: &'a str, number: u64) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let generation = st::StageRef { stage: self.stage.to_string(), generation: number };
            match down_generation(self.g, run_id, Some(generation)).await {
                exit::PASSED => Ok(()),
                code => Err(format!("`rehearse down {run_id}` exited with {code}")),
            }
        })
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
    let opened = &opened;
    let (pointing_at, unanswered) = match stable_names(g, opened, stage, &record).await {
        Ok(names) => (
            names.pointing_at().await.ok().flatten(),
            names.unanswered().await.unwrap_or_else(|e| vec![format!("cannot tell who answers them: {e}")]),
        ),
        // Said already; the record is still worth showing.
        Err(_) => (None, vec!["its stable names cannot be checked (see above)".to_string()]),
    };
    // Names answered by something else than rehearse's are a failure of the stage.
    let code = if unanswered.is_empty() { exit::PASSED } else { exit::BUILD_FAILED };
    if g.format == Format::Json {
        let value =
            serde_json::json!({ "stage": record, "names_point_at": pointing_at, "names_unanswered": unanswered });
        return print_json(&value).map_or_else(|code| code, |()| code);
    }
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
    match (pointing_at, record.current) {
        (Some(p), Some(c)) if p == c => outln!("  (they point at generation {p})"),
        (p, c) => outln!(
            "  warning: the names point at {}, the stage's record says {}; `rehearse rebuild` or `rehearse stage \
             rollback` points them again",
            p.map_or("nothing".to_string(), |p| format!("generation {p}")),
            c.map_or("none".to_string(), |c| format!("generation {c}"))
        ),
    }
    for why in &unanswered {
        outln!("  error: {why}");
    }
    if !unanswered.is_empty() {
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
    code
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
    let opened = &opened;
    let Some(cur) = record.current_generation() else {
        errln!("error: stage `{stage}` has no current generation yet");
        return exit::USAGE;
    };
    // Handed out only while every name is answered by what rehearse set up for it.
    let names = match stable_names(g, opened, stage, &record).await {
        Ok(n) => n,
        Err(code) => return code,
    };
    let unanswered = names.unanswered().await.unwrap_or_else(|e| vec![format!("cannot tell who answers them: {e}")]);
    if !unanswered.is_empty() {
        for why in &unanswered {
            errln!("error: stage `{stage}`: {why}");
        }
        errln!("error: not handing out the stage's connection: {}", unanswered_remedy(stage));
        return exit::BUILD_FAILED;
    }
    let password = match password(opened.store.as_ref(), stage).await {
        Ok(p) => p,
        Err(e) => return store_error(opened.store.as_ref(), "cannot read the stage's password", e),
    };
    let host_port = |stable: &str, default_port: &str| match stable.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.to_string()),
        _ => (stable.to_string(), default_port.to_string()),
    };
    // The stage's databases ask for SCRAM (`--auth-host=scram-sha-256`): a client that
    // insists on it never sends the password to whatever else might answer a name.
    // libpq 16 and later honour `require_auth`; libpq 15 refuses a URL that has it.
    let require_auth = if libpq_takes_require_auth() { "?require_auth=scram-sha-256" } else { "" };
    let mut databases = BTreeMap::new();
    let mut services = BTreeMap::new();
    for (component, stable) in &record.names {
        if let Some(db) = record.databases.get(component) {
            let (host, port) = host_port(stable, &db.port);
            let url = format!("postgres://{}:{password}@{host}:{port}/{}{require_auth}", db.user, db.name);
            databases.insert(
                component.clone(),
                DatabaseOutputs {
                    host: host.clone(),
                    port: port.clone(),
                    name: db.name.clone(),
                    user: db.user.clone(),
                    password: password.clone(),
                    url,
                    endpoint: format!("{host}:{port}"),
                },
            );
        } else {
            let (host, port) = host_port(stable, "");
            let url = if port.is_empty() { format!("http://{host}") } else { format!("http://{host}:{port}") };
            services.insert(
                component.clone(),
                ServiceOutputs {
                    address: host.clone(),
                    port,
                    url: url.clone(),
                    addresses: vec![host],
                    urls: vec![url],
                },
            );
        }
    }
    let c = Connection { run_id: cur.run_id.clone(), databases, services };
    // libpq 15 ignores PGREQUIREAUTH; 16 and later refuse any authentication but SCRAM.
    let extra = if c.databases.is_empty() { vec![] } else { vec![("PGREQUIREAUTH", "scram-sha-256")] };
    super::access::print_connection_with(g, &c, &extra)
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
    let opened = &opened;
    let store = opened.store.as_ref();
    let name = stage.to_string();
    let (Some(current), Some(previous)) = (record.current, record.previous().map(|p| p.number)) else {
        errln!(
            "error: stage `{name}` has no generation to roll back to: the one before {} was retired (a rollback \
             is possible while the replaced generation drains: `rebuild --drain`)",
            record.current.map_or("the first".to_string(), |c| format!("generation {c}"))
        );
        return exit::USAGE;
    };
    let names = match stable_names(g, opened, &name, &record).await {
        Ok(n) => n,
        Err(code) => return code,
    };
    let now = Utc::now();
    let retire_at = st::retire_at(now, Duration::from_secs(record.drain_secs));
    let rolled = st::update(store, &name, |r| {
        let mut r = r.ok_or("the stage has no record")?;
        if r.current != Some(current) {
            return Err(format!("the stage moved to generation {} meanwhile", r.current.unwrap_or(0)));
        }
        match r.generation(previous) {
            Some(p) if p.fate == Fate::Draining => {}
            _ => return Err(format!("generation {previous} was retired meanwhile")),
        }
        r.promote(previous, now, retire_at);
        Ok(r)
    })
    .await;
    let record = match rolled {
        Ok(r) => r,
        Err(st::UpdateError::Refused(why)) => {
            errln!("error: cannot roll stage `{name}` back: {why}");
            return exit::USAGE;
        }
        Err(e) => return store_error(store, "cannot roll back", e),
    };
    if let Err(e) = st::converge(store, &name, names.as_ref()).await {
        errln!("error: rolled back in the stage's record, but the stable names could not be switched: {e}");
        return exit::BUILD_FAILED;
    }
    let cur = record.current_generation().map(Generation::describe).unwrap_or_default();
    outln!(
        "stage `{name}` rolled back to {cur}; generation {current} drains until {} and is retired by the next rebuild",
        retire_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    exit::PASSED
}

/// Everything of the stage: every generation still there, the names, the record.
async fn destroy(g: &Global, opened: Opened, stage: &str, record: StageRecord) -> i32 {
    let opened = &opened;
    let store = opened.store.as_ref();
    let name = stage.to_string();
    let lock = st::lock_name(&name);
    let lease = match super::store::lease() {
        Ok(l) => l,
        Err(code) => return code,
    };
    let held =
        match super::lock::take(opened.store.clone(), &lock, &format!("rehearse stage destroy {name}"), None, lease)
            .await
        {
            Ok(l) => l,
            Err(code) => return code,
        };
    let code = destroy_locked(g, opened, store, &name, &record).await;
    super::lock::give_back(held, &lock).await;
    code
}

async fn destroy_locked(g: &Global, opened: &Opened, store: &dyn ObjectStore, name: &str, record: &StageRecord) -> i32 {
    let names = match stable_names(g, opened, name, record).await {
        Ok(n) => n,
        Err(c) => return c,
    };
    let reporter = reporter(g);
    let signals = Signals::none();
    let gens = Runs {
        g,
        loaded: None,
        release: "",
        args: None,
        opened,
        reporter: reporter.as_ref(),
        signals: &signals,
        stage: name,
    };
    let hand = Stagehand { store, names: names.as_ref(), gens: &gens, reporter: reporter.as_ref(), now: &Utc::now };
    match engine_destroy(&hand, record).await {
        Ok(n) => {
            outln!("stage `{name}` destroyed: {n} generation(s) removed, its stable names and its record");
            exit::PASSED
        }
        Err(e) => {
            errln!("error: stage `{name}`: {e}");
            match e {
                RebuildError::TearDown(_) | RebuildError::Names(_) => exit::LEFTOVERS,
                _ => exit::BUILD_FAILED,
            }
        }
    }
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
