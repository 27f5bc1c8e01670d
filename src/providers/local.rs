//! The local provider: the same description, built on this machine.
//!
//! Databases become throwaway PostgreSQL clusters restored from the newest `pg_dump`
//! archive (or copied from a warm golden copy); the release is unpacked into the run's
//! work directory; services are local processes on free ports. Everything lives under
//! the run's work directory, and every process carries `REHEARSE_RUN_ID` in its
//! environment — the local equivalent of a tag — so `rehearse down` finds what a
//! crashed run left even without its journal.

pub(crate) mod golden;
pub(crate) mod postgres;
pub(crate) mod release;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::description::DatabaseSource;
use crate::engine::journal::{Entry, RunMeta};
use crate::engine::provider::{Ctx, DestroyError, DestroyErrorKind, Handle, Output, Provider, StepError};
use crate::plan::{Kind, Resource};
use crate::report::model::BackupUsed;
use crate::secrets;
use crate::sys::health;
use crate::sys::process::{self, ProcHandle};
use crate::sys::{secure_fs, state};
use postgres::{Cluster, PgBin};

/// How long an install / migration command may take.
pub(crate) const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
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

/// Golden copies hold the release's role ([`postgres::APP_ROLE`]) owning the data.
pub(crate) const GOLDEN_LAYOUT: u32 = 2;

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

    fn tag<'a>(ctx: &'a Ctx<'_>) -> [(&'static str, &'a str); 1] {
        [("REHEARSE_RUN_ID", ctx.run.run_id.as_str())]
    }

    async fn database(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let d = &ctx.loaded.desc;
        let db = &d.databases[res.name.as_str()];
        let bin = PgBin::find()?;
        let db_name = ctx.render(&format!("databases.{}.name", res.name))?;
        let timeout = db.timeout.unwrap_or(Duration::from_secs(600));
        let tag = Self::tag(ctx);
        let log = ctx.run.logs_dir.join(format!("{}.log", res.id));

        // Find the production backup first: a missing backup creates nothing.
        let t = ctx.started(res, "find-backup", None);
        let (backup, source) = match &db.source {
            DatabaseSource::BackupDir(dir) => {
                let dir = ctx.loaded.resolve(dir);
                let b = postgres::newest_backup(&bin, &dir, ctx.clock).await;
                ctx.step(res, "find-backup", t, b.is_ok(), b.as_ref().ok().map(|b| b.path.display().to_string()));
                (b?, dir.display().to_string())
            }
            DatabaseSource::Url(url) => {
                let dump = ctx.run.work_dir.join(format!("{}.dump", res.id));
                let b = dump_url(&bin, url, &dump, &log, ctx).await;
                ctx.step(res, "find-backup", t, b.is_ok(), Some("pg_dump of the live source".into()));
                (b?, crate::description::redact_url(url))
            }
            other => return Err(StepError::build(format!("the local provider cannot restore from `{}`", other.key()))),
        };

        let mut cluster = Cluster {
            base: ctx.run.work_dir.join(format!("db-{}", res.name)),
            port: process::free_port().map_err(|e| StepError::build(format!("no free port: {e}")))?,
            run_as: ctx.run.users.cluster,
            postmaster: None,
        };
        let masking_sql = match &db.masking {
            Some(m) => {
                let path = ctx.loaded.resolve(m);
                secure_fs::check_input(&path)
                    .map_err(|e| StepError::build(format!("the masking SQL cannot be trusted: {e}")))?;
                Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| StepError::build(format!("cannot read masking SQL {}: {e}", m.display())))?,
                )
            }
            None => None,
        };
        let golden = golden_dir(&ctx.run.golden_root, &d.name, &res.name);
        // The golden directory is the cluster user's: its metadata is read without
        // following a link, and only so much of it.
        let golden_meta: Option<GoldenMeta> = secure_fs::Dir::open(&golden)
            .and_then(|d| d.read_file(std::ffi::OsStr::new("meta.json"), 1 << 20))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let wanted = GoldenMeta {
            backup: backup.clone(),
            database_name: db_name.clone(),
            masking: masking_sql.clone(),
            pg_bin: bin.dir.clone(),
            cluster_uid: cluster.run_as.map(|u| u.uid),
            layout: GOLDEN_LAYOUT,
        };
        let fresh = !ctx.run.cold && golden_meta.as_ref() == Some(&wanted) && golden.join("data/PG_VERSION").is_file();
        // Copied under a shared lock; while `warm` replaces it, this run restores cold.
        let golden_lock = if fresh { golden::lock_for_copy(&golden) } else { None };
        if fresh && golden_lock.is_none() {
            ctx.reporter.event(crate::engine::events::Event::Note(format!(
                "golden copy of `{}` is being refreshed (`rehearse warm`); restoring cold",
                res.name
            )));
        }
        let warm = fresh && golden_lock.is_some();
        if !ctx.run.cold && golden_meta.is_some() && !fresh {
            ctx.reporter.event(crate::engine::events::Event::Note(format!(
                "golden copy of `{}` is stale (backup or masking changed); restoring cold — refresh it with `rehearse warm {}`",
                res.name,
                ctx.loaded.path.display()
            )));
        }

        ctx.created(res, Handle::new(json!({"cluster": cluster})))?;
        let restore_started = Instant::now();
        if warm {
            let t = ctx.started(res, "copy-golden", None);
            // Copied while the directory is still rehearse's (nothing the cluster's user
            // could have placed in it is followed), then handed over.
            postgres::prepare_base(&cluster.base, None)?;
            let r = copy_golden(&golden.join("data"), &cluster.data(), ctx).await;
            ctx.step(res, "copy-golden", t, r.is_ok(), Some(golden.display().to_string()));
            r?;
            drop(golden_lock);
            postgres::hand_base(&cluster.base, cluster.run_as)?;
            let t = ctx.started(res, "start", None);
            let r = start_on_free_port(&bin, &mut cluster, &log, ctx, timeout, &tag).await;
            ctx.step(res, "start", t, r.is_ok(), Some(format!("127.0.0.1:{}", cluster.port)));
            r?;
        } else {
            postgres::prepare_base(&cluster.base, cluster.run_as)?;
            let t = ctx.started(res, "initdb", None);
            let r = postgres::initdb(&bin, &cluster, &log, ctx.clock, &tag).await;
            ctx.step(res, "initdb", t, r.is_ok(), None);
            r?;
            let t = ctx.started(res, "start", None);
            let r = start_on_free_port(&bin, &mut cluster, &log, ctx, timeout, &tag).await;
            ctx.step(res, "start", t, r.is_ok(), Some(format!("127.0.0.1:{}", cluster.port)));
            r?;
            ctx.created(res, Handle::new(json!({"cluster": cluster})))?;
            let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8);
            let t = ctx.started(res, "restore", Some(backup.path.display().to_string()));
            let r = postgres::restore(&bin, &cluster, &db_name, &backup.path, jobs, &log, ctx.clock, timeout).await;
            ctx.step(res, "restore", t, r.is_ok(), Some(format!("pg_restore -j{jobs}")));
            r?;
            if let Some(m) = &db.masking {
                let t = ctx.started(res, "mask", None);
                let r =
                    postgres::mask(&bin, &cluster, &db_name, &ctx.loaded.resolve(m), &log, ctx.clock, timeout).await;
                ctx.step(res, "mask", t, r.is_ok(), Some(m.display().to_string()));
                r?;
            }
            postgres::hand_over(&bin, &cluster, &db_name, ctx.clock).await?;
        }
        ctx.created(res, Handle::new(json!({"cluster": cluster})))?;
        let restore_ms = restore_started.elapsed().as_millis() as u64;

        // A fresh secret for this copy; given on stdin, never on a command line, and
        // redacted from everything written from now on.
        let password = secrets::generate();
        let t = ctx.started(res, "rotate-password", None);
        let r = postgres::set_app_password(&bin, &cluster, &password, ctx.clock).await;
        ctx.step(res, "rotate-password", t, r.is_ok(), None);
        r?;

        let host = "127.0.0.1".to_string();
        let port = cluster.port.to_string();
        let outputs = DatabaseOutputs {
            url: format!("postgres://{}:{password}@{host}:{port}/{db_name}", postgres::APP_ROLE),
            endpoint: format!("{host}:{port}"),
            host,
            port,
            name: db_name,
            user: postgres::APP_ROLE.into(),
            password,
        };
        let backup_used = BackupUsed {
            database: res.name.clone(),
            source_kind: db.source.key().into(),
            source,
            backup: backup.path.display().to_string(),
            arn: None,
            taken_at: Some(backup.taken_at),
            restore: db.restore.as_str().into(),
            method: if warm { "warm".into() } else { "cold".into() },
            restore_ms,
        };
        Ok(Output::Database { outputs, backup: backup_used })
    }

    async fn release(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let artifact = ctx.loaded.resolve(Path::new(&ctx.plan.release.artifact));
        let dest = ctx.run.work_dir.join("release");
        ctx.created(res, Handle::new(json!({"dir": dest})))?;
        let t = ctx.started(res, "unpack", Some(artifact.display().to_string()));
        // The release is private (whatever modes the artifact carried: no one else may
        // read or change it before it runs) and belongs to the user it runs as;
        // rehearse writes into it afterwards only through no-follow descriptors.
        let owner = ctx.run.users.release.map(|u| (u.uid, u.gid));
        let r = release::unpack(&artifact, &dest, owner, ctx.clock).await;
        ctx.step(res, "unpack", t, r.is_ok(), Some(format!("{} {}", ctx.plan.release.version, artifact.display())));
        r?;
        Ok(Output::Release { dir: dest })
    }

    /// Environment of a release command: the service's `env`, the run's facts, and
    /// `DATABASE_URL`/`PG*` for the database it depends on when there is exactly one.
    fn service_env(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Vec<(String, String)>, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let mut env: Vec<(String, String)> = vec![
            ("REHEARSE_RUN_ID".into(), ctx.run.run_id.clone()),
            ("REHEARSE_RELEASE".into(), ctx.run.release_version.clone()),
        ];
        let dbs: Vec<&String> = ctx
            .loaded
            .deps
            .get(res.name.as_str())
            .into_iter()
            .flatten()
            .filter(|d| ctx.loaded.desc.databases.contains_key(*d))
            .collect();
        if let [db] = dbs.as_slice() {
            let o = ctx.tctx.get("databases").and_then(|v| v.get(db.as_str()));
            if let Some(outputs) = o.and_then(|o| DatabaseOutputs::deserialize(o).ok()) {
                env.push(("DATABASE_URL".to_string(), outputs.url.clone()));
                env.extend(outputs.libpq_env());
            }
        }
        for k in s.env.keys() {
            let v = ctx.render(&format!("services.{}.env.{k}", res.name))?;
            env.retain(|(e, _)| e != k);
            env.push((k.clone(), v));
        }
        Ok(env)
    }

    async fn install(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let dir = ctx.run.work_dir.join("release");
        ctx.created(res, Handle::new(json!({})))?;
        if !s.templates.is_empty() {
            // The release's directory is its user's: written through descriptors that
            // follow no link, each file replaced by a rename, owned by that user, 0600.
            let release_dir = secure_fs::Dir::open(&dir)
                .map_err(|e| StepError::build(format!("cannot open the release directory: {e}")))?;
            let owner = ctx.run.users.release.map(|u| (u.uid, u.gid));
            for (i, t) in s.templates.iter().enumerate() {
                let text = ctx.render(&format!("services.{}.templates[{i}].source", res.name))?;
                release_dir
                    .write_file(&t.dest, text.as_bytes(), owner)
                    .map_err(|e| StepError::build(format!("cannot write the config template: {e}")))?;
            }
        }
        let Some(_) = &s.install else {
            return Ok(Output::Nothing);
        };
        let command = ctx.render(&format!("services.{}.install", res.name))?;
        let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
        let mut cmd = process::shell(&command, &dir, ctx.run.release_user());
        cmd.envs(self.service_env(res, ctx)?);
        let t = ctx.started(res, "install", Some(command.clone()));
        let f = process::run_logged(&mut cmd, &log, INSTALL_TIMEOUT, ctx.clock).await;
        let ok = f.as_ref().is_ok_and(|f| f.success());
        ctx.step(res, "install", t, ok, Some(command.clone()));
        let f = f.map_err(|e| StepError::build(format!("cannot run `{command}`: {e}")))?;
        if f.timed_out {
            return Err(StepError::release(format!(
                "install of `{}` (`{command}`) did not finish within {}s",
                res.name,
                INSTALL_TIMEOUT.as_secs()
            ))
            .with_log(&log, 20));
        }
        if !f.success() {
            let err = StepError::release(String::new()).with_log(&log, 20);
            // The most telling line of the output ("migration 0003_x.sql failed:")
            // makes the one-line message; the tail carries the database's error.
            let key = err.log_tail.iter().rev().find(|l| l.to_lowercase().contains("failed")).cloned();
            let message = match key {
                Some(line) => format!(
                    "install of `{}` failed (exit {}): {}",
                    res.name,
                    f.status.unwrap_or(-1),
                    line.trim().trim_end_matches(':')
                ),
                None => format!("install of `{}` failed: `{command}` exited with {}", res.name, f.status.unwrap_or(-1)),
            };
            return Err(StepError { message, ..err });
        }
        Ok(Output::Nothing)
    }

    async fn service(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let index: u32 = res.id.rsplit('.').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let dir = ctx.run.work_dir.join("release");
        let command = ctx.render(&format!("services.{}.command", res.name))?;
        let port = process::free_port().map_err(|e| StepError::build(format!("no free port: {e}")))?;
        let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
        let mut cmd = process::shell(&command, &dir, ctx.run.release_user());
        cmd.envs(self.service_env(res, ctx)?);
        cmd.env("PORT", port.to_string());
        let t = ctx.started(res, "start", Some(command.clone()));
        // Services outlive this step (and, when kept, this process): they are not killed
        // on drop; teardown stops their whole group explicitly.
        let (mut child, handle) = process::spawn_logged(&mut cmd, &log, false)
            .map_err(|e| StepError::release(format!("cannot start `{command}`: {e}")))?;
        // Journaled before anything else can fail or be interrupted.
        ctx.created(res, Handle::new(json!({"process": handle, "port": port})))?;
        ctx.step(res, "start", t, true, Some(format!("pid {} port {port}", handle.pid)));
        if let Some(h) = &s.health {
            let t = ctx.started(res, "health", Some(h.path.clone()));
            let deadline = Instant::now() + h.timeout;
            let _span = ctx.clock.external();
            let r = health::wait_healthy(port, &h.path, deadline, || match child.try_wait() {
                Ok(Some(status)) => Err(format!("exited with {status} before it was healthy")),
                _ => Ok(()),
            })
            .await;
            // The port was free when it was chosen; between then and the service's bind,
            // anyone could have taken it. What answered must be the service itself.
            let r = r.map_err(|e| e.to_string()).and_then(|_| {
                let sockets = process::listening_sockets(port);
                if !sockets.is_empty() && sockets.iter().all(|i| process::group_holds_socket(handle.pgid, *i)) {
                    Ok(())
                } else {
                    Err(format!(
                        "answered on port {port}, but from a process that is not the service (another user may have \
                         taken the port): refusing to run suites against it"
                    ))
                }
            });
            ctx.step(res, "health", t, r.is_ok(), Some(format!("GET {}", h.path)));
            if let Err(e) = r {
                return Err(
                    StepError::release(format!("service `{}` (instance {index}) {e}", res.name)).with_log(&log, 20)
                );
            }
        }
        if let Ok(mut c) = self.children.lock() {
            c.insert(res.id.clone(), child);
        }
        let address = "127.0.0.1".to_string();
        let url = format!("http://{address}:{port}");
        Ok(Output::Service {
            name: res.name.clone(),
            index,
            outputs: ServiceOutputs {
                address: address.clone(),
                port: port.to_string(),
                url: url.clone(),
                addresses: vec![address],
                urls: vec![url],
            },
        })
    }
}

async fn start_on_free_port(
    bin: &PgBin,
    cluster: &mut Cluster,
    log: &Path,
    ctx: &Ctx<'_>,
    timeout: Duration,
    tag: &[(&str, &str)],
) -> Result<(), StepError> {
    // The port was free a moment ago; if another process took it meanwhile, try anew.
    let mut last = None;
    for _ in 0..3 {
        match postgres::start(bin, cluster, log, ctx.clock, timeout, tag).await {
            Ok(()) => return Ok(()),
            // Someone took the port between its choice and the server's bind.
            Err(e) if process::port_taken(cluster.port) => {
                cluster.port = process::free_port().map_err(|e| StepError::build(format!("no free port: {e}")))?;
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| StepError::build("PostgreSQL did not start")))
}

async fn copy_golden(from: &Path, to: &Path, ctx: &Ctx<'_>) -> Result<(), StepError> {
    let _span = ctx.clock.external();
    release::copy_tree(from, to).await
}

async fn dump_url(
    bin: &PgBin,
    url: &str,
    dump: &Path,
    log: &Path,
    ctx: &Ctx<'_>,
) -> Result<postgres::Backup, StepError> {
    // Read-only use of the source: pg_dump takes a consistent snapshot and writes
    // nothing to it. Its password goes in the environment, never on the command line.
    let (url_without_password, password) = crate::description::split_password(url)
        .map_err(|why| StepError::build(format!("the source URL {} {why}", crate::description::redact_url(url))))?;
    let mut cmd = bin.cmd("pg_dump");
    cmd.args(["-Fc", "--no-owner", "--no-acl", "-f"]).arg(dump).arg("-d").arg(&url_without_password);
    cmd.env_remove("PGPASSWORD");
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let f = process::run_logged(&mut cmd, log, Duration::from_secs(6 * 3600), ctx.clock)
        .await
        .map_err(|e| StepError::build(format!("cannot run pg_dump: {e}")))?;
    if !f.success() {
        return Err(
            StepError::build(format!("pg_dump of {} failed", crate::description::redact_url(url))).with_log(log, 10)
        );
    }
    Ok(postgres::Backup { path: dump.to_path_buf(), taken_at: chrono::Utc::now() })
}

impl Provider for LocalProvider {
    async fn create(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        match res.kind {
            Kind::LocalPostgres => self.database(res, ctx).await,
            Kind::LocalRelease => self.release(res, ctx).await,
            Kind::LocalInstall => self.install(res, ctx).await,
            Kind::LocalProcess => self.service(res, ctx).await,
            other => Err(StepError::build(format!("the local provider cannot create `{}`", other.as_str()))),
        }
    }

    async fn destroy(&self, entry: &Entry, meta: &RunMeta) -> Result<(), DestroyError> {
        match entry.kind {
            Kind::LocalProcess => {
                let handle: Option<ProcHandle> =
                    entry.handle.as_ref().and_then(|h| serde_json::from_value(h.get("process")?.clone()).ok());
                if let Some(h) = handle {
                    if !process::stop_group(&h, STOP_GRACE).await {
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
                let cluster: Option<Cluster> =
                    entry.handle.as_ref().and_then(|h| serde_json::from_value(h.get("cluster")?.clone()).ok());
                let Some(cluster) = cluster else { return Ok(()) };
                let base = self.owned_path(&cluster.base, meta)?;
                let bin = PgBin::find().ok();
                if !postgres::stop(bin.as_ref(), &cluster).await {
                    return Err(not_stopped(format!("PostgreSQL in {} did not stop", cluster.data().display())));
                }
                Ok(state::remove_tree(&base)?)
            }
            Kind::LocalRelease => {
                let dir = entry.handle.as_ref().and_then(|h| h.get("dir")?.as_str().map(PathBuf::from));
                match dir {
                    Some(d) => Ok(state::remove_tree(&self.owned_path(&d, meta)?)?),
                    None => Ok(()),
                }
            }
            Kind::Workspace => self.remove_workspace(entry, meta).await,
            // Install steps and suites leave nothing behind.
            _ => Ok(()),
        }
    }

    /// Processes (and install steps) first, then the cluster and the release they
    /// used, then the work directory that held them.
    fn teardown_rank(&self, kind: Kind) -> Option<u8> {
        match kind {
            Kind::LocalProcess | Kind::LocalInstall => Some(0),
            Kind::LocalPostgres | Kind::LocalRelease => Some(1),
            Kind::Workspace => Some(2),
            _ => None,
        }
    }

    fn removal_command(&self, entry: &Entry, meta: &RunMeta) -> String {
        match entry.kind {
            Kind::LocalProcess => {
                let pgid = entry.handle.as_ref().and_then(|h| h.get("process")?.get("pgid")?.as_i64());
                match pgid {
                    Some(g) => format!("kill -TERM -- -{g}"),
                    None => format!("rehearse down {}", meta.run_id),
                }
            }
            Kind::LocalPostgres => {
                let base =
                    entry.handle.as_ref().and_then(|h| h.get("cluster")?.get("base")?.as_str().map(str::to_string));
                match base {
                    Some(b) => {
                        let data = quote(&format!("{b}/data"));
                        format!("pg_ctl -D {data} -m fast stop; rm -rf -- {}", quote(&b))
                    }
                    None => format!("rehearse down {}", meta.run_id),
                }
            }
            _ => {
                let dir = entry
                    .handle
                    .as_ref()
                    .and_then(|h| h.get("dir")?.as_str().map(str::to_string))
                    .or_else(|| meta.work_dir.clone());
                match dir {
                    Some(d) => format!("rm -rf -- {}", quote(&d)),
                    None => format!("rehearse down {}", meta.run_id),
                }
            }
        }
    }
}

/// A process or a server that did not stop when asked: another attempt may succeed.
fn not_stopped(why: String) -> DestroyError {
    DestroyError::new(DestroyErrorKind::Unavailable, why)
}

/// A path as one shell word, for the removal commands printed to a person.
fn quote(s: &str) -> String {
    shlex::try_quote(s).map(|q| q.into_owned()).unwrap_or_else(|_| format!("'{}'", s.replace('\0', "")))
}

impl LocalProvider {
    /// Last: whatever a crashed run left that the journal does not name — processes
    /// tagged with the run id, clusters in the work directory — then the directory.
    async fn remove_workspace(&self, entry: &Entry, meta: &RunMeta) -> Result<(), DestroyError> {
        for pid in tagged_processes(&meta.run_id) {
            let Some(start_time) = process::start_time(pid) else { continue };
            let h = ProcHandle { pid, pgid: pid, start_time };
            process::signal_exact(&h, nix::sys::signal::Signal::SIGTERM);
            if !process::stop_group(&h, STOP_GRACE).await {
                process::signal_exact(&h, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let dir = entry
            .handle
            .as_ref()
            .and_then(|h| h.get("dir")?.as_str().map(PathBuf::from))
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
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
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

    #[test]
    fn removal_commands_quote_their_paths() {
        let meta =
            RunMeta::sample("r-20261126-000000-abcdef", "local", Some("/srv/my work/runs/r-20261126-000000-abcdef"));
        let entry = |kind: Kind, handle: serde_json::Value| Entry {
            id: "x".into(),
            kind,
            handle: Some(handle),
            key: None,
            deleted: false,
        };
        let p = LocalProvider::new(Path::new("/srv/my work"));
        let cmd = p.removal_command(
            &entry(Kind::LocalRelease, json!({"dir": "/srv/my work/runs/r-1/release; rm -rf ~"})),
            &meta,
        );
        assert_eq!(cmd, "rm -rf -- '/srv/my work/runs/r-1/release; rm -rf ~'");
        let cmd = p.removal_command(
            &entry(
                Kind::LocalPostgres,
                json!({"cluster": {"base": "/srv/my work/db", "port": 0, "run_as": null, "postmaster": null}}),
            ),
            &meta,
        );
        assert_eq!(cmd, "pg_ctl -D '/srv/my work/db/data' -m fast stop; rm -rf -- '/srv/my work/db'");
    }
}
