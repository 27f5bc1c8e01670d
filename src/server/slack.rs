//! Chat: Slack's slash command (`/rehearse [run|up|compare] ENVIRONMENT RELEASE
//! [BASELINE]`, `POST /hooks/slack`), each request's `v0` signature checked under the
//! app's signing secret within five minutes, its `trigger_id` a delivery seen once. The
//! command is answered at once (in the channel); the message is then replaced through
//! the command's `response_url` as the request moves (building, then the verdict and
//! the links). A kept dry run's message has a button; its secrets go to the one who
//! asked for it alone, ephemerally, when they click it (`POST /hooks/slack/actions`).
//! Slack users are rehearse users by the configuration's map; anyone else is refused.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::ask::{self, Wanted};
use super::api::{refusal, App, Asked};
use super::audit::Decision;
use super::auth::{Via, Who};
use super::outbound::{Call, Outcome};
use super::Shared;
use crate::engine::requests::{self, Notify, Read, Request, State as RequestState};

/// A Slack user id (`U2CERLKJA`, `W012A3CDE`).
pub(crate) fn valid_slack_id(id: &str) -> bool {
    (2..=32).contains(&id.len()) && id.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// What a slash command posts (the fields rehearse reads).
#[derive(Deserialize)]
struct Command {
    #[serde(default)]
    text: String,
    user_id: String,
    #[serde(default)]
    response_url: String,
    #[serde(default)]
    trigger_id: String,
}

/// The signing secret, checked at start.
pub(crate) struct Slack {
    secret: Vec<u8>,
}

impl Slack {
    pub(crate) fn load(config: &super::config::Slack) -> Result<Slack, crate::sys::secure_fs::FsError> {
        Ok(Slack { secret: super::auth::read_secret_file(&config.signing_secret_file, 16)? })
    }
}

/// An ephemeral or in-channel answer.
fn say(ephemeral: bool, text: &str) -> Response {
    let kind = if ephemeral { "ephemeral" } else { "in_channel" };
    Json(json!({ "response_type": kind, "text": text })).into_response()
}

/// Checks the request's signature; the refusal (audited) when it is not Slack's.
async fn signed(app: &App, asked: &Asked, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
    let Some(slack) = app.shared.slack.as_ref() else {
        app.audit(asked, None, Decision::Refused, "no slack: section").await;
        return Err(refusal(StatusCode::NOT_FOUND, "this server takes no Slack command"));
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    if let Err(e) = super::hooks::signature::verify_slack(
        &slack.secret,
        text("x-slack-signature"),
        text("x-slack-request-timestamp"),
        body,
        now,
    ) {
        app.audit(asked, None, Decision::Refused, &format!("slack: {e}")).await;
        return Err(refusal(StatusCode::UNAUTHORIZED, &e.to_string()));
    }
    Ok(())
}

/// The rehearse user a Slack user is, by the configuration.
fn user_of(app: &App, slack_id: &str) -> Option<String> {
    app.shared.config.slack.as_ref()?.users.get(slack_id).cloned()
}

/// `POST /hooks/slack`: a slash command.
pub(crate) async fn command(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = Asked { peer, method: Method::POST, path: "/hooks/slack".into() };
    if let Err(r) = signed(&app, &asked, &headers, &body).await {
        return r;
    }
    let Ok(cmd) = serde_urlencoded::from_bytes::<Command>(&body) else {
        return refusal(StatusCode::BAD_REQUEST, "not a slash command's form");
    };
    let Some(user) = user_of(&app, &cmd.user_id) else {
        let why = format!(
            "slack: the Slack user {} is not one of this server's (slack.users)",
            crate::sys::text::printable(&cmd.user_id)
        );
        app.audit(&asked, None, Decision::Refused, &why).await;
        return say(
            true,
            "rehearse: you are not one of this server's users; ask its operator to add you (slack.users)",
        );
    };
    let who = Who { user: user.clone(), via: Via::Token };
    let refuse = async |why: String| {
        app.audit(&asked, Some(&user), Decision::Refused, &format!("slack: {why}")).await;
        say(true, &format!("rehearse: {why}"))
    };
    let words: Vec<&str> = cmd.text.split_whitespace().collect();
    let (op, rest) = match words.first().copied() {
        Some(op @ ("run" | "up" | "compare")) => (op, &words[1..]),
        _ => ("run", &words[..]),
    };
    let usage = "usage: `/rehearse [run|up] ENVIRONMENT RELEASE` or `/rehearse compare ENVIRONMENT CANDIDATE BASELINE`";
    let wanted = match (op, rest) {
        ("run", [env, release]) => (env, Wanted::Rehearse { release, from: None, chaos: None }),
        ("up", [env, release]) => (env, Wanted::DryRun { release, ttl: None }),
        ("compare", [env, candidate, baseline]) => (env, Wanted::Compare { baseline, candidate, deploy: false }),
        _ => return refuse(usage.into()).await,
    };
    let response_prefix = app.shared.config.slack.as_ref().map(|s| s.response_urls.clone()).unwrap_or_default();
    if !requests::valid_url(&cmd.response_url) || !cmd.response_url.starts_with(&response_prefix) {
        return refuse("the command's response_url is not Slack's".into()).await;
    }
    if !super::hooks::valid_delivery(&cmd.trigger_id) {
        return refuse("the command has no trigger id".into()).await;
    }
    let (environment, w) = wanted;
    let ask = match ask::decide(&app, &user, environment, w) {
        Ok(a) => a,
        Err((_, why)) => return refuse(why).await,
    };
    let mut request = Request::new(&user, environment, ask);
    request.notify.push(Notify::Slack { response_url: cmd.response_url.clone() });
    if let Err(r) = ask::within_limit(&app, &asked, &who, environment).await {
        let why =
            String::from_utf8_lossy(&axum::body::to_bytes(r.into_body(), 4096).await.unwrap_or_default()).into_owned();
        return say(true, &format!("rehearse: {why}"));
    }
    let id = request.id.clone();
    let signed = super::hooks::replay_key(&body);
    let accepted = super::hooks::take(&app, &asked, &who, "slack", &cmd.trigger_id, &signed, request).await;
    if accepted.status() == StatusCode::CONFLICT {
        return say(true, &format!("rehearse: the command {} was received before", cmd.trigger_id));
    }
    if accepted.status() != StatusCode::ACCEPTED {
        return say(true, "rehearse: the request could not be recorded; try again");
    }
    let page = format!("{}/requests/{id}", app.shared.public_url.trim_end_matches('/'));
    say(
        false,
        &format!(
            "<@{}> asked for {op} of {environment} {}: request <{page}|{id}>, queued",
            cmd.user_id,
            rest[1..].join(" ")
        ),
    )
}

/// A click's payload (the fields rehearse reads).
#[derive(Deserialize)]
struct Click {
    user: ClickUser,
    actions: Vec<Action>,
    response_url: String,
}

#[derive(Deserialize)]
struct ClickUser {
    id: String,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct ClickForm {
    payload: String,
}

/// `POST /hooks/slack/actions`: a click on a message's button. The only button is a kept
/// dry run's "connection secrets": they go to its owner alone, ephemerally.
pub(crate) async fn action(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = Asked { peer, method: Method::POST, path: "/hooks/slack/actions".into() };
    if let Err(r) = signed(&app, &asked, &headers, &body).await {
        return r;
    }
    let Some(click) = serde_urlencoded::from_bytes::<ClickForm>(&body)
        .ok()
        .and_then(|f| serde_json::from_str::<Click>(&f.payload).ok())
    else {
        return refusal(StatusCode::BAD_REQUEST, "not a click's payload");
    };
    let Some(action) = click.actions.first().filter(|a| a.action_id == "reveal" && requests::valid_id(&a.value)) else {
        return refusal(StatusCode::BAD_REQUEST, "not a button rehearse sent");
    };
    let prefix = app.shared.config.slack.as_ref().map(|s| s.response_urls.clone()).unwrap_or_default();
    if !requests::valid_url(&click.response_url) || !click.response_url.starts_with(&prefix) {
        return refusal(StatusCode::BAD_REQUEST, "the click's response_url is not Slack's");
    }
    let clicker = user_of(&app, &click.user.id);
    let read = requests::read(app.shared.store.as_ref(), &action.value).await.ok().flatten();
    let answer = match (&clicker, &read) {
        (Some(user), Some(r)) if *user == r.request.user => match (&r.request.state, r.request.run_id()) {
            (RequestState::Kept { .. }, Some(run)) => match super::kept::connection(&app.shared, run).await {
                Ok(c) => {
                    app.audit(
                        &asked,
                        Some(user),
                        Decision::Allowed,
                        &format!("slack: revealed the secrets of run {run}"),
                    )
                    .await;
                    let lines: Vec<String> = c.databases.iter().map(|(n, d)| format!("`{n}`: `{}`", d.url)).collect();
                    format!("Connection secrets of run {run} (only you see this):\n{}", lines.join("\n"))
                }
                Err(e) => format!("rehearse: {e}"),
            },
            _ => "rehearse: that dry run is not kept any more".to_string(),
        },
        (user, Some(r)) => {
            let why =
                format!("only {}, who asked for it, may see the secrets of request {}", r.request.user, r.request.id);
            app.audit(&asked, user.as_deref(), Decision::Refused, &format!("slack: {why}")).await;
            format!("rehearse: {why}")
        }
        (_, None) => "rehearse: no such request".to_string(),
    };
    // Ephemeral, to the one who clicked: never in the channel.
    let message = json!({ "response_type": "ephemeral", "replace_original": false, "text": answer });
    post(&app.shared, &click.response_url, &message, "slack: an answer to a click").await;
    StatusCode::OK.into_response()
}

async fn post(shared: &Shared, url: &str, message: &Value, what: &str) -> Outcome {
    let call = Call {
        method: Method::POST,
        url: url.to_string(),
        headers: vec![(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body: message.to_string().into_bytes(),
        what,
    };
    shared.outbound.send(shared.store.as_ref(), &call).await
}

/// Replaces the command's message with where the request is; `Err` when to try again.
pub(crate) async fn tell(
    shared: &Shared,
    read: &Read,
    target: &Notify,
    state: &str,
) -> Result<u16, std::time::Duration> {
    let Notify::Slack { response_url } = target else { return Ok(0) };
    // What the store says is checked against the configuration: Slack's URLs only.
    let prefix = shared.config.slack.as_ref().map(|s| s.response_urls.as_str()).unwrap_or("https://hooks.slack.com/");
    if !requests::valid_url(response_url) || !response_url.starts_with(prefix) {
        return Ok(403);
    }
    let r = &read.request;
    let base = shared.public_url.trim_end_matches('/');
    let what = match &r.ask {
        requests::Ask::Rehearse { release, .. } => format!("{} {release}", r.environment),
        requests::Ask::DryRun { release, .. } => format!("a dry run of {} {release}", r.environment),
        requests::Ask::Compare { baseline, candidate, .. } => {
            format!("{} {candidate} against {baseline}", r.environment)
        }
    };
    let mut text = match (&r.state, state) {
        (_, "queued") => format!("Queued: {what} for {} — <{base}/requests/{}|request {}>", r.user, r.id, r.id),
        (_, "running") => format!("Building a copy of production for {what}… <{base}/requests/{}|follow it>", r.id),
        (RequestState::Kept { verdict, expires_at, .. }, _) => format!(
            "{} — {what}: kept for {} until {} <{base}/requests/{}|its page>",
            verdict.as_str(),
            r.user,
            expires_at.format("%Y-%m-%d %H:%M UTC"),
            r.id
        ),
        (RequestState::Finished { verdict, error, .. }, _) => {
            let v = verdict.map(|v| v.as_str()).unwrap_or("error");
            let mut t = format!("{v} — {what}");
            if let Some(e) = error {
                t.push_str(&format!(": {e}"));
            }
            t
        }
        _ => format!("{state}: {what}"),
    };
    if let RequestState::Finished { run_id: Some(run), .. } | RequestState::Kept { run_id: run, .. } = &r.state {
        if state == "finished" || state == "kept" {
            text.push_str(&format!("\n<{base}/runs/{run}/report.html|report>"));
        }
    }
    if let RequestState::Finished { comparison: Some(c), .. } = &r.state {
        text.push_str(&format!(" · <{base}/compares/{c}/compare.html|compare page>"));
    }
    let mut message = json!({ "response_type": "in_channel", "replace_original": true, "text": text });
    if state == "kept" {
        message["blocks"] = json!([
            { "type": "section", "text": { "type": "mrkdwn", "text": text } },
            { "type": "actions", "elements": [{
                "type": "button", "action_id": "reveal", "value": r.id,
                "text": { "type": "plain_text", "text": "Connection secrets (for its owner)" }
            }]}
        ]);
    }
    match post(shared, response_url, &message, &format!("slack: the message of request {}", r.id)).await {
        Outcome::Done { status, .. } | Outcome::Refused { status, .. } => Ok(status.as_u16()),
        Outcome::Later { after, .. } => Err(after),
    }
}
