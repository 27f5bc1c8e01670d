//! Webhooks into `rehearse serve`, with the real binary on a free port: a generic hook's
//! delivery is believed by its signature (HMAC-SHA256 over the timestamp and the body)
//! alone, a delivery seen before is answered and not run again, and the verdict goes back
//! to the callback — signed, retried past a receiver's failures and a server restart,
//! told once.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde_json::{json, Value};

use crate::common::fake::{Fake, Reply};
use crate::common::http::{http, start_server, Answer};
use crate::common::{secret_file, wait_for, Sandbox};
use crate::serve::{environments, wait_finished, CONFIG};

const SECRET: &[u8] = b"a hook's secret of at least thirty-two bytes";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// rehearse's signature of `body` at `t` under `secret`, as its documentation gives it.
fn sign(secret: &[u8], t: i64, body: &str) -> String {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    m.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex(&m.finalize().into_bytes()))
}

/// The hook `deploy`'s configuration entry, its secret in a 0600 file.
fn hook_entry(sb: &Sandbox) -> String {
    let key = secret_file(sb, "deploy.key", SECRET);
    format!("hooks:\n  - name: deploy\n    secret_file: {}\n    user: deploy-bot\n", key.display())
}

/// The configuration with the hook `deploy` (its user `deploy-bot`, whom the `*` rule
/// lets rehearse), its secret in a 0600 file.
fn config(sb: &Sandbox) -> String {
    let key = secret_file(sb, "deploy.key", SECRET);
    format!("{CONFIG}hooks:\n  - name: deploy\n    secret_file: {}\n    user: deploy-bot\n", key.display())
}

/// A delivery to `/hooks/NAME`, signed at `t` under `secret` (none when `None`).
fn deliver(addr: std::net::SocketAddr, name: &str, delivery: &str, body: &str, signed: Option<(&[u8], i64)>) -> Answer {
    let sig = signed.map(|(s, t)| sign(s, t, body));
    let mut headers = vec![("X-Rehearse-Delivery", delivery), ("Content-Type", "application/json")];
    if let Some(s) = &sig {
        headers.push(("X-Rehearse-Signature", s));
    }
    http(addr, "POST", &format!("/hooks/{name}"), &headers, body)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Checks a callback's signature as a receiver would, within five minutes.
fn signed_by_the_hook(g: &crate::common::fake::Got) -> bool {
    let Some(h) = g.header("x-rehearse-signature") else { return false };
    let Some(t) = h.split(',').find_map(|p| p.strip_prefix("t=")).and_then(|t| t.parse::<i64>().ok()) else {
        return false;
    };
    (now() - t).abs() < 300 && sign(SECRET, t, &String::from_utf8_lossy(&g.body)) == h
}

#[test]
fn a_signed_delivery_rehearses_and_its_signed_callback_arrives_once_past_the_receivers_failures() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    // The receiver fails twice (502), then takes it.
    let mut n = 0;
    let receiver = Fake::start(move |_| {
        n += 1;
        Reply::json(if n <= 2 { 502 } else { 200 }, json!({}))
    });
    let server = start_server(&sb, &envs, &config(&sb));
    let addr = server.addr;
    let body = json!({
        "environment": "quick", "release": "v1", "callback_url": receiver.url("/rehearsed"),
        "change": {"commit": "9fceb02d0ae598e95dc970b74767f19372d61af8", "author": "alice",
                   "pull_request": 12, "title": "Faster checkout"}
    })
    .to_string();
    let accepted = deliver(addr, "deploy", "d-1", &body, Some((SECRET, now())));
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let id = accepted.json()["id"].as_str().unwrap().to_string();
    assert_eq!(accepted.json()["user"], "deploy-bot");
    assert_eq!(accepted.json()["change"]["pull_request"], 12);
    let done = wait_finished(addr, &id);
    assert_eq!(done["state"]["verdict"], "passed", "{done}");

    wait_for("the callback taken", 60, || receiver.got().iter().any(|g| g.status == 200));
    std::thread::sleep(Duration::from_secs(3));
    let got = receiver.got();
    assert!(got.len() >= 3, "{got:?}");
    assert_eq!(got.iter().filter(|g| g.status == 200).count(), 1, "told more than once: {got:?}");
    for g in &got {
        assert_eq!((g.method.as_str(), g.path.as_str()), ("POST", "/rehearsed"));
        assert!(signed_by_the_hook(g), "not signed by the hook's secret: {g:?}");
        assert_eq!(g.header("x-rehearse-delivery"), Some(format!("{id}.finished").as_str()));
    }
    let told = got.last().unwrap().json();
    assert_eq!(told["verdict"], "passed", "{told}");
    assert_eq!(told["exit_code"], 0);
    assert_eq!(told["change"]["title"], "Faster checkout");
    let report = told["links"]["report"].as_str().unwrap();
    assert!(report.starts_with(&format!("http://{addr}/runs/r-")) && report.ends_with("/report.html"), "{told}");

    // The same delivery again, freshly signed: answered with what it made, not run.
    let again = deliver(addr, "deploy", "d-1", &body, Some((SECRET, now())));
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(again.json()["request"], id.as_str());
    // The same signed delivery under another delivery id (a replay from a log): caught by
    // its signature, answered, not run.
    let t = now() - 5;
    let sig = sign(SECRET, t, &body);
    let first = http(
        addr,
        "POST",
        "/hooks/deploy",
        &[("X-Rehearse-Delivery", "d-9"), ("X-Rehearse-Signature", &sig), ("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(first.status, 202, "{}", first.body);
    let replayed = http(
        addr,
        "POST",
        "/hooks/deploy",
        &[("X-Rehearse-Delivery", "d-10"), ("X-Rehearse-Signature", &sig), ("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(replayed.status, 409, "{}", replayed.body);
    assert_eq!(replayed.json()["request"], first.json()["id"]);
    // Where a request is told is a capability: nobody else sees its callback's URL.
    let seen = http(addr, "GET", &format!("/api/v1/requests/{id}"), &[("X-Forwarded-User", "bob")], "").json();
    assert_eq!(seen["notify"][0]["kind"], "callback", "{seen}");
    assert!(!seen.to_string().contains("/rehearsed"), "{seen}");
    // Unsigned, mis-signed, stale: 401, and nothing runs.
    assert_eq!(deliver(addr, "deploy", "d-2", &body, None).status, 401);
    assert_eq!(
        deliver(addr, "deploy", "d-3", &body, Some((b"not the hook's secret at all, not at all", now()))).status,
        401
    );
    let stale = deliver(addr, "deploy", "d-4", &body, Some((SECRET, now() - 3600)));
    assert_eq!(stale.status, 401);
    assert!(stale.body.contains("outside the 300 s allowed"), "{}", stale.body);
    // A body over the cap, a release that is not a version, an unknown hook.
    let big = json!({ "environment": "quick", "release": "v1", "pad": "x".repeat(20_000) }).to_string();
    assert_eq!(deliver(addr, "deploy", "d-5", &big, Some((SECRET, now()))).status, 413);
    let evil = json!({ "environment": "quick", "release": "v1; rm -rf /" }).to_string();
    let refused = deliver(addr, "deploy", "d-6", &evil, Some((SECRET, now())));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("is not a release version"), "{}", refused.body);
    assert_eq!(deliver(addr, "nope", "d-7", &body, Some((SECRET, now()))).status, 404);
    let all = http(addr, "GET", "/api/v1/requests", &[("X-Forwarded-User", "alice")], "").json();
    assert_eq!(all["requests"].as_array().unwrap().len(), 2, "{all}");
    // Every refusal is in the audit log, with why; the callbacks' calls too.
    let log = http(addr, "GET", "/api/v1/audit?limit=1000", &[("X-Forwarded-User", "alice")], "").body;
    for why in [
        "delivery d-1 was received before",
        "no signature",
        "does not match",
        "outside the 300 s",
        "is not a release version",
        "no such hook",
        "callback of hook deploy",
    ] {
        assert!(log.contains(why), "no `{why}` in the audit log");
    }
    assert!(!log.contains(std::str::from_utf8(SECRET).unwrap()));
    // The callback's calls are audited by origin only (a path can be a capability).
    assert!(!log.contains("/rehearsed"), "a callback's path in the audit log");
}

/// The run ends while the receiver is down and the server is then killed: started
/// again, the server still tells the receiver, once.
#[test]
fn a_callback_is_told_after_a_server_restart() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up2 = up.clone();
    let receiver = Fake::start(move |_| {
        if up2.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::json(200, json!({}))
        } else {
            Reply { status: 503, headers: vec![("Retry-After".into(), "1".into())], body: "{}".into() }
        }
    });
    let cfg = config(&sb);
    let server = start_server(&sb, &envs, &cfg);
    let body = json!({ "environment": "quick", "release": "v1", "callback_url": receiver.url("/cb") }).to_string();
    let accepted = deliver(server.addr, "deploy", "r-1", &body, Some((SECRET, now())));
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    let id = accepted.json()["id"].as_str().unwrap().to_string();
    wait_finished(server.addr, &id);
    wait_for("a first try", 60, || !receiver.got().is_empty());
    let mut server = server;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.child.id() as i32), nix::sys::signal::SIGKILL).unwrap();
    server.child.wait().unwrap();
    drop(server);
    assert!(receiver.got().iter().all(|g| g.status == 503));
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let _server = start_server(&sb, &envs, &cfg);
    wait_for("the callback taken after the restart", 60, || receiver.got().iter().any(|g| g.status == 200));
    std::thread::sleep(Duration::from_secs(2));
    let taken: Vec<Value> = receiver.got().iter().filter(|g| g.status == 200).map(|g| g.json()).collect();
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0]["request"], id.as_str());
    assert_eq!(taken[0]["verdict"], "passed");
}

/// Two replicas on one store, each running its outbox: every request's callback is
/// told once, by one of them (a claim by compare-and-swap before the call).
#[test]
fn two_replicas_tell_each_callback_once() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let (emu, _rt, _s3) = crate::emulator::with_team_store();
    let receiver = Fake::start(|_| Reply::json(200, json!({})));
    let servers = crate::serve::replicas(&sb, &emu, &envs, "5s", &hook_entry(&sb));
    let ids: Vec<String> = (0..6)
        .map(|i| {
            // Bodies differ: one body signed at one second is one delivery, whatever its id.
            let body = json!({ "environment": "quick", "release": "v1", "callback_url": receiver.url("/told"),
                               "change": { "title": format!("change {i}") } })
            .to_string();
            let a = deliver(servers[i % 2].addr, "deploy", &format!("rep-{i}"), &body, Some((SECRET, now())));
            assert_eq!(a.status, 202, "{}", a.body);
            a.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    for id in &ids {
        wait_finished(servers[0].addr, id);
    }
    wait_for("every callback", 60, || receiver.got().len() >= ids.len());
    // Both outboxes look every second: give a second teller time to show itself.
    std::thread::sleep(Duration::from_secs(3));
    let got = receiver.got();
    for id in &ids {
        let n = got.iter().filter(|g| g.json()["request"] == id.as_str()).count();
        assert_eq!(n, 1, "request {id} told {n} times");
    }
}
