//! `rehearse serve`, the real binary on a free port of 127.0.0.1, asked over HTTP as a
//! proxy, a browser behind it and a script would ask: who may do what is decided and
//! audited, a request is recorded before it is accepted, runs are queued at most N at
//! once, and a run's events arrive as Server-Sent Events while it runs.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::http::{exchange, http, start_server as start, start_server_as, Answer, Server};
use crate::common::{self, Sandbox};

/// The same from 127.0.0.2: an address that is not the proxy's.
fn http_from_elsewhere(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stream = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        s.connect(addr).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    exchange(stream, method, path, headers, "")
}

/// The events of request `id` as a browser's EventSource reads them, until `end`.
fn events(addr: SocketAddr, id: &str, user: &str) -> Vec<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "GET /api/v1/requests/{id}/events HTTP/1.1\r\nHost: r\r\nX-Forwarded-User: {user}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
    let mut data = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        if line == "event: end" {
            return data;
        }
        if let Some(d) = line.strip_prefix("data: ") {
            data.push(d.to_string());
        }
    }
    panic!("the stream ended without `end`: {data:?}");
}

/// The environments directory: the demo as the repository has it, `quick`, a
/// rehearsal without a database whose one suite takes `suite_secs`, and `slow`, the same
/// taking 20 s.
pub(crate) fn environments(sb: &Sandbox, suite_secs: f64) -> PathBuf {
    common::demo_backups();
    let demo = std::fs::read_to_string(common::root().join("environments/demo.yaml")).unwrap();
    let path = common::write_description(sb, "demo.yaml", &common::from_repository(&demo));
    let quick = format!(
        "name: quick\nprovider: local\nowner: tests@example.com\nrelease:\n  version: v1\n  artifact: \"{{root}}/demo/build/releases/v2\"\nsuites:\n  wait:\n    command: \"sleep {suite_secs}\"\n    results: exit-code\n    timeout: 30s\n"
    );
    common::write_description(sb, "quick.yaml", &quick);
    common::write_description(
        sb,
        "slow.yaml",
        &quick.replace("name: quick", "name: slow").replace(&format!("sleep {suite_secs}"), "sleep 20"),
    );
    path.parent().unwrap().to_path_buf()
}

pub(crate) const CONFIG: &str = "environments: {envs}
max_running: 2
proxy:
  header: X-Forwarded-User
  trusted: [127.0.0.1]
admins: [alice]
rules:
  \"*\": { rehearse: [\"*\"], max_per_user: 60 }
  demo: { rehearse: [alice, ci], max_ttl: 3h }
";

/// Asks for a rehearsal (`body` is the JSON the portal's form sends).
fn ask(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> Answer {
    http(addr, "POST", "/api/v1/rehearsals", headers, body)
}

/// The server with a token for the script `ci`, made as an operator makes one
/// (`rehearse serve --new-token ci`: the token on stdout, its configuration entry on
/// stderr, the token itself nowhere in it); the token.
pub(crate) fn start_with_token(sb: &Sandbox, envs: &std::path::Path) -> (crate::common::http::Server, String) {
    let out = sb.cmd().args(["serve", "--new-token", "ci"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let entry = String::from_utf8(out.stderr).unwrap().lines().skip(1).collect::<Vec<_>>().join("\n");
    assert!(entry.contains("sha256: ") && !entry.contains(&token), "{entry}");
    (start(sb, envs, &format!("{CONFIG}tokens:\n{entry}\n")), token)
}

/// The CSRF token the server gives `user`'s pages (from `/api/v1/session`).
fn csrf_of(addr: SocketAddr, user: &str) -> String {
    let session = http(addr, "GET", "/api/v1/session", &[("X-Forwarded-User", user)], "").json();
    session["csrf"].as_str().unwrap_or_else(|| panic!("no CSRF token for {user}: {session}")).to_string()
}

/// Asks for a rehearsal as a script does: with its API token.
fn ask_with_token(addr: SocketAddr, token: &str, body: &str) -> Answer {
    ask(addr, &[("Authorization", &format!("Bearer {token}"))], body)
}

pub(crate) fn wait_finished(addr: SocketAddr, id: &str) -> Value {
    wait_state(addr, id, "finished")
}

/// Request `id` once it is in `state` (`finished`, `kept`).
pub(crate) fn wait_state(addr: SocketAddr, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = http(addr, "GET", &format!("/api/v1/requests/{id}"), &[("X-Forwarded-User", "alice")], "").json();
        if r["state"]["state"] == state {
            return r;
        }
        assert!(Instant::now() < deadline, "request {id} never {state}: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `user`'s POST with their CSRF token, as the portal's script sends it.
pub(crate) fn post_as(addr: SocketAddr, user: &str, path: &str, body: &str) -> Answer {
    let csrf = csrf_of(addr, user);
    http(addr, "POST", path, &[("X-Forwarded-User", user), ("X-Rehearse-CSRF", &csrf)], body)
}

/// A dry run is built and kept for the one who asked: its endpoints and secrets are
/// hers alone (a deliberate, audited reveal), she extends it within the rule's
/// `max_ttl`, and destroys it; a ttl over the maximum is refused with why.
#[test]
fn a_dry_run_is_kept_for_its_owner_alone_who_extends_and_destroys_it() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let server = start(&sb, &envs, CONFIG);
    let addr = server.addr;

    let too_long = post_as(addr, "alice", "/api/v1/dry-runs", r#"{"environment":"demo","release":"v2","ttl":"8h"}"#);
    assert_eq!(too_long.status, 403, "{}", too_long.body);
    let why = too_long.json()["error"].as_str().unwrap().to_string();
    assert!(why.contains("ttl 8h is over the maximum 3h for dry runs of demo (rules.demo.max_ttl)"), "{why}");
    let bobs = post_as(addr, "bob", "/api/v1/dry-runs", r#"{"environment":"demo","release":"v2","ttl":"1h"}"#);
    assert_eq!(bobs.status, 403, "{}", bobs.body);

    let asked = post_as(addr, "alice", "/api/v1/dry-runs", r#"{"environment":"demo","release":"v2","ttl":"1h"}"#);
    assert_eq!(asked.status, 202, "{}", asked.body);
    let id = asked.json()["id"].as_str().unwrap().to_string();
    let kept = wait_state(addr, &id, "kept");
    assert_eq!(kept["state"]["verdict"], "passed", "{kept}");
    let run_id = kept["state"]["run_id"].as_str().unwrap().to_string();
    let expires = |r: &Value| chrono::DateTime::parse_from_rfc3339(r["state"]["expires_at"].as_str().unwrap()).unwrap();
    let first = expires(&kept);
    let left = first.signed_duration_since(chrono::Utc::now()).num_seconds();
    assert!((3300..=3600).contains(&left), "expires in {left} s: {kept}");

    // Its owner's page shows the endpoints and the buttons, never a secret; bob's
    // shows neither.
    let page = |user: &str| http(addr, "GET", &format!("/requests/{id}"), &[("X-Forwarded-User", user)], "");
    let hers = page("alice");
    assert_eq!(hers.header("cache-control"), Some("no-store"));
    let secret = std::fs::read_to_string(sb.state().join(format!("runs/{run_id}/connection.json"))).unwrap();
    let password =
        serde_json::from_str::<Value>(&secret).unwrap()["databases"]["db"]["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 16);
    assert!(hers.body.contains("id=\"endpoints\"") && hers.body.contains("id=\"destroy\""), "{}", hers.body);
    assert!(!hers.body.contains(&password), "a secret on the page");
    let his = page("bob");
    assert!(his.body.contains("kept until") && !his.body.contains("id=\"endpoints\""), "{}", his.body);
    assert!(!his.body.contains("id=\"destroy\"") && !his.body.contains(&password));

    // Bob may neither reveal, extend nor destroy it.
    for what in ["reveal", "extend", "destroy"] {
        let body = if what == "extend" { r#"{"by":"1h"}"# } else { "{}" };
        let r = post_as(addr, "bob", &format!("/api/v1/requests/{id}/{what}"), body);
        assert_eq!(r.status, 403, "{what}: {}", r.body);
        assert!(r.body.contains("only alice, who asked for it"), "{}", r.body);
        assert!(!r.body.contains(&password));
    }
    // Alice reveals: the password, and a URL that reaches the copy.
    let revealed = post_as(addr, "alice", &format!("/api/v1/requests/{id}/reveal"), "{}");
    assert_eq!(revealed.status, 200, "{}", revealed.body);
    assert_eq!(revealed.header("cache-control"), Some("no-store"));
    let db = &revealed.json()["databases"]["db"];
    assert_eq!(db["password"].as_str(), Some(password.as_str()));
    let endpoint = db["endpoint"].as_str().unwrap();
    TcpStream::connect(endpoint).unwrap_or_else(|e| panic!("the copy's database at {endpoint}: {e}"));

    // Extended within the rule; past it, refused with why.
    let more = post_as(addr, "alice", &format!("/api/v1/requests/{id}/extend"), r#"{"by":"1h"}"#);
    assert_eq!(more.status, 200, "{}", more.body);
    let now = wait_state(addr, &id, "kept");
    let second = expires(&now);
    assert!((second - first).num_seconds() >= 3599, "{first} → {second}");
    let too_far = post_as(addr, "alice", &format!("/api/v1/requests/{id}/extend"), r#"{"by":"4h"}"#);
    assert_eq!(too_far.status, 403, "{}", too_far.body);
    assert!(too_far.body.contains("rules.max_ttl"), "{}", too_far.body);
    let listed = sb.cmd().args(["list", "--format", "json"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&run_id));

    // Destroyed: torn down from its journal, the request finished, nothing left.
    let gone = post_as(addr, "alice", &format!("/api/v1/requests/{id}/destroy"), "{}");
    assert_eq!(gone.status, 202, "{}", gone.body);
    let done = wait_finished(addr, &id);
    assert!(done["state"]["error"].as_str().unwrap().contains("destroyed by alice; torn down, nothing left"), "{done}");
    common::assert_nothing_left(&sb, &run_id);
    let log = http(addr, "GET", "/api/v1/audit?limit=1000", &[("X-Forwarded-User", "alice")], "").body;
    for why in ["revealed the secrets of run", "only alice, who asked for it, may reveal", "ttl 8h is over the maximum"]
    {
        assert!(log.contains(why), "no `{why}` in the audit log");
    }
    assert!(!log.contains(&password), "a secret in the audit log");
}

#[test]
fn a_release_is_rehearsed_on_request_its_events_stream_and_every_decision_is_audited() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let (server, token) = start_with_token(&sb, &envs);
    let addr = server.addr;
    let demo_v2 = r#"{"environment":"demo","release":"v2"}"#;

    // Refused, each with its reason and status.
    let none = ask(addr, &[], demo_v2);
    assert_eq!(none.status, 401, "{}", none.body);
    let forged = http_from_elsewhere(addr, "GET", "/api/v1/session", &[("X-Forwarded-User", "alice")]);
    assert_eq!(forged.status, 401, "{}", forged.body);
    assert!(forged.body.contains("not a trusted proxy"), "{}", forged.body);
    let bad_token = ask(addr, &[("Authorization", "Bearer rht_0000")], demo_v2);
    assert_eq!(bad_token.status, 401, "{}", bad_token.body);
    let no_csrf = ask(addr, &[("X-Forwarded-User", "alice")], demo_v2);
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    let bob_csrf = csrf_of(addr, "bob");
    let not_bobs = ask(addr, &[("X-Forwarded-User", "bob"), ("X-Rehearse-CSRF", &bob_csrf)], demo_v2);
    assert_eq!(not_bobs.status, 403, "{}", not_bobs.body);
    assert!(not_bobs.json()["error"].as_str().unwrap().contains("bob may not rehearse on demo"), "{}", not_bobs.body);
    let wrong_csrf = ask(addr, &[("X-Forwarded-User", "alice"), ("X-Rehearse-CSRF", &bob_csrf)], demo_v2);
    assert_eq!(wrong_csrf.status, 403, "{}", wrong_csrf.body);
    let unknown = ask_with_token(addr, &token, r#"{"environment":"nope","release":"v2"}"#);
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let too_big =
        ask_with_token(addr, &token, &format!(r#"{{"environment":"demo","release":"{}"}}"#, "v".repeat(20_000)));
    assert_eq!(too_big.status, 413, "{}", too_big.body);

    // Alice, through the proxy, with her CSRF token: accepted, recorded, run.
    let session = http(addr, "GET", "/api/v1/session", &[("X-Forwarded-User", "alice")], "");
    assert_eq!(session.status, 200);
    for (name, want) in
        [("cache-control", "no-store"), ("x-content-type-options", "nosniff"), ("x-frame-options", "DENY")]
    {
        assert_eq!(session.header(name), Some(want), "{name}");
    }
    let csp = session.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let csrf = session.json()["csrf"].as_str().unwrap().to_string();
    let accepted = ask(addr, &[("X-Forwarded-User", "alice"), ("X-Rehearse-CSRF", &csrf)], demo_v2);
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let id = accepted.json()["id"].as_str().unwrap().to_string();
    assert_eq!(accepted.header("location"), Some(format!("/api/v1/requests/{id}").as_str()));
    // Recorded in the state store before the answer.
    let record = sb.state().join(format!("server/requests/{id}.json"));
    assert!(record.is_file(), "{}", record.display());

    // Bob watches it: the steps arrive as they happen, then the verdict, then `end`.
    let seen = events(addr, &id, "bob");
    let text = seen.join("\n");
    for step in ["database.db restore", "install.web install", "suite.smoke suite", "verdict: passed (exit 0)"] {
        assert!(text.contains(step), "no `{step}` in:\n{text}");
    }
    let done = wait_finished(addr, &id);
    assert_eq!(done["state"]["verdict"], "passed", "{done}");
    let run_id = done["state"]["run_id"].as_str().unwrap();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(sb.report_dir(run_id).join("report.json")).unwrap()).unwrap();
    assert_eq!(report["verdict"], "passed");
    common::assert_nothing_left(&sb, run_id);
    // The portal lists it with its restore's and migration's times, for the trend.
    let index = http(addr, "GET", "/", &[("X-Forwarded-User", "bob")], "").body;
    let restore = report["steps"].as_array().unwrap().iter().find(|s| s["action"] == "restore").unwrap()["duration_ms"]
        .as_u64()
        .unwrap();
    assert!(index.contains(&format!("value=\"{restore}\"></meter> {restore} ms")), "{index}");
    assert!(index.contains("class=\"phase migration\"><meter"), "{index}");
    // A watcher who comes after the end gets the whole run and the end.
    assert_eq!(events(addr, &id, "alice"), seen);
    // The API's schema describes the records it sends: this one validates.
    let schema = http(addr, "GET", "/api/v1/schema", &[("X-Forwarded-User", "bob")], "").json();
    let record = http(addr, "GET", &format!("/api/v1/requests/{id}"), &[("X-Forwarded-User", "bob")], "").json();
    let validator = jsonschema::validator_for(&schema["request"]).unwrap();
    assert!(validator.is_valid(&record), "{record} against {}", schema["request"]);
    let mut forged = record.clone();
    forged["state"]["state"] = "exploded".into();
    assert!(!validator.is_valid(&forged));
    assert!(schema["bodies"]["POST /api/v1/dry-runs"]["properties"]["ttl"].is_object(), "{schema}");
    // The run's newest log's end, redacted, for the run page's tail.
    let tail = http(addr, "GET", &format!("/api/v1/requests/{id}/log"), &[("X-Forwarded-User", "bob")], "").json();
    assert!(tail["file"].as_str().unwrap().ends_with(".log"), "{tail}");
    assert!(!tail["lines"].as_array().unwrap().is_empty(), "{tail}");

    // A script with its token needs no CSRF token.
    let by_ci = ask_with_token(addr, &token, r#"{"environment":"quick","release":"v1"}"#);
    assert_eq!(by_ci.status, 202, "{}", by_ci.body);
    assert_eq!(wait_finished(addr, by_ci.json()["id"].as_str().unwrap())["state"]["verdict"], "passed");

    // The audit log has every decision, refusals with why; only admins read it.
    let not_admin = http(addr, "GET", "/api/v1/audit", &[("X-Forwarded-User", "bob")], "");
    assert_eq!(not_admin.status, 403);
    let log = http(addr, "GET", "/api/v1/audit?limit=1000", &[("X-Forwarded-User", "alice")], "").json();
    let entries = log["entries"].as_array().unwrap();
    let refused =
        |why: &str| entries.iter().any(|e| e["decision"] == "refused" && e["why"].as_str().unwrap().contains(why));
    for why in [
        "no identity",
        "not a trusted proxy",
        "not one this server knows",
        "no CSRF token",
        "the CSRF token is not this user's",
        "bob may not rehearse on demo",
        "no such environment",
        "bob is not an administrator",
    ] {
        assert!(refused(why), "no refusal `{why}` in the audit log: {log}");
    }
    // The same as a page for admins, every text escaped.
    let page = http(addr, "GET", "/audit", &[("X-Forwarded-User", "alice")], "");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("not a trusted proxy") && page.body.contains("<td>refused</td>"), "{}", page.body);
    assert_eq!(http(addr, "GET", "/audit", &[("X-Forwarded-User", "bob")], "").status, 403);
    assert!(entries.iter().any(|e| e["decision"] == "allowed"
        && e["user"] == "alice"
        && e["why"].as_str().unwrap().contains(&format!("request {id}"))));
}

/// Fifty requests at once against one server that runs two at a time: all accepted,
/// never more than two running, each finished with its verdict, nothing left.
#[test]
fn fifty_requests_at_once_run_two_at_a_time_and_all_finish() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.3);
    let server = start(&sb, &envs, CONFIG);
    let addr = server.addr;
    let csrf = [csrf_of(addr, "carol"), csrf_of(addr, "dave")];
    let asked: Vec<std::thread::JoinHandle<Answer>> = (0..50)
        .map(|i| {
            let (user, csrf) = (["carol", "dave"][i % 2], csrf[i % 2].clone());
            std::thread::spawn(move || {
                ask(
                    addr,
                    &[("X-Forwarded-User", user), ("X-Rehearse-CSRF", &csrf)],
                    r#"{"environment":"quick","release":"v1"}"#,
                )
            })
        })
        .collect();
    let ids: Vec<String> = asked
        .into_iter()
        .map(|h| {
            let a = h.join().unwrap();
            assert_eq!(a.status, 202, "{}", a.body);
            a.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    // Watched while it runs: never more than two running.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut most = 0;
    loop {
        let all = http(addr, "GET", "/api/v1/requests", &[("X-Forwarded-User", "carol")], "").json();
        let reqs = all["requests"].as_array().unwrap();
        let running = reqs.iter().filter(|r| r["state"]["state"] == "running").count();
        most = most.max(running);
        if reqs.iter().filter(|r| r["state"]["state"] == "finished").count() == ids.len() {
            break;
        }
        assert!(Instant::now() < deadline, "not all finished: {all}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(most <= 2, "{most} running at once");
    // And by the runs' own times: no instant had more than two.
    let mut spans = Vec::new();
    for id in &ids {
        let r = wait_finished(addr, id);
        assert_eq!(r["state"]["verdict"], "passed", "{r}");
        let at = |k: &str| chrono::DateTime::parse_from_rfc3339(r["state"][k].as_str().unwrap()).unwrap();
        spans.push((at("started_at"), at("ended_at")));
        common::assert_nothing_left(&sb, r["state"]["run_id"].as_str().unwrap());
    }
    for (s, _) in &spans {
        let overlapping = spans.iter().filter(|(a, b)| a <= s && s < b).count();
        assert!(overlapping <= 2, "{overlapping} runs at {s}");
    }
    assert!(most >= 1);
}

/// `kill -9` of the server while two rehearsals run and three wait: on its restart, the
/// two are torn down from their journals and finished as interrupted (their processes
/// gone), the three run and pass; each of the five ran once.
#[test]
fn a_server_killed_mid_run_tears_its_runs_down_on_restart_and_runs_the_queue() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let server = start(&sb, &envs, CONFIG);
    let addr = server.addr;
    let csrf = csrf_of(addr, "erin");
    // Two slow ones first (the queue runs the oldest first), then three quick ones.
    let ids: Vec<String> = ["slow", "slow", "quick", "quick", "quick"]
        .into_iter()
        .map(|env| {
            let a = ask(
                addr,
                &[("X-Forwarded-User", "erin"), ("X-Rehearse-CSRF", &csrf)],
                &format!(r#"{{"environment":"{env}","release":"v1"}}"#),
            );
            assert_eq!(a.status, 202, "{}", a.body);
            a.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    // Two running their 20 s suite, three queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    let running: Vec<(String, String)> = loop {
        let all = http(addr, "GET", "/api/v1/requests", &[("X-Forwarded-User", "erin")], "").json();
        let running: Vec<(String, String)> = all["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"]["state"] == "running")
            .map(|r| (r["id"].as_str().unwrap().to_string(), r["state"]["run_id"].as_str().unwrap().to_string()))
            .collect();
        let suites_started = running.iter().all(|(_, run)| !common::tagged_processes(run).is_empty());
        if running.len() == 2 && suites_started {
            break running;
        }
        assert!(Instant::now() < deadline, "never two running: {all}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // A second server on the same state directory is refused: it would take these two
    // running requests for a dead server's and tear them down.
    let second = sb
        .cmd()
        .args(["serve", "--config"])
        .arg(sb.dir.path().join("serve.yaml"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("one server per state directory"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let mut server = server;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.child.id() as i32), nix::sys::signal::SIGKILL).unwrap();
    server.child.wait().unwrap();
    for (_, run) in &running {
        assert!(!common::tagged_processes(run).is_empty(), "run {run}'s suite died with the server");
    }
    drop(server);

    let server = start(&sb, &envs, CONFIG);
    let addr = server.addr;
    for (id, run) in &running {
        let r = wait_finished(addr, id);
        assert_eq!(r["state"]["verdict"], "interrupted", "{r}");
        assert_eq!(r["state"]["run_id"], run.as_str());
        assert!(r["state"]["error"].as_str().unwrap().contains("torn down, nothing left"), "{r}");
        common::assert_nothing_left(&sb, run);
    }
    let mut runs = Vec::new();
    for id in &ids {
        let r = wait_finished(addr, id);
        if !running.iter().any(|(i, _)| i == id) {
            assert_eq!(r["state"]["verdict"], "passed", "{r}");
        }
        let run = r["state"]["run_id"].as_str().unwrap().to_string();
        common::assert_nothing_left(&sb, &run);
        runs.push(run);
    }
    // Five requests, five runs: none ran twice.
    let mut on_disk: Vec<String> = std::fs::read_dir(sb.state().join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    runs.sort();
    assert_eq!(on_disk, runs);
}

/// `rehearse request` asks the server with a token (no cloud credentials), prints the
/// run's events as they come and exits with the run's code; a bad token and an
/// unreachable server are clear errors with their exit codes.
#[test]
fn the_cli_pointed_at_a_server_rehearses_keeps_extends_and_destroys_with_a_token() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let (server, token) = start_with_token(&sb, &envs);
    let url = format!("http://{}", server.addr);
    let ask = |token: &str, env: &str, url: &str| {
        sb.cmd()
            .args(["request", env, "--release", "v2", "--server", url])
            .env("REHEARSE_TOKEN", token)
            .env_remove("AWS_ACCESS_KEY_ID")
            .output()
            .unwrap()
    };
    // As a GitHub Actions job asks it: the change from its variables goes with it.
    let ok = sb
        .cmd()
        .args(["request", "demo", "--release", "v2", "--server", &url])
        .env("REHEARSE_TOKEN", &token)
        .env("GITHUB_SHA", "9fceb02d0ae598e95dc970b74767f19372d61af8")
        .env("GITHUB_ACTOR", "alice")
        .env("GITHUB_REF", "refs/pull/12/merge")
        .env("GITHUB_STEP_SUMMARY", sb.dir.path().join("step-summary.md"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&ok.stderr);
    assert_eq!(ok.status.code(), Some(0), "{err}");
    let id = err.split_whitespace().find(|w| w.starts_with("q-")).unwrap().trim_end_matches(':').to_string();
    let record =
        http(server.addr, "GET", &format!("/api/v1/requests/{id}"), &[("X-Forwarded-User", "alice")], "").json();
    assert_eq!(record["change"]["pull_request"], 12, "{record}");
    let run = record["state"]["run_id"].as_str().unwrap();
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(sb.report_dir(run).join("report.json")).unwrap()).unwrap();
    assert_eq!(report["change"]["commit"], "9fceb02d0ae598e95dc970b74767f19372d61af8", "{report}");
    let summary = std::fs::read_to_string(sb.report_dir(run).join("summary.md")).unwrap();
    assert!(summary.contains("Change: #12 · commit 9fceb02d0ae5 by alice"), "{summary}");
    // The job's step summary: the run's summary.md and its links.
    let step = std::fs::read_to_string(sb.dir.path().join("step-summary.md")).unwrap();
    assert!(step.contains("Change: #12") && step.contains("[The report](") && step.contains("/report.html"), "{step}");
    let page = http(server.addr, "GET", &format!("/requests/{id}"), &[("X-Forwarded-User", "bob")], "").body;
    assert!(page.contains("Change: #12 · commit 9fceb02d0ae5 by alice"), "{page}");
    for line in ["accepted: demo release v2", "database.db restore", "suite.smoke suite", ": passed (exit 0)"] {
        assert!(err.contains(line), "no `{line}` in:\n{err}");
    }
    let bad = ask("rht_nope", "demo", &url);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not one this server knows"));
    let nowhere = ask(&token, "demo", "http://127.0.0.1:9");
    assert_eq!(nowhere.status.code(), Some(3), "{}", String::from_utf8_lossy(&nowhere.stderr));
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("cannot reach http://127.0.0.1:9"));
    let no_token = sb.cmd().args(["request", "demo", "--release", "v2", "--server", &url]).output().unwrap();
    assert_eq!(no_token.status.code(), Some(2));

    // The everyday commands, pointed at the server ($REHEARSE_SERVER): a dry run kept,
    // its connection, an extension, the list, its destruction.
    let remote = |args: &[&str]| {
        sb.cmd()
            .args(args)
            .env("REHEARSE_SERVER", &url)
            .env("REHEARSE_TOKEN", &token)
            .env_remove("AWS_ACCESS_KEY_ID")
            .output()
            .unwrap()
    };
    let up = remote(&["up", "environments/demo.yaml", "--release", "v2"]);
    let err = String::from_utf8_lossy(&up.stderr).into_owned();
    assert_eq!(up.status.code(), Some(0), "{err}");
    assert!(err.contains("accepted: a dry run of demo release v2") && err.contains("passed, kept until"), "{err}");
    let id = err.split_whitespace().find(|w| w.starts_with("q-")).unwrap().trim_end_matches(':').to_string();
    let env = remote(&["env", &id, "--format", "json"]);
    assert_eq!(env.status.code(), Some(0), "{}", String::from_utf8_lossy(&env.stderr));
    let env: Value = serde_json::from_slice(&env.stdout).unwrap();
    let dump = env.to_string();
    assert!(dump.contains("postgres://"), "{dump}");
    let more = remote(&["extend", &id, "30m"]);
    assert_eq!(more.status.code(), Some(0), "{}", String::from_utf8_lossy(&more.stderr));
    assert!(String::from_utf8_lossy(&more.stdout).contains(&format!("{id}: expires ")));
    let listed = remote(&["list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&id) && listed.contains("v2 (dry run)") && listed.contains("kept (passed)"), "{listed}");
    let refused = remote(&["sweep"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not done through a server"));
    let by_run_id = remote(&["down", "r-20261207-000000-abcdef"]);
    assert_eq!(by_run_id.status.code(), Some(2));
    let down = remote(&["down", &id]);
    let err = String::from_utf8_lossy(&down.stderr).into_owned();
    assert_eq!(down.status.code(), Some(0), "{err}");
    assert!(err.contains("torn down, nothing left"), "{err}");
    let run_id = http(server.addr, "GET", &format!("/api/v1/requests/{id}"), &[("X-Forwarded-User", "alice")], "")
        .json()["state"]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    common::assert_nothing_left(&sb, &run_id);
}

/// Two replicas of the server, `a` and `b`, on the emulator's S3 store (`team-state`),
/// each with a state and work directory of its own, sharing a CSRF key; runs' leases
/// last `lease`.
pub(crate) fn replicas(
    sb: &Sandbox,
    emu: &crate::emulator::Emulator,
    envs: &std::path::Path,
    lease: &str,
    extra: &str,
) -> [Server; 2] {
    let key = common::secret_file(sb, "csrf.key", &[7u8; 32]);
    let config =
        format!("{CONFIG}store: s3://team-state/serve\nlease: {lease}\ncsrf_key_file: {}\n{extra}", key.display());
    ["a", "b"].map(|name| {
        let mut cmd = emu.rehearse(sb);
        cmd.env("REHEARSE_STATE_DIR", sb.dir.path().join(format!("state-{name}")))
            .env("REHEARSE_WORK_DIR", sb.dir.path().join(format!("work-{name}")));
        start_server_as(cmd, &sb.dir.path().join(format!("serve-{name}.yaml")), envs, &config)
    })
}

/// Two replicas of the server on one S3 store (the emulator's), twenty requests asked
/// of them at once: each runs exactly once, by one of them, and both take their share.
/// The emulator's conditional writes are not atomic: a claim is read back, and the
/// replica whose version did not stay backs off.
#[test]
fn two_replicas_on_one_s3_store_run_twenty_queued_requests_each_exactly_once() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.3);
    let (emu, rt, s3) = crate::emulator::with_team_store();
    let [a, b] = replicas(&sb, &emu, &envs, "5s", "");
    // One key: a page of one replica is accepted by the other.
    let csrf = csrf_of(a.addr, "carol");
    assert_eq!(csrf, csrf_of(b.addr, "carol"));
    let asked: Vec<std::thread::JoinHandle<Answer>> = (0..20)
        .map(|i| {
            let (addr, csrf) = ([a.addr, b.addr][i % 2], csrf.clone());
            std::thread::spawn(move || {
                ask(
                    addr,
                    &[("X-Forwarded-User", "carol"), ("X-Rehearse-CSRF", &csrf)],
                    r#"{"environment":"quick","release":"v1"}"#,
                )
            })
        })
        .collect();
    let ids: Vec<String> = asked
        .into_iter()
        .map(|h| {
            let r = h.join().unwrap();
            assert_eq!(r.status, 202, "{}", r.body);
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    let mut runs = Vec::new();
    for id in &ids {
        // Either replica answers for any request: the store is theirs.
        let r = wait_finished([a.addr, b.addr][runs.len() % 2], id);
        assert_eq!(r["state"]["verdict"], "passed", "{r}");
        runs.push(r["state"]["run_id"].as_str().unwrap().to_string());
    }
    // Exactly once: twenty runs, one per request, each on one replica.
    let ran_on = |name: &str| -> Vec<String> {
        std::fs::read_dir(sb.dir.path().join(format!("state-{name}/runs")))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let (on_a, on_b) = (ran_on("a"), ran_on("b"));
    assert!(!on_a.is_empty() && !on_b.is_empty(), "one replica ran all: a {on_a:?}, b {on_b:?}");
    let mut all: Vec<String> = on_a.iter().chain(&on_b).cloned().collect();
    all.sort();
    runs.sort();
    assert_eq!(all, runs, "runs on disk are not the requests' runs");
    runs.dedup();
    assert_eq!(runs.len(), 20);
    // The runs' journals are in the shared store, as the requests are.
    let keys = emu.keys(&rt, &s3, "team-state", "serve/");
    for run in &runs {
        assert!(keys.iter().any(|k| k.starts_with(&format!("serve/runs/{run}/"))), "no {run} in the store: {keys:?}");
    }
    assert_eq!(keys.iter().filter(|k| k.starts_with("serve/requests/")).count(), 20);
    // Either replica's portal shows the other's report (from the store).
    let report = http(a.addr, "GET", &format!("/runs/{}/report.html", on_b[0]), &[("X-Forwarded-User", "carol")], "");
    assert_eq!(report.status, 200, "{}", report.body);
    assert!(report.body.contains("passed"), "{}", report.body);
}

/// A replica killed while it runs a rehearsal: once the run's lease has lapsed, the
/// other replica takes the request over and tears the run down from its journal in the
/// shared store. A local run is the machine's that journaled it (a journal from a store
/// may be forged: its processes are not killed on a stranger's word), so the request is
/// finished as interrupted with the command that removes it there; run there, nothing
/// is left.
#[test]
fn a_dead_replicas_run_is_taken_over_by_the_other_after_its_lease() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let (emu, _rt, _s3) = crate::emulator::with_team_store();
    let mut servers = Vec::from(replicas(&sb, &emu, &envs, "2s", ""));
    let csrf = csrf_of(servers[0].addr, "erin");
    let asked = ask(
        servers[0].addr,
        &[("X-Forwarded-User", "erin"), ("X-Rehearse-CSRF", &csrf)],
        r#"{"environment":"slow","release":"v1"}"#,
    );
    assert_eq!(asked.status, 202, "{}", asked.body);
    let id = asked.json()["id"].as_str().unwrap().to_string();
    // Running, its suite started, on one of the two.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (run, server) = loop {
        let r =
            http(servers[1].addr, "GET", &format!("/api/v1/requests/{id}"), &[("X-Forwarded-User", "erin")], "").json();
        if r["state"]["state"] == "running" {
            let run = r["state"]["run_id"].as_str().unwrap().to_string();
            if !common::tagged_processes(&run).is_empty() {
                break (run, r["state"]["server"].as_str().unwrap().to_string());
            }
        }
        assert!(Instant::now() < deadline, "never running: {r}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let dead = servers.iter().position(|s| server.ends_with(&format!("-{}", s.child.id()))).expect("its server");
    let mut killed = servers.remove(dead);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(killed.child.id() as i32), nix::sys::signal::SIGKILL).unwrap();
    killed.child.wait().unwrap();
    assert!(!common::tagged_processes(&run).is_empty(), "the suite died with its server");
    let done = wait_finished(servers[0].addr, &id);
    assert_eq!(done["state"]["verdict"], "interrupted", "{done}");
    assert_eq!(done["state"]["exit_code"], 4, "{done}");
    let error = done["state"]["error"].as_str().unwrap();
    assert!(error.contains("not this host's run") && error.contains(&format!("`rehearse down {run}` there")), "{done}");
    // The command it names, on the dead replica's machine (its state directory).
    let name = ["a", "b"][dead];
    let down = emu
        .rehearse(&sb)
        .env("REHEARSE_STATE_DIR", sb.dir.path().join(format!("state-{name}")))
        .env("REHEARSE_WORK_DIR", sb.dir.path().join(format!("work-{name}")))
        .args(["down", &run])
        .output()
        .unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert!(common::tagged_processes(&run).is_empty(), "processes of {run} left");
    let work = sb.dir.path().join(format!("work-{name}/runs/{run}"));
    assert!(!work.exists(), "{} left", work.display());
}

/// A comparison asked of the server: both releases built on twin copies, the same
/// load, the judge's verdict on the request (v2-slow's slowed endpoint fails it), its
/// compare.html served under the portal's policy, both sides torn down.
#[test]
fn a_comparison_asked_of_the_server_is_judged_and_its_page_served() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let server = start(&sb, &envs, CONFIG);
    let addr = server.addr;
    let body = r#"{"environment":"demo","baseline":"v2","candidate":"v2-slow"}"#;
    let bobs = post_as(addr, "bob", "/api/v1/comparisons", body);
    assert_eq!(bobs.status, 403, "{}", bobs.body);
    assert!(bobs.body.contains("bob may not compare on demo"), "{}", bobs.body);
    let asked = post_as(addr, "alice", "/api/v1/comparisons", body);
    assert_eq!(asked.status, 202, "{}", asked.body);
    let id = asked.json()["id"].as_str().unwrap().to_string();
    let seen = events(addr, &id, "alice").join("\n");
    assert!(seen.contains("requests a second for 12s to the baseline and the candidate"), "{seen}");
    let done = wait_finished(addr, &id);
    assert_eq!(done["state"]["verdict"], "failed", "{done}");
    assert_eq!(done["state"]["exit_code"], 1, "{done}");
    let comparison = done["state"]["comparison"].as_str().unwrap().to_string();
    let page = http(addr, "GET", &format!("/compares/{comparison}/compare.html"), &[("X-Forwarded-User", "bob")], "");
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("v2-slow"), "{}", page.body);
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'none'"));
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(sb.state().join(format!("compares/{comparison}/compare.json"))).unwrap(),
    )
    .unwrap();
    for side in ["baseline", "candidate"] {
        common::assert_nothing_left(&sb, json[side]["run_id"].as_str().unwrap());
    }
    let request_page = http(addr, "GET", &format!("/requests/{id}"), &[("X-Forwarded-User", "alice")], "").body;
    // Its link (autoescaped: `/` is `&#x2F;` in the attribute, as a browser reads it).
    assert!(
        request_page.contains("<p id=\"compare-links\"><a id=\"compare\" href=\"&#x2F;compares&#x2F;")
            && request_page.contains(&format!("{comparison}&#x2F;compare.html")),
        "{request_page}"
    );
}

/// A deploy asked of the server (`"from"`, as `run --from`): refused with why when its
/// baseline cannot be built (422) or the environment has no load for it (400), else
/// rehearsed under load, its report saying so, nothing left. The release deployed,
/// v2-slow, has no migration of its own: an empty during window, and it passes; its
/// services restart (`switch: restart`): the load goes on, the gap's errors the switch's.
#[test]
fn a_deploy_asked_of_the_server_is_rehearsed_under_load_and_a_bad_baseline_refused() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let file = crate::deploy::description_named(&sb, "restart", "deploy.yaml");
    let (server, token) = start_with_token(&sb, &envs);
    let addr = server.addr;
    let refused = |body: &str, status: u16, why: &str| {
        let a = post_as(addr, "alice", "/api/v1/rehearsals", body);
        assert_eq!(a.status, status, "{body}: {}", a.body);
        assert!(a.body.contains(why), "{body}: {}", a.body);
    };
    refused(r#"{"environment":"deploy","release":"v2","from":"v2"}"#, 422, "is the release being deployed");
    refused(r#"{"environment":"deploy","release":"v2-slow","from":"v9"}"#, 422, "the baseline could not be built");
    refused(r#"{"environment":"quick","release":"v1","from":"v2"}"#, 400, "needs a load to rehearse the deploy under");
    // As CI asks it: `rehearse run FILE --from v2 --release v2-slow --server URL`.
    let url = format!("http://{addr}");
    let out = sb
        .cmd()
        .args(["run", &file, "--from", "v2", "--release", "v2-slow", "--server", &url])
        .env("REHEARSE_TOKEN", &token)
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("accepted: deploy release v2-slow deployed over v2"), "{err}");
    let id = err.split_whitespace().find(|w| w.starts_with("q-")).unwrap().trim_end_matches(':').to_string();
    let done = wait_finished(addr, &id);
    assert_eq!(done["ask"]["from"], "v2", "{done}");
    assert_eq!(
        (done["state"]["verdict"].as_str(), done["state"]["exit_code"].as_i64()),
        (Some("passed"), Some(0)),
        "{done}"
    );
    let run_id = done["state"]["run_id"].as_str().unwrap();
    let d = sb.report(run_id)["deploy"].clone();
    assert_eq!((d["from"].as_str(), d["to"].as_str()), (Some("v2"), Some("v2-slow")), "{d:#}");
    // v2-slow ships v2's migrations: nothing new to run, nothing waits, a during window
    // as short as an install with nothing to apply.
    assert_eq!(d["migration_files"].as_array().unwrap().len(), 0, "{d:#}");
    assert_eq!((d["files"].as_array().unwrap().len(), d["waits_total"].as_u64()), (0, Some(0)), "{d:#}");
    let m = &d["marks"];
    assert!(m["migration_end_ms"].as_u64().unwrap() - m["migration_start_ms"].as_u64().unwrap() < 1000, "{m}");
    let lock_wait = d["limits"].as_array().unwrap().iter().find(|l| l["name"] == "max_lock_wait").unwrap().clone();
    assert!(lock_wait["reason"].as_str().unwrap().contains("no request waited"), "{lock_wait}");
    // Through the restart the load went on: the gap's failures are the switch's, none
    // of them the migration's, and the new release served the rest.
    assert_eq!(d["switch"], "restart");
    let window = |name: &str| {
        let w = d["traffic"]["windows"].as_array().unwrap().iter().find(|w| w["name"] == name).unwrap().clone();
        let sum = |k: &str| w["endpoints"].as_array().unwrap().iter().map(|e| e[k].as_u64().unwrap()).sum::<u64>();
        (sum("requests"), sum("errors"))
    };
    let ((switch, switch_errors), (after, after_errors)) = (window("switch"), window("after"));
    assert!(switch > 0 && switch_errors > 0, "the gap of a restart fails requests: {:#}", d["traffic"]["windows"]);
    assert_eq!(window("during").1, 0, "none of them counted against the migration");
    assert!(after >= 10 && after_errors == 0, "the load went on on the new release: {after} {after_errors}");
    common::assert_nothing_left(&sb, run_id);
}

/// The stages of the environments offered, as `rehearse stage status` has them: a
/// stage rebuilt on this machine shows its current generation, where its stable names
/// point and each generation's fate, in the API and on the portal.
#[test]
fn the_stages_of_the_environments_offered_are_shown() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (db, web) = (free(), free());
    let text =
        common::from_repository(&std::fs::read_to_string(common::root().join("environments/staging.yaml")).unwrap())
            .replace("db: 25432", &format!("db: {db}"))
            .replace("web: 28080", &format!("web: {web}"));
    let file = common::write_description(&sb, "staging.yaml", &text);
    let server = start(&sb, &envs, CONFIG);
    let before = http(server.addr, "GET", "/api/v1/stages", &[("X-Forwarded-User", "bob")], "").json();
    assert_eq!(before["stages"][0]["stage"], "staging", "{before}");
    assert!(before["stages"][0]["record"].is_null(), "{before}");

    let out = sb.cmd().arg("rebuild").arg(&file).args(["--release", "v1", "--drain", "0s"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = http(server.addr, "GET", "/api/v1/stages", &[("X-Forwarded-User", "bob")], "").json();
    let record = &after["stages"][0]["record"];
    assert_eq!(record["current"], 1, "{after}");
    assert_eq!(record["generations"][0]["fate"], "current", "{after}");
    assert_eq!(record["generations"][0]["release"], "v1", "{after}");
    let page = http(server.addr, "GET", "/", &[("X-Forwarded-User", "bob")], "").body;
    assert!(page.contains("id=\"stage-staging\"") && page.contains("generation 1 (release v1"), "{page}");
    assert!(page.contains(&format!("127.0.0.1:{db}")), "{page}");

    let out = sb.cmd().args(["stage", "destroy", "staging"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The descriptions from a Git repository the server keeps a checkout of: offered at
/// start, a description merged later offered without a restart, and rehearsed from the
/// checkout.
#[test]
fn descriptions_from_a_git_checkout_are_offered_and_pulled() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let repo = sb.dir.path().join("descriptions");
    std::fs::create_dir_all(repo.join("environments")).unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=tests", "-c", "user.email=tests@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["init", "--quiet", "--initial-branch", "main"]);
    std::fs::copy(envs.join("quick.yaml"), repo.join("environments/quick.yaml")).unwrap();
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "quick"]);
    let config = CONFIG.replace(
        "environments: {envs}",
        &format!("git: {{ url: \"file://{}\", branch: main, every: 1s }}\nenvironments: environments", repo.display()),
    );
    let server = start(&sb, &envs, &config);
    let offered = |addr| {
        let e = http(addr, "GET", "/api/v1/environments", &[("X-Forwarded-User", "carol")], "").json();
        e["environments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(offered(server.addr), ["quick"]);
    // Merged later: offered within a pull or two, without a restart.
    std::fs::copy(envs.join("slow.yaml"), repo.join("environments/slow.yaml")).unwrap();
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "slow"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while offered(server.addr) != ["quick", "slow"] {
        assert!(Instant::now() < deadline, "never pulled: {:?}", offered(server.addr));
        std::thread::sleep(Duration::from_millis(200));
    }
    let asked = post_as(server.addr, "carol", "/api/v1/rehearsals", r#"{"environment":"quick","release":"v1"}"#);
    assert_eq!(asked.status, 202, "{}", asked.body);
    let done = wait_finished(server.addr, asked.json()["id"].as_str().unwrap());
    assert_eq!(done["state"]["verdict"], "passed", "{done}");
    // A repository that cannot be cloned: the server does not start, and says why.
    let bad = CONFIG.replace("environments: {envs}", "git: { url: \"file:///nonexistent/repo.git\" }");
    std::fs::write(sb.dir.path().join("bad.yaml"), bad).unwrap();
    let out = sb
        .cmd()
        .env("REHEARSE_STATE_DIR", sb.dir.path().join("state-bad"))
        .args(["serve", "--config"])
        .arg(sb.dir.path().join("bad.yaml"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("git clone of file:///nonexistent/repo.git (main) failed"), "{err}");
}
