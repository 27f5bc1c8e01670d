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
//! - `GET  /api/v1/audit?limit=N`: the newest audit entries (admins).

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
use crate::engine::requests::{self, Ask, Request};
use tokio::sync::broadcast::error::RecvError;

/// The most bytes of a request's body.
pub(crate) const MAX_BODY: usize = 16 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let app = App { shared, changes: Arc::default() };
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/session", get(session))
        .route("/api/v1/environments", get(environments))
        .route("/api/v1/rehearsals", post(rehearse))
        .route("/api/v1/dry-runs", post(dry_run))
        .route("/api/v1/comparisons", post(comparison))
        .route("/api/v1/requests", get(list))
        .route("/api/v1/requests/{id}/reveal", post(reveal))
        .route("/api/v1/requests/{id}/extend", post(extend))
        .route("/api/v1/requests/{id}/destroy", post(destroy))
        .route("/api/v1/requests/{id}", get(one))
        .route("/api/v1/requests/{id}/events", get(events))
        .route("/api/v1/audit", get(audit_log))
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
pub(super) struct App {
    pub(super) shared: Arc<Shared>,
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
pub(super) struct Asked {
    peer: SocketAddr,
    method: Method,
    path: String,
}

impl App {
    pub(super) async fn audit(&self, asked: &Asked, user: Option<&str>, decision: Decision, why: &str) {
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

    /// Whether `who` may ask for a change: the CSRF token a browser must send, and the
    /// rate limit; the refusal (audited) when not.
    async fn check_change(&self, asked: &Asked, who: &Who, headers: &HeaderMap) -> Result<(), Response> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RehearseBody {
    environment: String,
    release: String,
}

async fn rehearse(
    State(app): State<App>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
    body: Result<Json<RehearseBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = app.check_change(&asked, &who, &headers).await {
        return r;
    }
    let refuse = async |status, why: String| {
        app.audit(&asked, Some(&who.user), Decision::Refused, &why).await;
        refusal(status, &why)
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return refuse(e.status(), crate::sys::text::printable(&e.body_text())).await,
    };
    if !requests::valid_environment(&body.environment) || !offered(&app.shared).contains(&body.environment) {
        return refuse(StatusCode::NOT_FOUND, "no such environment".into()).await;
    }
    if !requests::valid_release(&body.release) {
        return refuse(StatusCode::BAD_REQUEST, "the release is not a release version".into()).await;
    }
    let rule = app.shared.config.rule(&body.environment);
    if let Err(why) = rule.may_rehearse(&who.user, &body.environment) {
        return refuse(StatusCode::FORBIDDEN, why).await;
    }
    let ask = Ask::Rehearse { release: body.release.clone() };
    accept(&app, &asked, &who, &body.environment, ask).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRunBody {
    environment: String,
    release: String,
    /// How long to keep it (`2h`; default: the description's `ttl`).
    #[serde(default)]
    ttl: Option<String>,
}

async fn dry_run(
    State(app): State<App>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
    body: Result<Json<DryRunBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = app.check_change(&asked, &who, &headers).await {
        return r;
    }
    let refuse = async |status, why: String| {
        app.audit(&asked, Some(&who.user), Decision::Refused, &why).await;
        refusal(status, &why)
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return refuse(e.status(), crate::sys::text::printable(&e.body_text())).await,
    };
    let env = &body.environment;
    if !requests::valid_environment(env) || !offered(&app.shared).contains(env) {
        return refuse(StatusCode::NOT_FOUND, "no such environment".into()).await;
    }
    if !requests::valid_release(&body.release) {
        return refuse(StatusCode::BAD_REQUEST, "the release is not a release version".into()).await;
    }
    let rule = app.shared.config.rule(env);
    if let Err(why) = rule.may_keep(&who.user, env) {
        return refuse(StatusCode::FORBIDDEN, why).await;
    }
    // The description's ttl and max_ttl: the default, and a bound the rule cannot raise.
    let path = app.shared.config.environments.join(format!("{env}.yaml"));
    let desc = match crate::description::load(&path, Some(&body.release)) {
        Ok(l) => l.desc,
        Err(d) => {
            let why = format!("the description of {env} does not load: {}", d.render());
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, crate::sys::text::printable(&why)).await;
        }
    };
    let ttl = match &body.ttl {
        None => desc.ttl,
        Some(text) => match crate::description::bounded_duration(
            "ttl",
            text,
            std::time::Duration::from_secs(60),
            crate::description::MAX_MAX_TTL,
        ) {
            Ok(d) => d,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, crate::sys::text::printable(&e.to_string())).await,
        },
    };
    let fmt = crate::description::format_duration;
    let (max, whose) = match rule.max_ttl {
        Some(m) if m < desc.max_ttl => (m, format!("rules.{env}.max_ttl")),
        _ => (desc.max_ttl, "the description's max_ttl".to_string()),
    };
    if ttl > max {
        let why = format!("ttl {} is over the maximum {} for dry runs of {env} ({whose})", fmt(ttl), fmt(max));
        return refuse(StatusCode::FORBIDDEN, why).await;
    }
    let ask = Ask::DryRun { release: body.release.clone(), ttl_secs: ttl.as_secs() };
    accept(&app, &asked, &who, env, ask).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareBody {
    environment: String,
    baseline: String,
    candidate: String,
}

async fn comparison(
    State(app): State<App>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
    body: Result<Json<CompareBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = app.check_change(&asked, &who, &headers).await {
        return r;
    }
    let refuse = async |status, why: String| {
        app.audit(&asked, Some(&who.user), Decision::Refused, &why).await;
        refusal(status, &why)
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return refuse(e.status(), crate::sys::text::printable(&e.body_text())).await,
    };
    let env = &body.environment;
    if !requests::valid_environment(env) || !offered(&app.shared).contains(env) {
        return refuse(StatusCode::NOT_FOUND, "no such environment".into()).await;
    }
    if !requests::valid_release(&body.baseline) || !requests::valid_release(&body.candidate) {
        return refuse(StatusCode::BAD_REQUEST, "the baseline or the candidate is not a release version".into()).await;
    }
    if let Err(why) = app.shared.config.rule(env).may_compare(&who.user, env) {
        return refuse(StatusCode::FORBIDDEN, why).await;
    }
    let ask = Ask::Compare { baseline: body.baseline.clone(), candidate: body.candidate.clone() };
    accept(&app, &asked, &who, env, ask).await
}

/// Records an allowed request (within the user's limit) and answers 202 with it.
async fn accept(app: &App, asked: &Asked, who: &Who, environment: &str, ask: Ask) -> Response {
    let refuse = async |status, why: String| {
        app.audit(asked, Some(&who.user), Decision::Refused, &why).await;
        refusal(status, &why)
    };
    let rule = app.shared.config.rule(environment);
    if let Some(max) = rule.max_per_user {
        let open = match requests::list(app.shared.store.as_ref()).await {
            Ok((found, _)) => found.iter().filter(|r| r.request.user == who.user && !r.request.finished()).count(),
            Err(e) => return refuse(StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the queue: {e}")).await,
        };
        if open >= max {
            let why =
                format!("{} has {open} requests queued, running or kept; at most {max} (rules.max_per_user)", who.user);
            return refuse(StatusCode::TOO_MANY_REQUESTS, why).await;
        }
    }
    let request = Request::new(&who.user, environment, ask);
    // Recorded before it is accepted: a restart loses nothing that was answered 202.
    if let Err(e) = requests::record(app.shared.store.as_ref(), &request).await {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, format!("cannot record the request: {e}")).await;
    }
    let what = match &request.ask {
        Ask::Rehearse { release } => format!("rehearse {} release {release}", request.environment),
        Ask::Compare { baseline, candidate } => {
            format!("compare {} release {candidate} against {baseline}", request.environment)
        }
        Ask::DryRun { release, ttl_secs } => format!(
            "dry run of {} release {release} for {}",
            request.environment,
            crate::description::format_duration(std::time::Duration::from_secs(*ttl_secs))
        ),
    };
    let why = format!("{what}: request {}", request.id);
    app.audit(asked, Some(&who.user), Decision::Allowed, &why).await;
    app.shared.queue.poke();
    let url = format!("/api/v1/requests/{}", request.id);
    (StatusCode::ACCEPTED, [(header::LOCATION, url)], Json(request)).into_response()
}

async fn list(State(app): State<App>, Caller { who, asked }: Caller) -> Response {
    match requests::list(app.shared.store.as_ref()).await {
        Ok((found, refused)) => {
            app.audit(&asked, Some(&who.user), Decision::Allowed, "list requests").await;
            let all: Vec<&Request> = found.iter().map(|r| &r.request).collect();
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
            Json(r.request).into_response()
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

/// A kept dry run of `id`, and only for its owner: the refusal (audited) otherwise.
async fn owned(app: &App, asked: &Asked, who: &Who, id: &str, doing: &str) -> Result<requests::Read, Response> {
    if !requests::valid_id(id) {
        return Err(refusal(StatusCode::NOT_FOUND, "no such request"));
    }
    let read = match requests::read(app.shared.store.as_ref(), id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(refusal(StatusCode::NOT_FOUND, "no such request")),
        Err(e) => return Err(refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())),
    };
    let refuse = async |status, why: String| {
        app.audit(asked, Some(&who.user), Decision::Refused, &why).await;
        refusal(status, &why)
    };
    if read.request.user != who.user {
        let why = format!("only {}, who asked for it, may {doing} request {id}", read.request.user);
        return Err(refuse(StatusCode::FORBIDDEN, why).await);
    }
    if !matches!(read.request.state, requests::State::Kept { .. }) {
        return Err(refuse(StatusCode::CONFLICT, format!("request {id} is not a kept dry run")).await);
    }
    Ok(read)
}

/// A kept dry run's connection details, secrets included: its owner's deliberate ask
/// (a POST: CSRF-checked, audited, never in a URL or a cache).
async fn reveal(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = app.check_change(&asked, &who, &headers).await {
        return r;
    }
    let read = match owned(&app, &asked, &who, &id, "reveal the secrets of").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(run_id) = read.request.run_id() else {
        return refusal(StatusCode::CONFLICT, "no run");
    };
    match super::kept::connection(&app.shared, run_id) {
        Ok(c) => {
            app.audit(&asked, Some(&who.user), Decision::Allowed, &format!("revealed the secrets of run {run_id}"))
                .await;
            Json(json!({ "run_id": run_id, "databases": c.databases, "services": c.services })).into_response()
        }
        Err(e) => refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    /// How much longer (`1h`).
    by: String,
}

async fn extend(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
    body: Result<Json<ExtendBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = app.check_change(&asked, &who, &headers).await {
        return r;
    }
    let refuse = async |status, why: String| {
        app.audit(&asked, Some(&who.user), Decision::Refused, &why).await;
        refusal(status, &why)
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return refuse(e.status(), crate::sys::text::printable(&e.body_text())).await,
    };
    let by = match crate::description::bounded_duration(
        "by",
        &body.by,
        std::time::Duration::from_secs(60),
        crate::description::MAX_MAX_TTL,
    ) {
        Ok(d) => d,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, crate::sys::text::printable(&e.to_string())).await,
    };
    let read = match owned(&app, &asked, &who, &id, "extend").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match super::kept::extend(&app.shared, &read, by).await {
        Ok(now) => {
            let requests::State::Kept { expires_at, run_id, .. } = &now.request.state else {
                return refusal(StatusCode::CONFLICT, "no longer kept");
            };
            let why = format!("extended run {run_id} to {}", expires_at.format("%Y-%m-%d %H:%M:%S UTC"));
            app.audit(&asked, Some(&who.user), Decision::Allowed, &why).await;
            Json(json!({ "expires_at": expires_at })).into_response()
        }
        Err(super::kept::KeptError::Extend(e @ crate::engine::extend::ExtendError::OverMax { .. })) => {
            refuse(StatusCode::FORBIDDEN, e.to_string()).await
        }
        Err(e) => refuse(StatusCode::CONFLICT, crate::sys::text::printable(&e.to_string())).await,
    }
}

async fn destroy(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = app.check_change(&asked, &who, &headers).await {
        return r;
    }
    let read = match owned(&app, &asked, &who, &id, "destroy").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let run_id = read.request.run_id().unwrap_or_default().to_string();
    if !super::kept::destroy(&app.shared, read, format!("destroyed by {}", who.user), &app.shared.signals) {
        return refusal(StatusCode::CONFLICT, "it is being destroyed already");
    }
    app.audit(&asked, Some(&who.user), Decision::Allowed, &format!("destroy run {run_id}")).await;
    (StatusCode::ACCEPTED, Json(json!({ "destroying": run_id }))).into_response()
}
