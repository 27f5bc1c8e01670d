//! Throwaway PostgreSQL clusters: find the server binaries and the newest backup,
//! `initdb` a cluster in the run's work directory, restore with parallel
//! `pg_restore`, mask, rotate the password — or copy a warm golden copy instead.
//!
//! The cluster listens on 127.0.0.1 (a free port) and on a unix socket in its own
//! directory, nowhere else. Durability settings are off (`fsync`, `full_page_writes`,
//! `synchronous_commit`): the copy is thrown away, and a restore of production-sized
//! data should take what the hardware allows, not what crash safety costs. When
//! rehearse runs as root the cluster runs as the unprivileged `rehearse-db`
//! ([`crate::sys::process::CLUSTER_USER`]), because PostgreSQL refuses root.
//!
//! Roles: rehearse's own superuser ([`SUPERUSER`], the bootstrap role, no password,
//! reachable only over the cluster's private socket) restores and masks; the release
//! gets [`APP_ROLE`], which owns the database and everything restored into it but is
//! not a superuser — as RDS's master user is not. So the release cannot run programs
//! as the cluster's user (`COPY … TO PROGRAM`), write the server's files, or create
//! roles; and rehearse never trusts a file the server's user can write (the server is
//! stopped through the PID and start time recorded when it started).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::engine::provider::StepError;
use crate::sys::process::{self, RunAs};
use crate::sys::secure_fs::Dir;
use crate::sys::timing::Clock;

/// The bootstrap superuser of every throwaway cluster: rehearse's own, over the
/// private socket only (it has no password, and TCP needs one).
pub(crate) const SUPERUSER: &str = "rehearse";
/// The role the release connects as: owns the database, not a superuser.
pub(crate) const APP_ROLE: &str = "app";
/// A superuser that exists only while a backup is restored and masked: what it
/// creates is handed to [`APP_ROLE`] in one `REASSIGN OWNED` (the bootstrap superuser's
/// objects cannot be reassigned), then it is dropped.
const RESTORE_ROLE: &str = "rehearse_restore";

/// Where the PostgreSQL binaries are.
#[derive(Clone, Debug)]
pub(crate) struct PgBin {
    pub(crate) dir: PathBuf,
}

impl PgBin {
    /// Whether the server can load `pg_stat_statements` (Debian ships it with the
    /// server, in `../lib` of the binaries).
    pub(crate) fn has_statement_stats(&self) -> bool {
        self.dir.parent().is_some_and(|d| d.join("lib/pg_stat_statements.so").is_file())
    }

    /// Finds `initdb`, `pg_ctl`, `pg_restore`, `psql`: on PATH, then
    /// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
    pub(crate) fn find() -> Result<PgBin, StepError> {
        let complete =
            |d: &Path| ["initdb", "pg_ctl", "pg_restore", "psql", "postgres"].iter().all(|b| d.join(b).is_file());
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                if complete(&d) {
                    return Ok(PgBin { dir: d });
                }
                // A PATH entry may hold only symlinks to some of the tools.
                if let Ok(real) = std::fs::canonicalize(d.join("initdb")) {
                    if let Some(parent) = real.parent() {
                        if complete(parent) {
                            return Ok(PgBin { dir: parent.to_path_buf() });
                        }
                    }
                }
            }
        }
        if let Ok(out) = std::process::Command::new("pg_config").arg("--bindir").output() {
            let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && complete(&d) {
                return Ok(PgBin { dir: d });
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .filter_map(|e| {
                let e = e.ok()?;
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let d = e.path().join("bin");
                complete(&d).then_some((v, d))
            })
            .collect();
        versions.sort();
        if let Some((_, d)) = versions.pop() {
            return Ok(PgBin { dir: d });
        }
        Err(StepError::build(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_restore, psql) were not found on PATH, \
             via `pg_config --bindir` or in /usr/lib/postgresql/*/bin; install them with \
             `sudo apt-get install postgresql` (Debian/Ubuntu) or run `make deps`",
        ))
    }

    pub(crate) fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(self.dir.join(tool));
        c.env("PGCONNECT_TIMEOUT", "10");
        c
    }
}

/// A production backup: a `pg_dump` archive and when it was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Backup {
    pub(crate) path: PathBuf,
    pub(crate) taken_at: DateTime<Utc>,
}

/// The newest archive in `dir`, by the time `pg_dump` recorded in it (never by file
/// name or modification time). Files that are not archives are skipped.
pub(crate) async fn newest_backup(bin: &PgBin, dir: &Path, clock: &Clock) -> Result<Backup, StepError> {
    let _span = clock.external();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        StepError::build(format!(
            "cannot read the backup directory {}: {e}; it should hold pg_dump archives (pg_dump -Fc)",
            dir.display()
        ))
    })?;
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() || p.join("toc.dat").is_file())
        .collect();
    candidates.sort();
    let mut best: Option<Backup> = None;
    let mut skipped = 0;
    for path in candidates {
        match archive_time(bin, &path).await {
            Some(taken_at) => {
                if best.as_ref().is_none_or(|b| taken_at > b.taken_at) {
                    best = Some(Backup { path, taken_at });
                }
            }
            None => skipped += 1,
        }
    }
    let best = best.ok_or_else(|| {
        StepError::build(format!(
            "no pg_dump archive found in {}{}; create one with `pg_dump -Fc -f {}/NAME.dump DATABASE`",
            dir.display(),
            if skipped > 0 { format!(" ({skipped} other file(s) are not archives)") } else { String::new() },
            dir.display()
        ))
    })?;
    // What is restored runs as a superuser inside the copy: it must be production's.
    crate::sys::secure_fs::check_input(&best.path)
        .map_err(|e| StepError::build(format!("the backup cannot be trusted: {e}")))?;
    // Absolute, so that a golden copy's record matches whatever directory rehearse was
    // started from.
    let path = std::path::absolute(&best.path).unwrap_or(best.path);
    Ok(Backup { path, ..best })
}

/// The archive at `path`, pinned by the caller as taken at `pinned`: it must still be
/// there, be that archive (not one written over it since), and be trusted like any
/// backup.
pub(crate) async fn backup_at(
    bin: &PgBin,
    path: &Path,
    pinned: DateTime<Utc>,
    clock: &Clock,
) -> Result<Backup, StepError> {
    let _span = clock.external();
    let taken_at = archive_time(bin, path).await.ok_or_else(|| {
        StepError::build(format!("the pinned backup {} is gone or is not a pg_dump archive any more", path.display()))
    })?;
    if taken_at != pinned {
        return Err(StepError::build(format!(
            "the pinned backup {} was written over: it was taken {pinned}, it now says {taken_at}",
            path.display()
        )));
    }
    crate::sys::secure_fs::check_input(path)
        .map_err(|e| StepError::build(format!("the backup cannot be trusted: {e}")))?;
    Ok(Backup { path: path.to_path_buf(), taken_at })
}

/// Reads "; Archive created at 2026-11-25 16:40:01 UTC" from the archive's table of
/// contents (`pg_restore -l` reads only the header and TOC, not the data).
async fn archive_time(bin: &PgBin, path: &Path) -> Option<DateTime<Utc>> {
    let out = bin.cmd("pg_restore").arg("-l").arg(path).stdin(Stdio::null()).output().await.ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("; Archive created at "))?;
    parse_archive_time(line.trim())
}

fn parse_archive_time(s: &str) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(s.get(..19)?, "%Y-%m-%d %H:%M:%S").ok()?;
    // pg_dump writes the server's time zone abbreviation; archives from one
    // production server share it, so comparing the local times orders them.
    Some(naive.and_utc())
}

/// A running (or stopped) throwaway cluster, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Cluster {
    /// Directory holding `data/`, the socket and the server log.
    pub(crate) base: PathBuf,
    pub(crate) port: u16,
    pub(crate) run_as: Option<RunAs>,
    /// The postmaster, once started.
    pub(crate) postmaster: Option<process::ProcHandle>,
}

impl Cluster {
    pub(crate) fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.base.join("postgres.log")
    }

    /// A server command run as the cluster's user, with a clean environment (none of
    /// rehearse's credentials) and the cluster's directory as its HOME.
    fn as_user(&self, mut cmd: Command) -> Command {
        if let Some(u) = self.run_as {
            process::drop_to(&mut cmd, u, &self.base);
        }
        cmd.current_dir(&self.base);
        cmd
    }

    /// A psql/pg_restore command connected over the unix socket as the superuser.
    pub(crate) fn client(&self, bin: &PgBin, tool: &str, db: &str) -> Command {
        self.client_as(bin, tool, db, SUPERUSER)
    }

    /// A client connected over the unix socket as `role` (trust: only root and the
    /// cluster's user can reach the socket's directory).
    fn client_as(&self, bin: &PgBin, tool: &str, db: &str, role: &str) -> Command {
        let mut c = bin.cmd(tool);
        c.arg("-h").arg(&self.base).arg("-p").arg(self.port.to_string()).arg("-U").arg(role).arg("-d").arg(db);
        c.env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env("PGAPPNAME", "rehearse");
        c
    }
}

/// Creates the cluster's directory (it must not exist), private to the cluster user:
/// created, then handed over by file descriptor, never through a path someone else
/// could have swapped.
pub(crate) fn prepare_base(base: &Path, run_as: Option<RunAs>) -> Result<(), StepError> {
    let fail =
        |e: crate::sys::secure_fs::FsError| StepError::build(format!("cannot prepare the cluster's directory: {e}"));
    let (Some(parent), Some(name)) = (base.parent(), base.file_name()) else {
        return Err(StepError::build(format!("{} is not a directory inside the run's", base.display())));
    };
    let dir = Dir::open(parent).map_err(fail)?.create_dir(name, 0o700).map_err(fail)?;
    if let Some(u) = run_as {
        dir.chown(u.uid, u.gid).map_err(fail)?;
    }
    Ok(())
}

/// Gives an existing cluster directory (prepared with no user) to the cluster user,
/// by descriptor.
pub(crate) fn hand_base(base: &Path, run_as: Option<RunAs>) -> Result<(), StepError> {
    let Some(u) = run_as else { return Ok(()) };
    Dir::open(base)
        .and_then(|d| d.chown(u.uid, u.gid))
        .map_err(|e| StepError::build(format!("cannot hand the cluster's directory to its user: {e}")))
}

/// `initdb` a new, empty cluster in `cluster.base/data`, its output appended to `log`
/// (rehearse's own, outside the cluster's directory).
pub(crate) async fn initdb(
    bin: &PgBin,
    cluster: &Cluster,
    log: &Path,
    clock: &Clock,
    tag: &[(&str, &str)],
) -> Result<(), StepError> {
    let mut cmd = cluster.as_user(bin.cmd("initdb"));
    cmd.arg("-D").arg(cluster.data()).args([
        "-U",
        SUPERUSER,
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
        "--no-instructions",
    ]);
    cmd.envs(tag.iter().copied());
    let f = process::run_logged(&mut cmd, log, Duration::from_secs(120), clock)
        .await
        .map_err(|e| StepError::build(format!("cannot run initdb: {e}")))?;
    if !f.success() {
        return Err(StepError::build("initdb failed").with_log(log, 15));
    }
    Ok(())
}

/// Starts the cluster and waits until it accepts connections (bounded by `timeout`);
/// `pg_ctl`'s own output is appended to `log`, the server's goes to its directory.
pub(crate) async fn start(
    bin: &PgBin,
    cluster: &mut Cluster,
    log: &Path,
    clock: &Clock,
    timeout: Duration,
    tag: &[(&str, &str)],
    wal_as_production: bool,
) -> Result<(), StepError> {
    // The least WAL, unless a rehearsed deploy measures a migration's (as production's).
    let wal = match wal_as_production {
        true => "-c full_page_writes=on -c wal_level=replica -c max_wal_senders=0",
        false => "-c full_page_writes=off -c wal_level=minimal -c max_wal_senders=0",
    };
    let mut opts = format!(
        "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='{}' -c fsync=off \
         -c synchronous_commit=off {wal} -c max_wal_size=4GB -c checkpoint_timeout=30min \
         -c maintenance_work_mem=256MB -c logging_collector=off",
        cluster.port,
        cluster.base.display()
    );
    // Per-statement times for `compare`, where the server has the module.
    if bin.has_statement_stats() {
        opts.push_str(" -c shared_preload_libraries=pg_stat_statements");
    }
    let mut cmd = cluster.as_user(bin.cmd("pg_ctl"));
    cmd.arg("-D")
        .arg(cluster.data())
        .arg("-l")
        .arg(cluster.log())
        .arg("-o")
        .arg(opts)
        .arg("-w")
        .arg("-t")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("start");
    cmd.envs(tag.iter().copied());
    let f = process::run_logged(&mut cmd, log, timeout + Duration::from_secs(5), clock)
        .await
        .map_err(|e| StepError::build(format!("cannot run pg_ctl: {e}")))?;
    // Read now, before anything but PostgreSQL has run in the cluster: from here on
    // the file is the cluster user's to write, and only this record is trusted.
    cluster.postmaster = read_postmaster(&cluster.data(), cluster.run_as);
    if !f.success() {
        return Err(
            StepError::build(format!("PostgreSQL did not start on port {}", cluster.port)).with_log(&cluster.log(), 15)
        );
    }
    Ok(())
}

/// The postmaster a cluster just started: the PID in `postmaster.pid`, if that process
/// runs as the cluster's user, with its start time.
fn read_postmaster(data: &Path, run_as: Option<RunAs>) -> Option<process::ProcHandle> {
    // The cluster user's file: read without following a link, at most a page.
    let bytes = Dir::open(data).ok()?.read_file(std::ffi::OsStr::new("postmaster.pid"), 4096).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let uid = run_as.map_or_else(|| nix::unistd::geteuid().as_raw(), |u| u.uid);
    if pid <= 0 || process::owner_uid(pid) != Some(uid) {
        return None;
    }
    Some(process::ProcHandle { pid, pgid: 0, start_time: process::start_time(pid)? })
}

/// Runs SQL given on stdin (so secrets never appear in a process list).
pub(crate) async fn psql_stdin(
    bin: &PgBin,
    cluster: &Cluster,
    db: &str,
    sql: &str,
    clock: &Clock,
) -> Result<(), StepError> {
    let mut cmd = cluster.client(bin, "psql", db);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let _span = clock.external();
    let mut child = cmd.spawn().map_err(|e| StepError::build(format!("cannot run psql: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(sql.as_bytes()).await.map_err(|e| StepError::build(format!("cannot talk to psql: {e}")))?;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .map_err(|_| StepError::build("psql did not finish within 60s"))?
        .map_err(|e| StepError::build(format!("psql failed: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(StepError::build(format!("psql failed: {}", err.trim())));
    }
    Ok(())
}

/// Double-quotes an SQL identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Restores `backup` into a new database `db` owned by [`APP_ROLE`] (created here,
/// without a password), with `jobs` parallel workers, as the restore role; then
/// [`mask`] and [`hand_over`] follow.
#[allow(clippy::too_many_arguments)] // each is a distinct fact of the restore
pub(crate) async fn restore(
    bin: &PgBin,
    cluster: &Cluster,
    db: &str,
    backup: &Path,
    jobs: usize,
    log: &Path,
    clock: &Clock,
    timeout: Duration,
) -> Result<(), StepError> {
    let setup = format!(
        "CREATE ROLE {app} LOGIN NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS CREATEDB;\n\
         CREATE ROLE {restore} LOGIN SUPERUSER;\n\
         CREATE DATABASE {db} OWNER {app};",
        app = quote_ident(APP_ROLE),
        restore = quote_ident(RESTORE_ROLE),
        db = quote_ident(db),
    );
    psql_stdin(bin, cluster, "postgres", &setup, clock).await?;
    let mut cmd = cluster.client_as(bin, "pg_restore", db, RESTORE_ROLE);
    cmd.args(["--no-owner", "--no-acl", "--exit-on-error", "-j"]).arg(jobs.max(1).to_string()).arg(backup);
    let f = process::run_logged(&mut cmd, log, timeout, clock)
        .await
        .map_err(|e| StepError::build(format!("cannot run pg_restore: {e}")))?;
    if f.timed_out {
        return Err(StepError::build(format!(
            "pg_restore of {} did not finish within {}s",
            backup.display(),
            timeout.as_secs()
        ))
        .with_log(log, 15));
    }
    if !f.success() {
        return Err(StepError::build(format!("pg_restore of {} failed", backup.display())).with_log(log, 15));
    }
    Ok(())
}

/// Runs the masking SQL on the copy, in one transaction, as the restore role.
pub(crate) async fn mask(
    bin: &PgBin,
    cluster: &Cluster,
    db: &str,
    sql: &Path,
    log: &Path,
    clock: &Clock,
    timeout: Duration,
) -> Result<(), StepError> {
    let mut cmd = cluster.client_as(bin, "psql", db, RESTORE_ROLE);
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f"]).arg(sql);
    let f = process::run_logged(&mut cmd, log, timeout, clock)
        .await
        .map_err(|e| StepError::build(format!("cannot run psql: {e}")))?;
    if !f.success() {
        return Err(
            StepError::build(format!("masking SQL {} failed; the copy was not used", sql.display())).with_log(log, 15)
        );
    }
    Ok(())
}

/// Gives everything the restore (and masking) created in `db` to [`APP_ROLE`] and
/// drops the restore role: from here on, no superuser but rehearse's own exists.
pub(crate) async fn hand_over(bin: &PgBin, cluster: &Cluster, db: &str, clock: &Clock) -> Result<(), StepError> {
    let (app, restore) = (quote_ident(APP_ROLE), quote_ident(RESTORE_ROLE));
    psql_stdin(bin, cluster, db, &format!("REASSIGN OWNED BY {restore} TO {app};\nDROP OWNED BY {restore};"), clock)
        .await?;
    psql_stdin(bin, cluster, "postgres", &format!("DROP ROLE {restore};"), clock).await
}

/// Makes `pg_stat_statements` readable in the cluster's `postgres` database (never in
/// the copy's own, which stays production's); the release's role sees its own
/// statements there. Nothing when the server lacks the module.
pub(crate) async fn enable_statement_stats(bin: &PgBin, cluster: &Cluster, clock: &Clock) -> Result<(), StepError> {
    if !bin.has_statement_stats() {
        return Ok(());
    }
    psql_stdin(bin, cluster, "postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements;", clock).await
}

/// Gives the release's role a new password (on stdin, never on a command line).
pub(crate) async fn set_app_password(
    bin: &PgBin,
    cluster: &Cluster,
    password: &str,
    clock: &Clock,
) -> Result<(), StepError> {
    let sql = format!("ALTER ROLE {} PASSWORD '{}';", quote_ident(APP_ROLE), password.replace('\'', "''"));
    psql_stdin(bin, cluster, "postgres", &sql, clock).await
}

mod stop;
pub(crate) use stop::{stop, stop_mode};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_dump_archive_time() {
        let t = parse_archive_time("2026-11-25 16:40:01 UTC").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T16:40:01+00:00");
        assert!(parse_archive_time("garbage").is_none());
    }
}
