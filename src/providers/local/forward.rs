//! A local stage's stable names: a small TCP forwarder on fixed ports of 127.0.0.1
//! (and the same ports of ::1) that connects every new connection to the current
//! generation. `stage env` and `stage status` check that each port is answered by the
//! forwarder's own sockets alone ([`LocalNames::who_answers`]): while it is down (after
//! a reboot), another user may have bound the port.
//!
//! The stage's directory (`STATE/stages/NAME/`, private to its owner) holds:
//! - `listen.json`: the stable port of each database and service;
//! - `targets.json`: the generation the ports lead to and its `host:port` addresses,
//!   replaced whole by a rename (an atomic pointer swap), read again for every new
//!   connection, so a switch takes effect at the next connection;
//! - `forwarder.json`: the forwarder process (pid and start time), written by it once
//!   every port listens;
//! - `forwarder.log`.
//!
//! A connection opened before a switch stays with the generation it reached until
//! either side closes it; the old generation keeps serving it through its drain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::stage::{NamesError, NamesFuture, StableNames};
use crate::sys::process::{self, ProcHandle};
use crate::sys::secure_fs::{Dir, FsError};

const LISTEN: &str = "listen.json";
const TARGETS: &str = "targets.json";
const PIDFILE: &str = "forwarder.json";
const LOG: &str = "forwarder.log";
/// How long a connection to a generation may take before the next address is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Targets {
    generation: u64,
    targets: BTreeMap<String, Vec<String>>,
}

/// The forwarder process as it recorded itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ForwarderProcess {
    pub(crate) pid: i32,
    pub(crate) start_time: u64,
    pub(crate) ports: BTreeMap<String, u16>,
}

/// Why a local stage's forwarder could not be set up, started, stopped or run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Remove(#[from] crate::sys::state::RemoveError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// `what` (an action on a file, a start) failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{} is damaged: {source}", path.display())]
    Damaged { path: PathBuf, source: serde_json::Error },
    #[error("the stage's forwarder exited ({status}) before listening: {log}")]
    Exited { status: std::process::ExitStatus, log: String },
    #[error("the stage's forwarder did not listen within 10 s{}", .stopping.as_ref().map(|e| format!(" (and could not be stopped: {e})")).unwrap_or_default())]
    NotListening { stopping: Option<std::io::Error> },
    #[error("the stage's forwarder (pid {0}) did not stop")]
    NotStopped(i32),
}

/// The stage's contract takes the forwarder's errors as its text (they say what failed).
impl From<ForwardError> for NamesError {
    fn from(e: ForwardError) -> NamesError {
        NamesError::Refused(e.to_string())
    }
}

/// `e`, said as `what` failing.
fn io(what: String) -> impl FnOnce(std::io::Error) -> ForwardError {
    move |source| ForwardError::Io { what, source }
}

/// A local stage's stable ports.
pub(crate) struct LocalNames {
    dir: PathBuf,
    ports: BTreeMap<String, u16>,
}

impl LocalNames {
    /// The names of the stage whose directory is `dir` (created private if missing).
    pub(crate) fn new(dir: &Path, ports: BTreeMap<String, u16>) -> Result<LocalNames, ForwardError> {
        crate::sys::state::private_dir(dir)?;
        Ok(LocalNames { dir: dir.to_path_buf(), ports })
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), ForwardError> {
        // Written beside and renamed over: a reader sees the old file or the new one.
        let dir = Dir::open(&self.dir)?;
        let tmp = format!(".{name}.tmp");
        dir.write_file(Path::new(&tmp), bytes, None)?;
        std::fs::rename(self.dir.join(&tmp), self.dir.join(name))
            .map_err(io(format!("cannot replace {}", self.dir.join(name).display())))
    }

    /// The forwarder, if it runs.
    pub(crate) fn running(&self) -> Option<ForwarderProcess> {
        let f: ForwarderProcess = serde_json::from_slice(&std::fs::read(self.dir.join(PIDFILE)).ok()?).ok()?;
        process::is_alive(&ProcHandle { pid: f.pid, pgid: f.pid, start_time: f.start_time }).then_some(f)
    }

    /// Starts the forwarder unless it runs on the right ports; returns once every port
    /// listens.
    pub(crate) async fn ensure_running(&self) -> Result<ForwarderProcess, ForwardError> {
        if let Some(f) = self.running() {
            if f.ports == self.ports {
                return Ok(f);
            }
            self.stop().await?;
        }
        let listen = serde_json::to_vec_pretty(&self.ports)?;
        self.write(LISTEN, &listen)?;
        // Whatever an earlier forwarder recorded is stale now.
        remove_if_there(&self.dir.join(PIDFILE))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LOG))
            .map_err(io(format!("cannot open {}", self.dir.join(LOG).display())))?;
        let exe = std::env::current_exe().map_err(io("cannot find rehearse's own executable".into()))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["stage", "forward"])
            .arg(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io(format!("cannot open {}", self.dir.join(LOG).display())))?)
            .stderr(log)
            .env_remove("REHEARSE_RUN_ID");
        // Its own session: it outlives the rebuild that started it, and a terminal's
        // ^C to the rebuild does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().map_err(io("cannot start the stage's forwarder".into()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(f) = self.running().filter(|f| f.pid == child.id() as i32) {
                // Not waited for: it outlives this process, and init reaps it then.
                drop(child);
                return Ok(f);
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ForwardError::Exited {
                    status,
                    log: crate::secrets::redact(&tail(&self.dir.join(LOG))).to_string(),
                });
            }
            if tokio::time::Instant::now() > deadline {
                let stopped = child.kill().and_then(|()| child.wait());
                return Err(ForwardError::NotListening { stopping: stopped.err() });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(&self) -> Result<(), ForwardError> {
        if let Some(f) = self.running() {
            let h = ProcHandle { pid: f.pid, pgid: f.pid, start_time: f.start_time };
            if !process::stop_group(&h, Duration::from_secs(5)).await {
                return Err(ForwardError::NotStopped(f.pid));
            }
        }
        remove_if_there(&self.dir.join(PIDFILE))
    }

    fn read_targets(&self) -> Option<Targets> {
        serde_json::from_slice(&std::fs::read(self.dir.join(TARGETS)).ok()?).ok()
    }

    /// Each stable port that is not answered by the forwarder's own sockets alone, said
    /// (as a service's health check must be answered by the service's own socket): a
    /// port another process listens on (on any address: 127.0.0.1, ::1, 0.0.0.0 …),
    /// or one nothing listens on.
    pub(crate) fn who_answers(&self) -> Vec<String> {
        let forwarder = self.running();
        let mut out = Vec::new();
        for (name, port) in &self.ports {
            let sockets = process::listening_sockets(*port);
            let strangers: Vec<u64> = sockets
                .iter()
                .copied()
                .filter(|i| !forwarder.as_ref().is_some_and(|f| process::process_holds_socket(f.pid, *i)))
                .collect();
            if !strangers.is_empty() {
                let mut who: Vec<String> = strangers
                    .iter()
                    .flat_map(|i| process::socket_holders(*i))
                    .map(|pid| {
                        let user = process::owner_uid(pid).map_or_else(|| "?".into(), process::user_name);
                        format!("pid {pid} (user {user})")
                    })
                    .collect();
                who.dedup();
                let who = if who.is_empty() { "a process this user cannot see".to_string() } else { who.join(", ") };
                out.push(format!("port {port} of `{name}` is answered by {who}, not by the stage's forwarder"));
            } else if forwarder.is_none() || sockets.is_empty() {
                out.push(format!("nothing answers port {port} of `{name}`: the stage's forwarder is not running"));
            }
        }
        out
    }
}

fn remove_if_there(path: &Path) -> Result<(), ForwardError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(format!("cannot remove {}", path.display()))(e)),
        _ => Ok(()),
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

impl StableNames for LocalNames {
    fn switch<'a>(&'a self, number: u64, targets: &'a BTreeMap<String, Vec<String>>) -> NamesFuture<'a, ()> {
        Box::pin(async move {
            let t = Targets { generation: number, targets: targets.clone() };
            self.write(TARGETS, &serde_json::to_vec_pretty(&t).map_err(ForwardError::from)?)?;
            self.ensure_running().await.map(|_| ()).map_err(NamesError::from)
        })
    }

    fn pointing_at(&self) -> NamesFuture<'_, Option<u64>> {
        Box::pin(async move {
            match self.running() {
                Some(_) => Ok(self.read_targets().map(|t| t.generation)),
                None => Ok(None),
            }
        })
    }

    fn remove(&self) -> NamesFuture<'_, ()> {
        Box::pin(async move {
            self.stop().await?;
            crate::sys::state::remove_tree(&self.dir).map_err(ForwardError::from)?;
            Ok(())
        })
    }

    fn unanswered(&self) -> NamesFuture<'_, Vec<String>> {
        Box::pin(async move { Ok(self.who_answers()) })
    }
}

/// Listens on `port` of both loopback addresses: 127.0.0.1, and ::1 — a client that
/// resolves `localhost` to ::1 must reach the forwarder too, never another user who
/// bound [::1]:PORT. A machine without IPv6 loopback (none can bind ::1 there) is said,
/// not fatal.
async fn bind_loopback(name: &str, port: u16) -> Result<Vec<tokio::net::TcpListener>, ForwardError> {
    let v4 = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(io(format!("cannot listen on 127.0.0.1:{port} for `{name}`")))?;
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    match tokio::net::TcpListener::bind(v6).await {
        Ok(l) => Ok(vec![v4, l]),
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EADDRNOTAVAIL | nix::libc::EAFNOSUPPORT)) => {
            eprintln!(
                "rehearse forwarder: `{name}`: this machine has no IPv6 loopback ([::1]:{port}: {e}); listening on \
                 127.0.0.1:{port} only (nobody can bind ::1 here either)"
            );
            Ok(vec![v4])
        }
        Err(e) => Err(io(format!("cannot listen on [::1]:{port} for `{name}`"))(e)),
    }
}

/// `rehearse stage forward DIR`: the forwarder itself. Listens on every port of
/// `listen.json`, records itself in `forwarder.json`, and forwards until SIGTERM.
pub(crate) async fn serve(dir: &Path) -> Result<(), ForwardError> {
    let ports: BTreeMap<String, u16> = serde_json::from_slice(
        &std::fs::read(dir.join(LISTEN)).map_err(io(format!("cannot read {}", dir.join(LISTEN).display())))?,
    )
    .map_err(|source| ForwardError::Damaged { path: dir.join(LISTEN), source })?;
    // Started again (by its systemd unit) while it runs: nothing to do.
    let already = LocalNames { dir: dir.to_path_buf(), ports: ports.clone() };
    if let Some(f) = already.running().filter(|f| f.ports == ports) {
        eprintln!("rehearse forwarder: already running as pid {} on {:?}", f.pid, f.ports);
        return Ok(());
    }
    let mut listeners = Vec::new();
    for (name, port) in &ports {
        for l in bind_loopback(name, *port).await? {
            listeners.push((name.clone(), l));
        }
    }
    let me = std::process::id() as i32;
    let record = ForwarderProcess { pid: me, start_time: process::start_time(me).unwrap_or(0), ports: ports.clone() };
    let names = LocalNames { dir: dir.to_path_buf(), ports };
    names.write(PIDFILE, &serde_json::to_vec_pretty(&record)?)?;
    eprintln!("rehearse forwarder {me}: listening on {:?}", record.ports);
    let names = Arc::new(names);
    let mut tasks = tokio::task::JoinSet::new();
    for (name, listener) in listeners {
        let names = names.clone();
        tasks.spawn(async move {
            let next = Arc::new(AtomicUsize::new(0));
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let (names, name, next) = (names.clone(), name.clone(), next.clone());
                tokio::spawn(async move { forward(&names, &name, client, &next).await });
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("cannot handle SIGTERM".into()))?;
    term.recv().await;
    tasks.abort_all();
    Ok(())
}

/// One client: to the current generation's address for `name` (round robin over its
/// instances, the next one when one refuses), then bytes both ways until either closes.
async fn forward(names: &LocalNames, name: &str, mut client: tokio::net::TcpStream, next: &AtomicUsize) {
    let Some(t) = names.read_targets() else { return };
    let Some(addrs) = t.targets.get(name).filter(|a| !a.is_empty()) else { return };
    let start = next.fetch_add(1, Ordering::Relaxed);
    for i in 0..addrs.len() {
        let addr = &addrs[(start + i) % addrs.len()];
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr.as_str())).await {
            Ok(Ok(mut upstream)) => {
                // Small queries answered at once: no Nagle delay on either leg.
                if let Err(e) = client.set_nodelay(true).and_then(|()| upstream.set_nodelay(true)) {
                    eprintln!("rehearse forwarder: `{name}`: cannot set TCP_NODELAY: {e}");
                }
                // A reset by either side ends the connection as it would without us.
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!("`{name}` via {addr}: {e}");
                }
                return;
            }
            _ => eprintln!("rehearse forwarder: `{name}` of generation {}: {addr} refused", t.generation),
        }
    }
}
