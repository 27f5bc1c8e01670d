//! A copy of production on this machine: a throwaway PostgreSQL cluster, restored
//! from the newest backup (or copied from the warm golden copy), masked, handed over
//! to the application's role with a fresh password.

use super::*;

impl LocalProvider {
    pub(super) async fn database(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
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
                let b = match ctx.run.pins.get(res.name.as_str()) {
                    Some(Pin::Backup { path, taken_at }) => postgres::backup_at(&bin, path, *taken_at, ctx.clock).await,
                    _ => postgres::newest_backup(&bin, &dir, ctx.clock).await,
                };
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
        let GoldenSource { generation, golden, lock: golden_lock } =
            golden_source(ctx, res, &bin, &backup, &db_name, cluster.run_as)?;
        let warm = golden_lock.is_some();

        let handle = |c: &Cluster| super::ClusterHandle {
            cluster: c.clone(),
            generation: generation.as_ref().map(|g| g.path.clone()),
        };
        if let Some(g) = &generation {
            cluster.base = g.copy_of(&ctx.run.run_id);
        }
        ctx.created(res, &handle(&cluster)).await?;
        let restore_started = Instant::now();
        if let Some(g) = &generation {
            let t = ctx.started(res, "copy-golden", None);
            let r = {
                let _span = ctx.clock.external();
                g.copy_for(&ctx.run.run_id, cluster.run_as).await
            };
            ctx.step(res, "copy-golden", t, r.is_ok(), Some(format!("copy-on-write of generation {}", g.id())));
            r?;
            let t = ctx.started(res, "start", None);
            let r = start_on_free_port(&bin, &mut cluster, &log, ctx, timeout, &tag).await;
            ctx.step(res, "start", t, r.is_ok(), Some(format!("127.0.0.1:{}", cluster.port)));
            r?;
        } else if warm {
            let t = ctx.started(res, "copy-golden", None);
            // Copied while the directory is still rehearse's (nothing the cluster's user
            // could have placed in it is followed), then handed over.
            postgres::prepare_base(&cluster.base, None)?;
            let r = copy_golden(&golden.join("data"), &cluster.data(), ctx).await;
            let why = cow::unavailable().unwrap_or_else(|| "the golden copy was made as a full copy".into());
            ctx.step(res, "copy-golden", t, r.is_ok(), Some(format!("full copy of {} ({why})", golden.display())));
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
            ctx.created(res, &handle(&cluster)).await?;
            let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8);
            let t = ctx.started(res, "restore", Some(backup.path.display().to_string()));
            let restore = postgres::restore(&bin, &cluster, &db_name, &backup.path, jobs, &log, ctx.clock, timeout);
            let what = format!("pg_restore of {} into the copy", backup.path.display());
            let r = ctx.waiting(res, &what, timeout, restore).await;
            ctx.step(res, "restore", t, r.is_ok(), Some(format!("pg_restore -j{jobs}")));
            r?;
            if let Some(m) = &db.masking {
                let t = ctx.started(res, "mask", None);
                let sql = ctx.loaded.resolve(m);
                let masking = postgres::mask(&bin, &cluster, &db_name, &sql, &log, ctx.clock, timeout);
                let what = format!("the masking SQL {} to run on the copy", m.display());
                let r = ctx.waiting(res, &what, timeout, masking).await;
                ctx.step(res, "mask", t, r.is_ok(), Some(m.display().to_string()));
                r?;
            }
            postgres::hand_over(&bin, &cluster, &db_name, ctx.clock).await?;
        }
        ctx.created(res, &handle(&cluster)).await?;
        let restore_ms = restore_started.elapsed().as_millis() as u64;

        // A fresh secret for this copy; given on stdin, never on a command line, and
        // redacted from everything written from now on.
        let password = ctx.run.password.clone().unwrap_or_else(secrets::generate);
        let t = ctx.started(res, "rotate-password", None);
        let r = postgres::set_app_password(&bin, &cluster, &password, ctx.clock).await;
        ctx.step(res, "rotate-password", t, r.is_ok(), None);
        r?;
        // Best effort: without it, `compare` has no per-statement times, and says so.
        if let Err(e) = postgres::enable_statement_stats(&bin, &cluster, ctx.clock).await {
            tracing::warn!("pg_stat_statements not enabled in {}: {}", res.id, e.message);
        }

        let host = "127.0.0.1".to_string();
        let port = cluster.port.to_string();
        let outputs = DatabaseOutputs::new(host, port, db_name, postgres::APP_ROLE.into(), password);
        let backup_used = BackupUsed {
            database: res.name.clone(),
            source_kind: db.source.key().into(),
            source,
            backup: backup.path.display().to_string(),
            arn: None,
            taken_at: Some(backup.taken_at),
            restore: db.restore.as_str().into(),
            method: match (&generation, warm) {
                (Some(_), _) => "copy-on-write".into(),
                (None, true) => "full-copy".into(),
                (None, false) => "cold".into(),
            },
            restore_ms,
        };
        Ok(Output::Database { outputs, backup: backup_used })
    }
}

/// Where a run's copy comes from: a copy-on-write generation, a golden copy to copy
/// whole (under its shared lock), or neither (a cold restore).
struct GoldenSource {
    generation: Option<cow::Generation>,
    golden: PathBuf,
    lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// A current generation of this backup and masking first, then a current golden copy
/// not being refreshed; says when one exists but is stale, or is being refreshed.
fn golden_source(
    ctx: &Ctx<'_>,
    res: &Resource,
    bin: &PgBin,
    backup: &postgres::Backup,
    db_name: &str,
    run_as: Option<process::RunAs>,
) -> Result<GoldenSource, StepError> {
    let d = &ctx.loaded.desc;
    let db = &d.databases[res.name.as_str()];
    let masking_sql = masking_sql(ctx.loaded, db).map_err(StepError::build)?;
    let golden = golden_dir(&ctx.run.golden_root, &d.name, &res.name);
    let golden_meta = golden::current(&golden);
    let wanted = GoldenMeta {
        backup: backup.clone(),
        database_name: db_name.to_string(),
        masking: masking_sql,
        pg_bin: bin.dir.clone(),
        cluster_uid: run_as.map(|u| u.uid),
        layout: GOLDEN_LAYOUT,
    };
    // A copy-on-write generation first, then a golden copy to copy whole.
    let generations = cow::generations_dir(&ctx.run.golden_root, &d.name, &res.name);
    let current_generation = if ctx.run.cold { None } else { cow::current(&generations) };
    let generation = current_generation.as_ref().filter(|(_, m)| m == &wanted).map(|(g, _)| g.clone());
    // The copy's socket lies in its directory: a path over the 107 bytes a unix
    // socket's may have cannot be a copy there (a full copy or a restore instead).
    let generation = generation.filter(|g| {
        let socket = g.copy_of(&ctx.run.run_id).join(".s.PGSQL.65535");
        let fits = socket.as_os_str().len() <= 107;
        if !fits {
            tracing::warn!("not copying generation {}: the socket path {} is too long", g.id(), socket.display());
        }
        fits
    });
    let fresh = generation.is_none() && !ctx.run.cold && golden_meta.as_ref() == Some(&wanted);
    // Copied under a shared lock; while `warm` replaces it, this run restores cold.
    let golden_lock = if fresh { golden::lock_for_copy(&golden) } else { None };
    if fresh && golden_lock.is_none() {
        ctx.reporter.event(crate::engine::events::Event::GoldenRefreshing { database: res.name.clone() });
    }
    let made = golden_meta.is_some() || current_generation.is_some();
    if !ctx.run.cold && made && !fresh && generation.is_none() {
        ctx.reporter.event(crate::engine::events::Event::GoldenStale {
            database: res.name.clone(),
            description: ctx.loaded.path.display().to_string(),
        });
    }
    Ok(GoldenSource { generation, golden, lock: golden_lock })
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
        match postgres::start(bin, cluster, log, ctx.clock, timeout, tag, ctx.run.wal_as_production).await {
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
    crate::providers::release::copy_tree(from, to).await
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
