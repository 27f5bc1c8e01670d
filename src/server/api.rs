//! The HTTP API (JSON under `/api/v1/`): what the portal's pages and scripts call.
//! Every answer carries a strict Content-Security-Policy and `no-store`; bodies are
//! capped; every request but `/healthz` is identified, and every decision audited.
//!
//! - `GET  /api/v1/session`: who you are, and the CSRF token your changes send back;
//! - `GET  /api/v1/environments`: the descriptions offered;
//! - `POST /api/v1/rehearsals` `{"environment", "release"}`: 202 and the request;
//! - `POST /api/v1/dry-runs` `{"environment", "release", "ttl"?}`: 202 and the request;
//!   its run is kept for its owner (`ttl` within the rule's and the description's
//!   `max_ttl`);
//! - `POST /api/v1/comparisons` `{"environment", "baseline", "candidate"}`: 202 and
//!   the request; its compare.html at `/compares/ID/compare.html` when finished;
//! - `GET  /api/v1/requests`, `GET /api/v1/requests/ID`: the queue, one request;
//! - `POST /api/v1/requests/ID/reveal`: a kept dry run's connection, secrets included
//!   (its owner);
//! - `POST /api/v1/requests/ID/extend` `{"by"}`, `POST /api/v1/requests/ID/destroy`
//!   (202): its owner's;
//! - `GET  /api/v1/requests/ID/events`: its run's events (Server-Sent Events), from
//!   the first, then live, and `end` when it has ended;
//! - `GET  /api/v1/requests/ID/summary`: its summary in Markdown (a CI step summary);
//! - `GET  /api/v1/requests/ID/log`: the end of its run's newest log (redacted);
//! - `GET  /api/v1/stages`: the offered environments' stages, as `stage status` has them;
//! - `GET  /api/v1/audit?limit=N`: the newest audit entries (admins);
//! - `GET  /api/v1/schema`: the JSON Schema of a request's record and of each body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream as FutStream;
use serde::Deserialize;
use serde_json::json;

use super::audit::{self, Decision, Entry};
use super::auth::{self, Who};
use super::queue::Line;
use super::Shared;
use crate::engine::requests::{self, Request};
use tokio::sync::broadcast::error::RecvError;

pub(crate) mod ask;
mod owner;

/// The most bytes of a request's body.
pub(crate) const MAX_BODY: usize = 16 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let app = App { shared, changes: Arc::default() };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/hooks/github", post(super::github::hook))
        .route("/hooks/slack", post(super::slack::command))
        .route("/hooks/slack/actions", post(super::slack::action))
        .route("/hooks/{name}", post(super::hooks::generic))
        .route("/api/v1/session", get(session))
        .route("/api/v1/environments", get(environments))
        .route("/api/v1/rehearsals", post(ask::rehearse))
        .route("/api/v1/dry-runs", post(ask::dry_run))
        .route("/api/v1/comparisons", post(ask::comparison))
        .route("/api/v1/requests", get(list))
        .route("/api/v1/requests/{id}/reveal", post(owner::reveal))
        .route("/api/v1/requests/{id}/extend", post(owner::extend))
        .route("/api/v1/requests/{id}/destroy", post(owner::destroy))
        .route("/api/v1/requests/{id}", get(one))
        .route("/api/v1/requests/{id}/events", get(events))
        .route("/api/v1/requests/{id}/log", get(log_tail))
        .route("/api/v1/requests/{id}/summary", get(summary))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/stages", get(stages))
        .route("/api/v1/schema", get(schema))
        .route("/", get(super::portal::index))
        .route("/requests/{id}", get(super::portal::request))
        .route("/audit", get(super::portal::audit))
        .route("/runs/{run_id}/report.html", get(super::portal::report))
        .route("/compares/{id}/compare.html", get(super::portal::compare_page))
        .route("/static/portal.js", get(super::portal::script))
        .route("/static/portal.css", get(super::portal::style))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(app)
}

#[derive(Clone)]
pub(crate) struct App {
    pub(crate) shared: Arc<Shared>,
    /// User → when their recent changes were asked (the rate limit's window).
    changes: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

/// What every answer carries: nothing of it is cached, framed or sniffed, and a page
/// runs only the server's own scripts.
async fn secure_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    // A page with a policy of its own keeps it (a report: inline styles, no script).
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

/// A refusal: its status and why, as JSON.
pub(super) fn refusal(status: StatusCode, why: &str) -> Response {
    (status, Json(json!({ "error": why }))).into_response()
}

/// What a handler knows of the request it answers, for the audit log.
pub(crate) struct Asked {
    pub(crate) peer: SocketAddr,
    pub(crate) method: Method,
    pub(crate) path: String,
}

impl App {
    pub(crate) async fn audit(&self, asked: &Asked, user: Option<&str>, decision: Decision, why: &str) {
        let entry = Entry {
            at: chrono::Utc::now(),
            user: user.map(str::to_string),
            peer: asked.peer.to_string(),
            method: asked.method.to_string(),
            path: asked.path.chars().take(512).collect(),
            decision,
            why: why.chars().take(1024).collect(),
        };
        audit::record(self.shared.store.as_ref(), &entry).await;
    }

    /// Who asks, or the refusal (audited).
    pub(super) async fn identify(&self, asked: &Asked, headers: &HeaderMap) -> Result<Who, Response> {
        match auth::identify(&self.shared.config, asked.peer, headers) {
            Ok(who) => Ok(who),
            Err(why) => {
                self.audit(asked, None, Decision::Refused, &why).await;
                Err(refusal(StatusCode::UNAUTHORIZED, &why))
            }
        }
    }

    /// A refusal of `who`'s request, audited with why.
    pub(crate) async fn refuse(&self, asked: &Asked, who: &Who, status: StatusCode, why: String) -> Response {
        self.audit(asked, Some(&who.user), Decision::Refused, &why).await;
        refusal(status, &why)
    }

    /// A change's body, once `who` may ask for a change ([`App::check_change`]) and the
    /// body is one; the refusal (audited) otherwise.
    pub(super) async fn change_body<T>(
        &self,
        asked: &Asked,
        who: &Who,
        headers: &HeaderMap,
        body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    ) -> Result<T, Response> {
        self.check_change(asked, who, headers).await?;
        match body {
            Ok(Json(b)) => Ok(b),
            Err(e) => Err(self.refuse(asked, who, e.status(), crate::sys::text::printable(&e.body_text())).await),
        }
    }

    /// Whether `who` may ask for a change: the CSRF token a browser must send, and the
    /// rate limit; the refusal (audited) when not.
    pub(super) async fn check_change(&self, asked: &Asked, who: &Who, headers: &HeaderMap) -> Result<(), Response> {
        if let Err(why) = auth::check_csrf(&self.shared.secret, who, headers) {
            self.audit(asked, Some(&who.user), Decision::Refused, &why).await;
            return Err(refusal(StatusCode::FORBIDDEN, &why));
        }
        let limited = {
            let mut changes = self.changes.lock().expect("not poisoned");
            let recent = changes.entry(who.user.clone()).or_default();
            recent.retain(|t| t.elapsed().as_secs() < 60);
            recent.push(Instant::now());
            recent.len() > self.shared.config.changes_per_minute
        };
        if limited {
            let why = format!(
                "more than {} changes in a minute: wait and ask again (changes_per_minute)",
                self.shared.config.changes_per_minute
            );
            self.audit(asked, Some(&who.user), Decision::Refused, &why).await;
            return Err(refusal(StatusCode::TOO_MANY_REQUESTS, &why));
        }
        Ok(())
    }
}

/// A request's caller, identified (the extractor every handler but `/healthz` and the
/// static files takes): a request that says no one, or someone it may not, is refused
/// here, and the refusal audited.
pub(super) struct Caller {
    pub who: Who,
    pub asked: Asked,
}

impl axum::extract::FromRequestParts<App> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, app: &App) -> Result<Caller, Response> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied() else {
            return Err(refusal(StatusCode::INTERNAL_SERVER_ERROR, "no peer address (a bug: please report it)"));
        };
        let asked = Asked { peer, method: parts.method.clone(), path: parts.uri.path().to_string() };
        let who = app.identify(&asked, &parts.headers).await?;
        Ok(Caller { who, asked })
    }
}

async fn session(State(app): State<App>, Caller { who, asked }: Caller) -> Response {
    app.audit(&asked, Some(&who.user), Decision::Allowed, "session").await;
    let admin = app.shared.config.admins.contains(&who.user);
    Json(json!({ "user": who.user, "admin": admin, "csrf": auth::csrf_token(&app.shared.secret, &who.user) }))
        .into_response()
}

/// The environments offered: `NAME.yaml` in the directory, by name's grammar.
pub(super) fn offered(shared: &Shared) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&shared.config.environments)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".yaml")).map(str::to_string))
        .filter(|n| requests::valid_environment(n))
        .collect();
    names.sort();
    names
}

async fn environments(State(app): State<App>, Caller { who, asked }: Caller) -> Response {
    app.audit(&asked, Some(&who.user), Decision::Allowed, "list environments").await;
    let list: Vec<serde_json::Value> = offered(&app.shared)
        .into_iter()
        .map(|name| {
            let may = app.shared.config.rule(&name).may_rehearse(&who.user, &name).is_ok();
            json!({ "name": name, "may_rehearse": may })
        })
        .collect();
    Json(json!({ "environments": list })).into_response()
}

async fn list(State(app): State<App>, Caller { who, asked }: Caller) -> Response {
    match requests::list_known(app.shared.store.as_ref(), &app.shared.finished).await {
        Ok((found, refused)) => {
            app.audit(&asked, Some(&who.user), Decision::Allowed, "list requests").await;
            let all: Vec<serde_json::Value> = found.iter().map(|r| public(&r.request)).collect();
            let refused: Vec<String> = refused.iter().map(|e| e.to_string()).collect();
            Json(json!({ "requests": all, "refused": refused, "running": app.shared.queue.running_now() }))
                .into_response()
        }
        Err(e) => refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn one(State(app): State<App>, Path(id): Path<String>, Caller { who, asked }: Caller) -> Response {
    if !requests::valid_id(&id) {
        return refusal(StatusCode::NOT_FOUND, "no such request");
    }
    match requests::read(app.shared.store.as_ref(), &id).await {
        Ok(Some(r)) => {
            app.audit(&asked, Some(&who.user), Decision::Allowed, "read request").await;
            Json(public(&r.request)).into_response()
        }
        Ok(None) => refusal(StatusCode::NOT_FOUND, "no such request"),
        Err(e) => refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn events(State(app): State<App>, Path(id): Path<String>, Caller { who, asked }: Caller) -> Response {
    if !requests::valid_id(&id) {
        return refusal(StatusCode::NOT_FOUND, "no such request");
    }
    // A request not started yet has no stream: wait for it (a watcher opens the page
    // right after asking), as long as the request exists and is not finished.
    let stream = loop {
        // Asked for before the look, so that a stream opened in between is not missed.
        let opened = app.shared.queue.opened.notified();
        if let Some(s) = app.shared.queue.stream(&id) {
            break Some(s);
        }
        match requests::read(app.shared.store.as_ref(), &id).await {
            Ok(Some(r)) if matches!(r.request.state, requests::State::Queued | requests::State::Running { .. }) => {
                // Another server's run, or a record changed behind this one: look again
                // now and then too.
                tokio::select! {
                    () = opened => {}
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
            Ok(Some(_)) => break None,
            Ok(None) => return refusal(StatusCode::NOT_FOUND, "no such request"),
            Err(e) => return refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    };
    app.audit(&asked, Some(&who.user), Decision::Allowed, "watch request").await;
    let end = || Ok(SseEvent::default().event("end").data("ended"));
    let feed: std::pin::Pin<Box<dyn FutStream<Item = Result<SseEvent, Infallible>> + Send>> = match stream {
        None => Box::pin(futures_util::stream::iter([end()])),
        Some(s) => {
            let (past, live) = s.watch();
            let past = futures_util::stream::iter(past.into_iter().map(|l| Ok(SseEvent::default().data(l))));
            let Some(live) = live else {
                // The run had ended before this watcher came.
                return Sse::new(futures_util::StreamExt::chain(past, futures_util::stream::iter([end()])))
                    .into_response();
            };
            // The state is `None` once the end was sent.
            let live = futures_util::stream::unfold(Some(live), move |rx| async move {
                let mut rx = rx?;
                Some(match rx.recv().await {
                    Ok(Line::Text(t)) => (Ok(SseEvent::default().data(t)), Some(rx)),
                    Ok(Line::End) | Err(RecvError::Closed) => (end(), None),
                    Err(RecvError::Lagged(n)) => {
                        (Ok(SseEvent::default().data(format!("({n} lines skipped)"))), Some(rx))
                    }
                })
            });
            Box::pin(futures_util::StreamExt::chain(past, live))
        }
    };
    Sse::new(feed).keep_alive(KeepAlive::default()).into_response()
}

/// A request as anyone identified may see it: where it is told (a callback's URL, a
/// Slack message's response URL: capabilities) is said by kind only.
pub(super) fn public(r: &Request) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(n) = v.get_mut("notify").and_then(|n| n.as_array_mut()) {
        for t in n.iter_mut() {
            if let Some(o) = t.as_object_mut() {
                o.retain(|k, _| matches!(k.as_str(), "kind" | "repo" | "pull_request"));
            }
        }
    }
    v
}

/// Request `id` (from a path), or the answer that says it is not there: 404 for an id
/// that is not one or no such request, 503 when the store does not answer.
pub(super) async fn request_of(app: &App, id: &str) -> Result<requests::Request, Response> {
    if !requests::valid_id(id) {
        return Err(refusal(StatusCode::NOT_FOUND, "no such request"));
    }
    match requests::read(app.shared.store.as_ref(), id).await {
        Ok(Some(r)) => Ok(r.request),
        Ok(None) => Err(refusal(StatusCode::NOT_FOUND, "no such request")),
        Err(e) => Err(refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())),
    }
}

/// A finished request's summary in Markdown, for a CI job's step summary: its run's
/// summary.md, or for a comparison its outcome and page.
async fn summary(State(app): State<App>, Path(id): Path<String>, Caller { who, asked }: Caller) -> Response {
    let r = match request_of(&app, &id).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    app.audit(&asked, Some(&who.user), Decision::Allowed, "summary").await;
    let base = app.shared.public_url.trim_end_matches('/');
    let text = match (&r.state, super::notify::report_of(&app.shared, &r)) {
        (_, Some((url, Some(md)))) => format!("{md}\n[The report]({url}) · [the request]({base}/requests/{id})\n"),
        (requests::State::Finished { comparison: Some(c), verdict, error, .. }, _) => format!(
            "## rehearse compare: {}\n\n{}\n\n[The comparison]({base}/compares/{c}/compare.html)\n",
            verdict.map(|v| v.as_str()).unwrap_or("error"),
            error.as_deref().unwrap_or("")
        ),
        (state, _) => format!(
            "## rehearse: request {id} is {}\n",
            serde_json::to_value(state).ok().and_then(|v| v["state"].as_str().map(str::to_string)).unwrap_or_default()
        ),
    };
    ([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], text).into_response()
}

/// The lines of a log's end the run page shows.
const TAIL_LINES: usize = 40;
/// The most bytes of a log's end read.
const TAIL_BYTES: u64 = 64 * 1024;

/// The current step's log tail: the end of the run's most recently written log (a
/// database's, an install's, a service's or a suite's), printable and redacted.
async fn log_tail(State(app): State<App>, Path(id): Path<String>, Caller { who, asked }: Caller) -> Response {
    let request = match request_of(&app, &id).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    app.audit(&asked, Some(&who.user), Decision::Allowed, "log tail").await;
    let Some(run_id) = request.run_id() else {
        return Json(json!({ "file": null, "lines": [] })).into_response();
    };
    let dir = crate::sys::state::run_dir(&app.shared.state_root, run_id);
    // A kept dry run's password never reaches a page through a service's log.
    if let Ok(c) = crate::engine::connection::Connection::read(&dir, run_id) {
        for d in c.databases.values() {
            crate::secrets::register(&d.password);
        }
    }
    let suites = std::fs::read_dir(dir.join("suites")).into_iter().flatten().flatten().map(|e| e.path());
    let newest = std::iter::once(dir.join("logs"))
        .chain(suites)
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    let Some((_, path)) = newest else {
        return Json(json!({ "file": null, "lines": [] })).into_response();
    };
    let lines = tail(&path).unwrap_or_default();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Json(json!({ "file": crate::sys::text::printable(&name), "lines": lines })).into_response()
}

/// The last [`TAIL_LINES`] of `path` (its last [`TAIL_BYTES`] read, through a
/// descriptor that follows no link), each printable, redacted and at most 512
/// characters.
fn tail(path: &std::path::Path) -> std::io::Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
    let mut bytes = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    Ok(all[all.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| crate::sys::text::printable(&crate::secrets::redact(l)).chars().take(512).collect())
        .collect())
}

/// The API's JSON, described: a request's record (what `/api/v1/requests` lists) and
/// the body of each POST (JSON Schema, from the types the server reads and writes).
async fn schema(State(app): State<App>, Caller { who, asked }: Caller) -> Response {
    app.audit(&asked, Some(&who.user), Decision::Allowed, "schema").await;
    Json(json!({
        "request": schemars::schema_for!(Request),
        "bodies": {
            "POST /api/v1/rehearsals": schemars::schema_for!(ask::RehearseBody),
            "POST /api/v1/dry-runs": schemars::schema_for!(ask::DryRunBody),
            "POST /api/v1/comparisons": schemars::schema_for!(ask::CompareBody),
            "POST /api/v1/requests/ID/extend": schemars::schema_for!(owner::ExtendBody),
        },
        "refusal": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
    }))
    .into_response()
}

async fn stages(State(app): State<App>, Caller { who, asked }: Caller) -> Response {
    app.audit(&asked, Some(&who.user), Decision::Allowed, "list stages").await;
    let shown = super::stages::all(&app.shared, &offered(&app.shared)).await;
    Json(json!({ "stages": shown })).into_response()
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn audit_log(State(app): State<App>, Query(q): Query<Limit>, Caller { who, asked }: Caller) -> Response {
    if !app.shared.config.admins.contains(&who.user) {
        let why = format!("{} is not an administrator (admins)", who.user);
        app.audit(&asked, Some(&who.user), Decision::Refused, &why).await;
        return refusal(StatusCode::FORBIDDEN, &why);
    }
    app.audit(&asked, Some(&who.user), Decision::Allowed, "read the audit log").await;
    match audit::newest(app.shared.store.as_ref(), q.limit.unwrap_or(100).min(1000)).await {
        Ok(entries) => Json(json!({ "entries": entries })).into_response(),
        Err(e) => refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
