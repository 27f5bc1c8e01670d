//! Pull requests on GitHub: its webhook (`POST /hooks/github`, `X-Hub-Signature-256`)
//! for `pull_request` (a labelled pull request is rehearsed, again on each push while
//! labelled; closing it tears its dry run down) and `issue_comment` (`/rehearse
//! [RELEASE]`, `/rehearse compare [BASELINE]`, `/rehearse up [RELEASE]`, `/rehearse
//! down`), from the logins and teams a repository's rule names. What happens goes back
//! through the REST API: a check run on the head commit (queued → in progress →
//! completed, the report's summary as its output) and one comment per pull request,
//! edited in place as the request moves. It authenticates with a token or as a GitHub
//! App (a JWT signed with the App's key, exchanged for an installation token).

mod client;
mod report;

pub(crate) use client::{Failed, GitHub, GitHubError};
pub(crate) use report::tell;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::api::ask::{self, Wanted};
use super::api::{refusal, App, Asked};
use super::audit::Decision;
use super::auth::{Via, Who};
use super::config::Repository;
use super::Shared;
use crate::engine::requests::{self, Change, Notify, Request, State as RequestState};

/// `OWNER/NAME` by GitHub's grammar.
pub(crate) fn valid_repo(repo: &str) -> bool {
    let part =
        |p: &str| !p.is_empty() && p.len() <= 100 && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    repo.split_once('/')
        .is_some_and(|(o, n)| part(o) && part(n) && !n.contains('/') && o != "." && o != ".." && n != "." && n != "..")
}

/// A pull request, as an event or the API gives it.
struct PullRequest {
    number: u64,
    head_sha: String,
    head_ref: String,
    title: String,
    url: String,
    author: String,
}

fn pull_request(v: &Value) -> Option<PullRequest> {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    let head_sha = s("/head/sha").filter(|h| h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit()))?;
    Some(PullRequest {
        number: v["number"].as_u64()?,
        head_sha,
        head_ref: s("/head/ref").unwrap_or_default(),
        title: {
            // At most 256 bytes, cut at a character's boundary.
            let mut t = String::new();
            for c in s("/title").unwrap_or_default().chars().filter(|c| !c.is_control()) {
                if t.len() + c.len_utf8() > 256 {
                    break;
                }
                t.push(c);
            }
            t
        },
        url: s("/html_url").filter(|u| requests::valid_url(u)).unwrap_or_default(),
        author: s("/user/login").filter(|u| requests::valid_user(u)).unwrap_or_default(),
    })
}

/// The release a pull request is, by the repository's template.
fn release_of(template: &str, pr: &PullRequest) -> String {
    template
        .replace("{head_ref}", &pr.head_ref)
        .replace("{head_sha}", &pr.head_sha)
        .replace("{number}", &pr.number.to_string())
}

/// What a comment asks.
#[derive(Debug, PartialEq)]
enum Command {
    Rehearse(Option<String>),
    Compare(Option<String>),
    Up(Option<String>),
    Down,
}

/// `/rehearse …` on the comment's first line; `None` when the comment is not one, the
/// reason when it is one rehearse does not take.
fn command(body: &str) -> Option<Result<Command, String>> {
    let line = body.lines().next()?.trim();
    let rest = line.strip_prefix("/rehearse")?;
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let version = |w: Option<&&str>| -> Result<Option<String>, String> {
        match w {
            None => Ok(None),
            Some(v) if requests::valid_release(v) => Ok(Some(v.to_string())),
            Some(v) => Err(format!(
                "`{}` is not a release version (letters, digits and `._-+`, at most 64)",
                v.chars().filter(|c| !c.is_control() && *c != '`').take(80).collect::<String>()
            )),
        }
    };
    let too_many = |n: usize| words.len() > n;
    Some(match words.first().copied() {
        None => Ok(Command::Rehearse(None)),
        Some("compare") if !too_many(2) => version(words.get(1)).map(Command::Compare),
        Some("up") if !too_many(2) => version(words.get(1)).map(Command::Up),
        Some("down") if !too_many(1) => Ok(Command::Down),
        Some(_) if !too_many(1) => version(words.first()).map(Command::Rehearse),
        Some(_) => Err("it takes `/rehearse [RELEASE]`, `/rehearse compare [BASELINE]`, `/rehearse up [RELEASE]` or `/rehearse down`".into()),
    })
}

/// Whether `login` may ask in `repo`: named, or a member of a team named.
async fn allowed(shared: &Shared, gh: &GitHub, repo: &Repository, login: &str, installation: Option<u64>) -> bool {
    if repo.users.iter().any(|u| u == login) {
        return true;
    }
    for team in repo.users.iter().filter_map(|u| u.strip_prefix('@')) {
        let Some((org, slug)) = team.split_once('/') else { continue };
        let path = format!("/orgs/{org}/teams/{slug}/memberships/{login}");
        if let Ok(v) =
            gh.api(shared, installation, Method::GET, &path, None, &format!("github: is {login} in {team}")).await
        {
            if v["state"] == "active" {
                return true;
            }
        }
    }
    false
}

/// `POST /hooks/github`.
pub(crate) async fn hook(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let asked = Asked { peer, method: Method::POST, path: "/hooks/github".into() };
    let Some(gh) = app.shared.github.as_ref() else {
        app.audit(&asked, None, Decision::Refused, "no github: section").await;
        return refusal(StatusCode::NOT_FOUND, "this server takes no GitHub webhook");
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = super::hooks::signature::verify_github(&gh.webhook_secret, text("x-hub-signature-256"), &body) {
        app.audit(&asked, None, Decision::Refused, &format!("github: {e}")).await;
        return refusal(StatusCode::UNAUTHORIZED, &e.to_string());
    }
    let event = text("x-github-event").unwrap_or_default().to_string();
    let Some(delivery) = text("x-github-delivery").filter(|d| super::hooks::valid_delivery(d)).map(str::to_string)
    else {
        return refusal(StatusCode::BAD_REQUEST, "no X-GitHub-Delivery");
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return refusal(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    if event == "ping" {
        return Json(json!({ "pong": true })).into_response();
    }
    let repo_name = v.pointer("/repository/full_name").and_then(Value::as_str).unwrap_or_default().to_string();
    let Some(repo) = gh.config.repositories.get(&repo_name).filter(|_| valid_repo(&repo_name)) else {
        app.audit(&asked, None, Decision::Refused, "github: not a repository this server rehearses").await;
        return (StatusCode::ACCEPTED, Json(json!({ "ignored": "not a repository this server rehearses" })))
            .into_response();
    };
    let sender = v
        .pointer("/sender/login")
        .and_then(Value::as_str)
        .filter(|s| requests::valid_user(s))
        .unwrap_or_default()
        .to_string();
    let installation = v.pointer("/installation/id").and_then(Value::as_u64);
    let action = v["action"].as_str().unwrap_or_default().to_string();
    let ctx = Ctx {
        app: &app,
        gh,
        repo,
        repo_name: &repo_name,
        asked: &asked,
        sender: &sender,
        installation,
        delivery: &delivery,
        body: &body,
    };
    match (event.as_str(), action.as_str()) {
        ("pull_request", "closed") => {
            let Some(pr) = pull_request(&v["pull_request"]) else {
                return refusal(StatusCode::BAD_REQUEST, "no pull request");
            };
            ctx.tear_down(pr.number).await
        }
        ("pull_request", "labeled" | "synchronize" | "opened" | "reopened") => {
            let Some(pr) = pull_request(&v["pull_request"]) else {
                return refusal(StatusCode::BAD_REQUEST, "no pull request");
            };
            let labelled = v
                .pointer("/pull_request/labels")
                .and_then(Value::as_array)
                .is_some_and(|ls| ls.iter().any(|l| l["name"] == repo.label.as_str()));
            let this_label =
                action != "labeled" || v.pointer("/label/name").and_then(Value::as_str) == Some(repo.label.as_str());
            if !labelled || !this_label {
                return (StatusCode::ACCEPTED, Json(json!({ "ignored": "not labelled for a rehearsal" })))
                    .into_response();
            }
            let release = release_of(&repo.release, &pr);
            ctx.ask(&pr, Command::Rehearse(Some(release)), "the label").await
        }
        ("issue_comment", "created") => {
            if v.pointer("/issue/pull_request").is_none() {
                return (StatusCode::ACCEPTED, Json(json!({ "ignored": "not a pull request's comment" })))
                    .into_response();
            }
            let Some(number) = v.pointer("/issue/number").and_then(Value::as_u64) else {
                return refusal(StatusCode::BAD_REQUEST, "no issue number");
            };
            let body = v.pointer("/comment/body").and_then(Value::as_str).unwrap_or_default();
            let cmd = match command(body) {
                None => {
                    return (StatusCode::ACCEPTED, Json(json!({ "ignored": "not a /rehearse command" })))
                        .into_response()
                }
                Some(Err(why)) => return ctx.refuse_replying(number, StatusCode::BAD_REQUEST, &why).await,
                Some(Ok(c)) => c,
            };
            if cmd == Command::Down {
                if !allowed(&app.shared, gh, repo, &sender, installation).await {
                    let why = format!(
                        "@{sender} may not `/rehearse down` in {repo_name} (github.repositories.{repo_name}.users)"
                    );
                    return ctx.refuse_replying(number, StatusCode::FORBIDDEN, &why).await;
                }
                return ctx.tear_down(number).await;
            }
            // The pull request's head, from the API (a comment's event does not carry it).
            let path = format!("/repos/{repo_name}/pulls/{number}");
            let pr = match gh
                .api(&app.shared, installation, Method::GET, &path, None, &format!("github: {repo_name}#{number}"))
                .await
            {
                Ok(v) => pull_request(&v),
                Err(_) => None,
            };
            let Some(pr) = pr else {
                return ctx
                    .refuse_replying(
                        number,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot read the pull request from GitHub",
                    )
                    .await;
            };
            ctx.ask(&pr, cmd, "a comment").await
        }
        _ => (StatusCode::ACCEPTED, Json(json!({ "ignored": format!("{event} {action}") }))).into_response(),
    }
}

/// One delivery's context.
struct Ctx<'a> {
    app: &'a App,
    gh: &'a GitHub,
    repo: &'a Repository,
    repo_name: &'a str,
    asked: &'a Asked,
    sender: &'a str,
    installation: Option<u64>,
    delivery: &'a str,
    /// The delivery's signed body (its replays are known by it).
    body: &'a [u8],
}

impl Ctx<'_> {
    /// Refuses (audited) and says why on the pull request.
    async fn refuse_replying(&self, number: u64, status: StatusCode, why: &str) -> Response {
        let who = Who {
            user: if self.sender.is_empty() { "github".into() } else { self.sender.to_string() },
            via: Via::Token,
        };
        let text = format!("rehearse: {why}");
        let path = format!("/repos/{}/issues/{number}/comments", self.repo_name);
        let body = json!({ "body": text });
        // Told or not, the refusal stands; the audit log has both.
        let _replied = self
            .gh
            .api(
                &self.app.shared,
                self.installation,
                Method::POST,
                &path,
                Some(&body),
                &format!("github: a reply on {}#{number}", self.repo_name),
            )
            .await;
        self.app.refuse(self.asked, &who, status, format!("github: {why}")).await
    }

    async fn ask(&self, pr: &PullRequest, cmd: Command, by: &str) -> Response {
        let (app, repo) = (self.app, self.repo);
        if !allowed(&app.shared, self.gh, repo, self.sender, self.installation).await {
            let what = match &cmd {
                Command::Rehearse(_) => "rehearse",
                Command::Compare(_) => "`/rehearse compare`",
                Command::Up(_) => "`/rehearse up`",
                Command::Down => "`/rehearse down`",
            };
            let why = format!(
                "@{} may not ask for {what} in {} (github.repositories.{}.users)",
                self.sender, self.repo_name, self.repo_name
            );
            return self.refuse_replying(pr.number, StatusCode::FORBIDDEN, &why).await;
        }
        let head = release_of(&repo.release, pr);
        let baseline_default = repo.baseline.clone();
        let (wanted_release, wanted_baseline, keep) = match cmd {
            Command::Rehearse(r) => (r.unwrap_or(head), None, false),
            Command::Up(r) => (r.unwrap_or(head), None, true),
            Command::Compare(b) => match b.or(baseline_default) {
                Some(b) => (head, Some(b), false),
                None => {
                    let why = "`/rehearse compare` needs a baseline: `/rehearse compare RELEASE`, or `baseline:` in the repository's rule";
                    return self.refuse_replying(pr.number, StatusCode::BAD_REQUEST, why).await;
                }
            },
            Command::Down => unreachable!("handled before"),
        };
        let wanted = match (&wanted_baseline, keep) {
            (Some(b), _) => Wanted::Compare { baseline: b, candidate: &wanted_release, deploy: false },
            (None, true) => Wanted::DryRun { release: &wanted_release, ttl: None },
            (None, false) => Wanted::Rehearse { release: &wanted_release, from: None, chaos: None },
        };
        // GitHub's logins are their own namespace: `alice@github` is not the portal's alice.
        let user = format!("{}@github", self.sender);
        let ask = match ask::decide(app, &user, &repo.environment, wanted) {
            Ok(a) => a,
            Err((status, why)) => return self.refuse_replying(pr.number, status, &why).await,
        };
        let who = Who { user: user.clone(), via: Via::Token };
        let mut request = Request::new(&user, &repo.environment, ask);
        request.notify.push(Notify::GitHub {
            repo: self.repo_name.to_string(),
            pull_request: pr.number,
            head_sha: pr.head_sha.clone(),
            installation: self.installation,
        });
        request.change = Some(Change {
            commit: Some(pr.head_sha.clone()),
            author: Some(pr.author.clone()).filter(|a| !a.is_empty()),
            pull_request: Some(pr.number),
            title: Some(pr.title.clone()).filter(|t| !t.is_empty()),
            url: Some(pr.url.clone()).filter(|u| !u.is_empty()),
        });
        if let Err(r) = ask::within_limit(app, self.asked, &who, &request.environment).await {
            return r;
        }
        app.audit(
            self.asked,
            Some(&who.user),
            Decision::Allowed,
            &format!("github: {}#{} by {by}", self.repo_name, pr.number),
        )
        .await;
        // GitHub signs no timestamp: its signed body (unique ids and times in it) is the key.
        let signed = super::hooks::replay_key(self.body);
        super::hooks::take(app, self.asked, &who, "github", self.delivery, &signed, request).await
    }

    /// Tears down the pull request's kept dry runs (it was closed, or `/rehearse down`).
    async fn tear_down(&self, number: u64) -> Response {
        let app = self.app;
        let Ok((found, _)) = requests::list_known(app.shared.store.as_ref(), &app.shared.finished).await else {
            return refusal(StatusCode::SERVICE_UNAVAILABLE, "cannot read the requests");
        };
        let mut destroyed = Vec::new();
        for read in found {
            let ours = read.request.notify.iter().any(|n| {
                matches!(n, Notify::GitHub { repo, pull_request, .. } if repo == self.repo_name && *pull_request == number)
            });
            if ours && matches!(read.request.state, RequestState::Kept { .. }) {
                let id = read.request.id.clone();
                let why = format!("{}#{number} closed or `/rehearse down`", self.repo_name);
                if super::kept::destroy(&app.shared, read, why, &app.shared.signals) {
                    destroyed.push(id);
                }
            }
        }
        app.audit(
            self.asked,
            Some(self.sender).filter(|s| !s.is_empty()),
            Decision::Allowed,
            &format!("github: tear down the dry runs of {}#{number}: {destroyed:?}", self.repo_name),
        )
        .await;
        (StatusCode::ACCEPTED, Json(json!({ "destroying": destroyed }))).into_response()
    }
}
