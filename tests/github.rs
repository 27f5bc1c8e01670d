//! Pull requests on a fake GitHub on loopback that checks what GitHub checks: webhook
//! deliveries signed `X-Hub-Signature-256`, the App's JWT (RS256, its issuer and
//! lifetime) exchanged for an installation token, every API call with that token,
//! GitHub's `Accept` and API version, and the shapes of check runs and comments. The
//! fake fails for a while (502, then 403 rate-limited) where a test says so.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::{json, Value};

use crate::common::fake::{Fake, Got, Reply};
use crate::common::http::{http, start_server, Answer};
use crate::common::{secret_file, wait_for, Sandbox};
use crate::serve::{environments, wait_finished};

const WEBHOOK_SECRET: &[u8] = b"the webhook's secret, long enough";
const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 77;
const HEAD: &str = "9fceb02d0ae598e95dc970b74767f19372d61af8";

/// The fake's own view of what it was asked.
#[derive(Default)]
struct GitHubState {
    /// Calls to fail first: (status, rate-limited).
    failures: Vec<(u16, bool)>,
    next_comment: u64,
    jwt_errors: Vec<String>,
}

struct FakeGitHub {
    fake: Fake,
    state: Arc<Mutex<GitHubState>>,
}

fn fake_github(public_pem: Vec<u8>, failures: Vec<(u16, bool)>) -> FakeGitHub {
    let state = Arc::new(Mutex::new(GitHubState { failures, next_comment: 555, ..Default::default() }));
    let st = state.clone();
    let fake = Fake::start(move |g: &Got| {
        let mut st = st.lock().unwrap();
        let auth = g.header("authorization").unwrap_or_default().to_string();
        if g.header("accept") != Some("application/vnd.github+json")
            || g.header("x-github-api-version") != Some("2022-11-28")
        {
            return Reply::json(415, json!({ "message": "Accept and X-GitHub-Api-Version, please" }));
        }
        if g.method == "POST" && g.path == format!("/app/installations/{INSTALLATION}/access_tokens") {
            // The App's JWT: RS256 with the App's key, issued by the App, at most ten minutes.
            let jwt = auth.strip_prefix("Bearer ").unwrap_or_default();
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public_pem).unwrap();
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            v.set_issuer(&[APP_ID.to_string()]);
            v.set_required_spec_claims(&["exp", "iat", "iss"]);
            match jsonwebtoken::decode::<Value>(jwt, &key, &v) {
                Ok(t) if t.claims["exp"].as_i64().unwrap() - t.claims["iat"].as_i64().unwrap() <= 600 => {
                    return Reply::json(
                        201,
                        json!({ "token": "ghs_installation", "expires_at": "2099-01-01T00:00:00Z" }),
                    )
                }
                Ok(t) => st.jwt_errors.push(format!("lifetime: {:?}", t.claims)),
                Err(e) => st.jwt_errors.push(e.to_string()),
            }
            return Reply::json(401, json!({ "message": "A JSON web token could not be decoded" }));
        }
        if auth != "Bearer ghs_installation" {
            return Reply::json(401, json!({ "message": "Bad credentials" }));
        }
        if (g.path.starts_with("/repos/ops/shop/check-runs") || g.path.contains("/comments")) && !st.failures.is_empty()
        {
            {
                let (status, limited) = st.failures.remove(0);
                let mut headers = Vec::new();
                if limited {
                    let reset = chrono::Utc::now().timestamp() + 1;
                    headers = vec![
                        ("x-ratelimit-remaining".into(), "0".into()),
                        ("x-ratelimit-reset".into(), reset.to_string()),
                    ];
                }
                return Reply { status, headers, body: json!({ "message": "not now" }).to_string() };
            }
        }
        let body = g.json();
        match (g.method.as_str(), g.path.as_str()) {
            ("GET", p) if p.starts_with("/repos/ops/shop/pulls/") => {
                let n: u64 = p.rsplit('/').next().unwrap().parse().unwrap();
                Reply::json(200, pr_json(n, "v3"))
            }
            ("POST", "/repos/ops/shop/check-runs") => {
                let ok = body["name"] == "rehearse" && body["head_sha"] == HEAD && body["status"].is_string();
                Reply::json(if ok { 201 } else { 422 }, json!({ "id": 9001 }))
            }
            ("PATCH", "/repos/ops/shop/check-runs/9001") => {
                let done = body["status"] == "completed";
                let ok = !done
                    || (body["conclusion"].is_string()
                        && body["output"]["summary"].is_string()
                        && body["output"]["title"].is_string());
                Reply::json(if ok { 200 } else { 422 }, json!({ "id": 9001 }))
            }
            ("POST", p) if p.starts_with("/repos/ops/shop/issues/") && p.ends_with("/comments") => {
                st.next_comment += 1;
                let ok = body["body"].is_string();
                Reply::json(if ok { 201 } else { 422 }, json!({ "id": st.next_comment }))
            }
            ("PATCH", p) if p.starts_with("/repos/ops/shop/issues/comments/") => {
                Reply::json(if body["body"].is_string() { 200 } else { 422 }, json!({}))
            }
            ("GET", "/orgs/ops/teams/deployers/memberships/carol") => Reply::json(200, json!({ "state": "active" })),
            ("GET", p) if p.starts_with("/orgs/") => Reply::json(404, json!({ "message": "Not Found" })),
            _ => Reply::json(404, json!({ "message": "Not Found" })),
        }
    });
    FakeGitHub { fake, state }
}

fn pr_json(number: u64, head_ref: &str) -> Value {
    json!({
        "number": number, "title": "Unique customer emails", "state": "open",
        "html_url": format!("https://github.example/ops/shop/pull/{number}"),
        "user": { "login": "alice" },
        "head": { "sha": HEAD, "ref": head_ref },
        "labels": [{ "name": "rehearse" }],
    })
}

/// An RSA key pair for the App (openssl, as `make test-deps` installs it): the private
/// PEM's path and the public PEM.
fn app_key(sb: &Sandbox) -> (std::path::PathBuf, Vec<u8>) {
    let private = sb.dir.path().join("app.pem");
    let out =
        std::process::Command::new("openssl").args(["genrsa", "-out"]).arg(&private).arg("2048").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let public = std::process::Command::new("openssl").args(["rsa", "-pubout", "-in"]).arg(&private).output().unwrap();
    assert!(public.status.success());
    (private, public.stdout)
}

/// GitHub as an App with the private key `key`.
fn config(sb: &Sandbox, api: &str, key: &std::path::Path) -> String {
    config_with(sb, api, &format!("app: {{ id: {APP_ID}, private_key_file: {} }}", key.display()))
}

/// GitHub with `auth` (an `app:` or a `token_file:` line).
fn config_with(sb: &Sandbox, api: &str, auth: &str) -> String {
    let webhook = secret_file(sb, "github-webhook.key", WEBHOOK_SECRET);
    // The server's test configuration, everyone allowed by the environment's rules (the
    // repository's `users` decide), and GitHub.
    let head = crate::serve::CONFIG.replace("  demo: { rehearse: [alice, ci], max_ttl: 3h }\n", "");
    assert!(!head.contains("demo:"), "the demo rule moved: {head}");
    format!(
        "{head}github:
  api_url: {api}
  webhook_secret_file: {}
  {auth}
  repositories:
    ops/shop: {{ environment: demo, users: [alice, \"@ops/deployers\"], baseline: v2 }}
",
        webhook.display(),
    )
}

/// A delivery as GitHub sends it, signed with `secret`.
fn deliver(addr: std::net::SocketAddr, event: &str, id: &str, payload: &Value, secret: Option<&[u8]>) -> Answer {
    let body = payload.to_string();
    let sig = secret.map(|s| {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(s).unwrap();
        m.update(body.as_bytes());
        format!("sha256={}", m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>())
    });
    let mut headers = vec![("X-GitHub-Event", event), ("X-GitHub-Delivery", id), ("Content-Type", "application/json")];
    if let Some(s) = &sig {
        headers.push(("X-Hub-Signature-256", s));
    }
    http(addr, "POST", "/hooks/github", &headers, &body)
}

fn labeled(number: u64, sender: &str) -> Value {
    json!({
        "action": "labeled", "number": number, "label": { "name": "rehearse" },
        "pull_request": pr_json(number, "v3"),
        "repository": { "full_name": "ops/shop" }, "sender": { "login": sender },
        "installation": { "id": INSTALLATION },
    })
}

fn comment(number: u64, sender: &str, text: &str) -> Value {
    json!({
        "action": "created",
        "issue": { "number": number, "pull_request": { "url": "x" } },
        "comment": { "body": text, "user": { "login": sender } },
        "repository": { "full_name": "ops/shop" }, "sender": { "login": sender },
        "installation": { "id": INSTALLATION },
    })
}

fn calls(gh: &FakeGitHub, method: &str, prefix: &str) -> Vec<Got> {
    gh.fake
        .got()
        .into_iter()
        .filter(|g| g.method == method && g.path.starts_with(prefix) && (200..300).contains(&g.status))
        .collect()
}

/// The acceptance's pull request: labelled, it rehearses the demo's v3 as an App would;
/// GitHub fails for a while (502, then 403 rate-limited); the check run still goes queued
/// → in progress → completed/failure and the pull request's one comment ends naming the
/// failing migration, posted once and edited after. Bad deliveries run nothing.
#[test]
fn a_labelled_pull_request_is_rehearsed_and_its_check_run_and_one_comment_follow_it() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let (key, public) = app_key(&sb);
    let gh = fake_github(public, vec![(502, false), (502, false), (403, true), (403, true)]);
    let server = start_server(&sb, &envs, &config(&sb, &gh.fake.url(""), &key));
    let addr = server.addr;

    // Unsigned, mis-signed: refused, nothing runs.
    assert_eq!(deliver(addr, "pull_request", "g-0", &labeled(12, "alice"), None).status, 401);
    assert_eq!(
        deliver(addr, "pull_request", "g-0", &labeled(12, "alice"), Some(b"another secret, quite long")).status,
        401
    );
    let accepted = deliver(addr, "pull_request", "g-1", &labeled(12, "alice"), Some(WEBHOOK_SECRET));
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let id = accepted.json()["id"].as_str().unwrap().to_string();
    assert_eq!(accepted.json()["change"]["pull_request"], 12);
    assert_eq!(accepted.json()["ask"]["release"], "v3");
    // The same delivery again, or its signed body under another delivery id: answered,
    // not run.
    assert_eq!(deliver(addr, "pull_request", "g-1", &labeled(12, "alice"), Some(WEBHOOK_SECRET)).status, 409);
    assert_eq!(deliver(addr, "pull_request", "g-1b", &labeled(12, "alice"), Some(WEBHOOK_SECRET)).status, 409);
    // GitHub's logins are a namespace of their own.
    assert_eq!(accepted.json()["user"], "alice@github");

    let done = wait_finished(addr, &id);
    assert_eq!(done["state"]["verdict"], "failed", "{done}");
    wait_for("the completed check run", 60, || {
        calls(&gh, "PATCH", "/repos/ops/shop/check-runs/9001").iter().any(|g| g.json()["status"] == "completed")
    });
    wait_for("the comment's verdict", 60, || {
        calls(&gh, "PATCH", "/repos/ops/shop/issues/comments/")
            .iter()
            .any(|g| g.json()["body"].as_str().unwrap().contains("failed"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(gh.state.lock().unwrap().jwt_errors.is_empty(), "{:?}", gh.state.lock().unwrap().jwt_errors);
    assert!(gh.state.lock().unwrap().failures.is_empty(), "the fake's failures were not all met");
    // queued → in_progress → completed/failure, in order, once each.
    let created = calls(&gh, "POST", "/repos/ops/shop/check-runs");
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0].json()["status"], "queued");
    let states: Vec<String> = calls(&gh, "PATCH", "/repos/ops/shop/check-runs/9001")
        .iter()
        .map(|g| format!("{}/{}", g.json()["status"].as_str().unwrap(), g.json()["conclusion"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(states, ["in_progress/", "completed/failure"], "{states:?}");
    // One comment, posted once, then edited; it names the failing migration.
    let posted = calls(&gh, "POST", "/repos/ops/shop/issues/12/comments");
    assert_eq!(posted.len(), 1, "the comment was duplicated: {posted:?}");
    let edits = calls(&gh, "PATCH", "/repos/ops/shop/issues/comments/556");
    let last = edits.last().unwrap().json()["body"].as_str().unwrap().to_string();
    assert!(last.contains("0003_unique_customer_email"), "{last}");
    assert!(last.contains(&format!("/requests/{id}")) && last.contains("report.html"), "{last}");
    // Every call to GitHub is in the audit log, without its token.
    let log = http(addr, "GET", "/api/v1/audit?limit=2000", &[("X-Forwarded-User", "alice")], "").body;
    assert!(log.contains("github: check run of request") && log.contains("rate-limited"), "{log}");
    assert!(!log.contains("ghs_installation"), "a token in the audit log");
    // A title of many bytes (CJK: three each) is cut to what a record holds, and taken.
    let mut long = labeled(13, "alice");
    long["pull_request"]["title"] = "変更".repeat(100).into();
    let taken = deliver(addr, "pull_request", "g-2", &long, Some(WEBHOOK_SECRET));
    assert_eq!(taken.status, 202, "{}", taken.body);
    assert!(taken.json()["change"]["title"].as_str().unwrap().len() <= 256);
    let id13 = taken.json()["id"].as_str().unwrap().to_string();
    assert_eq!(wait_finished(addr, &id13)["state"]["state"], "finished");
}

/// With a token instead of an App. Comment commands: `/rehearse compare` from a team member posts the compare page's
/// link; from someone the rules do not name it is refused, audited and answered; a
/// release with shell metacharacters is refused with why; `/rehearse up` keeps a dry run
/// that closing the pull request tears down, leaving nothing.
#[test]
fn comment_commands_are_checked_and_a_closed_pull_request_tears_its_dry_run_down() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    // Authenticated with a token this time (the fake takes the installation's).
    let gh = fake_github(Vec::new(), Vec::new());
    let token = secret_file(&sb, "github-token", b"ghs_installation\n");
    let server =
        start_server(&sb, &envs, &config_with(&sb, &gh.fake.url(""), &format!("token_file: {}", token.display())));
    let addr = server.addr;
    let replies = |n: u64| -> Vec<String> {
        calls(&gh, "POST", &format!("/repos/ops/shop/issues/{n}/comments"))
            .iter()
            .map(|g| g.json()["body"].as_str().unwrap().to_string())
            .collect()
    };

    // Bob is not named: refused, audited, told why on the pull request.
    let bobs = deliver(addr, "issue_comment", "c-1", &comment(20, "bob", "/rehearse compare"), Some(WEBHOOK_SECRET));
    assert_eq!(bobs.status, 403, "{}", bobs.body);
    assert!(replies(20).iter().any(|r| r.contains("@bob may not")), "{:?}", replies(20));
    // Shell metacharacters: not a release; refused with why.
    let evil =
        deliver(addr, "issue_comment", "c-2", &comment(20, "alice", "/rehearse v1;$(reboot)"), Some(WEBHOOK_SECRET));
    assert_eq!(evil.status, 400, "{}", evil.body);
    assert!(replies(20).iter().any(|r| r.contains("is not a release version")), "{:?}", replies(20));

    // Carol, in @ops/deployers: the comparison runs, its page linked on the pull request.
    let carols =
        deliver(addr, "issue_comment", "c-3", &comment(20, "carol", "/rehearse compare"), Some(WEBHOOK_SECRET));
    assert_eq!(carols.status, 202, "{}", carols.body);
    assert_eq!(carols.json()["ask"]["kind"], "compare");
    assert_eq!(carols.json()["ask"]["baseline"], "v2");
    let done = wait_finished(addr, carols.json()["id"].as_str().unwrap());
    let comparison = done["state"]["comparison"].as_str().unwrap().to_string();
    wait_for("the compare page's link on the pull request", 60, || {
        calls(&gh, "PATCH", "/repos/ops/shop/issues/comments/")
            .iter()
            .any(|g| g.json()["body"].as_str().unwrap().contains(&format!("/compares/{comparison}/compare.html")))
    });

    // A dry run on another pull request, then the pull request closed: torn down.
    let up = deliver(addr, "issue_comment", "c-4", &comment(21, "alice", "/rehearse up v2"), Some(WEBHOOK_SECRET));
    assert_eq!(up.status, 202, "{}", up.body);
    let id = up.json()["id"].as_str().unwrap().to_string();
    let kept = crate::serve::wait_state(addr, &id, "kept");
    let run = kept["state"]["run_id"].as_str().unwrap().to_string();
    let mut closed = labeled(21, "alice");
    closed["action"] = "closed".into();
    let gone = deliver(addr, "pull_request", "c-5", &closed, Some(WEBHOOK_SECRET));
    assert_eq!(gone.status, 202, "{}", gone.body);
    assert_eq!(gone.json()["destroying"][0], id.as_str());
    let done = wait_finished(addr, &id);
    assert!(done["state"]["error"].as_str().unwrap().contains("nothing left"), "{done}");
    crate::common::assert_nothing_left(&sb, &run);
    let log = http(addr, "GET", "/api/v1/audit?limit=2000", &[("X-Forwarded-User", "alice")], "").body;
    assert!(log.contains("@bob may not ask for `/rehearse compare` in ops/shop"), "{log}");
}
