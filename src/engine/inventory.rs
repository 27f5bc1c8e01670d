//! The inventory: what runs this machine's state directory knows, each with where it
//! stands (its status, derived from its journal and whether its process still lives),
//! and the one rule that protects a stage's current generation from `down` and
//! `sweep` ([`current_generation_of`]).

use std::path::Path;

use chrono::{DateTime, Utc};

use super::journal::{self, RunMeta, State};
use super::stage::StageRef;
use super::store::ObjectStore;
use crate::sys::state;

/// Where a run stands, from its journal (and whether its process still lives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Its process is still running it.
    Running,
    /// Finished and kept (destroy policy), within its TTL.
    Kept,
    /// Torn down, nothing left.
    Destroyed,
    /// Torn down, but teardown left resources.
    #[serde(rename = "left resources")]
    LeftResources,
    /// Its process died before the end: what it created may still exist.
    Crashed,
    /// The journal cannot be read: `down` finds what it made by its tags.
    Unreadable,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Kept => "kept",
            RunStatus::Destroyed => "destroyed",
            RunStatus::LeftResources => "left resources",
            RunStatus::Crashed => "crashed",
            RunStatus::Unreadable => "unreadable",
        }
    }

    /// Whether something of the run may still exist that `rehearse down` removes.
    pub fn needs_down(self) -> bool {
        matches!(self, RunStatus::Kept | RunStatus::Crashed | RunStatus::LeftResources | RunStatus::Unreadable)
    }

    /// A run's status from its folded journal; `run_dir` holds its lease when it runs
    /// on another machine.
    pub fn of(st: &State, meta: &RunMeta, run_dir: &Path) -> RunStatus {
        let remaining = st.remaining().len();
        match (&st.finished, st.torn_down) {
            (_, Some(true)) if remaining == 0 => RunStatus::Destroyed,
            (Some((_, _, true)), _) => RunStatus::Kept,
            (_, Some(_)) => RunStatus::LeftResources,
            (None, None) if run_alive(meta, Some(run_dir)) => RunStatus::Running,
            _ if remaining == 0 => RunStatus::Destroyed,
            _ => RunStatus::Crashed,
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A run as `list` and `sweep` see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub environment: String,
    pub release: String,
    pub provider: String,
    pub status: RunStatus,
    pub verdict: Option<crate::report::model::Verdict>,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub remaining: usize,
    /// The name it goes by (`up --name`).
    pub name: Option<String>,
    /// The local user who started it.
    pub user: Option<String>,
    /// The description's owner.
    pub owner: String,
    /// The stage generation it is (`rehearse rebuild`).
    pub stage: Option<StageRef>,
    /// A local run this machine did not journal (fetched from the store): why it is
    /// left alone here, and the host its journal claims.
    #[serde(skip)]
    pub not_here: Option<NotHere>,
}

/// Why a local run is not this machine's to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotHere {
    pub why: String,
    /// The host its journal names.
    pub host: Option<String>,
}

impl NotHere {
    /// "; its journal says host `H`", or nothing.
    pub fn claim(&self) -> String {
        self.host.as_deref().map(|h| format!("; its journal says host `{}`", h.escape_debug())).unwrap_or_default()
    }
}

impl RunRow {
    /// Whether the environment may still be there.
    pub fn live(&self) -> bool {
        self.status != RunStatus::Destroyed
    }
}

/// The live runs of `rows` that go by `name` (`up --name`). A name is a claim in a
/// journal, which anyone with a shared store's policy can write: more than one is
/// for the caller to refuse, never to choose from.
pub fn live_named<'a>(rows: &'a [RunRow], name: &str) -> Vec<&'a RunRow> {
    rows.iter().filter(|r| r.live() && r.name.as_deref() == Some(name)).collect()
}

/// The runs in the state directory `root` (checked by the caller), by run id.
pub fn scan(root: &Path) -> Vec<RunRow> {
    let mut rows = Vec::new();
    let Ok(rd) = std::fs::read_dir(state::runs_dir(root)) else { return rows };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !state::valid_run_id(&name) {
            continue;
        }
        let path = e.path().join("journal.jsonl");
        let st = match journal::read(&path) {
            Ok(records) => State::from_records(&records),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!("{}: {e}", path.display());
                State::default()
            }
        };
        for r in &st.refused {
            tracing::warn!("{}", r.describe(&name));
        }
        let Some(meta) = st.meta.clone().filter(|m| m.run_id == name) else {
            // Not knowing what a run holds is worth showing: `down` finds it by tag.
            rows.push(RunRow {
                run_id: name,
                environment: "?".into(),
                release: "?".into(),
                provider: "?".into(),
                status: RunStatus::Unreadable,
                verdict: None,
                started_at: Utc::now(),
                expires_at: Utc::now(),
                remaining: 1,
                name: None,
                user: None,
                owner: "?".into(),
                stage: None,
                not_here: None,
            });
            continue;
        };
        let not_here = (meta.provider != crate::description::ProviderKind::Aws)
            .then(|| {
                journal::journaled_here(&e.path(), &meta.run_id)
                    .err()
                    .map(|why| NotHere { why: why.to_string(), host: meta.host.clone() })
            })
            .flatten();
        let status = RunStatus::of(&st, &meta, &e.path());
        let expires_at = st.expires_at().unwrap_or(meta.expires_at);
        let remaining = st.remaining().len();
        rows.push(RunRow {
            run_id: meta.run_id,
            environment: meta.environment,
            release: meta.release,
            provider: meta.provider.as_str().to_string(),
            status,
            verdict: st.finished.map(|f| f.0),
            started_at: meta.started_at,
            expires_at,
            remaining,
            name: meta.name,
            user: meta.user,
            owner: meta.owner,
            stage: meta.stage,
            not_here,
        });
    }
    rows.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    rows
}

/// Whether the run is a stage's current generation (which `down` and `sweep` leave to
/// `rehearse stage destroy`): the stage's name, when it is. `store` is where stage
/// records live (`None`: it could not be opened). A record that cannot be read counts
/// as saying yes: removing a stage's serving generation by mistake is the worse error.
pub async fn current_generation_of(store: Option<&dyn ObjectStore>, run_id: &str, stage: &StageRef) -> Option<String> {
    let unknown = || Some(format!("{} (its record cannot be read now)", stage.stage));
    let Some(store) = store else { return unknown() };
    match super::stage::load(store, &stage.stage).await {
        Ok(Some((record, _))) => record.is_current_run(run_id).then(|| stage.stage.clone()),
        Ok(None) => None,
        Err(_) => unknown(),
    }
}

/// A run's lease as last fetched from the shared store, when the run is on another
/// machine (`runs/RUN_ID/lease.json`).
pub fn other_host_lease(meta: &RunMeta, run_dir: Option<&Path>) -> Option<super::store::lock::LockInfo> {
    let host = meta.host.as_deref()?;
    if host == crate::sys::process::host_name() {
        return None;
    }
    let text = std::fs::read(run_dir?.join("lease.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether the process running a journal's run still lives: on this machine, its PID
/// and start time; on another (a shared store), its lease has not run out.
pub fn run_alive(meta: &RunMeta, run_dir: Option<&Path>) -> bool {
    match meta.host.as_deref() {
        Some(h) if h != crate::sys::process::host_name() => {
            other_host_lease(meta, run_dir).is_some_and(|l| l.lease_until > Utc::now())
        }
        _ => pid_alive(meta.pid, meta.pid_start),
    }
}

/// Whether the rehearse process that ran a journal is still running: its PID *and*
/// its start time (a journal from before start times were recorded falls back to the
/// PID alone).
pub fn pid_alive(pid: u32, start_time: u64) -> bool {
    use crate::sys::process::{is_alive, ProcHandle};
    let pid = pid as i32;
    if start_time == 0 {
        return nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    }
    is_alive(&ProcHandle { pid, pgid: 0, start_time })
}
