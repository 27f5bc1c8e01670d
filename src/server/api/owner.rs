//! What a kept dry run's owner does with it: reveal its secrets, extend it, destroy it
//! — each refused (and audited) for anyone else.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{refusal, App, Asked, Caller};
use crate::engine::requests;
use crate::server::audit::Decision;
use crate::server::auth::Who;

/// A kept dry run of `id`, and only for its owner who may ask for a change (CSRF, rate):
/// the refusal (audited) otherwise.
async fn owned(
    app: &App,
    asked: &Asked,
    who: &Who,
    headers: &HeaderMap,
    id: &str,
    doing: &str,
) -> Result<requests::Read, Response> {
    app.check_change(asked, who, headers).await?;
    if !requests::valid_id(id) {
        return Err(refusal(StatusCode::NOT_FOUND, "no such request"));
    }
    let read = match requests::read(app.shared.store.as_ref(), id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(refusal(StatusCode::NOT_FOUND, "no such request")),
        Err(e) => return Err(refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())),
    };
    let refuse = async |status, why: String| app.refuse(asked, who, status, why).await;
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
pub(super) async fn reveal(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
) -> Response {
    let read = match owned(&app, &asked, &who, &headers, &id, "reveal the secrets of").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(run_id) = read.request.run_id() else {
        return refusal(StatusCode::CONFLICT, "no run");
    };
    match crate::server::kept::connection(&app.shared, run_id).await {
        Ok(c) => {
            app.audit(&asked, Some(&who.user), Decision::Allowed, &format!("revealed the secrets of run {run_id}"))
                .await;
            Json(json!({ "run_id": run_id, "databases": c.databases, "services": c.services })).into_response()
        }
        Err(e) => refusal(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExtendBody {
    /// How much longer (`1h`).
    by: String,
}

pub(super) async fn extend(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
    body: Result<Json<ExtendBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    // The owner's change (CSRF, rate, theirs) first, then what they ask.
    let read = match owned(&app, &asked, &who, &headers, &id, "extend").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let refuse = async |status, why: String| app.refuse(&asked, &who, status, why).await;
    let body = match body {
        Ok(Json(b)) => b,
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
    match crate::server::kept::extend(&app.shared, &read, by).await {
        Ok(now) => {
            let requests::State::Kept { expires_at, run_id, .. } = &now.request.state else {
                return refusal(StatusCode::CONFLICT, "no longer kept");
            };
            let why = format!("extended run {run_id} to {}", expires_at.format("%Y-%m-%d %H:%M:%S UTC"));
            app.audit(&asked, Some(&who.user), Decision::Allowed, &why).await;
            Json(json!({ "expires_at": expires_at })).into_response()
        }
        Err(crate::server::kept::KeptError::Extend(e @ crate::engine::extend::ExtendError::OverMax { .. })) => {
            refuse(StatusCode::FORBIDDEN, e.to_string()).await
        }
        Err(e) => refuse(StatusCode::CONFLICT, crate::sys::text::printable(&e.to_string())).await,
    }
}

pub(super) async fn destroy(
    State(app): State<App>,
    Path(id): Path<String>,
    Caller { who, asked }: Caller,
    headers: HeaderMap,
) -> Response {
    let read = match owned(&app, &asked, &who, &headers, &id, "destroy").await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let run_id = read.request.run_id().unwrap_or_default().to_string();
    if !crate::server::kept::destroy(&app.shared, read, format!("destroyed by {}", who.user), &app.shared.signals) {
        return refusal(StatusCode::CONFLICT, "it is being destroyed already");
    }
    app.audit(&asked, Some(&who.user), Decision::Allowed, &format!("destroy run {run_id}")).await;
    (StatusCode::ACCEPTED, Json(json!({ "destroying": run_id }))).into_response()
}
