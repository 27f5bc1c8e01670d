//! The report of one run: what was rehearsed, from which backup, how long each phase
//! took, what the suites said, and what existed. Serialized as `report.json` (its
//! schema is versioned by [`REPORT_SCHEMA_VERSION`]); every other format (JUnit,
//! Markdown, HTML, the terminal summary) is rendered from this one value.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::description::{DestroyPolicy, ProviderKind};

/// Version of `report.json`; bumped on any incompatible change.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub schema_version: u32,
    pub run_id: String,
    pub environment: String,
    pub provider: ProviderKind,
    /// Path of the description file.
    pub description: String,
    pub release: String,
    pub artifact: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub verdict: Verdict,
    /// The process exit code this verdict maps to.
    pub exit_code: i32,
    /// Why the run did not pass, in one paragraph (None when it passed).
    pub reason: Option<String>,
    /// The step that failed first, if any.
    pub failure: Option<Failure>,
    /// The production backups the copy was made from.
    pub backups: Vec<BackupUsed>,
    /// Phases in order: up, prepare-data, install, health, suites, report, down.
    pub phases: Vec<PhaseTiming>,
    /// Every step on a resource (create, restore, install, health, destroy).
    pub steps: Vec<StepTiming>,
    pub suites: Vec<SuiteResult>,
    pub resources: Vec<ResourceRecord>,
    pub teardown: Teardown,
    /// Wall time of the whole run, milliseconds.
    pub total_ms: u64,
    /// The tool's own time: total minus time spent waiting on PostgreSQL, the
    /// release's commands, the suites and the cloud. Milliseconds.
    pub overhead_ms: u64,
    /// How to reach a kept environment (no secret in it: `rehearse env` has those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// The change rehearsed (commit, author, pull request, title), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    /// A rehearsed deploy (`run --from OLD`): what the migration and the switch did to
    /// the traffic, and the limits judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<DeployReport>,
    /// A game day (`run --chaos`): each fault, its expectations judged, and the load's
    /// timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<crate::compare::chaos::ChaosReport>,
}

/// A rehearsed deploy: the old release serving the load while the new one's migration
/// ran, then the switch; what the database and the traffic saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DeployReport {
    /// The release that served first.
    pub from: String,
    /// The release deployed.
    pub to: String,
    /// `rolling` or `restart`.
    pub switch: String,
    /// The new release's migration files (those the old one does not have as they are).
    pub migration_files: Vec<String>,
    /// When the migration and the switch began and ended, ms from the load's start.
    pub marks: crate::compare::deploy::Marks,
    pub traffic: crate::compare::deploy::Traffic,
    /// The description's limits, checked.
    pub limits: Vec<crate::compare::deploy::Limit>,
    /// The judge's verdicts, during the migration against before it.
    pub verdicts: Vec<crate::compare::judge::Verdict>,
    /// What each migration file did, as the lock sampler saw it.
    pub files: Vec<crate::compare::locks::FileRun>,
    /// The traffic's waits on locks, the longest first (at most 50).
    pub waits: Vec<crate::compare::locks::Wait>,
    /// How many waits there were in all.
    pub waits_total: usize,
    /// The migration's own waits (on older transactions, or on the traffic).
    pub migration_waits: usize,
    /// The lock sampler: its samples, their interval, and why it stopped early if it did.
    pub samples: usize,
    pub interval_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_error: Option<String>,
    /// One line a release manager reads first: the worst wait and what it cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headline: Option<String>,
    /// Why the deploy stopped before the switch (its install failed), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// A static linter's findings for the migration files, when one is installed:
    /// shown beside what was measured, no part of the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lint: Option<crate::compare::lint::Lint>,
    /// In a compared deploy (`compare --deploy`), the baseline twin that got the same
    /// load without the migration, and the verdicts against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub twin: Option<crate::compare::deploy::TwinReport>,
}

impl DeployReport {
    /// Whether every limit held.
    pub fn passed(&self) -> bool {
        self.limits.iter().all(|l| l.passed)
    }
}

/// How to reach a kept environment: its services, its databases (without their
/// password), its logs, its expiry and the commands that use it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Access {
    pub expires_at: DateTime<Utc>,
    pub logs_dir: String,
    /// Service name → the URL of each instance.
    pub services: BTreeMap<String, Vec<String>>,
    pub databases: BTreeMap<String, DatabaseAccess>,
    /// Commands for a person: connection details, psql, logs, teardown.
    pub commands: Vec<String>,
}

/// A copy's address, without its password.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatabaseAccess {
    pub host: String,
    pub port: String,
    pub name: String,
    pub user: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Environment built, release installed, every suite passed.
    Passed,
    /// The release failed: its install/migration, its health check, or a suite.
    Failed,
    /// The environment could not be built (infrastructure, missing backup, ...).
    BuildFailed,
    /// SIGINT/SIGTERM.
    Interrupted,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::BuildFailed => "build-failed",
            Verdict::Interrupted => "interrupted",
        }
    }

    /// The exit code of a run with this verdict whose teardown left `leftovers`
    /// resources (README, "Exit codes"): leftovers first.
    pub fn exit_code(self, leftovers: usize) -> i32 {
        if leftovers > 0 {
            return crate::exit::LEFTOVERS;
        }
        match self {
            Verdict::Passed => crate::exit::PASSED,
            Verdict::Failed => crate::exit::SUITES_FAILED,
            Verdict::BuildFailed => crate::exit::BUILD_FAILED,
            Verdict::Interrupted => crate::exit::INTERRUPTED,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    /// Phase name (`install`, `health`, `up`, ...).
    pub phase: String,
    /// Plan resource id (`install.web`), if the failure belongs to one.
    pub resource: Option<String>,
    /// What failed, one line: "migration 0003_unique_customer_email.sql failed".
    pub message: String,
    /// The last lines of the failing command's output (the database error, ...).
    pub log_tail: Vec<String>,
    /// Full log file, if any.
    pub log: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupUsed {
    /// Database name in the description.
    pub database: String,
    /// `backup_dir`, `url`, `rds_instance`, `aurora_cluster`.
    pub source_kind: String,
    /// Production identifier (directory, redacted URL, RDS id).
    pub source: String,
    /// The backup itself: archive file, snapshot id.
    pub backup: String,
    /// Snapshot ARN (AWS).
    pub arn: Option<String>,
    /// When the backup was taken (recorded in the archive / SnapshotCreateTime).
    pub taken_at: Option<DateTime<Utc>>,
    /// `newest-snapshot`, `latest-restorable-time`, `aurora-clone`.
    pub restore: String,
    /// `cold` (pg_restore / RDS restore), `copy-on-write` (a reflink copy of the golden
    /// copy's generation: constant time) or `full-copy` (the golden copy copied whole:
    /// where copy-on-write cannot be; the copy step's detail says why).
    pub method: String,
    pub restore_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub phase: String,
    /// Offset from the run's start, milliseconds.
    pub start_ms: u64,
    pub duration_ms: u64,
    pub status: PhaseStatus,
}

/// How a phase went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseStatus {
    Ok,
    Failed,
    Skipped,
    Interrupted,
}

impl PhaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::Ok => "ok",
            PhaseStatus::Failed => "failed",
            PhaseStatus::Skipped => "skipped",
            PhaseStatus::Interrupted => "interrupted",
        }
    }

    /// Whether the phase did not fail (it went well, or had nothing to do).
    pub fn is_ok(self) -> bool {
        matches!(self, PhaseStatus::Ok | PhaseStatus::Skipped)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepTiming {
    pub resource: String,
    pub kind: String,
    /// `create`, `restore`, `mask`, `install`, `start`, `health`, `destroy`, ...
    pub action: String,
    pub start_ms: u64,
    pub duration_ms: u64,
    pub ok: bool,
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuiteResult {
    pub name: String,
    pub status: SuiteStatus,
    /// Why a suite did not pass when no test case says it (could not start, timed
    /// out, no JUnit file, zero tests, non-zero exit).
    pub reason: Option<String>,
    pub command: String,
    pub duration_ms: u64,
    pub exit_code: Option<i32>,
    pub tests: u32,
    pub failures: u32,
    pub errors: u32,
    pub skipped: u32,
    /// Test cases, at most [`crate::suites::MAX_CASES`] (failures first); the counts
    /// above cover every case.
    pub cases: Vec<TestCase>,
    /// Cases counted but not listed in `cases`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cases_omitted: u32,
    /// The suite's combined stdout/stderr log file.
    pub log: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl SuiteResult {
    /// A result with no test case (yet): not run, or an error before any JUnit.
    pub fn without_tests(name: &str, command: &str, status: SuiteStatus, reason: Option<String>) -> SuiteResult {
        SuiteResult {
            name: name.to_string(),
            status,
            reason,
            command: command.to_string(),
            duration_ms: 0,
            exit_code: None,
            tests: 0,
            failures: 0,
            errors: 0,
            skipped: 0,
            cases: Vec::new(),
            cases_omitted: 0,
            log: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SuiteStatus {
    Passed,
    Failed,
    /// Could not start, timed out, produced no results or zero tests: never a pass.
    Error,
    /// Not run because the environment never became ready.
    NotRun,
}

impl SuiteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SuiteStatus::Passed => "passed",
            SuiteStatus::Failed => "failed",
            SuiteStatus::Error => "error",
            SuiteStatus::NotRun => "not-run",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestCase {
    pub classname: Option<String>,
    pub name: String,
    pub status: CaseStatus,
    pub duration_ms: u64,
    /// Failure or error message (and its text, trimmed).
    pub message: Option<String>,
}

/// What a test case's JUnit says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseStatus {
    Passed,
    Failed,
    Error,
    Skipped,
}

impl CaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Passed => "passed",
            CaseStatus::Failed => "failed",
            CaseStatus::Error => "error",
            CaseStatus::Skipped => "skipped",
        }
    }

    /// Whether the case failed or erred (a skipped case did not fail).
    pub fn failed(self) -> bool {
        matches!(self, CaseStatus::Failed | CaseStatus::Error)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResourceRecord {
    pub id: String,
    pub kind: String,
    /// What the provider calls it: a PID, a data directory, an instance id.
    pub provider_id: Option<String>,
    pub status: ResourceStatus,
}

/// What became of a resource of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceStatus {
    Destroyed,
    Kept,
    LeftBehind,
    NeverCreated,
}

impl ResourceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceStatus::Destroyed => "destroyed",
            ResourceStatus::Kept => "kept",
            ResourceStatus::LeftBehind => "left-behind",
            ResourceStatus::NeverCreated => "never-created",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Teardown {
    pub policy: DestroyPolicy,
    pub status: TeardownStatus,
    pub duration_ms: u64,
    pub leftovers: Vec<Leftover>,
    /// When the kept environment expires (its TTL), if kept.
    pub expires_at: Option<DateTime<Utc>>,
}

/// How teardown ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeardownStatus {
    /// Nothing is left.
    Complete,
    /// The environment stays up (its TTL, or a stage's generation).
    Kept,
    /// Something is left: the leftovers say what.
    Incomplete,
    /// A second signal stopped it.
    Interrupted,
    /// What exists could not be told (the journal or the provider could not say).
    Unknown,
}

impl TeardownStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TeardownStatus::Complete => "complete",
            TeardownStatus::Kept => "kept",
            TeardownStatus::Incomplete => "incomplete",
            TeardownStatus::Interrupted => "interrupted",
            TeardownStatus::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for TeardownStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Leftover {
    pub id: String,
    pub kind: String,
    pub provider_id: Option<String>,
    /// The exact command that removes it.
    pub command: String,
}

/// The change a request rehearses, when it is known (from a pull request's event, the
/// API request, or the command line): who shipped what.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The change's page (the pull request's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

impl Change {
    /// What a stranger may have written, checked: a commit is hex, an author a user
    /// name, a title and a URL printable and short, a URL http(s).
    pub fn check(&self) -> Result<(), String> {
        if self
            .commit
            .as_ref()
            .is_some_and(|c| c.is_empty() || c.len() > 64 || !c.chars().all(|c| c.is_ascii_hexdigit()))
        {
            return Err("its change's commit is not a commit id".into());
        }
        if self.author.as_ref().is_some_and(|a| !crate::sys::text::valid_user(a)) {
            return Err("its change's author is not a user name".into());
        }
        if self.title.as_ref().is_some_and(|t| t.len() > 256 || t.chars().any(char::is_control)) {
            return Err("its change's title is longer than 256 bytes or holds a control character".into());
        }
        if self.url.as_ref().is_some_and(|u| !crate::sys::text::valid_url(u)) {
            return Err("its change's URL is not an http(s) URL".into());
        }
        Ok(())
    }
}
