//! The fault proxy's own cost with no fault set (`cargo bench --bench fault_proxy`, part
//! of `make bench`): on 127.0.0.1, the same client against the same server, directly
//! and through the proxy, in interleaved rounds ($BENCH_PROXY_ROUNDS, default 5, each
//! way).
//!
//! - Latency: $BENCH_PROXY_REQUESTS (default 20,000) requests one after another over one
//!   connection, each 100 bytes sent and 100 bytes echoed back (a query and its answer);
//!   per round the p50 and p99 of a request's time, and the proxy's added p50.
//! - Throughput: $BENCH_PROXY_MIB (default 1024) MiB written over one connection to a
//!   server that reads and discards them, and tells the count when it has read them all;
//!   per round, MiB a second.
//!
//! The servers run on a runtime (and thread) of their own, the proxy on another, the
//! client on a third, as they would be three processes; the machine's cores are shared
//! by all three either way. Prints a Markdown table.

mod common;
use common::quantile;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rehearse::sys::fault_proxy::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Starts a runtime on a thread of its own and returns what `f` returned on it.
fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            tx.send(f().await).unwrap();
            // Serve for as long as the benchmark runs.
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

/// An echo server and a sink (reads everything, then answers with the count as 8 bytes).
fn servers() -> (SocketAddr, SocketAddr) {
    on_own_thread(|| {
        Box::pin(async {
            let echo = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
            let sink = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
            let addrs = (echo.local_addr().unwrap(), sink.local_addr().unwrap());
            tokio::spawn(async move {
                while let Ok((mut s, _)) = echo.accept().await {
                    s.set_nodelay(true).unwrap();
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        tokio::io::copy(&mut r, &mut w).await.ok();
                    });
                }
            });
            tokio::spawn(async move {
                while let Ok((mut s, _)) = sink.accept().await {
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 256 * 1024];
                        let mut total: u64 = 0;
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => total += n as u64,
                            }
                        }
                        s.write_all(&total.to_be_bytes()).await.ok();
                    });
                }
            });
            addrs
        })
    })
}

/// A proxy to `upstream` on a thread of its own; its address.
fn proxy(upstream: SocketAddr) -> SocketAddr {
    on_own_thread(move || {
        Box::pin(async move {
            let p = FaultProxy::start(upstream, 1).await.unwrap();
            let addr = p.addr();
            // Kept for the benchmark's life.
            std::mem::forget(p);
            addr
        })
    })
}

fn stats(xs: &[f64]) -> String {
    common::spread(xs, 3)
}

/// (p50, p99) of `n` requests' times, ms.
async fn latency(addr: SocketAddr, n: u64) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [7u8; 100];
    let mut back = [0u8; 100];
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (quantile(&mut times, 0.5), quantile(&mut times, 0.99))
}

/// MiB a second of `mib` MiB written to the sink, until it has read them all.
async fn throughput(addr: SocketAddr, mib: u64) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let chunk = vec![1u8; 1024 * 1024];
    let t = Instant::now();
    for _ in 0..mib {
        s.write_all(&chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_be_bytes(count), mib * 1024 * 1024, "the sink read a different count");
    mib as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds = env_or("BENCH_PROXY_ROUNDS", 5);
    let requests = env_or("BENCH_PROXY_REQUESTS", 20_000);
    let mib = env_or("BENCH_PROXY_MIB", 1024);
    let (echo, sink) = servers();
    let (echo_via, sink_via) = (proxy(echo), proxy(sink));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut p50, mut p99, mut p50_via, mut p99_via, mut added) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut tp, mut tp_via, mut ratio) = (vec![], vec![], vec![]);
    rt.block_on(async {
        // One warm-up each way, not counted.
        latency(echo, 1_000).await;
        latency(echo_via, 1_000).await;
        for _ in 0..rounds {
            let direct = latency(echo, requests).await;
            let via = latency(echo_via, requests).await;
            p50.push(direct.0);
            p99.push(direct.1);
            p50_via.push(via.0);
            p99_via.push(via.1);
            added.push(via.0 - direct.0);
            let direct = throughput(sink, mib).await;
            let via = throughput(sink_via, mib).await;
            tp.push(direct);
            tp_via.push(via);
            ratio.push(100.0 * via / direct);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    println!("the fault proxy with no fault, on 127.0.0.1 ({rounds} rounds each way, interleaved; min / median / max)");
    println!();
    println!("| what | direct | through the proxy |");
    println!("|---|--:|--:|");
    println!(
        "| a request's p50 ({requests} × 100 bytes and back, one connection), ms | {} | {} |",
        stats(&p50),
        stats(&p50_via)
    );
    println!("| its p99, ms | {} | {} |", stats(&p99), stats(&p99_via));
    println!("| **p50 added by the proxy**, ms | | {} |", stats(&added));
    println!("| throughput ({mib} MiB one way, one connection), MiB/s | {} | {} |", stats(&tp), stats(&tp_via));
    println!("| **throughput through the proxy, % of direct** | | {} |", stats(&ratio));
}
