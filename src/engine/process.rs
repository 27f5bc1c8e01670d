//! Child processes the run starts: each in its own process group, output captured to a
//! log file, every wait inside a timeout, and stopping is signal → grace → kill.
//!
//! Processes are identified by PID *and* start time (field 22 of `/proc/PID/stat`), so
//! `rehearse down` in another process, possibly much later, never signals a recycled PID.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::timing::Clock;

/// Who a command runs as: the invoking user, or (when rehearse runs as root)
/// PostgreSQL's required unprivileged user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `nobody` when running as root, since PostgreSQL refuses to run as root.
    pub fn for_postgres() -> Option<RunAs> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let user = nix::unistd::User::from_name("nobody").ok().flatten()?;
        Some(RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw() })
    }

    pub fn apply(self, cmd: &mut Command) {
        cmd.uid(self.uid).gid(self.gid);
    }
}

/// A started long-running process, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcHandle {
    pub pid: i32,
    /// The process group (the child leads its own group).
    pub pgid: i32,
    /// Start time in clock ticks since boot, from /proc; 0 if unknown.
    pub start_time: u64,
}

/// The output of a finished command.
#[derive(Debug)]
pub struct Finished {
    pub status: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status == Some(0)
    }
}

/// Spawns `cmd` in its own process group with stdout and stderr appended to `log`.
pub fn spawn_logged(
    cmd: &mut Command,
    log: &Path,
    kill_on_drop: bool,
) -> std::io::Result<(tokio::process::Child, ProcHandle)> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).kill_on_drop(kill_on_drop);
    let child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let handle = ProcHandle { pid, pgid: pid, start_time: start_time(pid).unwrap_or(0) };
    Ok((child, handle))
}

/// Runs a command to completion with a timeout, output appended to `log`; on timeout
/// (or when the future is dropped) the whole process group is killed.
pub async fn run_logged(cmd: &mut Command, log: &Path, timeout: Duration, clock: &Clock) -> std::io::Result<Finished> {
    let started = Instant::now();
    let (mut child, handle) = spawn_logged(cmd, log, true)?;
    let _guard = GroupGuard(handle.pgid);
    let _span = clock.external();
    let res = tokio::time::timeout(timeout, child.wait()).await;
    let elapsed = started.elapsed();
    match res {
        Ok(status) => {
            let status = status?;
            Ok(Finished {
                status: status.code().or_else(|| status_signal(&status).map(|s| 128 + s)),
                timed_out: false,
                elapsed,
            })
        }
        Err(_) => {
            stop_group(&handle, Duration::from_secs(2)).await;
            let _ = child.wait().await;
            Ok(Finished { status: None, timed_out: true, elapsed })
        }
    }
}

fn status_signal(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

/// Kills a process group when dropped: a command abandoned mid-way (Ctrl-C, a failed
/// sibling) never outlives the step that started it.
pub struct GroupGuard(pub i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.0 > 0 {
            let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// Start time of a process (clock ticks since boot), to tell it from a later process
/// that reuses its PID.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// (state, process group) of a process from /proc.
fn state_and_group(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Whether the journaled process itself is still alive (not a zombie, not a new
/// process with the same PID).
pub fn is_alive(h: &ProcHandle) -> bool {
    match state_and_group(h.pid) {
        Some((state, _)) if state != 'Z' && state != 'X' => {
            h.start_time == 0 || start_time(h.pid) == Some(h.start_time)
        }
        _ => false,
    }
}

/// Live (non-zombie) members of a process group.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(state_and_group(*pid), Some((s, g)) if g == pgid && s != 'Z' && s != 'X'))
        .collect()
}

/// Stops a process group: SIGTERM, up to `grace` for it to exit, then SIGKILL.
/// Returns whether nothing of the group is left.
pub async fn stop_group(h: &ProcHandle, grace: Duration) -> bool {
    if h.pgid <= 0 {
        return true;
    }
    // Only signal the group if its leader is the process we started, or members
    // remain from it (the leader may have exited and left children behind).
    let leader_ok = is_alive(h);
    let members = group_members(h.pgid);
    if !leader_ok && members.is_empty() {
        return true;
    }
    if !leader_ok && h.start_time != 0 && start_time(h.pid).is_some() {
        // The PID was reused by an unrelated process that is not in the group: only
        // the group's members are ours.
    }
    let _ = killpg(Pid::from_raw(h.pgid), Signal::SIGTERM);
    if wait_group_gone(h.pgid, grace).await {
        return true;
    }
    let _ = killpg(Pid::from_raw(h.pgid), Signal::SIGKILL);
    wait_group_gone(h.pgid, Duration::from_secs(5)).await
}

async fn wait_group_gone(pgid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut delay = Duration::from_millis(5);
    loop {
        if group_members(pgid).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// The last `n` lines of a log file, for error messages and reports.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| l.chars().take(400).collect()).collect()
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it soon after).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `sh -c COMMAND` in `dir`.
pub fn shell(command: &str, dir: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir);
    cmd
}

pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{}.log", name.replace(['/', ' '], "_")))
}
