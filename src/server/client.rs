//! The server's API from the other side: the CLI pointed at a server (`--server URL`,
//! `$REHEARSE_SERVER`) asks it with a personal token (`$REHEARSE_TOKEN`: never in a URL
//! or an argument) for a rehearsal, a dry run or a comparison, follows its events and
//! ends with the run's exit code; a dry run's owner reveals, extends and destroys it.
//! The caller holds no cloud credentials.

use axum::body::Bytes;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The most bytes of an answer read whole (the request's record, a refusal).
const MAX_ANSWER: usize = 1 << 20;
/// The longest event line shown.
const MAX_LINE: usize = 64 * 1024;

/// Why asking the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0} is not an http:// or https:// URL")]
    Url(String),
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server refused: its status and its reason.
    #[error("the server refused ({status}): {why}")]
    Refused { status: StatusCode, why: String },
    #[error("the server's answer is not what rehearse serve sends: {0}")]
    Garbled(String),
}

/// How a request ended (or, a dry run, was kept).
pub struct Requested {
    pub id: String,
    pub exit_code: i32,
    pub verdict: Option<String>,
    pub error: Option<String>,
    /// A kept dry run's expiry.
    pub kept_until: Option<String>,
    /// A comparison's id (its page: `/compares/ID/compare.html`).
    pub comparison: Option<String>,
}

impl Requested {
    /// From the request's record as the server sends it.
    fn of(id: &str, record: &serde_json::Value) -> Requested {
        let state = &record["state"];
        let text = |k: &str| state[k].as_str().map(crate::sys::text::printable);
        let verdict = text("verdict");
        let kept_until = (state["state"] == "kept").then(|| text("expires_at")).flatten();
        let exit_code = match state["exit_code"].as_i64() {
            Some(c) => i32::try_from(c).unwrap_or(crate::exit::BUILD_FAILED),
            // Kept: its build's verdict.
            None if verdict.as_deref() == Some("passed") => crate::exit::PASSED,
            None if kept_until.is_some() => crate::exit::SUITES_FAILED,
            None => crate::exit::BUILD_FAILED,
        };
        Requested {
            id: id.to_string(),
            exit_code,
            verdict,
            error: text("error"),
            kept_until,
            comparison: text("comparison").filter(|c| crate::engine::requests::valid_comparison_id(c)),
        }
    }
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// A server, asked with a personal token.
pub struct Remote {
    base: String,
    token: String,
    client: Client<Https, Full<Bytes>>,
}

impl Remote {
    pub fn new(server: &str, token: &str) -> Result<Remote, ClientError> {
        let base = server.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Url(crate::sys::text::printable(server)));
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| ClientError::Unreachable { url: "(TLS roots)".into(), source: Box::new(e) })?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(Remote { base: base.to_string(), token: token.to_string(), client })
    }

    /// The server's URL, as given.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// A GET of `path`'s JSON.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        call(&self.client, &self.base, Method::GET, path, &self.token, None).await
    }

    /// A GET of `path` with the token (and `accept`): its URL and the answer to come.
    fn get_raw(
        &self,
        path: &str,
        accept: Option<&'static str>,
    ) -> Result<(String, hyper_util::client::legacy::ResponseFuture), ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = Request::get(&url).header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| ClientError::Url(e.to_string()))?;
        Ok((url, self.client.request(req)))
    }

    /// A GET of `path`'s text (at most 1 MiB).
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let (url, answer) = self.get_raw(path, None)?;
        let res = answer.await.map_err(|e| ClientError::Unreachable { url, source: Box::new(e) })?;
        let status = res.status();
        let bytes = http_body_util::Limited::new(res.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ClientError::Garbled(format!("the answer to {path}: {e}")))?
            .to_bytes();
        if !status.is_success() {
            return Err(ClientError::Refused { status, why: path.to_string() });
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A POST of `body` to `path`; the answer's JSON.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        call(&self.client, &self.base, Method::POST, path, &self.token, Some(body.to_string())).await
    }

    /// Asks for a request (`path`: `/api/v1/rehearsals`, `/api/v1/dry-runs`,
    /// `/api/v1/comparisons`); its id.
    pub async fn ask(&self, path: &str, body: &serde_json::Value) -> Result<String, ClientError> {
        let asked = self.post(path, body).await?;
        asked["id"]
            .as_str()
            .filter(|i| crate::engine::requests::valid_id(i))
            .map(str::to_string)
            .ok_or_else(|| ClientError::Garbled("no request id in the answer".into()))
    }

    /// Follows request `id`'s events, each line said through `say` as it arrives, until
    /// its run ends (or, a dry run, is kept); how it ended.
    pub async fn follow(&self, id: &str, say: &mut dyn FnMut(&str)) -> Result<Requested, ClientError> {
        let (url, answer) = self.get_raw(&format!("/api/v1/requests/{id}/events"), Some("text/event-stream"))?;
        let res = answer.await.map_err(|e| ClientError::Unreachable { url: url.clone(), source: Box::new(e) })?;
        if !res.status().is_success() {
            return Err(ClientError::Refused { status: res.status(), why: "the event stream".into() });
        }
        let mut body = res.into_body();
        let mut pending: Vec<u8> = Vec::new();
        'stream: while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Unreachable { url: url.clone(), source: Box::new(e) })?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if line == "event: end" {
                    break 'stream;
                }
                if let Some(d) = line.strip_prefix("data: ") {
                    say(&crate::sys::text::printable(d));
                }
            }
            if pending.len() > MAX_LINE {
                pending.clear();
            }
        }
        let record = self.get(&format!("/api/v1/requests/{id}")).await?;
        Ok(Requested::of(id, &record))
    }
}

async fn call(
    client: &Client<Https, Full<Bytes>>,
    base: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> Result<serde_json::Value, ClientError> {
    let url = format!("{base}{path}");
    let mut req = Request::builder().method(method).uri(&url).header(header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req =
        req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| ClientError::Url(e.to_string()))?;
    let res =
        client.request(req).await.map_err(|e| ClientError::Unreachable { url: url.clone(), source: Box::new(e) })?;
    let status = res.status();
    let limited = http_body_util::Limited::new(res.into_body(), MAX_ANSWER);
    let bytes =
        limited.collect().await.map_err(|e| ClientError::Garbled(format!("the answer to {path}: {e}")))?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Garbled(format!("the answer to {path} is not JSON ({status}): {e}")))?;
    if !status.is_success() {
        let why = value["error"].as_str().map(crate::sys::text::printable).unwrap_or_else(|| status.to_string());
        return Err(ClientError::Refused { status, why });
    }
    Ok(value)
}
