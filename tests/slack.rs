//! Slack's slash command into `rehearse serve`, as Slack sends it: form-encoded, signed
//! `v0` with the app's signing secret and a timestamp. The command is answered at once;
//! its message is replaced through a fake `response_url` on loopback as the request
//! moves, to the verdict and the links; a kept dry run's secrets go, on a click, to the
//! one who asked for it, ephemerally, and to nobody else.

use hmac::{KeyInit, Mac};
use serde_json::json;

use crate::common::fake::{Fake, Got, Reply};
use crate::common::http::{http, start_server, Answer};
use crate::common::{secret_file, wait_for, Sandbox};
use crate::serve::{environments, wait_finished, wait_state, CONFIG};

const SIGNING_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";

fn config(sb: &Sandbox, responses: &str) -> String {
    let key = secret_file(sb, "slack.key", SIGNING_SECRET);
    format!(
        "{CONFIG}slack:\n  signing_secret_file: {}\n  users: {{ UALICE1: alice, UBOB22: bob }}\n  response_urls: {responses}\n",
        key.display()
    )
}

/// Posts `form` to `path` signed as Slack signs, at `t` (unsigned when `None`).
fn slack(addr: std::net::SocketAddr, path: &str, form: &str, t: Option<i64>) -> Answer {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    let (ts, sig);
    if let Some(t) = t {
        let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(SIGNING_SECRET).unwrap();
        m.update(format!("v0:{t}:{form}").as_bytes());
        ts = t.to_string();
        sig = format!("v0={}", m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>());
        headers.push(("X-Slack-Request-Timestamp", &ts));
        headers.push(("X-Slack-Signature", &sig));
    }
    http(addr, "POST", path, &headers, form)
}

fn command(user: &str, text: &str, response_url: &str, trigger: &str) -> String {
    let enc = |s: &str| s.replace('%', "%25").replace(' ', "+").replace(':', "%3A").replace('/', "%2F");
    format!(
        "token=x&team_id=T1&channel_id=C1&user_id={user}&user_name=someone&command=%2Frehearse&text={}&response_url={}&trigger_id={trigger}",
        enc(text),
        enc(response_url)
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[test]
fn a_slash_command_is_answered_at_once_followed_to_its_verdict_and_a_dry_runs_secrets_go_to_its_owner_alone() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let responses = Fake::start(|_: &Got| Reply::json(200, json!({ "ok": true })));
    let server = start_server(&sb, &envs, &config(&sb, &responses.url("/")));
    let addr = server.addr;
    let hook = responses.url("/commands/T1/1/abc");

    // Not Slack's: unsigned, stale.
    assert_eq!(slack(addr, "/hooks/slack", &command("UALICE1", "run demo v2", &hook, "t.0"), None).status, 401);
    assert_eq!(
        slack(addr, "/hooks/slack", &command("UALICE1", "run demo v2", &hook, "t.0"), Some(now() - 3600)).status,
        401
    );
    // A stranger, and a release with metacharacters: told why, ephemerally.
    let stranger = slack(addr, "/hooks/slack", &command("UEVE999", "run demo v2", &hook, "t.1"), Some(now()));
    assert_eq!(stranger.json()["response_type"], "ephemeral", "{}", stranger.body);
    let evil = slack(addr, "/hooks/slack", &command("UALICE1", "run demo v2;reboot", &hook, "t.2"), Some(now()));
    assert!(evil.json()["text"].as_str().unwrap().contains("is not a release version"), "{}", evil.body);

    // Alice rehearses demo v2: answered at once in the channel, then followed.
    let answered = slack(addr, "/hooks/slack", &command("UALICE1", "run demo v2", &hook, "t.3"), Some(now()));
    assert_eq!(answered.status, 200, "{}", answered.body);
    let said = answered.json();
    assert_eq!(said["response_type"], "in_channel", "{said}");
    let text = said["text"].as_str().unwrap().to_string();
    let id = text.split(['|', '>', '/']).find(|w| w.starts_with("q-")).unwrap().to_string();
    wait_finished(addr, &id);
    let updates = |hook: &str| -> Vec<String> {
        responses
            .got()
            .iter()
            .filter(|g| g.path == hook)
            .map(|g| g.json()["text"].as_str().unwrap_or("").to_string())
            .collect()
    };
    wait_for("the verdict in the channel", 60, || {
        updates("/commands/T1/1/abc").iter().any(|t| t.starts_with("passed"))
    });
    let seen = updates("/commands/T1/1/abc");
    assert!(seen[0].starts_with("Queued") && seen.iter().any(|t| t.starts_with("Building")), "{seen:?}");
    assert!(seen.last().unwrap().contains("report.html|report>"), "{seen:?}");
    // The same command again (its trigger id): not run twice.
    let again = slack(addr, "/hooks/slack", &command("UALICE1", "run demo v2", &hook, "t.3"), Some(now()));
    assert!(again.json()["text"].as_str().unwrap().contains("was received before"), "{}", again.body);

    // A dry run: kept, its message with the button; bob's click is refused, alice's
    // gets her the secrets, ephemerally.
    let hook2 = responses.url("/commands/T1/2/def");
    let up = slack(addr, "/hooks/slack", &command("UALICE1", "up demo v2", &hook2, "t.4"), Some(now()));
    let id2 =
        up.json()["text"].as_str().unwrap().split(['|', '>', '/']).find(|w| w.starts_with("q-")).unwrap().to_string();
    let kept = wait_state(addr, &id2, "kept");
    let run = kept["state"]["run_id"].as_str().unwrap().to_string();
    wait_for("the kept message", 60, || {
        responses
            .got()
            .iter()
            .any(|g| g.path == "/commands/T1/2/def" && g.json()["blocks"][1]["elements"][0]["action_id"] == "reveal")
    });
    let click = |user: &str, reply: &str| {
        let payload = json!({
            "type": "block_actions", "user": { "id": user }, "response_url": responses.url(reply),
            "actions": [{ "action_id": "reveal", "value": id2 }]
        })
        .to_string();
        let form = format!(
            "payload={}",
            payload.replace('%', "%25").replace('&', "%26").replace('+', "%2B").replace('=', "%3D")
        );
        slack(addr, "/hooks/slack/actions", &form, Some(now()))
    };
    assert_eq!(click("UBOB22", "/actions/bob").status, 200);
    assert_eq!(click("UALICE1", "/actions/alice").status, 200);
    let to = |path: &str| responses.got().into_iter().filter(|g| g.path == path).map(|g| g.json()).collect::<Vec<_>>();
    let bobs = to("/actions/bob");
    assert_eq!(bobs.len(), 1, "{bobs:?}");
    assert_eq!(bobs[0]["response_type"], "ephemeral");
    assert!(bobs[0]["text"].as_str().unwrap().contains("only alice, who asked for it"), "{bobs:?}");
    let secret = std::fs::read_to_string(sb.state().join(format!("runs/{run}/connection.json"))).unwrap();
    let password = serde_json::from_str::<serde_json::Value>(&secret).unwrap()["databases"]["db"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!bobs[0].to_string().contains(&password));
    let alices = to("/actions/alice");
    assert_eq!(alices[0]["response_type"], "ephemeral");
    assert_eq!(alices[0]["replace_original"], false);
    assert!(alices[0]["text"].as_str().unwrap().contains(&password), "{alices:?}");
    // Never in the channel's messages.
    assert!(responses
        .got()
        .iter()
        .filter(|g| g.path.starts_with("/commands/"))
        .all(|g| !String::from_utf8_lossy(&g.body).contains(&password)));
    // Destroyed, nothing left.
    let csrf = http(addr, "GET", "/api/v1/session", &[("X-Forwarded-User", "alice")], "").json()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let gone = http(
        addr,
        "POST",
        &format!("/api/v1/requests/{id2}/destroy"),
        &[("X-Forwarded-User", "alice"), ("X-Rehearse-CSRF", &csrf)],
        "{}",
    );
    assert_eq!(gone.status, 202);
    wait_finished(addr, &id2);
    crate::common::assert_nothing_left(&sb, &run);
}
