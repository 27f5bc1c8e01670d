//! The contract between the engine and a provider.
//!
//! The engine drives the lifecycle and writes the journal; a provider only knows how to
//! create one resource of a kind it supports — and says what came of it — and how to
//! destroy one from its journal entry (or, when the entry has no handle because the run
//! died mid-create, from the run's tag). Creation and destruction are paired per kind.
//!
//! Kept whole: it is the one contract every provider (local, aws, the fakes) implements,
//! read in one place; split, a provider's author would have to assemble it.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::description::Loaded;
use crate::engine::events::Reporter;
use crate::engine::journal::{Entry, Journal, RunMeta};
use crate::plan::{Kind, Plan, Resource};
use crate::report::model::{BackupUsed, StepTiming};
use crate::sys::process::{RunAs, Users};
use crate::sys::timing::Clock;

/// The one point of production a database restores from, fixed before a run (both
/// twins of a comparison restore the same one, whatever lands in between).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pin {
    /// A `pg_dump` archive (local), and when it was taken: an archive rewritten in
    /// place since is refused, not restored.
    Backup { path: PathBuf, taken_at: DateTime<Utc> },
    /// A DB snapshot identifier (RDS).
    Snapshot(String),
    /// A point in time of the source (point-in-time restore, Aurora clone).
    Time(DateTime<Utc>),
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pin::Backup { path, taken_at } => {
                write!(f, "{} (taken {})", path.display(), taken_at.format("%Y-%m-%d %H:%M:%S"))
            }
            Pin::Snapshot(s) => write!(f, "snapshot {s}"),
            Pin::Time(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%SZ")),
        }
    }
}

/// Pins by database name.
pub type Pins = std::collections::BTreeMap<String, Pin>;

/// Facts about the run every step needs.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub run_id: String,
    /// The run's state directory (journal, logs, report).
    pub state_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// The run's work directory (local provider).
    pub work_dir: PathBuf,
    /// Where warm golden copies live.
    pub golden_root: PathBuf,
    pub release_version: String,
    pub expires_at: DateTime<Utc>,
    /// Who PostgreSQL and the release run as (None: the invoking user).
    pub users: Users,
    /// HOME of the release's processes when they run as another user: a directory of
    /// their own in the run's work directory.
    pub home: PathBuf,
    /// Skip the warm golden copy.
    pub cold: bool,
    /// The databases' password, when it must not change from run to run (a stage's
    /// generations: clients configured once keep it); else each run makes its own.
    pub password: Option<String>,
    /// The stage and generation the run builds, tagged on what it creates.
    pub stage: Option<super::stage::StageRef>,
    /// What databases restore from, when fixed by the caller.
    pub pins: Pins,
    /// Where suites run here start: the description's directory inside the run's copy
    /// of the suites' files (`WORK/runs/RUN_ID/bundle/…`).
    pub suites_dir: PathBuf,
    /// A rehearsed deploy measures the WAL its migration writes: the copy writes WAL as
    /// production does (`wal_level=replica`, full-page writes), not the restore's least.
    pub wal_as_production: bool,
}

/// What a step works with: the run, the description, the plan, and the template context
/// with the outputs of everything created so far. A step reports what it created through
/// [`Ctx::created`]; the journal behind it is the engine's alone.
pub struct Ctx<'a> {
    pub run: &'a RunInfo,
    pub loaded: &'a Loaded,
    pub plan: &'a Plan,
    pub clock: &'a Clock,
    pub reporter: &'a dyn Reporter,
    pub tctx: tera::Context,
    /// Turns true when another step failed: stop at the next safe point.
    pub cancel: tokio::sync::watch::Receiver<bool>,
    journal: &'a Journal,
    steps: &'a std::sync::Mutex<Vec<StepTiming>>,
    /// Where the release is unpacked and runs from on this machine: `WORK/release`, or
    /// `WORK/release-next` for the new release of a rehearsed deploy.
    release_dir: PathBuf,
}

/// What finds and removes a created resource (an instance id, a cluster's directory
/// and port, a process group), in its provider's own type. The engine journals it and
/// hands it back to that provider, and never reads it: only the provider that made it
/// knows its shape ([`Handle::of`], [`Handle::decode`]). Serialized as the provider's
/// type is (old journals read as they were written).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Handle(Shape);

/// What a handle holds: its provider's type, serialized. Private to this module.
type Shape = serde_json::Value; // handle: the one place the engine names a handle's shape

/// A handle that is not of the type its provider asked for (a damaged or forged
/// journal, or one of another kind).
#[derive(Debug, thiserror::Error)]
#[error("the journaled handle {handle} is not a {what}")]
pub struct HandleError {
    pub handle: String,
    pub what: &'static str,
    #[source]
    pub source: serde_json::Error,
}

impl Handle {
    /// A provider's handle, as the engine journals it.
    pub fn of<T: serde::Serialize>(handle: &T) -> Result<Handle, serde_json::Error> {
        serde_json::to_value(handle).map(Handle)
    }

    /// The provider's handle of type `T` (named `what` in the error) back from the journal.
    pub fn decode<T: serde::de::DeserializeOwned>(&self, what: &'static str) -> Result<T, HandleError> {
        T::deserialize(&self.0).map_err(|source| HandleError { handle: self.to_string(), what, source })
    }
}

/// A handle given as JSON (tests, and the fake providers in them).
impl From<Shape> for Handle {
    fn from(value: Shape) -> Handle {
        Handle(value)
    }
}

/// The handle's JSON text, for a person (a leftover's "journaled as").
impl std::fmt::Display for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The handle of a resource that leaves nothing of its own to find (an install, a
/// masking): journaled as `{}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoHandle {}

/// The handle of the run's workspace, which the engine makes itself: its directory.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkspaceHandle {
    pub dir: PathBuf,
}

/// What a failed create leaves behind, as far as the provider can tell: together with
/// the handles reported through [`Ctx::created`], the typed outcome of a create —
/// created (a handle was reported), not created, or maybe created (the engine has the
/// intent's idempotency key, and teardown looks the resource up by it or by its tags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Creation {
    /// The create call may have gone through: its answer was lost, the service failed
    /// on its side, or the step failed after it.
    #[default]
    Maybe,
    /// Nothing was created: the request never left this machine, the service refused
    /// it, or the step failed before any create call.
    Nothing,
}

impl RunInfo {
    /// The release's user and HOME, when it runs as another user.
    pub fn release_user(&self) -> Option<(RunAs, PathBuf)> {
        self.users.release.map(|u| (u, self.home.clone()))
    }
}

impl<'a> Ctx<'a> {
    /// Runs `fut` unless (or until) the run is cancelled because another step failed.
    pub async fn unless_cancelled<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StepError>>,
    ) -> Result<T, StepError> {
        let mut rx = self.cancel.clone();
        if *rx.borrow() {
            return Err(StepError::build("cancelled: another step failed"));
        }
        tokio::select! {
            r = fut => r,
            _ = rx.wait_for(|c| *c) => Err(StepError::build("cancelled: another step failed")),
        }
    }

    /// Awaits `fut`, a wait of `res` for `what` bounded by `bound`: one that goes on
    /// for more than a few seconds says so, and until when ([`super::events::announce_wait`]).
    pub async fn waiting<T>(
        &self,
        res: &Resource,
        what: &str,
        bound: std::time::Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> T {
        super::events::announce_wait(self.reporter, &res.id, what, bound, fut).await
    }

    /// The engine's side of a step: what the provider's create runs with.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::engine) fn new(
        run: &'a RunInfo,
        loaded: &'a Loaded,
        plan: &'a Plan,
        journal: &'a Journal,
        clock: &'a Clock,
        reporter: &'a dyn Reporter,
        steps: &'a std::sync::Mutex<Vec<StepTiming>>,
        tctx: tera::Context,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> Ctx<'a> {
        let release_dir = run.work_dir.join("release");
        Ctx { run, loaded, plan, clock, reporter, tctx, cancel, journal, steps, release_dir }
    }

    /// The same step context for the release unpacked in `dir` instead.
    pub(in crate::engine) fn with_release_dir(mut self, dir: PathBuf) -> Ctx<'a> {
        self.release_dir = dir;
        self
    }

    /// Where the release is unpacked and runs from on this machine.
    pub fn release_dir(&self) -> &std::path::Path {
        &self.release_dir
    }

    /// Reports that `res` exists, with what is needed to remove it: the engine journals
    /// it (fsynced) before this returns. Reported again when the handle changes (a
    /// cluster that moved to another port).
    pub async fn created(&self, res: &Resource, handle: &impl serde::Serialize) -> Result<(), StepError> {
        let handle = Handle::of(handle).map_err(|e| StepError::build(format!("cannot journal {}: {e}", res.id)))?;
        self.journal
            .created(&res.id, res.kind, handle)
            .await
            .map_err(|e| StepError::build(format!("cannot write the journal: {e}")))
    }

    /// Records a finished step's timing.
    pub fn step(&self, res: &Resource, action: &str, started: std::time::Instant, ok: bool, detail: Option<String>) {
        let elapsed = started.elapsed();
        self.reporter.event(crate::engine::events::Event::Finished {
            resource: res.id.clone(),
            action: action.to_string(),
            ok,
            elapsed,
            detail: detail.clone(),
        });
        if let Ok(mut s) = self.steps.lock() {
            s.push(StepTiming {
                resource: res.id.clone(),
                kind: res.kind.as_str().to_string(),
                action: action.to_string(),
                start_ms: self.clock.ms(started),
                duration_ms: elapsed.as_millis() as u64,
                ok,
                detail,
            });
        }
    }

    pub fn started(&self, res: &Resource, action: &str, detail: Option<String>) -> std::time::Instant {
        self.reporter.event(crate::engine::events::Event::Started {
            resource: res.id.clone(),
            action: action.to_string(),
            detail,
        });
        std::time::Instant::now()
    }

    /// Renders one of the description's templates (by YAML path) with the outputs
    /// known now.
    pub fn render(&self, name: &str) -> Result<String, StepError> {
        crate::description::template::render(&self.loaded.tera, name, &self.tctx)
            .map_err(|e| StepError::build(format!("cannot render `{name}`: {e}")))
    }
}

/// What a created resource exposes to the resources and suites after it.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per created resource, moved once
pub enum Output {
    Nothing,
    Database { outputs: DatabaseOutputs, backup: BackupUsed },
    Release { dir: PathBuf },
    Service { name: String, index: u32, outputs: ServiceOutputs },
}

/// Whose fault a failed step is: decides the verdict and exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The environment could not be built (exit 3).
    Build,
    /// The release failed on the copy: install/migration, health (exit 1).
    Release,
}

#[derive(Clone, Debug)]
pub struct StepError {
    pub blame: Blame,
    /// Whether the failed step may have created its resource.
    pub creation: Creation,
    /// One line: what failed.
    pub message: String,
    /// The last lines of the failing command's output.
    pub log_tail: Vec<String>,
    pub log: Option<PathBuf>,
}

impl StepError {
    pub fn build(message: impl Into<String>) -> Self {
        StepError {
            blame: Blame::Build,
            creation: Creation::Maybe,
            message: message.into(),
            log_tail: Vec::new(),
            log: None,
        }
    }

    pub fn release(message: impl Into<String>) -> Self {
        StepError {
            blame: Blame::Release,
            creation: Creation::Maybe,
            message: message.into(),
            log_tail: Vec::new(),
            log: None,
        }
    }

    /// The step failed before anything of its resource could exist.
    pub fn nothing_created(mut self) -> Self {
        self.creation = Creation::Nothing;
        self
    }

    pub fn with_log(mut self, log: &std::path::Path, lines: usize) -> Self {
        self.log_tail = crate::sys::text::tail(log, lines);
        self.log = Some(log.to_path_buf());
        self
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StepError {}

/// Why a resource could not be removed, in the terms teardown acts on: what is worth
/// another attempt, and what a person must look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestroyErrorKind {
    /// Something still uses it (an instance still terminating holds its security
    /// group): another attempt later can succeed.
    InUse,
    /// The service could not be reached, throttled, failed on its side, or the
    /// resource did not go within the time allowed: another attempt can succeed.
    Unavailable,
    /// This identity may not remove it (`AccessDenied`, `UnauthorizedOperation`):
    /// trying again changes nothing.
    Denied,
    /// It is not this run's (the ownership guard refused, or a journaled path lies
    /// outside the run's directory): never removed, never retried.
    NotOurs,
    /// Anything else the service or the system refused.
    Failed,
}

/// A failed removal: its kind, one line for a person, and the underlying error.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct DestroyError {
    pub kind: DestroyErrorKind,
    pub message: String,
    #[source]
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl From<crate::sys::state::RemoveError> for DestroyError {
    fn from(e: crate::sys::state::RemoveError) -> Self {
        use crate::sys::state::RemoveError;
        let kind = match e {
            RemoveError::NotOurs { .. } | RemoveError::Unsafe { .. } => DestroyErrorKind::NotOurs,
            RemoveError::Io { .. } => DestroyErrorKind::Failed,
        };
        DestroyError::caused(kind, e.to_string(), e)
    }
}

impl DestroyError {
    pub fn new(kind: DestroyErrorKind, message: impl Into<String>) -> Self {
        DestroyError { kind, message: message.into(), source: None }
    }

    /// `source`, described by `message`, as a failure of `kind`.
    pub fn caused(
        kind: DestroyErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        DestroyError { kind, message: message.into(), source: Some(std::sync::Arc::new(source)) }
    }

    /// Worth another attempt after a pause.
    pub fn retryable(&self) -> bool {
        matches!(self.kind, DestroyErrorKind::InUse | DestroyErrorKind::Unavailable)
    }
}
/// A suite for a provider that runs suites inside the copy's network (aws with
/// `runner: ssm`), rendered: what runs, with what, from where.
pub struct SuiteJob<'a> {
    pub name: &'a str,
    pub suite: &'a crate::description::Suite,
    pub command: &'a str,
    pub env: &'a [(String, String)],
    /// The description's directory: the suite runs from its copy there.
    pub cwd: &'a std::path::Path,
    pub run: &'a RunInfo,
    pub loaded: &'a Loaded,
    /// Turns true when the run stops: a suite run elsewhere is stopped there too.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// What came back of a suite run elsewhere: how it ended, its output, its JUnit file,
/// and where it ran (for messages).
pub struct SuiteDone {
    pub ran: crate::suites::Ran,
    pub output: Vec<u8>,
    pub junit: Option<Vec<u8>>,
    pub shown_at: String,
}

/// Why a suite could not be run where its provider runs it (not packed, not fetched,
/// the runner unreachable): one line for the report, and what caused it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SuiteRunError {
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SuiteRunError {
    pub fn new(message: impl Into<String>) -> Self {
        SuiteRunError { message: message.into(), source: None }
    }

    /// `source`, described by `message`.
    pub fn caused(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        SuiteRunError { message: message.into(), source: Some(Box::new(source)) }
    }
}

/// A game day's fault on one of the run's resources ([`super::chaos`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injected {
    /// A database's server stopped: `fast` (sessions ended cleanly) or as a crash.
    StopDatabase {
        immediate: bool,
    },
    /// The same server started again, as the run started it.
    StartDatabase,
    /// A service instance's whole process group killed (`SIGKILL`), as a crash.
    KillProcess,
    /// A cloud instance stopped, started, rebooted or terminated (until it settled).
    StopInstance,
    StartInstance,
    RebootInstance,
    TerminateInstance,
    /// A DB instance rebooted (`failover`: to its standby), an Aurora cluster failed
    /// over, until available again.
    RebootDatabase {
        failover: bool,
    },
    FailoverCluster,
}

/// A provider of resources. Implemented by the local provider here, the AWS
/// provider, and the fault-injecting fake used in tests.
#[allow(async_fn_in_trait)]
pub trait Provider {
    /// Creates `res` (the engine has journaled the intent). Reports its handle through
    /// [`Ctx::created`] as soon as it exists; a failure says through
    /// [`StepError::creation`] whether anything may have been created.
    async fn create(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError>;

    /// The idempotency key of `res`'s create in run `run_id` (a client token, or the
    /// name it will be created under), journaled with the intent before the create.
    fn idempotency_key(&self, res: &Resource, run_id: &str) -> Option<String> {
        let _ = (res, run_id);
        None
    }

    /// Injects a game day's fault into a journaled resource of this run; the handle to
    /// journal anew when the fault changed it (a restarted server is another process).
    /// `Err`: this provider does not do it, or it failed.
    async fn inject(
        &self,
        entry: &Entry,
        what: Injected,
        info: &RunInfo,
        clock: &Clock,
    ) -> Result<Option<Handle>, String> {
        let _ = (entry, what, info, clock);
        Err("this provider injects no fault into its resources".into())
    }

    /// Removes a journaled resource. A resource that is already gone is success.
    async fn destroy(&self, entry: &Entry, meta: &RunMeta) -> Result<(), DestroyError>;

    /// The exact shell command a person can run to remove a resource by hand.
    fn removal_command(&self, entry: &Entry, meta: &RunMeta) -> String;

    /// What this provider calls a journaled resource, for a person: an instance or DB
    /// id, a group, a PID and port, a directory. `None` when its handle does not say.
    fn provider_id(&self, entry: &Entry) -> Option<String> {
        let _ = entry;
        None
    }

    /// Whether its resources are this machine's processes and files: then teardown
    /// acts only on runs this machine journaled ([`super::journal::journaled_here`]); a
    /// journal fetched from a shared store names nothing here that is provably the
    /// run's. Cloud resources are found (and guarded) by their own evidence.
    fn acts_on_this_machine(&self) -> bool {
        false
    }

    /// Teardown order of a kind: every resource of rank n is destroyed before any of
    /// rank n + 1 (users before what they use); resources of one rank go down together.
    /// `None` for an unknown kind: teardown then follows reverse creation order.
    fn teardown_rank(&self, kind: Kind) -> Option<u8> {
        let _ = kind;
        None
    }

    /// Destroys several resources of one kind. By default each on its own, all at
    /// once; a provider can batch them (one terminate for many instances).
    async fn destroy_many(&self, entries: &[&Entry], meta: &RunMeta) -> Vec<Result<(), DestroyError>> {
        futures_util::future::join_all(entries.iter().map(|e| self.destroy(e, meta))).await
    }

    /// How long steps in flight may go on after another step failed, so that what they
    /// were creating gets journaled. Zero: drop them at once (local resources are found
    /// by convention anyway).
    fn cancel_grace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Whether this provider runs the suites of `loaded` elsewhere ([`Provider::run_suite`]):
    /// such a suite is told to stop (through [`SuiteJob::cancel`]) and waited for, not
    /// dropped, so that it is stopped where it runs.
    fn runs_suites_elsewhere(&self, loaded: &Loaded) -> bool {
        let _ = loaded;
        false
    }

    /// Runs a suite inside the copy's network, when this provider does; `None`: the
    /// suite runs here (the default). An error is the suite's failure to run.
    async fn run_suite(&self, job: &SuiteJob<'_>) -> Option<Result<SuiteDone, SuiteRunError>> {
        let _ = job;
        None
    }

    /// What carries the marks of run `run_id` (or of any run: `None`) that this
    /// provider leaves on what it creates, found without a journal (see
    /// [`super::discover`]). By default nothing is found.
    async fn discover(
        &self,
        run_id: Option<&str>,
    ) -> Result<Vec<super::discover::Marked>, super::discover::DiscoverError> {
        let _ = run_id;
        Ok(Vec::new())
    }

    /// Moves the expiry that run `run_id`'s resources carry (tags a sweep reads) to
    /// `expires_at`; how many were moved. By default they carry none.
    async fn move_expiry(
        &self,
        run_id: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let _ = (run_id, expires_at);
        Ok(0)
    }

    /// Fixes what each database of `loaded` would restore from now (its newest backup,
    /// snapshot or restorable time), for runs that must restore the same.
    async fn pin_sources(&self, loaded: &Loaded) -> Result<Pins, StepError> {
        let _ = loaded;
        Ok(Pins::new())
    }
}
