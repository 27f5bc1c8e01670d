//! HTTP health checks: local services on loopback, AWS instances at their address.
//!
//! A health check is one `GET` and a status line.
//! An HTTP client crate (hyper, reqwest) would bring dozens of dependencies for those
//! few lines, so this speaks HTTP/1.0 over a tokio `TcpStream` directly, every read and
//! connect inside a timeout.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status code of `GET path` on host:port, or why there is none.
pub(crate) async fn get_status(host: &str, port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    let attempt = async {
        let mut s = TcpStream::connect((host, port)).await.map_err(|e| e.to_string())?;
        let req =
            format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: rehearse\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let status = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
        status.ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or("")))
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("no answer within {}ms", timeout.as_millis()))?
}

/// Polls until `GET path` answers 2xx, with backoff from 20 ms to 500 ms, until
/// `deadline`. `still_running` is checked between attempts so a crashed service fails
/// the check at once instead of at the deadline.
pub(crate) async fn wait_healthy(
    port: u16,
    path: &str,
    deadline: Instant,
    still_running: impl FnMut() -> Result<(), String>,
) -> Result<Duration, String> {
    wait_healthy_at("127.0.0.1", port, path, deadline, still_running).await
}

/// [`wait_healthy`] against any host (an instance's address on AWS; the runner must
/// reach the VPC).
pub(crate) async fn wait_healthy_at(
    host: &str,
    port: u16,
    path: &str,
    deadline: Instant,
    mut still_running: impl FnMut() -> Result<(), String>,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        still_running()?;
        let last = match get_status(host, port, path, Duration::from_secs(2)).await {
            Ok(code) if (200..300).contains(&code) => return Ok(start.elapsed()),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("not healthy after {:.1}s; last answer: {last}", start.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}
