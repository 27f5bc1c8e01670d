//! The same load on the baseline and the candidate at the same time: requests from a
//! file, replayed at a fixed rate for a duration against each environment's URL.
//!
//! The request file has one request a line — `METHOD PATH [BODY]`, e.g. lines taken
//! from an access log — and `#` comments. Requests go out in the file's order, cycling,
//! on a fixed schedule (request `i` at `start + i / rate`), to both environments at
//! once: an open loop, so a slow environment gets the same arrivals as a fast one
//! instead of fewer (no coordinated omission). Each request is one HTTP/1.1 exchange on
//! its own connection; its latency runs from the connect to the end of the answer. A
//! status of 500 or more, no answer within the timeout, an answer of more than
//! [`MAX_ANSWER`] bytes (never held whole: only its status line is kept) or a failed
//! connection is an error. Endpoints are `METHOD PATH` without the query string.
//!
//! An HTTP client crate would bring dozens of dependencies for a request line, a few
//! headers and a body, as with the health checks (`sys::health`): this speaks HTTP/1.1
//! over a tokio `TcpStream`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path and query.
    pub path: String,
    pub body: Option<String>,
}

impl Request {
    /// `METHOD PATH`, without the query: what latencies and errors are grouped by.
    pub fn endpoint(&self) -> String {
        format!("{} {}", self.method, self.path.split('?').next().unwrap_or(&self.path))
    }
}

/// A malformed line of a request file (1-based).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct RequestFileError {
    pub line: usize,
    pub message: String,
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Reads a request file: `METHOD PATH [BODY]` a line, `#` comments, blank lines.
pub fn parse_requests(text: &str) -> Result<Vec<Request>, RequestFileError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |message: String| RequestFileError { line: i + 1, message };
        let mut parts = line.splitn(3, char::is_whitespace);
        let method = parts.next().unwrap_or_default().to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(err(format!("`{method}` is not an HTTP method ({})", METHODS.join(", "))));
        }
        let path = parts.next().unwrap_or_default().to_string();
        if !path.starts_with('/') || path.chars().any(|c| c.is_control()) {
            return Err(err(format!("`{path}` is not a path (it must start with `/`)")));
        }
        let body = parts.next().map(|b| b.trim().to_string()).filter(|b| !b.is_empty());
        out.push(Request { method, path, body });
    }
    if out.is_empty() {
        return Err(RequestFileError { line: 0, message: "the file holds no request".into() });
    }
    Ok(out)
}

/// What one request came to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub endpoint: String,
    /// From the connect to the end of the answer (to the timeout when there was none).
    pub latency_ms: f64,
    pub status: Option<u16>,
    pub error: bool,
}

/// Everything one environment was sent, by endpoint: latencies (ms) and whether each
/// request failed (1.0) or not (0.0), in the order they were sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub latencies: BTreeMap<String, Vec<f64>>,
    pub errors: BTreeMap<String, Vec<f64>>,
}

impl Measured {
    fn add(&mut self, s: &Sample) {
        self.latencies.entry(s.endpoint.clone()).or_default().push(s.latency_ms);
        self.errors.entry(s.endpoint.clone()).or_default().push(if s.error { 1.0 } else { 0.0 });
    }

    /// How many requests were sent.
    pub fn requests(&self) -> usize {
        self.errors.values().map(Vec::len).sum()
    }
}

/// Where an environment answers: `http://HOST:PORT` (a path after it is ignored).
pub fn target(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (authority, 80),
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// One exchange: its status, or why there is none.
async fn exchange(host: &str, port: u16, req: &Request) -> std::io::Result<u16> {
    let mut s = TcpStream::connect((host, port)).await?;
    let body = req.body.as_deref().unwrap_or("");
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: rehearse-compare\r\nConnection: close\r\n",
        req.method, req.path
    );
    if req.body.is_some() {
        let kind = if body.starts_with('{') || body.starts_with('[') { "application/json" } else { "text/plain" };
        head.push_str(&format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    // The whole answer (Connection: close): its end is the latency's end. Only its
    // start is kept (the status line); the rest is counted, up to MAX_ANSWER.
    let mut head = Vec::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > MAX_ANSWER {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, answer_too_long()));
        }
        let room = 256usize.saturating_sub(head.len());
        head.extend_from_slice(&buf[..n.min(room)]);
    }
    let line = String::from_utf8_lossy(&head).into_owned();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

/// The most of one answer the replay reads: a bigger one is an error of its request
/// (what a release answers is not rehearse's to trust with its memory or its time).
pub const MAX_ANSWER: u64 = 64 << 20;

fn answer_too_long() -> String {
    format!("an answer of more than {} MiB, the most rehearse reads", MAX_ANSWER >> 20)
}

/// The most a request file may hold.
pub const MAX_REQUEST_FILE: u64 = 16 << 20;

/// A request file's requests, read (at most [`MAX_REQUEST_FILE`]) and parsed.
pub fn read_request_file(path: &std::path::Path) -> Result<Vec<Request>, String> {
    use std::io::Read;
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(MAX_REQUEST_FILE + 1).read_to_string(&mut text));
    if let Err(e) = read {
        return Err(format!("cannot read the request file {}: {e}", path.display()));
    }
    if text.len() as u64 > MAX_REQUEST_FILE {
        return Err(format!("the request file {} is larger than {} MiB", path.display(), MAX_REQUEST_FILE >> 20));
    }
    parse_requests(&text).map_err(|e| format!("the request file {}: {e}", path.display()))
}

/// Sends `requests` to every target at `rate` a second for `duration`, on one schedule;
/// what each target was measured at, in the targets' order.
pub async fn replay(
    requests: &[Request],
    targets: &[(String, u16)],
    rate: f64,
    duration: Duration,
    timeout: Duration,
) -> Vec<Measured> {
    let total = (rate * duration.as_secs_f64()).floor() as usize;
    let period = Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE));
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
        let req = requests[i % requests.len()].clone();
        for (t, (host, port)) in targets.iter().enumerate() {
            let (req, host, port) = (req.clone(), host.clone(), *port);
            tasks.spawn(async move { (t, i, one(&req, &host, port, timeout).await) });
        }
    }
    let mut done: Vec<(usize, usize, Sample)> = Vec::with_capacity(total * targets.len());
    while let Some(r) = tasks.join_next().await {
        if let Ok(x) = r {
            done.push(x);
        }
    }
    // In the order sent, per target.
    done.sort_by_key(|(t, i, _)| (*t, *i));
    let mut out = vec![Measured::default(); targets.len()];
    for (t, _, s) in &done {
        out[*t].add(s);
    }
    out
}

/// One request sent and what it came to.
async fn one(req: &Request, host: &str, port: u16, timeout: Duration) -> Sample {
    let begun = Instant::now();
    let r = tokio::time::timeout(timeout, exchange(host, port, req)).await;
    let latency_ms = begun.elapsed().as_secs_f64() * 1000.0;
    let (status, error) = match r {
        Ok(Ok(code)) => (Some(code), code >= 500),
        Ok(Err(_)) | Err(_) => (None, true),
    };
    Sample { endpoint: req.endpoint(), latency_ms, status, error }
}

/// A request of a load that runs until it is stopped: when it was sent, ms from the
/// load's start, and what it came to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    pub sent_ms: u64,
    #[serde(flatten)]
    pub sample: Sample,
}

/// The most requests a load that runs until stopped keeps (an hour at 50 a second);
/// later ones are still sent.
pub const MAX_TIMED: usize = 180_000;

/// Sends `requests` at `rate` a second, on the same open-loop schedule as [`replay`],
/// until `stop` turns true, each to where `target` points when it leaves (a deploy
/// moves the load from the old release's instance to the new one's, as a load
/// balancer would); then waits for the answers still due. In the order sent.
pub async fn replay_until(
    requests: &[Request],
    target: tokio::sync::watch::Receiver<(String, u16)>,
    rate: f64,
    timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Timed> {
    let period = Duration::from_secs_f64(1.0 / rate.max(f64::MIN_POSITIVE));
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: usize = 0;
    while !*stop.borrow() && !requests.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep_until(start + period.mul_f64(i as f64)) => {}
            r = stop.changed() => {
                if r.is_err() {
                    break;
                }
                continue;
            }
        }
        let req = requests[i % requests.len()].clone();
        let (host, port) = target.borrow().clone();
        let sent_ms = start.elapsed().as_millis() as u64;
        tasks.spawn(async move { (i, Timed { sent_ms, sample: one(&req, &host, port, timeout).await }) });
        i += 1;
    }
    let mut done: Vec<(usize, Timed)> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(x) = r {
            if done.len() < MAX_TIMED {
                done.push(x);
            }
        }
    }
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requests sent in `[from_ms, to_ms)`, by endpoint.
    fn window(timed: &[Timed], from_ms: u64, to_ms: u64) -> Measured {
        let mut m = Measured::default();
        for t in timed.iter().filter(|t| t.sent_ms >= from_ms && t.sent_ms < to_ms) {
            m.add(&t.sample);
        }
        m
    }

    #[test]
    fn request_files_are_read_and_refused_with_their_line() {
        let text = "# from the access log\nGET /products?page=2\n\npost /orders {\"product\": 3}\nDELETE /cart/7\n";
        let r = parse_requests(text).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].endpoint(), "GET /products");
        assert_eq!((r[1].method.as_str(), r[1].body.as_deref()), ("POST", Some("{\"product\": 3}")));
        assert_eq!(parse_requests("GET /\nFETCH /x\n").unwrap_err().line, 2);
        assert_eq!(parse_requests("GET products\n").unwrap_err().line, 1);
        assert!(parse_requests("# nothing\n").is_err());
        assert_eq!(target("http://127.0.0.1:8080/x"), Some(("127.0.0.1".into(), 8080)));
        assert_eq!(target("https://example.com"), None);
    }

    /// A server answering `/slow` after `delay`, `/boom` with a 500, anything else at once.
    async fn server(delay: Duration) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if req.contains(" /slow") {
                        tokio::time::sleep(delay).await;
                    }
                    let status = if req.contains(" /boom") { "500 Internal Server Error" } else { "200 OK" };
                    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
                    s.write_all(answer.as_bytes()).await.ok();
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_load_until_stopped_follows_its_target_and_keeps_when_each_request_left() {
        let (a, b) = (server(Duration::from_millis(1)).await, server(Duration::from_millis(1)).await);
        let requests = parse_requests("GET /fast\nPOST /boom {}\n").unwrap();
        let (to, target) = tokio::sync::watch::channel(("127.0.0.1".to_string(), a));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let load =
            tokio::spawn(async move { replay_until(&requests, target, 50.0, Duration::from_secs(5), stopped).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Moved to the second server; then to a port nothing listens on.
        to.send(("127.0.0.1".to_string(), b)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().port();
        drop(closed);
        to.send(("127.0.0.1".to_string(), dead)).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(true).unwrap();
        let timed = load.await.unwrap();
        assert!((40..=50).contains(&timed.len()), "50 a second for 0.9 s: {}", timed.len());
        assert!(timed.windows(2).all(|w| w[0].sent_ms <= w[1].sent_ms), "in the order sent");
        let early = window(&timed, 0, 250);
        assert_eq!(early.errors["GET /fast"].iter().sum::<f64>(), 0.0);
        assert!(early.errors["POST /boom"].iter().all(|e| *e == 1.0), "a 500 is an error");
        // Nothing answers on the last port: every request sent there failed.
        let late = window(&timed, 650, u64::MAX);
        assert!(late.requests() >= 8 && late.errors.values().flatten().all(|e| *e == 1.0), "{late:?}");
        let middle = window(&timed, 350, 550);
        assert!(middle.errors["GET /fast"].iter().all(|e| *e == 0.0), "{middle:?}");
    }

    #[tokio::test]
    async fn both_environments_get_the_same_requests_on_one_schedule() {
        let (a, b) = (server(Duration::from_millis(1)).await, server(Duration::from_millis(60)).await);
        let requests = parse_requests("GET /fast\nGET /slow\nPOST /boom {}\nGET /fast?x=1\n").unwrap();
        let targets = [("127.0.0.1".to_string(), a), ("127.0.0.1".to_string(), b)];
        let t = Instant::now();
        let m = replay(&requests, &targets, 40.0, Duration::from_secs(1), Duration::from_secs(5)).await;
        assert!(t.elapsed() >= Duration::from_millis(975), "a fixed schedule over the duration");
        for (side, measured) in m.iter().enumerate() {
            assert_eq!(measured.requests(), 40, "side {side}");
            assert_eq!(measured.latencies["GET /fast"].len(), 20);
            assert_eq!(measured.errors["POST /boom"], vec![1.0; 10]);
            assert!(measured.errors["GET /slow"].iter().all(|e| *e == 0.0));
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        assert!(median(&m[1].latencies["GET /slow"]) >= 60.0, "{:?}", m[1].latencies["GET /slow"]);
        assert!(median(&m[0].latencies["GET /slow"]) < 60.0);
        // A closed port: every request an error, none lost.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let m = replay(
            &requests,
            &[("127.0.0.1".into(), closed)],
            20.0,
            Duration::from_millis(500),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(m[0].requests(), 10);
        assert!(m[0].errors.values().flatten().all(|e| *e == 1.0));
    }
}
