//! Warm golden copies: the latest backup restored (and masked, and frozen) once into a
//! stopped cluster, which runs then copy instead of restoring: a copy-on-write
//! generation ([`super::cow`]) where this machine allows it, in well under a second for
//! any size; else a directory copied whole (with a reflink where its file system has
//! one). A golden copy is used only
//! while it matches the newest backup and the current masking SQL; otherwise runs
//! restore cold and say so. The nightly job refreshes it with `rehearse warm`.
//!
//! A refresh holds the golden copy's lock exclusively while it replaces it; a run
//! copies it under a shared lock, or restores cold while a refresh holds it. An
//! interrupt stops a refresh and removes the half-made copy (restored production data
//! may not be masked yet): nothing of it outlives `warm`.

use std::time::{Duration, Instant};

use super::cow::{self, Generation};
use super::postgres::{self, Cluster, PgBin};
use super::{golden_dir, GoldenMeta, GOLDEN_LAYOUT};
use crate::description::template::{self, Outputs, Scope};
use crate::description::{DatabaseSource, Loaded};
use crate::engine::events::{Event, Reporter};
use crate::engine::provider::{Pin, Pins};
use crate::sys::process;
use crate::sys::signals::Signals;
use crate::sys::state;
use crate::sys::timing::Clock;
use nix::fcntl::{Flock, FlockArg};

/// The lock a golden copy is refreshed and copied under (beside it, in rehearse's own
/// directory).
fn lock_file(golden: &std::path::Path) -> std::io::Result<std::fs::File> {
    crate::sys::secure_fs::lock_file(&golden.with_extension("lock"))
}

/// A shared lock on a golden copy for a run that copies it, or `None` when a refresh
/// holds it (the run then restores cold).
pub(crate) fn lock_for_copy(golden: &std::path::Path) -> Option<Flock<std::fs::File>> {
    Flock::lock(lock_file(golden).ok()?, FlockArg::LockSharedNonblock).ok()
}

/// Which golden copies a refresh makes, from which backup.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Refresh<'a> {
    /// Every one, from the newest backup (`rehearse warm`).
    All,
    /// Only those not already made from the pinned backups (`rehearse compare`: one
    /// restore, which both twins then copy).
    Stale(&'a Pins),
}

/// How a refresh keeps a golden copy for runs to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    /// Copy-on-write where this machine allows it ([`cow::unavailable`]), else a full
    /// copy.
    Auto,
    /// Copy-on-write, or an error saying why it cannot be.
    CopyOnWrite,
    /// A plain directory that runs copy whole.
    Copy,
}

/// Refreshes the golden copy of every database restored from a backup directory; the
/// first of `signals` stops it (and removes what it made).
pub(crate) async fn refresh_all(
    loaded: &Loaded,
    work_root: &std::path::Path,
    refresh: Refresh<'_>,
    method: Method,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Result<Vec<String>, String> {
    let d = &loaded.desc;
    let bin = PgBin::find().map_err(|e| e.message)?;
    let clock = Clock::new();
    let version = d.release.version.clone().unwrap_or_else(|| "golden".into());
    let outputs = Outputs::placeholders(d, &version, "golden");
    let ctx = template::context(d, None, &outputs, Scope::Static);
    let run_as = process::Users::cluster_only()?;
    let root = work_root.join("golden");
    let cow_refused = match method {
        Method::Copy => Some("full copies asked for (--method copy)".to_string()),
        Method::Auto => cow::unavailable(),
        Method::CopyOnWrite => match cow::unavailable() {
            Some(why) => return Err(why),
            None => None,
        },
    };
    let mut lines = Vec::new();
    for (name, db) in &d.databases {
        let DatabaseSource::BackupDir(dir) = &db.source else {
            lines.push(format!("{name}: skipped (golden copies are made from a `backup_dir` source)"));
            continue;
        };
        let started = Instant::now();
        let pinned = match refresh {
            Refresh::Stale(pins) => pins.get(name.as_str()),
            Refresh::All => None,
        };
        let backup = match pinned {
            Some(Pin::Backup { path, taken_at }) => postgres::backup_at(&bin, path, *taken_at, &clock).await,
            _ => postgres::newest_backup(&bin, &loaded.resolve(dir), &clock).await,
        }
        .map_err(|e| e.message)?;
        let db_name =
            template::render(&loaded.tera, &format!("databases.{name}.name"), &ctx).map_err(|e| e.to_string())?;
        let masking = super::masking_sql(loaded, db)?;
        let golden = golden_dir(&root, &d.name, name);
        let generations = cow::generations_dir(&root, &d.name, name);
        let meta = GoldenMeta {
            backup: backup.clone(),
            database_name: db_name,
            masking,
            pg_bin: bin.dir.clone(),
            cluster_uid: run_as.map(|u| u.uid),
            layout: GOLDEN_LAYOUT,
        };
        let made =
            current(&golden).as_ref() == Some(&meta) || cow::current(&generations).is_some_and(|(_, m)| m == meta);
        if matches!(refresh, Refresh::Stale(_)) && made {
            lines.push(format!("{name}: golden copy is current ({})", backup.path.display()));
            continue;
        }
        let parent = golden.parent().unwrap_or(&root).to_path_buf();
        state::traversable_dir(work_root).map_err(|e| e.to_string())?;
        state::traversable_dir(&root).map_err(|e| e.to_string())?;
        state::traversable_dir(&parent).map_err(|e| e.to_string())?;
        let staging = parent.join(format!("{name}.new"));
        // Runs copying the current golden copy finish first; later ones restore cold.
        let lock = lock_file(&golden).map_err(|e| format!("cannot open the lock of {}: {e}", golden.display()))?;
        let _lock = tokio::task::spawn_blocking(move || Flock::lock(lock, FlockArg::LockExclusive))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|(_, e)| format!("cannot lock {}: {e}", golden.display()))?;
        discard(&bin, &staging, run_as).await.map_err(|e| e.to_string())?;
        let port = process::free_port().map_err(|e| e.to_string())?;
        // Copy-on-write: the cluster is built in a new generation's file system.
        let generation = match cow_refused {
            None => Some(Generation::create(&generations).await.map_err(|e| format!("golden copy of `{name}`: {e}"))?),
            Some(_) => None,
        };
        let base = generation.as_ref().map_or_else(|| staging.clone(), |(g, _)| g.golden());
        reporter.event(Event::Started {
            resource: format!("golden.{name}"),
            action: "restore".into(),
            detail: Some(backup.path.display().to_string()),
        });
        let mut cluster = Cluster { base, port, run_as, postmaster: None };
        let tag = [("REHEARSE_RUN_ID", "golden")];
        let timeout = db.timeout.unwrap_or(Duration::from_secs(3600));
        let log = parent.join(format!("{name}.log"));
        let built = async {
            postgres::prepare_base(&cluster.base, run_as)?;
            postgres::initdb(&bin, &cluster, &log, &clock, &tag).await?;
            postgres::start(&bin, &mut cluster, &log, &clock, timeout, &tag, false).await?;
            let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8);
            postgres::restore(&bin, &cluster, &meta.database_name, &backup.path, jobs, &log, &clock, timeout).await?;
            if let Some(m) = &db.masking {
                postgres::mask(&bin, &cluster, &meta.database_name, &loaded.resolve(m), &log, &clock, timeout).await?;
            }
            postgres::hand_over(&bin, &cluster, &meta.database_name, &clock).await?;
            freeze(&bin, &cluster, &meta.database_name, &log, &clock, timeout).await?;
            Ok::<(), crate::engine::provider::StepError>(())
        };
        // Interrupted: the steps in flight are dropped (their commands killed), and the
        // server, recorded or not, is stopped and its directory removed below.
        let result = tokio::select! {
            r = built => r,
            _ = signals.nth(1) => Err(crate::engine::provider::StepError::build("interrupted")),
        };
        let stopped = postgres::stop(Some(&bin), &cluster).await;
        reporter.event(Event::Finished {
            resource: format!("golden.{name}"),
            action: "restore".into(),
            ok: result.is_ok() && stopped,
            elapsed: started.elapsed(),
            detail: None,
        });
        if result.is_err() || !stopped {
            // The refresh's own error is the one returned; what could not be removed is said with it.
            let left = match generation {
                Some((g, lock)) => g.abandon(lock).await.map_err(|e| e.to_string()),
                None => discard(&bin, &staging, run_as).await.map_err(|e| e.to_string()),
            };
            let left =
                left.err().map(|e| format!("\n  (and what it made is left: {e}; `rehearse sweep --yes` removes it)"));
            return Err(match result {
                Err(e) => format!("golden copy of `{name}`: {}{}", e.message, tail_text(&e.log_tail)),
                Ok(()) => format!("golden copy of `{name}`: the cluster in {} did not stop", cluster.base.display()),
            } + &left.unwrap_or_default());
        }
        let place = put_in_place(generation, &meta, &bin, &golden, &staging, &generations, run_as)
            .await
            .map_err(|e| format!("golden copy of `{name}`: {e}"))?;
        // Best effort: the refresh succeeded; its log is only removed to save space.
        #[allow(clippy::let_underscore_must_use)]
        let _ = std::fs::remove_file(&log);
        let how = match &cow_refused {
            None => place,
            Some(why) => format!("{place} (copied whole by runs: {why})"),
        };
        lines.push(format!(
            "{name}: golden copy refreshed from {} (taken {}) in {:.1}s: {how}",
            backup.path.display(),
            backup.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
            started.elapsed().as_secs_f64(),
        ));
    }
    Ok(lines)
}

/// Puts a golden copy just built (its cluster stopped) in place: a generation sealed
/// and made current (a full copy made before removed), or the staging directory moved
/// over the full copy (generations made before retired, each once unused). Says where
/// it is.
async fn put_in_place(
    generation: Option<(Generation, Flock<std::fs::File>)>,
    meta: &GoldenMeta,
    bin: &PgBin,
    golden: &std::path::Path,
    staging: &std::path::Path,
    generations: &std::path::Path,
    run_as: Option<process::RunAs>,
) -> Result<String, String> {
    if let Some((g, lock)) = generation {
        let id = g.id().to_string();
        g.seal(lock, meta).await.map_err(|e| e.to_string())?;
        discard(bin, golden, run_as).await.map_err(|e| e.to_string())?;
        return Ok(format!("copy-on-write generation {id} in {}", generations.display()));
    }
    // The directory is the cluster user's: written without following a link.
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
    crate::sys::secure_fs::Dir::open(staging)
        .and_then(|d| d.write_file(std::path::Path::new("meta.json"), &bytes, None))
        .map_err(|e| e.to_string())?;
    discard(bin, golden, run_as).await.map_err(|e| e.to_string())?;
    std::fs::rename(staging, golden).map_err(|e| format!("cannot move the golden copy into place: {e}"))?;
    cow::retire(generations).await.map_err(|e| e.to_string())?;
    Ok(golden.display().to_string())
}

/// Freezes a golden copy before it is stopped for good: every row frozen, every page
/// all-visible, the statistics fresh, all written out — so that reading its copies
/// later sets no hint bit and writes nothing (a copy-on-write copy then shares every
/// page it only reads).
async fn freeze(
    bin: &PgBin,
    cluster: &Cluster,
    db: &str,
    log: &std::path::Path,
    clock: &Clock,
    timeout: Duration,
) -> Result<(), crate::engine::provider::StepError> {
    let mut cmd = cluster.client(bin, "psql", db);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "VACUUM (FREEZE, ANALYZE)", "-c", "CHECKPOINT"]);
    let f = process::run_logged(&mut cmd, log, timeout, clock)
        .await
        .map_err(|e| crate::engine::provider::StepError::build(format!("cannot run psql: {e}")))?;
    if !f.success() {
        return Err(crate::engine::provider::StepError::build("VACUUM (FREEZE, ANALYZE) of the golden copy failed")
            .with_log(log, 15));
    }
    Ok(())
}

/// The metadata of the golden copy in `golden`, when it holds a cluster (read without
/// following a link: the directory is the cluster user's).
pub(crate) fn current(golden: &std::path::Path) -> Option<GoldenMeta> {
    let meta = crate::sys::secure_fs::Dir::open(golden)
        .and_then(|d| d.read_file(std::ffi::OsStr::new("meta.json"), 1 << 20))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())?;
    golden.join("data/PG_VERSION").is_file().then_some(meta)
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n  {}", tail.join("\n  "))
    }
}

/// A golden copy's directory that could not be removed.
#[derive(Debug, thiserror::Error)]
#[error("cannot remove {}: {source}", path.display())]
struct NotDiscarded {
    path: std::path::PathBuf,
    source: std::io::Error,
}

/// Stops a cluster left in `base` (a crashed earlier refresh) and removes it.
async fn discard(bin: &PgBin, base: &std::path::Path, run_as: Option<process::RunAs>) -> Result<(), NotDiscarded> {
    if std::fs::symlink_metadata(base).is_err() {
        return Ok(());
    }
    let c = Cluster { base: base.to_path_buf(), port: 0, run_as, postmaster: None };
    postgres::stop(Some(bin), &c).await;
    std::fs::remove_dir_all(base).map_err(|source| NotDiscarded { path: base.to_path_buf(), source })
}
