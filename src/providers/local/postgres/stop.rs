//! Stopping a cluster's server: for good (teardown: `pg_ctl`, then signals, only ever to
//! processes provably the cluster's) or for a while (a game day's `restart`).

use super::*;

/// The user a cluster's server runs as (the effective user when none was recorded).
fn server_uid(cluster: &Cluster) -> u32 {
    cluster.run_as.map_or_else(|| nix::unistd::geteuid().as_raw(), |u| u.uid)
}

/// Whether process `pid` is a server of the data directory `data` run by `uid`: a
/// process of that user started with exactly `-D data`.
fn serves(pid: i32, data: &Path, uid: u32) -> bool {
    if process::owner_uid(pid) != Some(uid) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut args = cmdline.split(|b| *b == 0);
    args.any(|a| a == b"-D") && args.next() == Some(data.as_os_str().as_encoded_bytes())
}

/// Servers of this cluster still running: the postmaster recorded when it started, if
/// it is still that process and still serves the cluster's data directory as the
/// cluster's user (a journal is data: its handle alone never gets a process
/// signalled); and, for a cluster whose start was never recorded (a crash), processes
/// of the cluster's user started with exactly its data directory.
fn servers(cluster: &Cluster) -> Vec<process::ProcHandle> {
    let data = cluster.data();
    let uid = server_uid(cluster);
    let mut out: Vec<process::ProcHandle> =
        cluster.postmaster.iter().filter(|h| process::is_alive(h) && serves(h.pid, &data, uid)).cloned().collect();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for pid in rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        if out.iter().any(|h| h.pid == pid) {
            continue;
        }
        if serves(pid, &data, uid) {
            if let Some(start_time) = process::start_time(pid) {
                let h = process::ProcHandle { pid, pgid: 0, start_time };
                if process::is_alive(&h) {
                    out.push(h);
                }
            }
        }
    }
    out
}

/// Stops the server with `pg_ctl stop -m MODE` (`fast` or `immediate`) as the
/// cluster's user and waits until it is down (30 s at the most): a game day's fault.
/// The cluster stays; [`start`] starts it again.
pub(crate) async fn stop_mode(bin: &PgBin, cluster: &Cluster, mode: &str) -> Result<(), StepError> {
    match pg_ctl_stop(bin, cluster, mode, 30).await {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(StepError::build(format!("`pg_ctl stop -m {mode}` failed ({s})"))),
        Err(e) => Err(StepError::build(e)),
    }
}

/// `pg_ctl stop -m MODE -w -t SECS` as the cluster's user; its exit status.
async fn pg_ctl_stop(
    bin: &PgBin,
    cluster: &Cluster,
    mode: &str,
    secs: u64,
) -> Result<std::process::ExitStatus, String> {
    let mut cmd = cluster.as_user(bin.cmd("pg_ctl"));
    cmd.arg("-D").arg(cluster.data()).args(["-m", mode, "-w", "-t", &secs.to_string(), "stop"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(secs + 5), cmd.status()).await {
        Ok(r) => r.map_err(|e| format!("cannot run pg_ctl: {e}")),
        Err(_) => Err(format!("`pg_ctl stop -m {mode}` did not end within {} s", secs + 5)),
    }
}

/// Stops a cluster: fast shutdown through `pg_ctl` (run as the cluster's user, so it
/// can only ever signal that user's processes), then the server by signal — only the
/// process recorded when it started, pinned by PID and start time, never a PID read
/// from a file the server's user could write. Returns whether it is down.
pub(crate) async fn stop(bin: Option<&PgBin>, cluster: &Cluster) -> bool {
    if servers(cluster).is_empty() {
        return true;
    }
    let as_root = nix::unistd::geteuid().is_root() && cluster.run_as.is_none_or(|u| u.uid == 0);
    if let (Some(bin), false) = (bin, as_root) {
        if cluster.data().is_dir() {
            // Best effort: a cluster that did not stop is signalled below, and what is left reported by the caller.
            #[allow(clippy::let_underscore_must_use)]
            let _ = pg_ctl_stop(bin, cluster, "fast", 20).await;
        }
    }
    // pg_ctl could not stop it: immediate shutdown, then kill.
    for sig in [nix::sys::signal::Signal::SIGQUIT, nix::sys::signal::Signal::SIGKILL] {
        for h in servers(cluster) {
            process::signal_exact(&h, sig);
        }
        for _ in 0..50 {
            if servers(cluster).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    servers(cluster).is_empty()
}
