//! A TCP proxy on loopback that carries a path's traffic (a service's to its database, a
//! client's to a service) and hurts it on demand: added latency with jitter, a bandwidth
//! limit, connection resets, a blackhole. Put in the path from the start of a run, it
//! needs no root and no traffic control; with no fault it only copies.
//!
//! How each fault behaves, on open connections and new ones alike (a fault set applies
//! at the next chunk each way):
//! - [`Fault::Latency`]: every chunk read is written `delay` ± `jitter` later, in order
//!   (a delay line: a bulk transfer keeps its throughput, a request and its answer each
//!   wait);
//! - [`Fault::Bandwidth`]: each direction writes at most `bytes_per_sec`;
//! - [`Fault::Reset`]: every connection is reset (RST to both ends), and new ones as
//!   they come;
//! - [`Fault::Blackhole`]: nothing moves: the proxy stops reading and writing (what was
//!   sent waits in the kernel's buffers, as it would in a path that drops packets and
//!   retransmits), new connections are accepted but not connected upstream; when the
//!   fault ends, the traffic resumes where it stopped.
//!
//! A proxy may carry a service's several instances ([`FaultProxy::start_balanced`]): each
//! new connection goes to the next instance in turn, and to the one after it when that
//! one refuses (as a load balancer stops sending to a target that is down); the set of
//! instances can change while it runs ([`FaultProxy::set_upstreams`]).
//!
//! One task per connection; within it the four halves (each end's reads and writes)
//! run together over borrowed halves of the two sockets, so that a reset can still set
//! `SO_LINGER` to zero on both before they close. Jitter is drawn from a seeded
//! generator: a game day's faults are the same on every run of the same seed.

use std::net::SocketAddr;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does to the traffic it carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Fault {
    /// Nothing: it copies.
    #[default]
    None,
    /// Every chunk `delay` later, plus a uniform draw in `[0, jitter]`.
    Latency { delay: Duration, jitter: Duration },
    /// At most this many bytes a second each way.
    Bandwidth { bytes_per_sec: u64 },
    /// Every connection reset, open and new.
    Reset,
    /// Nothing moves until the fault ends.
    Blackhole,
}

/// The most bytes one read takes (and one chunk carries).
const CHUNK: usize = 64 * 1024;
/// Chunks in flight each way: a full delay line stops reading, as a full window would.
const IN_FLIGHT: usize = 64;

/// A running proxy: connections to [`FaultProxy::addr`] go to its upstream. Dropped or
/// [`stop`](FaultProxy::stop)ped, it closes its listener and every connection.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    upstreams: watch::Sender<Vec<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and carries each connection to `upstream`;
    /// `seed` draws the jitter.
    pub async fn start(upstream: SocketAddr, seed: u64) -> std::io::Result<FaultProxy> {
        FaultProxy::start_balanced(vec![upstream], seed).await
    }

    /// Listens on a free port of 127.0.0.1 and carries each new connection to the next
    /// of `upstreams` in turn, or to the first after it that accepts.
    pub async fn start_balanced(upstreams: Vec<SocketAddr>, seed: u64) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (fault, watching) = watch::channel(Fault::None);
        let (upstreams, targets) = watch::channel(upstreams);
        let task = tokio::spawn(accept(listener, targets, watching, seed));
        Ok(FaultProxy { addr, fault, upstreams, task })
    }

    /// New connections go to `upstreams` from now on (open ones stay where they are).
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        self.upstreams.send_replace(upstreams);
    }

    /// Where new connections go.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams.borrow().clone()
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` from now on (`Fault::None` ends the one before).
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.fault.borrow().clone()
    }

    /// Closes the listener and every connection.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstreams: watch::Receiver<Vec<SocketAddr>>,
    fault: watch::Receiver<Fault>,
    seed: u64,
) {
    // The connections die with this task (an aborted JoinSet aborts its tasks).
    let mut connections = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else {
                    // Out of descriptors, say: a pause, not a spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // In turn, from the one after the last connection's.
                let mut turn = upstreams.borrow().clone();
                if !turn.is_empty() {
                    let first = (n as usize) % turn.len();
                    turn.rotate_left(first);
                }
                n += 1;
                let seed = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                connections.spawn(connection(client, turn, fault.clone(), seed));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a half stopped early: the connection is to be reset.
struct Reset;

/// How a stretch of a direction's copying ended.
enum End {
    /// The end of the stream was read (or the proxy is gone): shut the other side down.
    Eof,
    /// The fault changed so that the other way of copying applies.
    Switch,
}

async fn connection(mut client: TcpStream, turn: Vec<SocketAddr>, mut fault: watch::Receiver<Fault>, seed: u64) {
    // A blackhole holds a new connection unanswered; a reset refuses it.
    match past_blackhole(&mut fault).await {
        Err(Reset) => return reset(&client, None),
        Ok(None) => return,
        Ok(Some(_)) => {}
    }
    let Some(mut server) = first_to_answer(&turn).await else { return reset(&client, None) };
    // Small writes (a protocol's messages) leave at once, as they would unproxied.
    client.set_nodelay(true).ok();
    server.set_nodelay(true).ok();
    let outcome = {
        let (client_r, client_w) = client.split();
        let (server_r, server_w) = server.split();
        let rng = |k: u64| rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed ^ k);
        tokio::try_join!(
            direction(client_r, server_w, fault.clone(), rng(1)),
            direction(server_r, client_w, fault.clone(), rng(2)),
        )
    };
    if outcome.is_err() {
        reset(&client, Some(&server));
    }
}

/// A connection to the first of `turn` that accepts one; `None` when none does.
async fn first_to_answer(turn: &[SocketAddr]) -> Option<TcpStream> {
    for upstream in turn {
        if let Ok(s) = TcpStream::connect(upstream).await {
            return Some(s);
        }
    }
    None
}

/// One way of a connection, until its end: with no fault set the bytes go from socket
/// to socket through a pipe and never reach this process ([`spliced`]); under a fault,
/// or where no pipe can be had, they are read, delayed or paced, and written
/// ([`read_half`], [`write_half`]). A change of fault drains what is on its way before
/// the other way takes over, so the order is kept.
async fn direction(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut fault: watch::Receiver<Fault>,
    mut rng: rand::rngs::Xoshiro256PlusPlus,
) -> Result<(), Reset> {
    let pipe = Pipe::new();
    loop {
        let Some(now) = past_blackhole(&mut fault).await? else { return Ok(()) };
        let end = match (&pipe, now) {
            (Some(pipe), Fault::None) => spliced(from.as_ref(), to.as_ref(), pipe, &mut fault).await?,
            _ => {
                let (tx, rx) = mpsc::channel(IN_FLIGHT);
                let until_clear = pipe.is_some();
                let (end, ()) = tokio::try_join!(
                    read_half(&mut from, tx, fault.clone(), &mut rng, until_clear),
                    write_half(&mut to, rx, fault.clone()),
                )?;
                end
            }
        };
        if let End::Eof = end {
            to.shutdown().await.ok();
            return Ok(());
        }
    }
}

/// A pipe for [`spliced`], both ends non-blocking; `None` where none can be had (out of
/// descriptors, say): then the bytes are copied.
struct Pipe {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
    /// What it holds: the most one splice moves.
    size: usize,
}

impl Pipe {
    fn new() -> Option<Pipe> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).ok()?;
        // Larger than the default 64 KiB, for fewer calls in a bulk transfer; the default
        // where the system refuses (a user's pipe quota).
        let size = fcntl(&write, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
            .or_else(|_| fcntl(&write, FcntlArg::F_GETPIPE_SZ))
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)?;
        Some(Pipe { read, write, size })
    }
}

/// What [`Pipe::new`] asks of the system.
const PIPE_SIZE: usize = 256 * 1024;

/// Moves bytes from `from` to `to` through `pipe` with `splice(2)` while no fault is
/// set: the kernel's pages handed on, none copied into this process. The pipe is
/// emptied before each read from the socket, so a would-block always means the socket
/// (never the pipe) is not ready. Ends at the end of the stream, or when a fault is set
/// (what the pipe holds written first; a reset drops it).
async fn spliced(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    fault: &mut watch::Receiver<Fault>,
) -> Result<End, Reset> {
    use nix::fcntl::{splice, SpliceFFlags};
    use std::io::ErrorKind::WouldBlock;
    use tokio::io::Interest;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        if *fault.borrow_and_update() != Fault::None {
            return Ok(End::Switch);
        }
        tokio::select! {
            changed = fault.changed() => {
                if changed.is_err() {
                    return Ok(End::Eof);
                }
                continue;
            }
            ready = from.readable() => if ready.is_err() {
                return Err(Reset);
            },
        }
        let moved = from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe.write, None, pipe.size, flags).map_err(std::io::Error::from)
        });
        let mut left = match moved {
            Ok(0) => return Ok(End::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == WouldBlock => continue,
            Err(_) => return Err(Reset),
        };
        while left > 0 {
            tokio::select! {
                changed = fault.changed() => {
                    if changed.is_err() {
                        return Ok(End::Eof);
                    }
                    if *fault.borrow() == Fault::Reset {
                        return Err(Reset);
                    }
                    continue;
                }
                ready = to.writable() => if ready.is_err() {
                    return Err(Reset);
                },
            }
            let moved = to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, to, None, left, flags).map_err(std::io::Error::from)
            });
            match moved {
                Ok(n) => left -= n,
                Err(e) if e.kind() == WouldBlock => {}
                Err(_) => return Err(Reset),
            }
        }
    }
}

/// Waits out a blackhole: then the fault in force (`None` when the proxy is gone), or
/// `Err` for a reset.
async fn past_blackhole(fault: &mut watch::Receiver<Fault>) -> Result<Option<Fault>, Reset> {
    loop {
        let now = fault.borrow_and_update().clone();
        match now {
            Fault::Reset => return Err(Reset),
            Fault::Blackhole => {
                if fault.changed().await.is_err() {
                    return Ok(None);
                }
            }
            other => return Ok(Some(other)),
        }
    }
}

/// Resets `a` (and `b`): `SO_LINGER` zero, then closed (by the caller's drop).
fn reset(a: &TcpStream, b: Option<&TcpStream>) {
    a.set_zero_linger().ok();
    if let Some(b) = b {
        b.set_zero_linger().ok();
    }
}

/// Reads one end and queues what it read, stamped with when it is due at the other;
/// with `until_clear`, only while a fault is set.
async fn read_half<R: tokio::io::AsyncRead + Unpin>(
    mut from: R,
    to: mpsc::Sender<(Instant, Vec<u8>)>,
    mut fault: watch::Receiver<Fault>,
    rng: &mut rand::rngs::Xoshiro256PlusPlus,
    until_clear: bool,
) -> Result<End, Reset> {
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let Some(now) = past_blackhole(&mut fault).await? else { return Ok(End::Eof) };
        if until_clear && now == Fault::None {
            // The writer empties the queue, then the pipe takes over.
            return Ok(End::Switch);
        }
        let n = tokio::select! {
            // A fault set while waiting for bytes: looked at before the next read.
            changed = fault.changed() => {
                if changed.is_err() {
                    return Ok(End::Eof);
                }
                continue;
            }
            read = from.read(&mut buf) => match read {
                Ok(n) => n,
                // A broken end: the other side is closed as it would be unproxied.
                Err(_) => return Err(Reset),
            },
        };
        if n == 0 {
            // End of stream: the other side is shut down once the queue is written.
            return Ok(End::Eof);
        }
        let delay = match now {
            Fault::Latency { delay, jitter } if jitter.is_zero() => delay,
            Fault::Latency { delay, jitter } => delay + jitter.mul_f64(rng.random::<f64>()),
            _ => Duration::ZERO,
        };
        // Never before the chunk ahead of it: a delay line keeps the order.
        last_due = (Instant::now() + delay).max(last_due);
        if to.send((last_due, buf[..n].to_vec())).await.is_err() {
            return Err(Reset);
        }
    }
}

/// Writes what its reader queued, when due, at the bandwidth allowed, until the reader
/// has ended and the queue is empty.
async fn write_half<W: tokio::io::AsyncWrite + Unpin>(
    mut to: W,
    mut from: mpsc::Receiver<(Instant, Vec<u8>)>,
    mut fault: watch::Receiver<Fault>,
) -> Result<(), Reset> {
    loop {
        let next = tokio::select! {
            next = from.recv() => next,
            changed = fault.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                if *fault.borrow() == Fault::Reset {
                    return Err(Reset);
                }
                continue;
            }
        };
        let Some((due, bytes)) = next else { return Ok(()) };
        // Only when due later: a timer, even one already past, fires at the timer's next
        // tick (a millisecond), which would add that to every chunk.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        // A blackhole holds what is in flight; a reset drops it.
        if past_blackhole(&mut fault).await?.is_none() {
            return Ok(());
        }
        let limit = match *fault.borrow() {
            Fault::Bandwidth { bytes_per_sec } => Some(bytes_per_sec.max(1)),
            _ => None,
        };
        match limit {
            None => {
                if to.write_all(&bytes).await.is_err() {
                    return Err(Reset);
                }
            }
            Some(rate) => {
                // A tenth of a second's worth at a time, each followed by its time.
                let slice = (rate / 10).clamp(1, CHUNK as u64) as usize;
                for part in bytes.chunks(slice) {
                    let began = Instant::now();
                    if to.write_all(part).await.is_err() {
                        return Err(Reset);
                    }
                    let spent = Duration::from_secs_f64(part.len() as f64 / rate as f64);
                    tokio::time::sleep_until(began + spent).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
