//! Throwaway PostgreSQL clusters: find the server binaries and the newest backup,
//! `initdb` a cluster in the run's work directory, restore with parallel
//! `pg_restore`, mask, rotate the password — or copy a warm golden copy instead.
//!
//! The cluster listens on 127.0.0.1 (a free port) and on a unix socket in its own
//! directory, nowhere else. Durability settings are off (`fsync`, `full_page_writes`,
//! `synchronous_commit`): the copy is thrown away, and a restore of production-sized
//! data should take what the hardware allows, not what crash safety costs. When
//! rehearse runs as root the cluster runs as `nobody`, because PostgreSQL refuses root.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::engine::process::{self, RunAs};
use crate::engine::timing::Clock;
use crate::providers::StepError;

/// The role rehearse creates in every throwaway cluster.
pub const SUPERUSER: &str = "rehearse";

/// Where the PostgreSQL binaries are.
#[derive(Clone, Debug)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    /// Finds `initdb`, `pg_ctl`, `pg_restore`, `psql`: on PATH, then
    /// `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<PgBin, StepError> {
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

    pub fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(self.dir.join(tool));
        c.env("PGCONNECT_TIMEOUT", "10");
        c
    }
}

/// A production backup: a `pg_dump` archive and when it was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    pub path: PathBuf,
    pub taken_at: DateTime<Utc>,
}

/// The newest archive in `dir`, by the time `pg_dump` recorded in it (never by file
/// name or modification time). Files that are not archives are skipped.
pub async fn newest_backup(bin: &PgBin, dir: &Path, clock: &Clock) -> Result<Backup, StepError> {
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
    best.ok_or_else(|| {
        StepError::build(format!(
            "no pg_dump archive found in {}{}; create one with `pg_dump -Fc -f {}/NAME.dump DATABASE`",
            dir.display(),
            if skipped > 0 { format!(" ({skipped} other file(s) are not archives)") } else { String::new() },
            dir.display()
        ))
    })
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
pub struct Cluster {
    /// Directory holding `data/`, the socket and the server log.
    pub base: PathBuf,
    pub port: u16,
    pub run_as: Option<RunAs>,
    /// The postmaster, once started.
    pub postmaster: Option<process::ProcHandle>,
}

impl Cluster {
    pub fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.base.join("postgres.log")
    }

    fn as_user(&self, mut cmd: Command) -> Command {
        if let Some(u) = self.run_as {
            u.apply(&mut cmd);
        }
        cmd.current_dir(&self.base);
        cmd
    }

    /// A psql/pg_restore command connected over the unix socket as the superuser.
    pub fn client(&self, bin: &PgBin, tool: &str, db: &str) -> Command {
        let mut c = bin.cmd(tool);
        c.arg("-h").arg(&self.base).arg("-p").arg(self.port.to_string()).arg("-U").arg(SUPERUSER).arg("-d").arg(db);
        c.env_remove("PGPASSWORD").env_remove("PGSERVICE").env("PGAPPNAME", "rehearse");
        c
    }
}

/// Creates the cluster's directory, owned by the cluster user.
pub fn prepare_base(base: &Path, run_as: Option<RunAs>) -> Result<(), StepError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(base).map_err(|e| StepError::build(format!("cannot create {}: {e}", base.display())))?;
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| StepError::build(format!("cannot set permissions on {}: {e}", base.display())))?;
    if let Some(u) = run_as {
        nix::unistd::chown(base, Some(nix::unistd::Uid::from_raw(u.uid)), Some(nix::unistd::Gid::from_raw(u.gid)))
            .map_err(|e| StepError::build(format!("cannot hand {} to the cluster user: {e}", base.display())))?;
    }
    Ok(())
}

/// `initdb` a new, empty cluster in `cluster.base/data`.
pub async fn initdb(bin: &PgBin, cluster: &Cluster, clock: &Clock, tag: &[(&str, &str)]) -> Result<(), StepError> {
    let log = cluster.base.join("initdb.log");
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
    let f = process::run_logged(&mut cmd, &log, Duration::from_secs(120), clock)
        .await
        .map_err(|e| StepError::build(format!("cannot run initdb: {e}")))?;
    if !f.success() {
        return Err(StepError::build("initdb failed").with_log(&log, 15));
    }
    Ok(())
}

/// Starts the cluster and waits until it accepts connections (bounded by `timeout`).
pub async fn start(
    bin: &PgBin,
    cluster: &mut Cluster,
    clock: &Clock,
    timeout: Duration,
    tag: &[(&str, &str)],
) -> Result<(), StepError> {
    let opts = format!(
        "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='{}' -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB -c checkpoint_timeout=30min \
         -c maintenance_work_mem=256MB -c wal_level=minimal -c max_wal_senders=0 -c logging_collector=off",
        cluster.port,
        cluster.base.display()
    );
    let log = cluster.base.join("pg_ctl.log");
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
    let f = process::run_logged(&mut cmd, &log, timeout + Duration::from_secs(5), clock)
        .await
        .map_err(|e| StepError::build(format!("cannot run pg_ctl: {e}")))?;
    cluster.postmaster = read_postmaster(&cluster.data());
    if !f.success() {
        return Err(
            StepError::build(format!("PostgreSQL did not start on port {}", cluster.port)).with_log(&cluster.log(), 15)
        );
    }
    Ok(())
}

fn read_postmaster(data: &Path) -> Option<process::ProcHandle> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    Some(process::ProcHandle { pid, pgid: 0, start_time: process::start_time(pid).unwrap_or(0) })
}

/// Runs SQL given on stdin (so secrets never appear in a process list).
pub async fn psql_stdin(bin: &PgBin, cluster: &Cluster, db: &str, sql: &str, clock: &Clock) -> Result<(), StepError> {
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
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Restores `backup` into a new database `db` with `jobs` parallel workers.
#[allow(clippy::too_many_arguments)] // each is a distinct fact of the restore
pub async fn restore(
    bin: &PgBin,
    cluster: &Cluster,
    db: &str,
    backup: &Path,
    jobs: usize,
    log: &Path,
    clock: &Clock,
    timeout: Duration,
) -> Result<(), StepError> {
    psql_stdin(bin, cluster, "postgres", &format!("CREATE DATABASE {};", quote_ident(db)), clock).await?;
    let mut cmd = cluster.client(bin, "pg_restore", db);
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

/// Runs the masking SQL on the copy, in one transaction.
pub async fn mask(
    bin: &PgBin,
    cluster: &Cluster,
    db: &str,
    sql: &Path,
    log: &Path,
    clock: &Clock,
    timeout: Duration,
) -> Result<(), StepError> {
    let mut cmd = cluster.client(bin, "psql", db);
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

/// Stops a cluster: fast shutdown through pg_ctl, then the postmaster by signal if
/// pg_ctl could not. Returns whether it is down.
pub async fn stop(bin: Option<&PgBin>, cluster: &Cluster) -> bool {
    let pid = read_postmaster(&cluster.data()).or_else(|| cluster.postmaster.clone());
    let running = pid.as_ref().is_some_and(process::is_alive);
    if !running {
        return true;
    }
    if let Some(bin) = bin {
        if cluster.data().is_dir() {
            let mut cmd = cluster.as_user(bin.cmd("pg_ctl"));
            cmd.arg("-D")
                .arg(cluster.data())
                .args(["-m", "fast", "-w", "-t", "20", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            if let Ok(child) = cmd.spawn() {
                let _ = tokio::time::timeout(Duration::from_secs(25), child.wait_with_output()).await;
            }
        }
    }
    let Some(h) = pid else { return true };
    if !process::is_alive(&h) {
        return true;
    }
    // pg_ctl could not stop it: immediate shutdown, then kill.
    for sig in [nix::sys::signal::Signal::SIGQUIT, nix::sys::signal::Signal::SIGKILL] {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(h.pid), sig);
        for _ in 0..50 {
            if !process::is_alive(&h) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    !process::is_alive(&h)
}

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
