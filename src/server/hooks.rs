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

/// Why a delivery is not taken.
pub(crate) enum Seen {
    /// Its id, or its signed body (a replay under a new id), came before: the request it
    /// made, when that can be read.
    Before(Option<String>),
    /// The store did not answer: the sender should try again.
    Unknown(String),
}

/// What a replayer cannot change without the secret, as a key: the hex of `signed`'s
/// SHA-256 (a signature, or a signed body), 48 digits.
pub(crate) fn replay_key(signed: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(signed).iter().take(24).map(|b| format!("{b:02x}")).collect()
}

/// Records the delivery of `hook` as having made `request`, before the request is
/// recorded — by `signed` ([`replay_key`]: a replay under a new delivery id is caught)
/// and by its delivery id, each create-only; the keys written. Either seen before is
/// [`Seen::Before`].
pub(crate) async fn first_delivery(
    app: &App,
    hook: &str,
    id: &str,
    signed: &str,
    request: &str,
) -> Result<Vec<String>, Seen> {
    let digest = signed;
    let record = serde_json::to_vec(&Delivery { request: request.to_string(), at: chrono::Utc::now() })
        .expect("a delivery serializes");
    let mut written = Vec::new();
    for key in [format!("deliveries/{hook}/signed-{digest}.json"), format!("deliveries/{hook}/{id}.json")] {
        match store::put_checked(app.shared.store.as_ref(), &key, &record, Condition::Absent).await {
            Ok(_) => written.push(key),
            Err(store::StoreError::PreconditionFailed) => {
                let earlier = store::retrying(|| app.shared.store.get(&key)).await.ok().flatten();
                let request = earlier
                    .and_then(|o| serde_json::from_slice::<Delivery>(&o.body).ok())
                    .map(|d| d.request)
                    .filter(|r| requests::valid_id(r));
                forget_delivery(app, &written).await;
                return Err(Seen::Before(request));
            }
            Err(e) => {
                forget_delivery(app, &written).await;
                return Err(Seen::Unknown(e.to_string()));
            }
        }
    }
    Ok(written)
}

/// Forgets a delivery whose request could not be recorded (best effort), so that the
/// sender's retry is taken.
pub(crate) async fn forget_delivery(app: &App, keys: &[String]) {
    for k in keys {
        // Left behind, it answers the retry 409: said in the server's log.
        if let Err(e) = store::delete_current(app.shared.store.as_ref(), k).await {
            let line = format!("rehearse serve: warning: cannot forget the delivery record {k}: {e}");
            eprintln!("{}", crate::sys::text::printable_text(&line)); // raw: sanitized
        }
    }
}

/// Takes a delivery to `source` (a hook's name, `github`, `slack`): its records, then
/// the request (recorded and answered 202); a replay answered 409 with the request it
/// made, a store that does not answer 503.
pub(crate) async fn take(
    app: &App,
    asked: &Asked,
    who: &Who,
    source: &str,
    id: &str,
    signed: &str,
    request: Request,
) -> Response {
    let keys = match first_delivery(app, source, id, signed, &request.id).await {
        Ok(k) => k,
        Err(Seen::Before(earlier)) => {
            let why = match &earlier {
                Some(r) => format!("delivery {id} was received before: request {r}"),
                None => format!("delivery {id} was received before"),
            };
            app.audit(asked, Some(&who.user), Decision::Refused, &format!("{source}: {why}")).await;
            return (StatusCode::CONFLICT, Json(json!({ "error": why, "request": earlier }))).into_response();
        }
        Err(Seen::Unknown(e)) => {
            let why = format!("{source}: cannot record the delivery: {e}");
            return app.refuse(asked, who, StatusCode::SERVICE_UNAVAILABLE, why).await;
        }
    };
    let answer = ask::accept(app, asked, who, request, true).await;
    if answer.status() != StatusCode::ACCEPTED {
        forget_delivery(app, &keys).await;
    }
    answer
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
        (Some(baseline), false) => Wanted::Compare { baseline, candidate: &body.release, deploy: false },
        (None, true) => Wanted::DryRun { release: &body.release, ttl: body.ttl.as_deref() },
        (None, false) => Wanted::Rehearse { release: &body.release, from: None, chaos: None },
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
    // A delivery's signature is its own (it covers its timestamp): a replay repeats it.
    let signed = replay_key(text("x-rehearse-signature").unwrap_or_default().as_bytes());
    take(&app, &asked, &who, &hook.name, delivery, &signed, request).await
}
