//! The portal's pages, rendered on the server (templates/portal/, tera with autoescaping:
//! everything a user or the store wrote is text): the environments with their recent
//! rehearsals and the form that asks for one; a request's page, which follows its
//! run's events live (its one script, /static/portal.js, is served from here: no CDN);
//! a run's report.html.

use std::sync::LazyLock;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tera::{Context, Tera};

use super::api::{offered, refusal, App, Caller};
use super::audit::Decision;
use crate::engine::requests::{self, Ask, Request, State as RequestState};

static TEMPLATES: LazyLock<Tera> = LazyLock::new(|| {
    let mut t = Tera::default();
    t.add_raw_templates([
        ("layout.html.tera", include_str!("../../templates/portal/layout.html.tera")),
        ("index.html.tera", include_str!("../../templates/portal/index.html.tera")),
        ("request.html.tera", include_str!("../../templates/portal/request.html.tera")),
        ("audit.html.tera", include_str!("../../templates/portal/audit.html.tera")),
    ])
    .expect("the portal's templates parse");
    t.autoescape_on(vec![".html.tera"]);
    t
});

const SCRIPT: &str = include_str!("../../templates/portal/portal.js");
const STYLE: &str = include_str!("../../templates/portal/portal.css");

/// The most rehearsals a page lists per environment.
const RECENT: usize = 20;

/// What every page's layout needs: who, whether an admin, the CSRF token.
fn page(app: &App, user: &str) -> Context {
    let mut ctx = Context::new();
    ctx.insert("user", user);
    ctx.insert("admin", &app.shared.config.admins.iter().any(|a| a == user));
    ctx.insert("csrf", &super::auth::csrf_token(&app.shared.secret, user));
    ctx
}

fn render(name: &str, ctx: &Context) -> Response {
    match TEMPLATES.render(name, ctx) {
        Ok(html) => Html(html).into_response(),
        Err(e) => refusal(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot render the page: {e}")),
    }
}

/// A request as a table row says it.
#[derive(Serialize)]
struct Row {
    id: String,
    asked: String,
    user: String,
    release: String,
    state: String,
    class: String,
    took: String,
    /// From the run's report: the restore (or golden copy) and the migration (the
    /// installs), in ms, for the trend bars.
    restore_ms: Option<u64>,
    migration_ms: Option<u64>,
}

/// The restore's and the migration's time of a finished run, from its report.
fn phases(app: &App, r: &Request) -> (Option<u64>, Option<u64>) {
    let RequestState::Finished { run_id: Some(run_id), .. } = &r.state else {
        return (None, None);
    };
    let dir = crate::sys::state::run_dir(&app.shared.state_root, run_id).join("report");
    let Ok(report) = crate::report::read_report(&dir) else {
        return (None, None);
    };
    let sum = |f: &dyn Fn(&crate::report::model::StepTiming) -> bool| {
        let steps: Vec<u64> = report.steps.iter().filter(|s| f(s)).map(|s| s.duration_ms).collect();
        (!steps.is_empty()).then(|| steps.iter().sum())
    };
    (
        sum(&|s| s.resource.starts_with("database.") && matches!(s.action.as_str(), "restore" | "copy" | "clone")),
        sum(&|s| s.action == "install"),
    )
}

fn state_text(r: &Request) -> (String, String) {
    match &r.state {
        RequestState::Queued => ("queued".into(), "queued".into()),
        RequestState::Running { .. } => ("running".into(), "running".into()),
        RequestState::Kept { verdict, expires_at, .. } => {
            (format!("{}, kept until {}", verdict.as_str(), when(expires_at)), "kept".into())
        }
        RequestState::Finished { verdict: Some(v), exit_code, .. } => {
            (format!("{} (exit {exit_code})", v.as_str()), v.as_str().into())
        }
        RequestState::Finished { exit_code, .. } => (format!("error (exit {exit_code})"), "error".into()),
    }
}

fn took(r: &Request) -> String {
    match &r.state {
        RequestState::Finished { started_at: Some(s), ended_at, .. } => {
            format!("{:.1} s", (*ended_at - *s).num_milliseconds() as f64 / 1000.0)
        }
        _ => String::new(),
    }
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn release(r: &Request) -> &str {
    r.ask.release()
}

/// What a kept dry run's owner sees of it (never its secrets: those come on a reveal).
#[derive(Serialize)]
struct Endpoint {
    name: String,
    kind: &'static str,
    address: String,
    detail: String,
}

async fn endpoints(app: &App, run_id: &str) -> Result<Vec<Endpoint>, String> {
    let c = super::kept::connection(&app.shared, run_id).await.map_err(|e| e.to_string())?;
    let dbs = c.databases.iter().map(|(name, d)| Endpoint {
        name: name.clone(),
        kind: "database",
        address: d.endpoint.clone(),
        detail: format!("database {} as {}", d.name, d.user),
    });
    let services = c.services.iter().map(|(name, s)| Endpoint {
        name: name.clone(),
        kind: "service",
        address: if s.url.is_empty() { s.address.clone() } else { s.url.clone() },
        detail: s.addresses.join(" "),
    });
    Ok(dbs.chain(services).collect())
}

pub(super) async fn index(State(app): State<App>, Caller { who, asked }: Caller) -> Response {
    let all = match requests::list_known(app.shared.store.as_ref(), &app.shared.finished).await {
        Ok((found, _)) => found,
        Err(e) => return refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    app.audit(&asked, Some(&who.user), Decision::Allowed, "portal").await;
    let envs: Vec<serde_json::Value> = offered(&app.shared)
        .into_iter()
        .map(|name| {
            let may = app.shared.config.rule(&name).may_rehearse(&who.user, &name).is_ok();
            let rows: Vec<Row> = all
                .iter()
                .rev()
                .map(|r| &r.request)
                .filter(|r| r.environment == name)
                .take(RECENT)
                .map(|r| {
                    let (state, class) = state_text(r);
                    let (restore_ms, migration_ms) = phases(&app, r);
                    Row {
                        id: r.id.clone(),
                        asked: when(&r.requested_at),
                        user: r.user.clone(),
                        release: match &r.ask {
                            Ask::DryRun { .. } => format!("{} (dry run)", release(r)),
                            Ask::Compare { baseline, candidate, .. } => format!("{candidate} against {baseline}"),
                            Ask::Rehearse { .. } => release(r).to_string(),
                        },
                        state,
                        class,
                        took: took(r),
                        restore_ms,
                        migration_ms,
                    }
                })
                .collect();
            // The bars' scale: the longest of the list.
            let most = |f: fn(&Row) -> Option<u64>| rows.iter().filter_map(f).max().unwrap_or(0).max(1);
            let scale = serde_json::json!({ "restore": most(|r| r.restore_ms), "migration": most(|r| r.migration_ms) });
            serde_json::json!({ "name": name, "may": may, "requests": rows, "scale": scale })
        })
        .collect();
    let stages: Vec<serde_json::Value> = super::stages::all(&app.shared, &offered(&app.shared))
        .await
        .into_iter()
        .map(|s| {
            let generations: Vec<serde_json::Value> = s
                .record
                .iter()
                .flat_map(|r| r.generations.iter().rev())
                .take(RECENT)
                .map(|g| {
                    serde_json::json!({
                        "number": g.number, "release": g.release, "fate": g.fate.as_str(),
                        "started": when(&g.started_at), "run_id": g.run_id,
                        "reason": g.reason.clone().unwrap_or_default(),
                    })
                })
                .collect();
            let current = s.record.as_ref().and_then(|r| r.current_generation()).map(|g| g.describe());
            let names: Vec<String> =
                s.record.iter().flat_map(|r| r.names.iter().map(|(k, v)| format!("{k} → {v}"))).collect();
            serde_json::json!({
                "environment": s.environment, "stage": s.stage, "current": current,
                "names": names, "generations": generations, "error": s.error,
                "built": s.record.is_some(),
            })
        })
        .collect();
    let count = |s: fn(&RequestState) -> bool| all.iter().filter(|r| s(&r.request.state)).count();
    let mut ctx = page(&app, &who.user);
    ctx.insert("environments", &envs);
    ctx.insert("stages", &stages);
    ctx.insert("running", &count(|s| matches!(s, RequestState::Running { .. })));
    ctx.insert("queued", &count(|s| matches!(s, RequestState::Queued)));
    render("index.html.tera", &ctx)
}

pub(super) async fn request(State(app): State<App>, Path(id): Path<String>, Caller { who, asked }: Caller) -> Response {
    let r = match super::api::request_of(&app, &id).await {
        Ok(r) => r,
        Err(res) => return res,
    };
    app.audit(&asked, Some(&who.user), Decision::Allowed, "request page").await;
    let (state_text, class) = state_text(&r);
    let (run_id, error, comparison) = match &r.state {
        RequestState::Running { run_id, .. } | RequestState::Kept { run_id, .. } => (Some(run_id.clone()), None, None),
        RequestState::Finished { run_id, error, comparison, .. } => (run_id.clone(), error.clone(), comparison.clone()),
        RequestState::Queued => (None, None, None),
    };
    let compare_url = comparison.map(|c| format!("/compares/{c}/compare.html")).unwrap_or_default();
    let lines = app.shared.queue.stream(&id).map(|s| s.watch().0).unwrap_or_default();
    let finished = r.finished();
    let mut ctx = page(&app, &who.user);
    ctx.insert("id", &r.id);
    ctx.insert("environment", &r.environment);
    ctx.insert("release", release(&r));
    ctx.insert("asked", &when(&r.requested_at));
    let kept = matches!(r.state, RequestState::Kept { .. });
    ctx.insert(
        "state",
        if finished {
            "finished"
        } else if kept {
            "kept"
        } else {
            "open"
        },
    );
    ctx.insert("dry_run", &matches!(r.ask, Ask::DryRun { .. }));
    ctx.insert("owner", &(r.user == who.user));
    ctx.insert("user_asked", &r.user);
    ctx.insert("change", &r.change.as_ref().map(crate::report::change_line));
    ctx.insert("change_url", &r.change.as_ref().and_then(|c| c.url.clone()).unwrap_or_default());
    // A kept dry run's endpoints and buttons: for its owner alone.
    if let (RequestState::Kept { run_id, expires_at, .. }, true) = (&r.state, r.user == who.user) {
        ctx.insert("expires_at", &expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        ctx.insert("expires_text", &when(expires_at));
        match endpoints(&app, run_id).await {
            Ok(e) => ctx.insert("endpoints", &e),
            Err(e) => ctx.insert("endpoints_error", &e),
        }
    }
    ctx.insert("state_text", &state_text);
    ctx.insert("class", &class);
    ctx.insert("error", &error.unwrap_or_default());
    ctx.insert("run_id", &run_id);
    ctx.insert("lines", &lines);
    let report = run_id.filter(|_| finished || kept).map(|id| format!("/runs/{id}/report.html"));
    ctx.insert("report", &report.unwrap_or_default());
    ctx.insert("compare", &compare_url);
    ctx.insert("comparison", &matches!(r.ask, Ask::Compare { .. }));
    let mut res = render("request.html.tera", &ctx);
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// A run's report.html, as `rehearse report` writes it: its styles are inline and it
/// has no script, so its policy allows inline styles and nothing else.
pub(super) async fn report(
    State(app): State<App>,
    Path(run_id): Path<String>,
    Caller { who, asked }: Caller,
) -> Response {
    if !crate::sys::state::valid_run_id(&run_id) {
        return refusal(StatusCode::NOT_FOUND, "no such run");
    }
    let run_dir = crate::sys::state::run_dir(&app.shared.state_root, &run_id);
    let path = run_dir.join("report").join("report.html");
    // Another replica's run: its report from the shared store.
    if !path.exists() {
        if let Some(store) = &app.shared.replicated {
            // Not there either: the 404 below says so.
            let _pulled = crate::engine::store::sync::pull_files(store.as_ref(), &run_id, "report", &run_dir).await;
        }
    }
    let Ok(html) = std::fs::read_to_string(&path) else {
        return refusal(StatusCode::NOT_FOUND, "this run has no report");
    };
    app.audit(&asked, Some(&who.user), Decision::Allowed, &format!("report of {run_id}")).await;
    written_page(html)
}

/// A comparison's compare.html, as `rehearse compare` writes it (no script: the same
/// policy as a report's).
pub(super) async fn compare_page(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { who, asked }: Caller,
) -> Response {
    if !requests::valid_comparison_id(&id) {
        return refusal(StatusCode::NOT_FOUND, "no such comparison");
    }
    let path = app.shared.state_root.join("compares").join(&id).join("compare.html");
    let Ok(html) = std::fs::read_to_string(&path) else {
        return refusal(StatusCode::NOT_FOUND, "no such comparison");
    };
    app.audit(&asked, Some(&who.user), Decision::Allowed, &format!("comparison {id}")).await;
    written_page(html)
}

/// A page rehearse wrote (report.html, compare.html: inline styles, no script), under a
/// policy that allows inline styles and nothing else.
fn written_page(html: String) -> Response {
    let mut res = Html(html).into_response();
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
        ),
    );
    res
}

/// The audit log, newest first (admins).
pub(super) async fn audit(State(app): State<App>, Caller { who, asked }: Caller) -> Response {
    if !app.shared.config.admins.contains(&who.user) {
        let why = format!("{} is not an administrator (admins)", who.user);
        app.audit(&asked, Some(&who.user), Decision::Refused, &why).await;
        return refusal(StatusCode::FORBIDDEN, &why);
    }
    app.audit(&asked, Some(&who.user), Decision::Allowed, "audit page").await;
    let entries = match super::audit::newest(app.shared.store.as_ref(), 500).await {
        Ok(e) => e,
        Err(e) => return refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let mut ctx = page(&app, &who.user);
    ctx.insert("entries", &entries);
    render("audit.html.tera", &ctx)
}

pub(super) async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

pub(super) async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}
