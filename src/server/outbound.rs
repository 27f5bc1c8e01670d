//! The one client for every call the server makes to another service (a webhook's
//! callback; GitHub's and Slack's APIs): a timeout on each call, retries on what a
//! retry can mend (5xx, 429, GitHub's rate-limited 403, a connection refused or reset)
//! honouring `Retry-After` and `X-RateLimit-Reset`, an audit record for each attempt,
//! and never a header's value in a log or a record (they carry the tokens).
//!
//! Retries here are few and quick (a flake); a longer outage is the caller's to wait out
//! ([`Outcome::Later`] says when), so that nothing blocks a task for long.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::audit::{self, Decision, Entry};
use crate::engine::store::ObjectStore;

/// The longest one call may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The most bytes of an answer read.
const MAX_ANSWER: usize = 1 << 20;
/// Attempts within one call before the caller is told to come back later.
const ATTEMPTS: u32 = 3;
/// The longest wait between two of those attempts; a longer `Retry-After` is the caller's.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(2);

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// One call: what is sent.
pub(crate) struct Call<'a> {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Vec<u8>,
    /// What the call is for, in the audit log (`github: comment on ops/shop#12`).
    pub what: &'a str,
}

/// How a call ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Answered 2xx: its status and body.
    Done { status: StatusCode, body: Bytes },
    /// Not now (a 5xx, a rate limit, the service unreachable): try again after `after`.
    Later { after: Duration, why: String },
    /// Refused for good (a 4xx that is not a rate limit): its status and body.
    Refused { status: StatusCode, body: Bytes },
}

/// The client.
pub(crate) struct Outbound {
    client: Client<Https, Full<Bytes>>,
}

impl Outbound {
    pub(crate) fn new() -> Result<Outbound, std::io::Error> {
        let https =
            hyper_rustls::HttpsConnectorBuilder::new().with_native_roots()?.https_or_http().enable_http1().build();
        Ok(Outbound { client: Client::builder(TokioExecutor::new()).build(https) })
    }

    /// Sends `call`, retrying a flake at once (up to [`ATTEMPTS`]); each attempt
    /// audited in `store`.
    pub(crate) async fn send(&self, store: &dyn ObjectStore, call: &Call<'_>) -> Outcome {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.once(call).await;
            let said = match &outcome {
                Outcome::Done { status, .. } => format!("{}: {status}", call.what),
                Outcome::Refused { status, body } => format!(
                    "{}: refused, {status}: {}",
                    call.what,
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ),
                Outcome::Later { after, why } => {
                    format!("{}: {why}; again in {} s", call.what, after.as_secs_f64().ceil())
                }
            };
            let decision = if matches!(outcome, Outcome::Done { .. }) { Decision::Allowed } else { Decision::Refused };
            let entry = Entry {
                at: chrono::Utc::now(),
                user: Some("rehearse".into()),
                peer: "outbound".into(),
                method: call.method.to_string(),
                // The URL's scheme and host only: a path or a query may be a capability
                // (Slack's response URLs are), and user info a password.
                path: origin(&call.url),
                decision,
                why: crate::sys::text::printable(&said).chars().take(1024).collect(),
            };
            audit::record(store, &entry).await;
            match outcome {
                Outcome::Later { after, .. } if attempt < ATTEMPTS && after <= MAX_INLINE_WAIT => {
                    tokio::time::sleep(after).await;
                }
                other => return other,
            }
        }
    }

    async fn once(&self, call: &Call<'_>) -> Outcome {
        let mut req = Request::builder().method(call.method.clone()).uri(&call.url);
        for (k, v) in &call.headers {
            req = req.header(k, v);
        }
        if !call.headers.iter().any(|(k, _)| k == header::USER_AGENT) {
            req = req.header(header::USER_AGENT, concat!("rehearse/", env!("CARGO_PKG_VERSION")));
        }
        let req = match req.body(Full::new(Bytes::from(call.body.clone()))) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Refused {
                    status: StatusCode::BAD_REQUEST,
                    body: Bytes::from(format!("not a request: {e}")),
                }
            }
        };
        let answered = tokio::time::timeout(TIMEOUT, async {
            let res = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let headers = res.headers().clone();
            let body = http_body_util::Limited::new(res.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, headers, body))
        })
        .await;
        let (status, headers, body) = match answered {
            Err(_) => return Outcome::Later { after: Duration::from_secs(5), why: "no answer in 20 s".into() },
            Ok(Err(e)) => return Outcome::Later { after: Duration::from_secs(1), why: format!("unreachable: {e}") },
            Ok(Ok(a)) => a,
        };
        if status.is_success() {
            return Outcome::Done { status, body };
        }
        let header_secs =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let retry_after = header_secs("retry-after").map(Duration::from_secs);
        // GitHub's rate limits: 429, or 403 with no requests left (the primary limit,
        // its reset an epoch second) or with Retry-After (a secondary limit).
        let exhausted = header_secs("x-ratelimit-remaining") == Some(0);
        let reset = header_secs("x-ratelimit-reset").map(|at| {
            let now = chrono::Utc::now().timestamp().max(0) as u64;
            Duration::from_secs(at.saturating_sub(now).max(1))
        });
        let limited = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::FORBIDDEN && (exhausted || retry_after.is_some()));
        if limited {
            let after = retry_after.or(reset).unwrap_or(Duration::from_secs(60)).min(Duration::from_secs(3600));
            return Outcome::Later { after, why: format!("rate-limited ({status})") };
        }
        if status.is_server_error() {
            let after = retry_after.unwrap_or(Duration::from_secs(1)).min(Duration::from_secs(3600));
            return Outcome::Later { after, why: format!("{status}") };
        }
        Outcome::Refused { status, body }
    }
}

/// The next wait after `failures` failed tries, given the service's own `after`:
/// doubling from a second, at most five minutes.
pub(crate) fn backoff(failures: u32, after: Duration) -> Duration {
    let doubling = Duration::from_secs(1u64 << failures.min(8));
    after.max(doubling).min(Duration::from_secs(300))
}

/// `https://host[:port]` of `url`, without user info, path or query.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    crate::sys::text::printable(&format!("{scheme}://{host}")).chars().take(256).collect()
}
