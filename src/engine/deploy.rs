//! A deploy rehearsed under load (`rehearse run FILE --release NEW --from OLD`): once
//! the copy serves the old release, the description's load starts against it; after
//! the steady window, the new release is unpacked beside the old one and its install
//! (its migrations) runs against the live copy while the old release still serves and
//! a lock sampler watches the database; then the services move to the new release
//! (`rolling`: each new instance healthy before the old one stops and the load follows
//! it, as a load balancer would; `restart`: the old stopped first); the load goes on
//! for the settling window. Every new resource is journaled before it exists, an old
//! instance is journaled gone once stopped: an interrupt or a failure at any point
//! leaves what the journal lists, which teardown removes.
//!
//! Local provider only for now: on aws the install runs on the runner and the services
//! are instances, which this does not yet move.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::events::Reporter;
use super::journal::Journal;
use super::provider::{Ctx, Output, Provider, RunInfo, StepError};
use crate::compare::deploy::{self as judged, Marks};
use crate::compare::load::{self, Request};
use crate::compare::locks::{self, MigrationFile, Sampler};
use crate::description::template::{self, Outputs, Scope, ServiceOutputs};
use crate::description::{Deploy, Loaded, Switch};
use crate::plan::{self, Kind, Plan, Resource};
use crate::report::model::{DeployReport, StepTiming};
use crate::sys::signals::Signals;
use crate::sys::timing::Clock;

mod settings;
mod twin;
use settings::defaults;
pub use settings::{refusal, settings};
pub use twin::{Twin, TwinReady, TwinState};

/// The most of one migration file read, and the most files.
const MAX_MIGRATION_FILE: u64 = 4 << 20;
const MAX_MIGRATION_FILES: usize = 2000;
/// The most waits kept in the report.
const MAX_WAITS: usize = 50;
/// How long an old instance keeps its requests in flight once the load has moved off
/// it (a rolling switch), before it is stopped.
const ROLLING_DRAIN: Duration = Duration::from_secs(2);

/// What the deploy phase works with: the run as the graph left it.
pub(super) struct Env<'a, P: Provider> {
    pub provider: &'a P,
    /// The baseline twin that gets the same load, in a compared deploy.
    pub twin: Option<&'a Twin>,
    pub loaded: &'a Loaded,
    /// The run as the old release runs it.
    pub info: &'a RunInfo,
    pub plan: &'a Plan,
    pub journal: &'a Journal,
    pub clock: &'a Clock,
    pub reporter: &'a dyn Reporter,
    pub steps: &'a Mutex<Vec<StepTiming>>,
    pub signals: &'a Signals,
}

/// How the deploy phase ended.
pub(super) struct Deployed {
    pub report: DeployReport,
    /// The new release's step that failed, with its resource id.
    pub failure: Option<(String, StepError)>,
    /// What the suites run with: the new release's services.
    pub outputs: Outputs,
    pub interrupted: bool,
}

/// The new release's resource of `old`: the same, under an id of its own.
fn next_of(old: &Resource) -> Resource {
    let mut r = old.clone();
    r.id = format!("next.{}", old.id);
    r
}

/// Rehearses the deploy of release `to` over the running environment (`outputs`).
pub(super) async fn rehearse<P: Provider>(env: &Env<'_, P>, to: &str, outputs: &Outputs) -> Deployed {
    // (The command refuses `--from` without a load: none here fails at the load.)
    let settings = settings(env.loaded).unwrap_or_else(|| defaults(None));
    // Waiting on the load, the release's install and its services: not rehearse's own time.
    let _external = env.clock.external();
    let mut d = Deploying {
        report: DeployReport {
            from: env.info.release_version.clone(),
            to: to.to_string(),
            switch: settings.switch.as_str().to_string(),
            interval_ms: locks::INTERVAL.as_millis() as u64,
            ..DeployReport::default()
        },
        failure: None,
        interrupted: false,
        marks: Marks::default(),
        analysis: locks::Analysis::default(),
        outputs: outputs.clone(),
        started: Instant::now(),
        lint: None,
    };
    // The new release's plan: its artifact, its installs and services as they render
    // for it.
    let new_plan = match plan::build(env.loaded, Some(to), Some(&env.info.run_id)) {
        Ok(p) => p,
        Err(e) => {
            d.fail("release", StepError::build(format!("cannot plan release {to}: {e}")));
            return d.end(env, &settings, Vec::new(), None);
        }
    };
    let next_dir = env.info.work_dir.join("release-next");
    d.outputs.release_version = to.to_string();
    d.outputs.release_dir = next_dir.display().to_string();
    let next = Next {
        info: RunInfo { release_version: to.to_string(), ..env.info.clone() },
        plan: new_plan,
        dir: next_dir,
        cancel: tokio::sync::watch::channel(false).1,
    };

    // The load, from the steady window to the end of the settling.
    let (requests, load_spec) = match load_requests(env.loaded, &settings) {
        Ok(x) => x,
        Err(e) => {
            d.fail("deploy", StepError::build(e));
            return d.end(env, &settings, Vec::new(), None);
        }
    };
    let Some(target) = outputs.services.get(&load_spec.target).and_then(|s| load::target(&s.url)) else {
        let e = format!("the load's target `{}` has no address to send requests to", load_spec.target);
        d.fail("deploy", StepError::build(e));
        return d.end(env, &settings, Vec::new(), None);
    };
    // In a compared deploy, the twin's load starts with this one, the same requests at
    // the same rate.
    let twin = match env.twin {
        Some(t) => match t.wait(env.signals).await {
            Some(TwinState::Serving(host, port)) => Some((host, port)),
            Some(TwinState::Gone(why)) => {
                d.report.twin =
                    Some(judged::TwinReport { release: d.report.from.clone(), gone: Some(why), ..Default::default() });
                None
            }
            None => {
                d.interrupted = true;
                return d.end(env, &settings, Vec::new(), None);
            }
        },
        None => None,
    };
    let (to_target, target_rx) = tokio::sync::watch::channel(target);
    let (stop_load, stop_rx) = tokio::sync::watch::channel(false);
    d.started = Instant::now();
    let (rate, timeout) = (load_spec.rate, load_spec.timeout);
    let replay = |target_rx: tokio::sync::watch::Receiver<(String, u16)>| {
        let (requests, stop_rx) = (requests.clone(), stop_rx.clone());
        tokio::spawn(async move { load::replay_until(&requests, target_rx, rate, timeout, stop_rx).await })
    };
    let load_task = replay(target_rx);
    // (The twin's address never changes: its sender lives as long as the replay.)
    let twin_target = twin.map(tokio::sync::watch::channel);
    let twin_task = twin_target.as_ref().map(|(_, rx)| replay(rx.clone()));

    // Steady, migrated, switched, settled: each part only after the one before it went
    // through; a signal during a wait ends the deploy there.
    let settled = !env.signals.sleep(settings.steady).await
        && d.migrate(env, &next, &settings, &load_spec.target).await
        && d.switch(env, &next, &settings, &load_spec.target, &to_target).await
        && !env.signals.sleep(settings.settle).await;
    if !settled && d.failure.is_none() {
        d.interrupted = env.signals.count() > 0 || d.interrupted;
    }
    stop_load.send_replace(true);
    let timed = load_task.await.unwrap_or_default();
    if let Some(task) = d.lint.take() {
        d.report.lint = linted(task, env.signals).await;
    }
    let twin_timed = match twin_task {
        Some(t) => Some(t.await.unwrap_or_default()),
        None => None,
    };
    d.end(env, &settings, timed, twin_timed)
}

/// The new release's side of the deploy.
struct Next {
    info: RunInfo,
    plan: Plan,
    dir: std::path::PathBuf,
    cancel: tokio::sync::watch::Receiver<bool>,
}

impl Next {
    /// The step context its resources are made with, over `outputs`.
    fn ctx<'a>(&'a self, env: &'a Env<'a, impl Provider>, outputs: &Outputs) -> Ctx<'a> {
        let d = &env.loaded.desc;
        let tctx = template::context(d, Some(&self.plan.release.artifact), outputs, Scope::Full);
        let (l, j, c, r, s) = (env.loaded, env.journal, env.clock, env.reporter, env.steps);
        Ctx::new(&self.info, l, &self.plan, j, c, r, s, tctx, self.cancel.clone()).with_release_dir(self.dir.clone())
    }
}

/// The deploy as it goes: what the report will say, and when each part happened.
struct Deploying {
    report: DeployReport,
    failure: Option<(String, StepError)>,
    interrupted: bool,
    marks: Marks,
    analysis: locks::Analysis,
    /// The services as they are now (the new release's once switched).
    outputs: Outputs,
    /// When the load started: every mark counts from it.
    started: Instant,
    /// The linter, reading the migration files meanwhile: waited for after the load.
    lint: Option<tokio::task::JoinHandle<crate::compare::lint::Lint>>,
}

impl Deploying {
    fn at(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn fail(&mut self, id: &str, e: StepError) {
        if self.failure.is_none() {
            self.failure = Some((id.to_string(), e));
        }
    }

    /// The new release unpacked beside the old one and its installs run against the
    /// copy, the locks watched meanwhile. False when the deploy stops here.
    async fn migrate<P: Provider>(&mut self, env: &Env<'_, P>, next: &Next, settings: &Deploy, target: &str) -> bool {
        let Some(release) = env.plan.resources.iter().find(|r| r.kind == Kind::LocalRelease) else {
            self.fail("deploy", StepError::build("a deploy is rehearsed on the local provider only, for now"));
            return false;
        };
        let release = next_of(release);
        match create(env, &release, &next.ctx(env, &self.outputs)).await {
            Ok(Output::Release { dir }) => self.outputs.release_dir = dir.display().to_string(),
            Ok(_) => {}
            Err(e) => {
                self.fail(&release.id, e);
                return false;
            }
        }
        let files = migration_files(&env.info.work_dir.join("release"), &next.dir, &settings.migrations);
        self.report.migration_files = files.iter().map(|f| f.name.clone()).collect();
        // The linter reads the files while the migration runs them: its findings are
        // shown beside what was measured.
        let lint = crate::compare::lint::find().filter(|_| !files.is_empty()).map(|tool| {
            let (dir, files) = (next.dir.clone(), files.clone());
            tokio::spawn(async move { crate::compare::lint::squawk(&tool, &dir, &files).await })
        });
        let database = watched_database(env.loaded, target);
        let sampler_start = self.at();
        let sampler = match database.and_then(|d| self.outputs.databases.get(d)) {
            Some(db) => match Sampler::start(db, locks::MIGRATION_APP, locks::INTERVAL).await {
                Ok(s) => Some(s),
                Err(e) => {
                    self.report.sampler_error = Some(e.to_string());
                    None
                }
            },
            None => {
                self.report.sampler_error = Some("the load's target uses no database of this description".into());
                None
            }
        };
        self.marks.migration_start_ms = self.at();
        let installs: Vec<Resource> =
            next.plan.resources.iter().filter(|r| r.kind == Kind::Install).map(next_of).collect();
        let mut failed = false;
        for res in &installs {
            if let Err(e) = create(env, res, &next.ctx(env, &self.outputs)).await {
                self.fail(&res.id, e);
                failed = true;
                break;
            }
            if env.signals.count() > 0 {
                break;
            }
        }
        self.marks.migration_end_ms = self.at();
        self.lint = lint;
        if let Some(s) = sampler {
            let (samples, error) = s.stop().await;
            if let Some(e) = error {
                self.report.sampler_error = Some(e.to_string());
            }
            self.analysis = locks::analyse(&samples, &files, locks::INTERVAL).shifted(sampler_start);
        }
        if env.signals.count() > 0 {
            self.interrupted = true;
            return false;
        }
        if failed {
            self.report.stopped = Some("the new release's install failed: the services stay on the old release".into());
            return false;
        }
        true
    }

    /// The services moved to the new release, the load with them. False when the
    /// deploy stops here.
    async fn switch<P: Provider>(
        &mut self,
        env: &Env<'_, P>,
        next: &Next,
        settings: &Deploy,
        target: &str,
        to_target: &tokio::sync::watch::Sender<(String, u16)>,
    ) -> bool {
        self.marks.switch_start_ms = self.at();
        let mut instances: BTreeMap<(String, u32), ServiceOutputs> = BTreeMap::new();
        for old in env.plan.resources.iter().filter(|r| r.kind == Kind::LocalProcess) {
            let new = next_of(old);
            if settings.switch == Switch::Restart {
                if let Err(e) = stop_old(env, &old.id).await {
                    self.fail(&old.id, e);
                    return false;
                }
            }
            let (name, index, o) = match create(env, &new, &next.ctx(env, &self.outputs)).await {
                Ok(Output::Service { name, index, outputs: o }) => (name, index, o),
                Ok(_) => continue,
                Err(e) => {
                    self.fail(&new.id, e);
                    return false;
                }
            };
            if name == target && index == 0 {
                if let Some(t) = load::target(&o.url) {
                    to_target.send_replace(t);
                }
            }
            instances.insert((name.clone(), index), o);
            let all: Vec<&ServiceOutputs> = instances.iter().filter(|((n, _), _)| *n == name).map(|(_, o)| o).collect();
            let first = all[0].clone();
            let addresses = all.iter().map(|o| o.address.clone()).collect();
            let urls = all.iter().map(|o| o.url.clone()).collect();
            self.outputs.services.insert(name, ServiceOutputs { addresses, urls, ..first });
            if settings.switch == Switch::Rolling {
                // As a load balancer deregisters a target: the requests it has in
                // flight finish before it stops.
                if env.signals.sleep(ROLLING_DRAIN).await {
                    self.interrupted = true;
                    return false;
                }
                if let Err(e) = stop_old(env, &old.id).await {
                    self.fail(&old.id, e);
                    return false;
                }
            }
        }
        self.marks.switch_end_ms = self.at();
        true
    }

    /// The report: the traffic cut by the marks, the limits, the judge's verdicts.
    fn end<P: Provider>(
        mut self,
        env: &Env<'_, P>,
        settings: &Deploy,
        timed: Vec<load::Timed>,
        twin: Option<Vec<load::Timed>>,
    ) -> Deployed {
        if let Some(task) = self.lint.take() {
            task.abort();
        }
        let mut marks = self.marks;
        marks.end_ms = self.at();
        if marks.migration_end_ms == 0 {
            // Stopped before the migration: everything is "before".
            marks.migration_start_ms = marks.end_ms;
            marks.migration_end_ms = marks.end_ms;
        }
        if marks.switch_end_ms == 0 {
            marks.switch_start_ms = marks.migration_end_ms;
            marks.switch_end_ms = marks.migration_end_ms;
        }
        let traffic = judged::traffic(&timed, &marks);
        let (a, report) = (&self.analysis, &mut self.report);
        report.samples = a.samples;
        report.files = a.files.clone();
        report.waits_total = a.waits.len();
        report.migration_waits = a.migration_waits.len();
        report.waits = a.waits.iter().take(MAX_WAITS).cloned().collect();
        report.headline = judged::headline(a, &traffic);
        report.limits = judged::limits(settings, a, &traffic);
        if let Some(e) = &report.sampler_error {
            // Locks that could not be read cannot be judged: fail closed.
            for l in report.limits.iter_mut().filter(|l| l.name == "max_lock_wait") {
                l.passed = false;
                l.reason = format!("the locks could not be read: {e}");
            }
        }
        let judge = env.loaded.desc.compare.as_ref().map(|c| c.judge.clone()).unwrap_or_default();
        let s = crate::compare::judge::Settings {
            confidence: judge.confidence,
            tolerance: judge.tolerance,
            min_samples: judge.min_samples as usize,
            pass: judge.pass,
            marginal: judge.marginal,
        };
        report.verdicts = judged::judge(&timed, &marks, &s);
        if let Some(twin) = twin {
            report.twin = Some(judged::TwinReport {
                release: report.from.clone(),
                traffic: judged::traffic(&twin, &marks),
                verdicts: judged::judge_against_twin(&timed, &twin, &marks, &s),
                gone: None,
            });
        }
        report.marks = marks;
        report.traffic = traffic;
        Deployed { report: self.report, failure: self.failure, outputs: self.outputs, interrupted: self.interrupted }
    }
}

/// The linter's findings once it is done: not waited for past a signal or a minute
/// (it is stopped then, its child killed).
async fn linted(
    mut task: tokio::task::JoinHandle<crate::compare::lint::Lint>,
    signals: &Signals,
) -> Option<crate::compare::lint::Lint> {
    let found = tokio::select! {
        r = &mut task => r.ok(),
        _ = signals.nth(1) => None,
        _ = tokio::time::sleep(Duration::from_secs(60)) => None,
    };
    task.abort();
    found
}

/// Creates `res` with the provider, its intent journaled first.
async fn create<P: Provider>(env: &Env<'_, P>, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
    let key = env.provider.idempotency_key(res, &env.info.run_id);
    env.journal
        .intent(&res.id, res.kind, key.as_deref())
        .await
        .map_err(|e| StepError::build(format!("cannot write the journal: {e}")))?;
    env.provider.create(res, ctx).await
}

/// Stops the old release's instance `id` and journals it gone.
async fn stop_old<P: Provider>(env: &Env<'_, P>, id: &str) -> Result<(), StepError> {
    let records = super::journal::read(env.journal.path())
        .map_err(|e| StepError::build(format!("cannot read the journal: {e}")))?;
    let state = super::journal::State::from_records(&records);
    let (Some(meta), Some(entry)) = (state.meta.as_ref(), state.remaining().into_iter().find(|e| e.id == id)) else {
        return Ok(());
    };
    env.provider
        .destroy(entry, meta)
        .await
        .map_err(|e| StepError::build(format!("cannot stop the old release's {id}: {e}")))?;
    env.journal.deleted(id).await.map_err(|e| StepError::build(format!("cannot write the journal: {e}")))
}

/// The load's requests and settings.
fn load_requests(loaded: &Loaded, settings: &Deploy) -> Result<(Vec<Request>, crate::description::Load), String> {
    let spec = settings.load.clone().ok_or("the description has no load for a deploy (`deploy.load`)")?;
    let file = spec.requests.as_ref().ok_or("a deploy's load is a request file (`requests`)")?;
    Ok((load::read_request_file(&loaded.resolve(file))?, spec))
}

fn read_capped(path: &Path, cap: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?.take(cap + 1).read_to_string(&mut text)?;
    if text.len() as u64 > cap {
        return Err(std::io::Error::other(format!("larger than {} MiB", cap >> 20)));
    }
    Ok(text)
}

/// The database whose locks are watched: the one the load's target uses (the first of
/// them), else the description's first.
fn watched_database<'a>(loaded: &'a Loaded, target: &str) -> Option<&'a str> {
    let d = &loaded.desc;
    loaded
        .deps
        .get(target)
        .into_iter()
        .flatten()
        .find(|n| d.databases.contains_key(n.as_str()))
        .map(String::as_str)
        .or_else(|| d.databases.keys().next().map(String::as_str))
}

/// The new release's migration files (`pattern` in `new`) that the old release (`old`)
/// does not have as they are, in name order: what a statement is traced to.
fn migration_files(old: &Path, new: &Path, pattern: &str) -> Vec<MigrationFile> {
    let (dir, file) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    let Some((prefix, suffix)) = file.split_once('*') else { return Vec::new() };
    let list = |root: &Path| -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { return out };
        for e in entries.flatten().take(MAX_MIGRATION_FILES) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(prefix) && name.ends_with(suffix) && name.len() >= prefix.len() + suffix.len()) {
                continue;
            }
            // Plain files only: the release's links were checked when it was unpacked.
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if let Ok(text) = read_capped(&e.path(), MAX_MIGRATION_FILE) {
                out.insert(name, text);
            }
        }
        out
    };
    let before = list(old);
    list(new)
        .into_iter()
        .filter(|(name, text)| before.get(name) != Some(text))
        .map(|(name, text)| MigrationFile { name: if dir.is_empty() { name } else { format!("{dir}/{name}") }, text })
        .collect()
}
