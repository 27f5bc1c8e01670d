//! The API's asks: a rehearsal, a dry run, a comparison — each checked (CSRF, rate,
//! the environment's rules, the user's limit), recorded in the store, then accepted
//! (202 and the request).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{offered, App, Asked, Caller};
use crate::engine::requests::{self, Ask, Request};
use crate::server::audit::Decision;
use crate::server::auth::Who;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RehearseBody {
    environment: String,
    release: String,
}

pub(super) async fn rehearse(
    State(app): State<App>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
    body: Result<Json<RehearseBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match app.change_body(&asked, &who, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let refuse = async |status, why: String| app.refuse(&asked, &who, status, why).await;
    if let Err((status, why)) = offered_with(&app, &body.environment, &[&body.release]) {
        return refuse(status, why).await;
    }
    let rule = app.shared.config.rule(&body.environment);
    if let Err(why) = rule.may_rehearse(&who.user, &body.environment) {
        return refuse(StatusCode::FORBIDDEN, why).await;
    }
    let ask = Ask::Rehearse { release: body.release.clone() };
    accept(&app, &asked, &who, &body.environment, ask).await
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DryRunBody {
    environment: String,
    release: String,
    /// How long to keep it (`2h`; default: the description's `ttl`).
    #[serde(default)]
    ttl: Option<String>,
}

pub(super) async fn dry_run(
    State(app): State<App>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
    body: Result<Json<DryRunBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match app.change_body(&asked, &who, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let refuse = async |status, why: String| app.refuse(&asked, &who, status, why).await;
    let env = &body.environment;
    if let Err((status, why)) = offered_with(&app, env, &[&body.release]) {
        return refuse(status, why).await;
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

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CompareBody {
    environment: String,
    baseline: String,
    candidate: String,
}

pub(super) async fn comparison(
    State(app): State<App>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
    body: Result<Json<CompareBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let body = match app.change_body(&asked, &who, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let refuse = async |status, why: String| app.refuse(&asked, &who, status, why).await;
    let env = &body.environment;
    if let Err((status, why)) = offered_with(&app, env, &[&body.baseline, &body.candidate]) {
        return refuse(status, why).await;
    }
    if let Err(why) = app.shared.config.rule(env).may_compare(&who.user, env) {
        return refuse(StatusCode::FORBIDDEN, why).await;
    }
    let ask = Ask::Compare { baseline: body.baseline.clone(), candidate: body.candidate.clone() };
    accept(&app, &asked, &who, env, ask).await
}

/// Whether `environment` is offered and each of `releases` a release version; the
/// refusal's status and why when not.
fn offered_with(app: &App, environment: &str, releases: &[&str]) -> Result<(), (StatusCode, String)> {
    if !requests::valid_environment(environment) || !offered(&app.shared).iter().any(|e| e == environment) {
        return Err((StatusCode::NOT_FOUND, "no such environment".into()));
    }
    match releases.iter().find(|r| !requests::valid_release(r)) {
        Some(r) => {
            Err((StatusCode::BAD_REQUEST, format!("{:?} is not a release version", crate::sys::text::printable(r))))
        }
        None => Ok(()),
    }
}

/// Records an allowed request (within the user's limit) and answers 202 with it.
async fn accept(app: &App, asked: &Asked, who: &Who, environment: &str, ask: Ask) -> Response {
    let refuse = async |status, why: String| app.refuse(asked, who, status, why).await;
    let rule = app.shared.config.rule(environment);
    if let Some(max) = rule.max_per_user {
        let open = match requests::list_known(app.shared.store.as_ref(), &app.shared.finished).await {
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
