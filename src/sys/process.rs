//! Child processes the run starts: each in its own process group, output captured to a
//! log file, every wait inside a timeout, and stopping is signal → grace → kill.
//!
//! Processes are identified by PID *and* start time (field 22 of `/proc/PID/stat`), so
//! `rehearse down` in another process, possibly much later, never signals a recycled PID.
//! Who they run as (the cluster and release users, this machine's names) is in
//! `process/users.rs`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::timing::Clock;

mod users;
pub use users::*;

/// A started long-running process, as journaled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcHandle {
    pub(crate) pid: i32,
    /// The process group (the child leads its own group).
    pub(crate) pgid: i32,
    /// Start time in clock ticks since boot, from /proc; 0 if unknown.
    pub(crate) start_time: u64,
}

/// The output of a finished command.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: Option<i32>,
    pub(crate) timed_out: bool,
    pub(crate) elapsed: Duration,
}

impl Finished {
    pub(crate) fn success(&self) -> bool {
        !self.timed_out && self.status == Some(0)
    }
}

/// Opens (creating it, 0600) a log file for appending.
fn open_log(log: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).custom_flags(nix::libc::O_NOFOLLOW).open(log)
}

/// Spawns `cmd` in its own process group with stdout and stderr appended to `log`
/// (a long-running service: it writes the file itself, and may outlive rehearse).
pub(crate) fn spawn_logged(
    cmd: &mut Command,
    log: &Path,
    kill_on_drop: bool,
) -> std::io::Result<(tokio::process::Child, ProcHandle)> {
    let out = open_log(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).kill_on_drop(kill_on_drop);
    let child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let handle = ProcHandle { pid, pgid: pid, start_time: start_time(pid).unwrap_or(0) };
    Ok((child, handle))
}

/// `rehearse [--state STATE] [--state-dir DIR] pool fill FILE` started in the background
/// ([`respawn_detached`], its output appended to `log`): a pool one short after a claim
/// is refilled while the claiming run goes on. Its pid.
pub(crate) fn refill_pools(
    state: Option<&str>,
    state_dir: Option<&Path>,
    file: &Path,
    log: &Path,
) -> std::io::Result<u32> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if let Some(s) = state {
        args.extend(["--state".into(), s.into()]);
    }
    if let Some(d) = state_dir {
        args.extend(["--state-dir".into(), d.into()]);
    }
    args.extend(["pool".into(), "fill".into(), file.into()]);
    respawn_detached(&args, log)
}

/// Starts this program again with `args`, detached: its own process group, no input,
/// its output appended to `log`, outliving the caller (a pool's refill after a claim).
/// Its pid. Waited for by a task of the runtime, so a server that starts many leaves no
/// zombie.
pub(crate) fn respawn_detached(args: &[std::ffi::OsString], log: &Path) -> std::io::Result<u32> {
    let exe = std::env::current_exe()?;
    let out = open_log(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).kill_on_drop(false);
    let mut child = cmd.spawn()?;
    let pid = child.id().unwrap_or(0);
    tokio::spawn(async move {
        // Its exit status is in its log; nothing waits on it here but the reaping.
        #[allow(clippy::let_underscore_must_use)]
        let _ = child.wait().await;
    });
    Ok(pid)
}

/// Runs a command to completion with a timeout, output appended to `log` with every
/// registered secret redacted on the way (stdout and stderr share one pipe, so their
/// order is kept); on timeout (or when the future is dropped) the whole process group
/// is killed.
pub(crate) async fn run_logged(
    cmd: &mut Command,
    log: &Path,
    timeout: Duration,
    clock: &Clock,
) -> std::io::Result<Finished> {
    let started = Instant::now();
    let mut file = open_log(log)?;
    // Close-on-exec, so no other child started meanwhile inherits the pipe and keeps
    // it open (the command's own stdout and stderr are set up by spawn).
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let writer2 = writer.try_clone()?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2).process_group(0).kill_on_drop(true);
    let spawned = cmd.spawn();
    // `cmd` holds the pipe's write end until its output is set anew: then only the
    // command's processes hold it, and the copier sees the end when they are gone.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawned?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let handle = ProcHandle { pid, pgid: pid, start_time: start_time(pid).unwrap_or(0) };
    let guard = GroupGuard(pid);
    let copier = std::thread::spawn(move || crate::secrets::redacting_copy(std::fs::File::from(reader), &mut file));
    let _span = clock.external();
    let res = tokio::time::timeout(timeout, child.wait()).await;
    let elapsed = started.elapsed();
    let finished = match res {
        Ok(status) => {
            let status = status?;
            Finished {
                status: status.code().or_else(|| status_signal(&status).map(|s| 128 + s)),
                timed_out: false,
                elapsed,
            }
        }
        Err(_) => {
            stop_group(&handle, Duration::from_secs(2)).await;
            // Best effort: reaping a child whose group was just stopped; its status is not wanted.
            #[allow(clippy::let_underscore_must_use)]
            let _ = child.wait().await;
            Finished { status: None, timed_out: true, elapsed }
        }
    };
    // Whatever the command left running in its group goes with it; then the pipe
    // closes and the copier finishes.
    drop(guard);
    // A process that left the group (setsid) may hold the pipe: the log then ends
    // here, and the copier finishes whenever that process does.
    // Best effort: the log is complete up to here either way (see above).
    #[allow(clippy::let_underscore_must_use)]
    let _ = tokio::time::timeout(Duration::from_secs(5), tokio::task::spawn_blocking(move || copier.join())).await;
    Ok(finished)
}

fn status_signal(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

/// Kills a process group when dropped: a command abandoned mid-way (Ctrl-C, a failed
/// sibling) never outlives the step that started it.
pub(crate) struct GroupGuard(pub i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // Only a group with members: the kernel keeps its id allocated while it has
        // any, so it is still ours even when its leader has been reaped already.
        if self.0 > 0 && !group_members(self.0).is_empty() {
            // Best effort: on drop there is nobody to tell; the group may be gone already.
            #[allow(clippy::let_underscore_must_use)]
            let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
        }
    }
}

/// Start time of a process (clock ticks since boot), to tell it from a later process
/// that reuses its PID.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
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

/// The parent of a process, from /proc.
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// This process and every process it descends from, up to init: what rehearse never
/// started, and so never stops — whatever their environment says.
pub(crate) fn self_and_ancestors() -> Vec<i32> {
    let mut out = vec![std::process::id() as i32];
    while let Some(p) = out.last().and_then(|p| parent(*p)).filter(|p| *p > 0 && !out.contains(p)) {
        out.push(p);
    }
    out
}

/// The real user id of a process, from /proc.
pub(crate) fn owner_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

/// Whether the journaled process itself is still alive: not a zombie, and not a new
/// process that reuses its PID. A handle without a start time cannot tell the two
/// apart, so it never counts as alive.
pub(crate) fn is_alive(h: &ProcHandle) -> bool {
    match state_and_group(h.pid) {
        Some((state, _)) if state != 'Z' && state != 'X' => {
            h.start_time != 0 && start_time(h.pid) == Some(h.start_time)
        }
        _ => false,
    }
}

/// Live (non-zombie) members of a process group.
pub(crate) fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| matches!(state_and_group(*pid), Some((s, g)) if g == pgid && s != 'Z' && s != 'X'))
        .collect()
}

/// Whether the group `h` led is still ours to signal. A process (or zombie) under the
/// leader's PID is ours only with the recorded start time. With no process under that
/// PID, members of the group are the leader's: the kernel keeps a PID allocated while
/// any process uses it as its group id. But when another process runs under the
/// leader's PID, the PID was free, so our group ended long ago and those members
/// belong to a stranger.
fn group_is_ours(h: &ProcHandle) -> bool {
    match start_time(h.pid) {
        Some(t) => h.start_time != 0 && t == h.start_time,
        None => !group_members(h.pgid).is_empty(),
    }
}

/// Whether process `pid` was started with `REHEARSE_RUN_ID=run_id` in its environment
/// (as every process the local provider starts for a run is): its environment as it
/// was exec'd, readable for this user's own processes and, as root, for all.
pub(crate) fn carries_run_id(pid: i32, run_id: &str) -> bool {
    let needle = format!("REHEARSE_RUN_ID={run_id}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
}

/// Whether the group a journal's handle names is provably run `run_id`'s, not merely
/// what the handle says: the handle has the shape rehearse records (the process leads
/// its own group: `pgid == pid`, with its start time), and
/// - its leader still runs with that start time, leads that group and carries the
///   run's id in its environment; or
/// - its leader has ended (or is a zombie with that start time), and a member of the
///   group carries the run's id: the kernel keeps the leader's PID while the group has
///   members, and nobody can move a stranger's process into a group.
///
/// A journal is data (it may have come from a shared store): a handle
/// `{pid: 1, start_time: <init's>, pgid: <anyone>}` must never signal anyone.
pub(crate) fn group_is_runs(h: &ProcHandle, run_id: &str) -> Result<(), NotRunsGroup> {
    if h.pid <= 0 || h.pgid != h.pid || h.start_time == 0 {
        return Err(NotRunsGroup::NotALeader(h.clone()));
    }
    let members_tagged = || {
        let mine = self_and_ancestors();
        group_members(h.pgid).into_iter().any(|m| !mine.contains(&m) && carries_run_id(m, run_id))
    };
    let ok = match state_and_group(h.pid) {
        Some((state, group)) if state != 'Z' && state != 'X' => {
            start_time(h.pid) == Some(h.start_time) && group == h.pid && carries_run_id(h.pid, run_id)
        }
        Some(_) => start_time(h.pid) == Some(h.start_time) && members_tagged(),
        None => members_tagged(),
    };
    if ok {
        Ok(())
    } else {
        Err(NotRunsGroup::NotProven { pgid: h.pgid, run_id: run_id.to_string() })
    }
}

/// Why a journal's process group is not provably its run's ([`group_is_runs`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotRunsGroup {
    #[error(
        "the journal names process {} in group {} (start time {}), which is not a process group rehearse \
         started (it records a group's leader, with its start time)",
        .0.pid, .0.pgid, .0.start_time
    )]
    NotALeader(ProcHandle),
    #[error(
        "process group {pgid} is not provably run {run_id}'s (its leader is gone or is another process, or \
         nothing in it carries REHEARSE_RUN_ID={run_id})"
    )]
    NotProven { pgid: i32, run_id: String },
}

/// Stops a process group of run `run_id` as [`stop_group`] does, and only if it is
/// provably the run's ([`group_is_runs`]), checked again before each signal. Returns
/// whether nothing of the run's group is left; a group that is not the run's is left
/// alone (said in the log) and counts as nothing of the run's.
pub(crate) async fn stop_run_group(h: &ProcHandle, run_id: &str, grace: Duration) -> bool {
    stop_checked(h, grace, || match group_is_runs(h, run_id) {
        Ok(()) => true,
        Err(why) => {
            if !group_members(h.pgid).is_empty() || is_alive(h) {
                tracing::warn!("left alone: {why}");
            }
            false
        }
    })
    .await
}

/// Kills group `h.pgid` at once (`SIGKILL`, a crash), only if it is provably run
/// `run_id`'s: whether nothing of it is left.
pub(crate) async fn kill_run_group(h: &ProcHandle, run_id: &str) -> bool {
    if h.pgid <= 0 {
        return true;
    }
    if group_is_runs(h, run_id).is_err() {
        // Not signalled: gone already, or not the run's.
        return group_members(h.pgid).is_empty() && !is_alive(h);
    }
    // Best effort: the group may have gone meanwhile; whether it is gone is checked next.
    #[allow(clippy::let_underscore_must_use)]
    let _ = killpg(Pid::from_raw(h.pgid), Signal::SIGKILL);
    wait_group_gone(h.pgid, Duration::from_secs(5)).await
}

/// Stops a process group: SIGTERM, up to `grace` for it to exit, then SIGKILL.
/// Returns whether nothing of the group is left. A group whose leader's PID now
/// belongs to another process is not ours: it is never signalled.
pub(crate) async fn stop_group(h: &ProcHandle, grace: Duration) -> bool {
    stop_checked(h, grace, || group_is_ours(h)).await
}

/// SIGTERM, grace, SIGKILL to group `h.pgid`, each signal only while `ours` says so.
async fn stop_checked(h: &ProcHandle, grace: Duration, mut ours: impl FnMut() -> bool) -> bool {
    if h.pgid <= 0 || !ours() {
        return true;
    }
    // Best effort: the group may have gone meanwhile; whether it is gone is checked next.
    #[allow(clippy::let_underscore_must_use)]
    let _ = killpg(Pid::from_raw(h.pgid), Signal::SIGTERM);
    if wait_group_gone(h.pgid, grace).await {
        return true;
    }
    if !ours() {
        return true;
    }
    // Best effort: the group may have gone meanwhile; whether it is gone is checked next.
    #[allow(clippy::let_underscore_must_use)]
    let _ = killpg(Pid::from_raw(h.pgid), Signal::SIGKILL);
    wait_group_gone(h.pgid, Duration::from_secs(5)).await
}

/// Sends `sig` to exactly the process `h` names: its PID is pinned with a pidfd, and
/// the signal goes out only if that process has the recorded start time (a PID reused
/// by another process is never signalled). Returns whether the signal was sent.
pub(crate) fn signal_exact(h: &ProcHandle, sig: Signal) -> bool {
    use rustix::process::{pidfd_open, pidfd_send_signal, Pid as RawPid, PidfdFlags};
    if h.start_time == 0 {
        return false;
    }
    let (Some(pid), Some(sig)) = (RawPid::from_raw(h.pid), rustix::process::Signal::from_named_raw(sig as i32)) else {
        return false;
    };
    let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else { return false };
    // The descriptor pins the process: if it still has the recorded start time now,
    // the signal can only reach it.
    if start_time(h.pid) != Some(h.start_time) {
        return false;
    }
    pidfd_send_signal(&fd, sig).is_ok()
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

/// The sockets (by inode) listening on TCP `port`, on any address, IPv4 and IPv6.
pub(crate) fn listening_sockets(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f.get(3) == Some(&"0A");
            let on_port = f.get(1).and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if let (true, true, Some(inode)) = (listening, on_port, f.get(9).and_then(|i| i.parse().ok())) {
                out.push(inode);
            }
        }
    }
    out
}

/// Whether a member of process group `pgid` holds the socket `inode`.
pub(crate) fn group_holds_socket(pgid: i32, inode: u64) -> bool {
    let needle = format!("socket:[{inode}]");
    group_members(pgid).into_iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
            rd.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()))
        })
    })
}

/// Whether process `pid` itself holds the socket `inode` (its threads share its
/// descriptors).
pub(crate) fn process_holds_socket(pid: i32, inode: u64) -> bool {
    let needle = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|rd| {
        rd.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == needle.as_str()))
    })
}

/// The processes holding the socket `inode` (those whose descriptors this user may
/// read: all of them as root).
pub(crate) fn socket_holders(inode: u64) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| process_holds_socket(*pid, inode))
        .collect()
}

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it soon after).
pub(crate) fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Whether something else listens on 127.0.0.1:`port` now: binding it is refused as
/// "address in use". (Asked of the system, not read from a server's log.)
pub(crate) fn port_taken(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

/// What a process run as another user keeps of rehearse's environment: where programs
/// are and how text and time are shown. Everything else — cloud credentials, CI
/// tokens, the operator's settings — stays behind.
const KEPT_ENV: [&str; 5] = ["PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR"];

/// Makes `cmd` run as `user`, with a clean environment ([`KEPT_ENV`] and the locale's
/// `LC_*`) and `home` as its HOME. Call it before adding the command's own variables.
pub(crate) fn drop_to(cmd: &mut Command, user: RunAs, home: &Path) {
    cmd.env_clear();
    for (k, v) in std::env::vars_os() {
        let keep = k.to_str().is_some_and(|k| KEPT_ENV.contains(&k) || k.starts_with("LC_"));
        if keep {
            cmd.env(k, v);
        }
    }
    let name = user_name(user.uid);
    cmd.env("HOME", home).env("USER", &name).env("LOGNAME", &name);
    user.apply(cmd);
}

/// A command from a description, run by `sh` in `dir` (as `user`, with its HOME, when
/// rehearse runs as root). The text travels in the environment (`REHEARSE_COMMAND`),
/// not on `sh`'s command line, where every local user could read whatever a template
/// put into it.
pub(crate) fn shell(command: &str, dir: &Path, user: Option<(RunAs, PathBuf)>) -> Command {
    let mut cmd = Command::new("sh");
    if let Some((u, home)) = user {
        drop_to(&mut cmd, u, &home);
    }
    cmd.arg("-c").arg("eval \"$REHEARSE_COMMAND\"").env("REHEARSE_COMMAND", command).current_dir(dir);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_someone_listens_on_is_taken_and_free_again_after() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(port_taken(port));
        drop(l);
        assert!(!port_taken(port));
    }

    /// A journal's handle is data: `{pid: a live process with its true start time,
    /// pgid: a victim}` (the shape of a forged journal) never signals the victim, nor
    /// does a well-formed handle of a group that does not carry the run's id.
    #[tokio::test]
    async fn only_a_group_that_carries_the_runs_id_is_the_runs() {
        let spawn = |tag: Option<&str>| {
            let mut c = tokio::process::Command::new("sleep");
            c.arg("30").process_group(0).env_remove("REHEARSE_RUN_ID");
            if let Some(t) = tag {
                c.env("REHEARSE_RUN_ID", t);
            }
            c.spawn().unwrap()
        };
        let mut victim = spawn(None);
        let mut ours = spawn(Some("r-20261127-000000-abcdef"));
        let (v, o) = (victim.id().unwrap() as i32, ours.id().unwrap() as i32);
        let me = std::process::id() as i32;
        let forged = ProcHandle { pid: me, pgid: v, start_time: start_time(me).unwrap() };
        assert!(group_is_runs(&forged, "r-20261127-000000-abcdef").is_err());
        assert!(stop_run_group(&forged, "r-20261127-000000-abcdef", Duration::from_millis(100)).await);
        let untagged = ProcHandle { pid: v, pgid: v, start_time: start_time(v).unwrap() };
        assert!(group_is_runs(&untagged, "r-20261127-000000-abcdef").is_err());
        assert!(stop_run_group(&untagged, "r-20261127-000000-abcdef", Duration::from_millis(100)).await);
        assert!(victim.try_wait().unwrap().is_none(), "a group that is not the run's was signalled");
        let tagged = ProcHandle { pid: o, pgid: o, start_time: start_time(o).unwrap() };
        assert!(group_is_runs(&tagged, "r-20261127-000000-ffffff").is_err(), "another run's id");
        assert_eq!(group_is_runs(&tagged, "r-20261127-000000-abcdef"), Ok(()));
        assert!(stop_run_group(&tagged, "r-20261127-000000-abcdef", Duration::from_secs(2)).await);
        ours.wait().await.unwrap();
        victim.kill().await.unwrap();
    }

    #[tokio::test]
    async fn a_reused_pid_is_never_signalled() {
        // A process of ours, as if journaled with another start time: a PID reused
        // by a process that is not the one we started.
        let mut child = tokio::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let pid = child.id().unwrap() as i32;
        let real = start_time(pid).unwrap();
        let stranger = ProcHandle { pid, pgid: pid, start_time: real + 1 };
        assert!(!is_alive(&stranger));
        assert!(!signal_exact(&stranger, Signal::SIGKILL));
        assert!(stop_group(&stranger, Duration::from_millis(100)).await, "not ours: nothing of ours is left");
        assert!(child.try_wait().unwrap().is_none(), "the stranger was signalled");
        let ours = ProcHandle { pid, pgid: pid, start_time: real };
        assert!(is_alive(&ours));
        assert!(stop_group(&ours, Duration::from_secs(2)).await);
        child.wait().await.unwrap();
    }
}
