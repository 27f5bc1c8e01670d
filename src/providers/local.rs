//! The local provider: the same description, built on this machine.
//!
//! Databases become throwaway PostgreSQL clusters restored from the newest `pg_dump`
//! archive (or copied from a warm golden copy); the release is unpacked into the run's
//! work directory; services are local processes on free ports. Everything lives under
//! the run's work directory, and every process carries `REHEARSE_RUN_ID` in its
//! environment — the local equivalent of a tag — so `rehearse down` finds what a
//! crashed run left even without its journal.

pub(crate) mod cow;
mod database;
pub(crate) mod forward;
pub(crate) mod golden;
pub(crate) mod postgres;
mod service;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::description::DatabaseSource;
use crate::engine::journal::{Entry, RunMeta};
use crate::engine::provider::{
    Ctx, DestroyError, DestroyErrorKind, Handle, Injected, Output, Pin, Pins, Provider, RunInfo, StepError,
    WorkspaceHandle,
};
use crate::plan::{Kind, Resource};
use crate::providers::release::ReleaseHandle;
use crate::report::model::BackupUsed;
use crate::secrets;
use crate::sys::health;
use crate::sys::process::{self, ProcHandle};
use crate::sys::text::shell_quote;
use crate::sys::timing::Clock;
use crate::sys::{secure_fs, state};
use postgres::{Cluster, PgBin};

/// The handle of a local process: its process group, and the port it listens on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProcessHandle {
    pub(crate) process: ProcHandle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) port: Option<u16>,
}

/// The handle of a throwaway PostgreSQL cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct ClusterHandle {
    pub(crate) cluster: Cluster,
    /// The copy-on-write generation the copy lies in ([`cow`]), when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) generation: Option<PathBuf>,
}

/// What a journaled handle of `entry` says, as the type `T` its kind has (`what` names
/// it): `Ok(None)` when the entry has none (its create was never confirmed); an
/// error when it has one that does not read — never taken for "nothing there".
fn handle_of<T: serde::de::DeserializeOwned>(entry: &Entry, what: &'static str) -> Result<Option<T>, DestroyError> {
    entry
        .handle
        .as_ref()
        .map(|h| h.decode(what))
        .transpose()
        .map_err(|e| DestroyError::caused(DestroyErrorKind::Failed, e.to_string(), e))
}

/// How long a stopped service gets between SIGTERM and SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct LocalProvider {
    /// Children this process started, kept so they are reaped and can be watched.
    children: Mutex<HashMap<String, tokio::process::Child>>,
    /// The work directory of this machine's runs (`WORK`): every directory a journal
    /// names for removal must lie below `WORK/runs/RUN_ID`, whatever the journal says.
    work_root: PathBuf,
}

/// Golden copy metadata (`meta.json` beside its `data/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GoldenMeta {
    pub(crate) backup: postgres::Backup,
    pub(crate) database_name: String,
    /// The masking SQL applied to it (a changed file makes the copy stale).
    pub(crate) masking: Option<String>,
    pub(crate) pg_bin: PathBuf,
    /// The user its files belong to (another cluster user makes it stale).
    #[serde(default)]
    pub(crate) cluster_uid: Option<u32>,
    /// How its roles are laid out ([`GOLDEN_LAYOUT`]; an older layout is stale).
    #[serde(default)]
    pub(crate) layout: u32,
}

/// Golden copies hold the release's role ([`postgres::APP_ROLE`]) owning the data, and
/// are frozen (`VACUUM (FREEZE, ANALYZE)` before they are stopped).
pub(crate) const GOLDEN_LAYOUT: u32 = 3;

/// The text of a database's masking SQL, if it has one. It runs as a superuser in the
/// copy, so it must be trusted like any input (`secure_fs::check_input`).
pub(crate) fn masking_sql(
    loaded: &crate::description::Loaded,
    db: &crate::description::Database,
) -> Result<Option<String>, String> {
    let Some(m) = &db.masking else { return Ok(None) };
    let path = loaded.resolve(m);
    secure_fs::check_input(&path).map_err(|e| format!("the masking SQL cannot be trusted: {e}"))?;
    std::fs::read_to_string(&path).map(Some).map_err(|e| format!("cannot read masking SQL {}: {e}", m.display()))
}

pub(crate) fn golden_dir(root: &Path, env: &str, db: &str) -> PathBuf {
    root.join(env).join(db)
}

impl LocalProvider {
    /// A provider for runs whose work directories live under `work_root`.
    pub(crate) fn new(work_root: &Path) -> Self {
        LocalProvider { children: Mutex::default(), work_root: work_root.to_path_buf() }
    }

    /// `dir` if it lies in this run's work directory (see [`state::confined_to_run`]).
    fn owned_path(&self, dir: &Path, meta: &RunMeta) -> Result<PathBuf, state::RemoveError> {
        state::confined_to_run(dir, &meta.run_id, meta.work_dir.as_deref(), &self.work_root)
    }

    /// The work root the run used (`WORK` of its journaled `WORK/runs/RUN_ID`, checked
    /// as [`state::confined_to_run`] checks it), else this process's.
    fn work_root_of(&self, meta: &RunMeta) -> PathBuf {
        let journaled = meta.work_dir.as_deref().map(Path::new);
        let checked = journaled
            .filter(|w| state::confined_to_run(w, &meta.run_id, meta.work_dir.as_deref(), &self.work_root).is_ok());
        checked.and_then(|w| w.parent()?.parent()).map_or_else(|| self.work_root.clone(), Path::to_path_buf)
    }

    fn tag<'a>(ctx: &'a Ctx<'_>) -> [(&'static str, &'a str); 1] {
        [("REHEARSE_RUN_ID", ctx.run.run_id.as_str())]
    }
}

impl Provider for LocalProvider {
    async fn create(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        match res.kind {
            Kind::LocalPostgres => self.database(res, ctx).await,
            Kind::LocalRelease => self.release(res, ctx).await,
            Kind::Install => self.install(res, ctx).await,
            Kind::LocalProcess => self.service(res, ctx).await,
            other => Err(StepError::build(format!("the local provider cannot create `{}`", other.as_str()))),
        }
    }

    async fn inject(
        &self,
        entry: &Entry,
        what: Injected,
        info: &RunInfo,
        clock: &Clock,
    ) -> Result<Option<Handle>, String> {
        match what {
            Injected::KillProcess => return self.kill(entry, info).await.map(|()| None),
            Injected::StopDatabase { .. } | Injected::StartDatabase => {}
            other => return Err(format!("the local provider does not {other:?}: it is a cloud's fault")),
        }
        if entry.kind != Kind::LocalPostgres {
            return Err(format!("`{}` is no database this provider can stop", entry.id));
        }
        let Some(ClusterHandle { mut cluster, generation }) =
            handle_of(entry, "PostgreSQL cluster").map_err(|e| e.to_string())?
        else {
            return Err(format!("`{}` has no journaled cluster", entry.id));
        };
        // As teardown does: who runs the copy is this machine's fact, not the journal's.
        cluster.run_as = process::Users::cluster_only().ok().flatten();
        let bin = PgBin::find().map_err(|e| e.message)?;
        match what {
            Injected::StopDatabase { immediate } => {
                let mode = if immediate { "immediate" } else { "fast" };
                postgres::stop_mode(&bin, &cluster, mode).await.map_err(|e| e.message)?;
                Ok(None)
            }
            Injected::StartDatabase => {
                let log = info.logs_dir.join(format!("{}.log", entry.id));
                let tag = [("REHEARSE_RUN_ID", info.run_id.as_str())];
                let timeout = Duration::from_secs(60);
                postgres::start(&bin, &mut cluster, &log, clock, timeout, &tag, info.wal_as_production)
                    .await
                    .map_err(|e| e.message)?;
                Handle::of(&ClusterHandle { cluster, generation }).map(Some).map_err(|e| e.to_string())
            }
            _ => Ok(None),
        }
    }

    async fn destroy(&self, entry: &Entry, meta: &RunMeta) -> Result<(), DestroyError> {
        match entry.kind {
            Kind::LocalProcess => {
                let handle = handle_of::<ProcessHandle>(entry, "local process")?;
                if let Some(ProcessHandle { process: h, .. }) = handle {
                    // Only a group provably the run's is signalled, whatever the journal says.
                    if !process::stop_run_group(&h, &meta.run_id, STOP_GRACE).await {
                        return Err(not_stopped(format!("process group {} did not stop", h.pgid)));
                    }
                }
                // Reap our own child, if we started it.
                let child = self.children.lock().ok().and_then(|mut c| c.remove(&entry.id));
                if let Some(mut c) = child {
                    // Best effort: reaping our own child after its group was stopped; its status is not wanted.
                    #[allow(clippy::let_underscore_must_use)]
                    let _ = tokio::time::timeout(Duration::from_secs(2), c.wait()).await;
                }
                Ok(())
            }
            Kind::LocalPostgres => {
                let Some(ClusterHandle { mut cluster, generation }) = handle_of(entry, "PostgreSQL cluster")? else {
                    return Ok(());
                };
                // Who runs the copy is this machine's fact, not the journal's: a server is
                // stopped only as, and only if it runs as, the cluster user.
                cluster.run_as = process::Users::cluster_only().ok().flatten();
                let bin = PgBin::find().ok();
                if let Some(g) = generation {
                    // A copy inside a generation: where rehearse makes them (in the run's
                    // own work root), and only the run's own.
                    let g = cow::Generation::confined(&g, &self.work_root_of(meta)).map_err(cow_failed)?;
                    return self.release_copy(&g, cluster, &meta.run_id, bin.as_ref()).await;
                }
                let base = self.owned_path(&cluster.base, meta)?;
                if !postgres::stop(bin.as_ref(), &cluster).await {
                    return Err(not_stopped(format!("PostgreSQL in {} did not stop", cluster.data().display())));
                }
                Ok(state::remove_tree(&base)?)
            }
            Kind::LocalRelease => match handle_of::<ReleaseHandle>(entry, "release directory")? {
                Some(ReleaseHandle { dir }) => Ok(state::remove_tree(&self.owned_path(&dir, meta)?)?),
                None => Ok(()),
            },
            Kind::Workspace => self.remove_workspace(entry, meta).await,
            // A fault left journaled (the run stopped while it lasted) is undone by the
            // teardown of what it hit: its proxy ended with the run, a server it stopped
            // goes with its cluster, a process it killed is gone. Install steps and
            // suites leave nothing behind.
            _ => Ok(()),
        }
    }

    /// The newest archive of every database restored from a backup directory.
    async fn pin_sources(&self, loaded: &crate::description::Loaded) -> Result<Pins, StepError> {
        let mut pins = Pins::new();
        if !loaded.desc.databases.values().any(|d| matches!(d.source, DatabaseSource::BackupDir(_))) {
            return Ok(pins);
        }
        let bin = PgBin::find()?;
        let clock = crate::sys::timing::Clock::new();
        for (name, db) in &loaded.desc.databases {
            if let DatabaseSource::BackupDir(dir) = &db.source {
                let b = postgres::newest_backup(&bin, &loaded.resolve(dir), &clock).await?;
                pins.insert(name.clone(), Pin::Backup { path: b.path, taken_at: b.taken_at });
            }
        }
        Ok(pins)
    }

    /// Its resources are processes and directories of this machine.
    fn acts_on_this_machine(&self) -> bool {
        true
    }

    /// A run's mark here is its work directory and its id in its processes'
    /// environment: both found, they are its workspace (whose removal stops them).
    async fn discover(
        &self,
        run_id: Option<&str>,
    ) -> Result<Vec<crate::engine::discover::Marked>, crate::engine::discover::DiscoverError> {
        let Some(run_id) = run_id else { return Ok(Vec::new()) };
        let root = std::path::absolute(&self.work_root).unwrap_or_else(|_| self.work_root.clone());
        let work = root.join("runs").join(run_id);
        let copies = cow::used_by(&root.join("golden"), run_id);
        if tagged_processes(run_id).is_empty() && !work.exists() && copies.is_empty() {
            return Ok(Vec::new());
        }
        Ok(vec![crate::engine::discover::Marked {
            run_id: run_id.to_string(),
            id: "workspace".into(),
            kind: Kind::Workspace,
            handle: crate::engine::provider::Handle::from(serde_json::json!({ "dir": work })),
            provider_id: work.display().to_string(),
            expires_at: None,
            created_at: None,
            environment: None,
            stage: None,
            doubt: None,
        }])
    }

    /// Processes (and install steps) first, then the cluster and the release they
    /// used, then the work directory that held them.
    fn teardown_rank(&self, kind: Kind) -> Option<u8> {
        match kind {
            Kind::Fault | Kind::LocalProcess | Kind::Install => Some(0),
            Kind::LocalPostgres | Kind::LocalRelease => Some(1),
            Kind::Workspace => Some(2),
            _ => None,
        }
    }

    /// A process's PID and port, a cluster's port and directory, a directory.
    fn provider_id(&self, entry: &Entry) -> Option<String> {
        match entry.kind {
            Kind::LocalProcess => handle_of::<ProcessHandle>(entry, "local process").ok()?.map(|h| {
                let port = h.port.map(|p| format!(" on 127.0.0.1:{p}")).unwrap_or_default();
                format!("pid {}{port}", h.process.pid)
            }),
            Kind::LocalPostgres => handle_of::<ClusterHandle>(entry, "PostgreSQL cluster")
                .ok()?
                .map(|h| format!("PostgreSQL on 127.0.0.1:{} in {}", h.cluster.port, h.cluster.base.display())),
            Kind::LocalRelease | Kind::Workspace => {
                handle_of::<ReleaseHandle>(entry, "directory").ok()?.map(|h| h.dir.display().to_string())
            }
            _ => None,
        }
    }

    /// The shell command that removes a resource established as the run's: a process
    /// group whose leader carries the run's id, a directory in the run's own work
    /// directory. Anything else a journal names is left to `rehearse down`, whose
    /// checks refuse it; a journal's word alone never becomes `rm -rf` or `kill`.
    fn removal_command(&self, entry: &Entry, meta: &RunMeta) -> String {
        let down = format!("rehearse down {}", meta.run_id);
        let owned_dir = |d: &str| self.owned_path(Path::new(d), meta).is_ok();
        match entry.kind {
            Kind::LocalProcess => {
                let pgid = handle_of::<ProcessHandle>(entry, "local process").ok().flatten().map(|h| h.process.pgid);
                match pgid {
                    Some(g) if g > 1 && tagged_processes(&meta.run_id).contains(&g) => {
                        format!("kill -TERM -- -{g}")
                    }
                    _ => down,
                }
            }
            Kind::LocalPostgres => {
                let base = handle_of::<ClusterHandle>(entry, "PostgreSQL cluster")
                    .ok()
                    .flatten()
                    .and_then(|h| h.cluster.base.to_str().map(str::to_string));
                match base {
                    Some(b) if owned_dir(&b) => {
                        let data = shell_quote(&format!("{b}/data"));
                        format!("pg_ctl -D {data} -m fast stop; rm -rf -- {}", shell_quote(&b))
                    }
                    _ => down,
                }
            }
            // A fault left journaled goes with what it hit: `down` records it undone.
            Kind::Fault => down,
            _ => {
                let dir = handle_of::<ReleaseHandle>(entry, "directory")
                    .ok()
                    .flatten()
                    .and_then(|h| h.dir.to_str().map(str::to_string))
                    .or_else(|| meta.work_dir.clone());
                match dir {
                    Some(d) if owned_dir(&d) => format!("rm -rf -- {}", shell_quote(&d)),
                    _ => down,
                }
            }
        }
    }
}

/// A process or a server that did not stop when asked: another attempt may succeed.
fn not_stopped(why: String) -> DestroyError {
    DestroyError::new(DestroyErrorKind::Unavailable, why)
}

fn cow_failed(e: cow::CowError) -> DestroyError {
    use cow::CowError as E;
    let kind = match &e {
        E::NotOurs(..) | E::NotOurImage(_) | E::NotARun(_) => DestroyErrorKind::NotOurs,
        E::Fs(secure_fs::FsError::Unsafe { .. }) => DestroyErrorKind::NotOurs,
        E::Fs(_) | E::Io { .. } => DestroyErrorKind::Failed,
        E::Busy(_) => DestroyErrorKind::InUse,
        E::Command { .. } => DestroyErrorKind::Unavailable,
    };
    DestroyError::new(kind, e.to_string())
}

impl LocalProvider {
    /// Removes the run's copy in a generation (the server stopped first), and lets the
    /// generation go when nothing else uses it.
    async fn release_copy(
        &self,
        g: &cow::Generation,
        mut cluster: Cluster,
        run_id: &str,
        bin: Option<&PgBin>,
    ) -> Result<(), DestroyError> {
        let stop = |base: PathBuf| async move {
            cluster.base = base;
            if postgres::stop(bin, &cluster).await {
                Ok(())
            } else {
                Err(format!("PostgreSQL in {} did not stop", cluster.data().display()))
            }
        };
        g.release(run_id, stop).await.map_err(cow_failed)
    }

    /// Last: whatever a crashed run left that the journal does not name — processes
    /// tagged with the run id, clusters in the work directory and its copies in
    /// generations — then the directory.
    async fn remove_workspace(&self, entry: &Entry, meta: &RunMeta) -> Result<(), DestroyError> {
        for pid in tagged_processes(&meta.run_id) {
            let Some(start_time) = process::start_time(pid) else { continue };
            let h = ProcHandle { pid, pgid: pid, start_time };
            process::signal_exact(&h, nix::sys::signal::Signal::SIGTERM);
            if !process::stop_group(&h, STOP_GRACE).await {
                process::signal_exact(&h, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let dir = handle_of::<WorkspaceHandle>(entry, "workspace directory")?
            .map(|h| h.dir)
            .or_else(|| meta.work_dir.as_ref().map(PathBuf::from));
        if let Some(dir) = dir {
            let dir = self.owned_path(&dir, meta)?;
            let cluster_user = process::Users::cluster_only().ok().flatten();
            if let Ok(rd) = std::fs::read_dir(&dir) {
                let bin = PgBin::find().ok();
                for e in rd.flatten() {
                    let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                    if is_dir && e.path().join("data").is_dir() {
                        let c = Cluster { base: e.path(), port: 0, run_as: cluster_user, postmaster: None };
                        postgres::stop(bin.as_ref(), &c).await;
                    }
                }
            }
            state::remove_tree(&dir)?;
        }
        // Its copies in copy-on-write generations, found by their markers.
        let bin = PgBin::find().ok();
        let run_as = process::Users::cluster_only().ok().flatten();
        for g in cow::used_by(&self.work_root_of(meta).join("golden"), &meta.run_id) {
            let c = Cluster { base: g.copy_of(&meta.run_id), port: 0, run_as, postmaster: None };
            self.release_copy(&g, c, &meta.run_id, bin.as_ref()).await?;
        }
        let left = tagged_processes(&meta.run_id);
        if !left.is_empty() {
            return Err(not_stopped(format!("processes still running with REHEARSE_RUN_ID={}: {left:?}", meta.run_id)));
        }
        Ok(())
    }
}

/// Processes whose environment carries `REHEARSE_RUN_ID=run_id` (readable for our
/// own processes, and all of them as root).
pub(crate) fn tagged_processes(run_id: &str) -> Vec<i32> {
    let needle = format!("REHEARSE_RUN_ID={run_id}");
    // Not this process, nor the shell (or CI job) it runs in: a person who exported the
    // run's variables (`eval "$(rehearse env RUN)"` once did) is not part of the run.
    let mine = process::self_and_ancestors();
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !mine.contains(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|pid| {
            process::start_time(*pid)
                .is_some_and(|start_time| process::is_alive(&ProcHandle { pid: *pid, pgid: 0, start_time }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::provider::Handle;
    use serde_json::json;

    /// issue 24: a process or a cluster whose journaled handle does not read is not
    /// taken as gone: its removal fails (teardown lists it, with `rehearse down`).
    #[tokio::test]
    async fn a_handle_that_does_not_read_is_not_destroyed() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("runs/r-20261126-000000-abcdef");
        std::fs::create_dir_all(&run).unwrap();
        let meta = RunMeta::sample("r-20261126-000000-abcdef", "local", Some(run.to_str().unwrap()));
        let p = LocalProvider::new(root.path());
        let down = "rehearse down r-20261126-000000-abcdef".to_string();
        for (kind, handle, command) in [
            (Kind::LocalProcess, json!({"process": {"pid": "one"}}), down.clone()),
            (Kind::LocalProcess, json!({"pid": 1}), down.clone()),
            (Kind::LocalPostgres, json!({"cluster": 7}), down.clone()),
            // A directory: the run's own work directory, which holds it.
            (Kind::LocalRelease, json!({"dir": ["/"]}), format!("rm -rf -- {}", run.display())),
        ] {
            let entry = Entry {
                id: "x".into(),
                kind,
                handle: Some(Handle::of(&handle).unwrap()),
                key: None,
                deleted: false,
                intent_at: None,
            };
            let e = p.destroy(&entry, &meta).await.unwrap_err();
            assert_eq!(e.kind, DestroyErrorKind::Failed, "{kind} {handle}");
            assert!(e.message.contains("is not a"), "{e}");
            assert_eq!(p.removal_command(&entry, &meta), command, "{kind}");
        }
    }

    #[test]
    fn removal_commands_quote_their_paths_and_name_only_what_lies_in_the_run() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("my work");
        let run = work.join("runs/r-20261126-000000-abcdef");
        std::fs::create_dir_all(&run).unwrap();
        let meta = RunMeta::sample("r-20261126-000000-abcdef", "local", Some(run.to_str().unwrap()));
        let entry = |kind: Kind, handle: serde_json::Value| Entry {
            id: "x".into(),
            kind,
            handle: Some(Handle::of(&handle).unwrap()),
            key: None,
            deleted: false,
            intent_at: None,
        };
        let p = LocalProvider::new(&work);
        let odd = run.join("release; rm -rf ~");
        let cmd = p.removal_command(&entry(Kind::LocalRelease, json!({ "dir": odd })), &meta);
        assert_eq!(cmd, format!("rm -rf -- '{}'", odd.display()));
        let db = run.join("db");
        let cmd = p.removal_command(
            &entry(
                Kind::LocalPostgres,
                json!({"cluster": {"base": db, "port": 0, "run_as": null, "postmaster": null}}),
            ),
            &meta,
        );
        assert_eq!(cmd, format!("pg_ctl -D '{}/data' -m fast stop; rm -rf -- '{}'", db.display(), db.display()));
        // What a journal names outside the run, or a process group not tagged with the
        // run, gets no command of its own: `rehearse down` refuses it and says why.
        for (kind, handle) in [
            (Kind::LocalRelease, json!({"dir": "/etc"})),
            (Kind::Workspace, json!({"dir": run.join("../../../victim")})),
            (Kind::LocalPostgres, json!({"cluster": {"base": "/srv", "port": 0, "run_as": null, "postmaster": null}})),
            (Kind::LocalProcess, json!({"process": {"pid": 1, "pgid": 1, "start_time": 1}})),
        ] {
            let cmd = p.removal_command(&entry(kind, handle.clone()), &meta);
            assert_eq!(cmd, "rehearse down r-20261126-000000-abcdef", "{kind} {handle}");
        }
    }
}
