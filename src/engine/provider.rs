//! The contract between the engine and a provider.
//!
//! The engine drives the lifecycle and writes the journal; a provider only knows how to
//! create one resource of a kind it supports — and says what came of it — and how to
//! destroy one from its journal entry (or, when the entry has no handle because the run
//! died mid-create, from the run's tag). Creation and destruction are paired per kind.

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::description::Loaded;
use crate::engine::events::Reporter;
use crate::engine::journal::{Entry, Journal, RunMeta};
use crate::plan::{Plan, Resource};
use crate::report::model::{BackupUsed, StepTiming};
use crate::sys::process::{RunAs, Users};
use crate::sys::timing::Clock;

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
}

/// What a step works with: the run, the description, the plan, the journal, and the
/// template context with the outputs of everything created so far.
pub struct Ctx<'a> {
    pub run: &'a RunInfo,
    pub loaded: &'a Loaded,
    pub plan: &'a Plan,
    pub journal: &'a Journal,
    pub clock: &'a Clock,
    pub reporter: &'a dyn Reporter,
    pub steps: &'a std::sync::Mutex<Vec<StepTiming>>,
    pub tctx: tera::Context,
    /// Turns true when another step failed: stop at the next safe point.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

impl RunInfo {
    /// The release's user and HOME, when it runs as another user.
    pub fn release_user(&self) -> Option<(RunAs, PathBuf)> {
        self.users.release.map(|u| (u, self.home.clone()))
    }
}

impl Ctx<'_> {
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

    /// Journals that `res` exists, with what is needed to remove it.
    pub fn record(&self, res: &Resource, handle: serde_json::Value) -> Result<(), StepError> {
        self.journal
            .created(&res.id, res.kind.as_str(), handle)
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
    /// One line: what failed.
    pub message: String,
    /// The last lines of the failing command's output.
    pub log_tail: Vec<String>,
    pub log: Option<PathBuf>,
}

impl StepError {
    pub fn build(message: impl Into<String>) -> Self {
        StepError { blame: Blame::Build, message: message.into(), log_tail: Vec::new(), log: None }
    }

    pub fn release(message: impl Into<String>) -> Self {
        StepError { blame: Blame::Release, message: message.into(), log_tail: Vec::new(), log: None }
    }

    pub fn with_log(mut self, log: &std::path::Path, lines: usize) -> Self {
        self.log_tail = crate::sys::process::tail(log, lines);
        self.log = Some(log.to_path_buf());
        self
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A provider of resources. Implemented by the local provider here, the AWS
/// provider, and the fault-injecting fake used in tests.
#[allow(async_fn_in_trait)]
pub trait Provider {
    /// Creates `res` (the engine has journaled the intent); journals its handle through
    /// [`Ctx::record`] as soon as it exists.
    async fn create(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError>;

    /// The idempotency key of `res`'s create in run `run_id` (a client token, or the
    /// name it will be created under), journaled with the intent before the create.
    fn idempotency_key(&self, res: &Resource, run_id: &str) -> Option<String> {
        let _ = (res, run_id);
        None
    }

    /// Removes a journaled resource. A resource that is already gone is success.
    async fn destroy(&self, entry: &Entry, meta: &RunMeta) -> Result<(), String>;

    /// The exact shell command a person can run to remove a resource by hand.
    fn removal_command(&self, entry: &Entry, meta: &RunMeta) -> String;

    /// Teardown order of a kind: every resource of rank n is destroyed before any of
    /// rank n + 1 (users before what they use); resources of one rank go down together.
    /// `None` for an unknown kind: teardown then follows reverse creation order.
    fn teardown_rank(&self, kind: &str) -> Option<u8> {
        let _ = kind;
        None
    }

    /// Destroys several resources of one kind. By default each on its own, all at
    /// once; a provider can batch them (one terminate for many instances).
    async fn destroy_many(&self, entries: &[&Entry], meta: &RunMeta) -> Vec<Result<(), String>> {
        futures_util::future::join_all(entries.iter().map(|e| self.destroy(e, meta))).await
    }

    /// How long steps in flight may go on after another step failed, so that what they
    /// were creating gets journaled. Zero: drop them at once (local resources are found
    /// by convention anyway).
    fn cancel_grace(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}
