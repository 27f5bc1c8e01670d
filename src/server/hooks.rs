//! Webhooks: where a request starts outside the portal. A generic hook (`POST
//! /hooks/NAME`, configured under `hooks:`) takes a JSON body naming the environment,
//! the release (and optionally a baseline to compare with, or `keep` for a dry run),
//! the change it is, and a callback URL; it is authenticated by its signature
//! ([`signature`]: HMAC-SHA256 over the timestamp and the body under the hook's secret,
//! within its tolerance), and a delivery id seen before is answered 409 with the request
//! it made, never run twice (`deliveries/HOOK/ID.json`, written create-only before the
//! request). The request then follows the hook's user's rules like any other; its
//! outcome is POSTed to the callback by [`super::notify`].

pub(crate) mod signature;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::api::ask::{self, Wanted};
use super::api::{refusal, App, Asked};
use super::audit::Decision;
use super::auth::{Via, Who};
use crate::engine::requests::{self, Change, Notify, Request};
use crate::engine::store::{self, Condition};

/// What a generic hook's delivery asks.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct HookBody {
    environment: String,
    release: String,
    /// Compare `release` against this one instead of rehearsing it alone.
    #[serde(default)]
    baseline: Option<String>,
    /// Keep it as a dry run (for `ttl`, within the rules' `max_ttl`).
    #[serde(default)]
    keep: bool,
    #[serde(default)]
    ttl: Option<String>,
    /// Where the verdict and the links are POSTed when it ends, signed the same way.
    #[serde(default)]
    callback_url: Option<String>,
    /// The change it rehearses (commit, author, pull request, title, URL).
    #[serde(default)]
    change: Option<Change>,
}

/// A delivery seen: the request it made.
#[derive(Serialize, Deserialize)]
struct Delivery {
    request: String,
    at: chrono::DateTime<chrono::Utc>,
}

/// A delivery id, as it is used in a key: letters, digits, `.`, `_` and `-`, at most 64.
pub(crate) fn valid_delivery(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Records delivery `id` of hook `hook` as having made `request`, before the request is
/// recorded: `Err` with the request an earlier delivery of the same id made.
pub(crate) async fn first_delivery(app: &App, hook: &str, id: &str, request: &str) -> Result<(), Option<String>> {
    let key = format!("deliveries/{hook}/{id}.json");
    let body = serde_json::to_vec(&Delivery { request: request.to_string(), at: chrono::Utc::now() })
        .expect("a delivery serializes");
    match store::put_checked(app.shared.store.as_ref(), &key, &body, Condition::Absent).await {
        Ok(_) => Ok(()),
        Err(store::StoreError::PreconditionFailed) => {
            let earlier = store::retrying(|| app.shared.store.get(&key)).await.ok().flatten();
            let request = earlier
                .and_then(|o| serde_json::from_slice::<Delivery>(&o.body).ok())
                .map(|d| d.request)
                .filter(|r| requests::valid_id(r));
            Err(request)
        }
        Err(_) => Err(None),
    }
}

/// `POST /hooks/NAME`: a generic hook's delivery.
pub(crate) async fn generic(
    State(app): State<App>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = Asked {
        peer,
        method: axum::http::Method::POST,
        path: format!("/hooks/{}", name.chars().take(64).collect::<String>()),
    };
    let Some(hook) = app.shared.config.hooks.iter().find(|h| h.name == name) else {
        app.audit(&asked, None, Decision::Refused, "no such hook").await;
        return refusal(StatusCode::NOT_FOUND, "no such hook");
    };
    let who = Who { user: hook.user.clone(), via: Via::Token };
    let Some(secret) = app.shared.hook_secrets.get(&hook.name) else {
        return refusal(StatusCode::INTERNAL_SERVER_ERROR, "the hook has no secret (a bug: please report it)");
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let tolerance = hook.tolerance.map_or(300, |t| t.as_secs() as i64);
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = signature::verify(secret, text("x-rehearse-signature"), &body, now, tolerance) {
        app.audit(&asked, None, Decision::Refused, &format!("hook {name}: {e}")).await;
        return refusal(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let refuse = async |status, why: String| app.refuse(&asked, &who, status, format!("hook {name}: {why}")).await;
    let Some(delivery) = text("x-rehearse-delivery").filter(|d| valid_delivery(d)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "no delivery id (X-Rehearse-Delivery: 1 to 64 of A-Z a-z 0-9 . _ -)".into(),
        )
        .await;
    };
    let body: HookBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, crate::sys::text::printable(&format!("the body: {e}"))).await,
    };
    let wanted = match (&body.baseline, body.keep) {
        (Some(_), true) => {
            return refuse(StatusCode::BAD_REQUEST, "a comparison is not kept: baseline or keep".into()).await
        }
        (Some(baseline), false) => Wanted::Compare { baseline, candidate: &body.release },
        (None, true) => Wanted::DryRun { release: &body.release, ttl: body.ttl.as_deref() },
        (None, false) => Wanted::Rehearse { release: &body.release },
    };
    let ask = match ask::decide(&app, &who.user, &body.environment, wanted) {
        Ok(a) => a,
        Err((status, why)) => return refuse(status, why).await,
    };
    let mut request = Request::new(&who.user, &body.environment, ask);
    if let Some(url) = &body.callback_url {
        if !requests::valid_url(url) {
            return refuse(StatusCode::BAD_REQUEST, "callback_url is not an http(s) URL".into()).await;
        }
        request.notify.push(Notify::Callback { hook: hook.name.clone(), url: url.clone() });
    }
    if let Some(change) = &body.change {
        if let Err(why) = change.check() {
            return refuse(StatusCode::BAD_REQUEST, why.replace("its change's", "the change's")).await;
        }
        request.change = Some(change.clone());
    }
    if let Err(r) = ask::within_limit(&app, &asked, &who, &request.environment).await {
        return r;
    }
    // Seen before: answered with what it made, never run twice.
    if let Err(earlier) = first_delivery(&app, &hook.name, delivery, &request.id).await {
        let why = match &earlier {
            Some(r) => format!("delivery {delivery} was received before: request {r}"),
            None => format!("delivery {delivery} was received before"),
        };
        app.audit(&asked, Some(&who.user), Decision::Refused, &format!("hook {name}: {why}")).await;
        return (StatusCode::CONFLICT, Json(json!({ "error": why, "request": earlier }))).into_response();
    }
    ask::accept(&app, &asked, &who, request, true).await
}
