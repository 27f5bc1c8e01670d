//! The server's API from the other side: `rehearse request ENVIRONMENT --release V
//! --server URL` asks a server for a rehearsal with a personal token
//! (`$REHEARSE_TOKEN`: never in a URL or an argument), follows its events and ends with
//! the run's exit code. The caller holds no cloud credentials.

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

/// How a requested rehearsal ended.
pub struct Requested {
    pub id: String,
    pub exit_code: i32,
    pub verdict: Option<String>,
    pub error: Option<String>,
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

fn client() -> Result<Client<Https, Full<Bytes>>, ClientError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| ClientError::Unreachable { url: "(TLS roots)".into(), source: Box::new(e) })?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Asks `server` for a rehearsal of `release` on `environment`, says each event line
/// through `say` as it arrives, and returns how it ended.
pub async fn rehearse(
    server: &str,
    token: &str,
    environment: &str,
    release: &str,
    say: &mut dyn FnMut(&str),
) -> Result<Requested, ClientError> {
    let base = server.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ClientError::Url(crate::sys::text::printable(server)));
    }
    let client = client()?;
    let body = serde_json::json!({ "environment": environment, "release": release }).to_string();
    let asked = call(&client, base, Method::POST, "/api/v1/rehearsals", token, Some(body)).await?;
    let id = asked["id"]
        .as_str()
        .filter(|i| crate::engine::requests::valid_id(i))
        .ok_or_else(|| ClientError::Garbled("no request id in the answer".into()))?;
    say(&format!("request {id} accepted: {environment} release {release}"));
    // The events, line by line, until `end`.
    let url = format!("{base}/api/v1/requests/{id}/events");
    let req = Request::get(&url)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))
        .map_err(|e| ClientError::Url(e.to_string()))?;
    let res =
        client.request(req).await.map_err(|e| ClientError::Unreachable { url: url.clone(), source: Box::new(e) })?;
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
    let record = call(&client, base, Method::GET, &format!("/api/v1/requests/{id}"), token, None).await?;
    let state = &record["state"];
    Ok(Requested {
        id: id.to_string(),
        exit_code: state["exit_code"].as_i64().map(|c| c as i32).unwrap_or(crate::exit::BUILD_FAILED),
        verdict: state["verdict"].as_str().map(crate::sys::text::printable),
        error: state["error"].as_str().map(crate::sys::text::printable),
    })
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
