//! HTTP health checks: local services on loopback, AWS instances at their address.
//!
//! A health check is one `GET` and a status line.
//! An HTTP client crate (hyper, reqwest) would bring dozens of dependencies for those
//! few lines, so this speaks HTTP/1.0 over a tokio `TcpStream` directly, every read and
//! connect inside a timeout.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Why a health check did not pass.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HealthError {
    /// One attempt: the connection or the exchange failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not an HTTP response: {0:?}")]
    NotHttp(String),
    #[error("no answer within {0}ms")]
    NoAnswer(u128),
    /// The service's process ended (said by the caller's check).
    #[error(transparent)]
    Ended(#[from] Ended),
    /// The deadline passed; `last` is the last attempt's answer or failure.
    #[error("not healthy after {secs:.1}s; last answer: {last}")]
    Unhealthy { secs: f64, last: String },
}

/// The status code of `GET path` on host:port, or why there is none.
pub(crate) async fn get_status(host: &str, port: u16, path: &str, timeout: Duration) -> Result<u16, HealthError> {
    let attempt = async {
        let mut s = TcpStream::connect((host, port)).await?;
        let req =
            format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: rehearse\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let status = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
        status.ok_or_else(|| HealthError::NotHttp(line.lines().next().unwrap_or("").to_string()))
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| HealthError::NoAnswer(timeout.as_millis()))?
}

/// A checked service that is gone before it answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Ended {
    #[error("exited with {0} before it was healthy")]
    Exited(std::process::ExitStatus),
}

/// Polls until `GET path` answers 2xx, with backoff from 20 ms to 500 ms, until
/// `deadline`. `still_running` is checked between attempts so a crashed service fails
/// the check at once instead of at the deadline.
pub(crate) async fn wait_healthy(
    port: u16,
    path: &str,
    deadline: Instant,
    still_running: impl FnMut() -> Result<(), Ended>,
) -> Result<Duration, HealthError> {
    wait_healthy_at("127.0.0.1", port, path, deadline, still_running).await
}

/// [`wait_healthy`] against any host (an instance's address on AWS; the runner must
/// reach the VPC).
pub(crate) async fn wait_healthy_at(
    host: &str,
    port: u16,
    path: &str,
    deadline: Instant,
    mut still_running: impl FnMut() -> Result<(), Ended>,
) -> Result<Duration, HealthError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(20);
    loop {
        still_running()?;
        let last = match get_status(host, port, path, Duration::from_secs(2)).await {
            Ok(code) if (200..300).contains(&code) => return Ok(start.elapsed()),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e.to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(HealthError::Unhealthy { secs: start.elapsed().as_secs_f64(), last });
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}
