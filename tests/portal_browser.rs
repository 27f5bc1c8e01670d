//! The portal in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (Debian's chromedriver) as a person clicks. The identity header an authenticating
//! proxy would add is set on every request the browser sends (DevTools'
//! `Network.setExtraHTTPHeaders`, through chromedriver), from 127.0.0.1, the proxy's
//! address in the server's configuration. Screenshots at 1280 px are kept in
//! `target/tmp/portal_browser/`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::http::{http, start_server};
use crate::common::Sandbox;
use crate::serve::{environments, CONFIG};

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver, `make test-deps`)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver { child, addr }
}

/// One browser session.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl Browser<'_> {
    fn new<'d>(driver: &'d Driver, user: &str) -> Browser<'d> {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("Chromium (`make test-deps`)");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                         "--disable-dev-shm-usage"]
            }
        }}});
        let r = call(driver.addr, "POST", "/session", &caps);
        let session = r["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {r}")).to_string();
        let b = Browser { driver, session };
        b.as_user(user);
        b
    }

    /// From now on every request carries `X-Forwarded-User: user`, as the proxy adds it.
    fn as_user(&self, user: &str) {
        self.cdp("Network.enable", json!({}));
        self.cdp("Network.setExtraHTTPHeaders", json!({ "headers": { "X-Forwarded-User": user } }));
    }

    fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.post("goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
    }

    fn post(&self, what: &str, body: Value) -> Value {
        call(self.driver.addr, "POST", &format!("/session/{}/{what}", self.session), &body)
    }

    fn get(&self, what: &str) -> Value {
        call(self.driver.addr, "GET", &format!("/session/{}/{what}", self.session), &Value::Null)
    }

    fn open(&self, url: &str) {
        self.post("url", json!({ "url": url }));
    }

    fn script(&self, js: &str) -> Value {
        self.post("execute/sync", json!({ "script": js, "args": [] }))["value"].clone()
    }

    fn element(&self, css: &str) -> String {
        let r = self.post("element", json!({ "using": "css selector", "value": css }));
        r["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no {css}: {r}"))
            .to_string()
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.post(&format!("element/{e}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.post(&format!("element/{e}/clear"), json!({}));
        self.post(&format!("element/{e}/value"), json!({ "text": text }));
    }

    fn text(&self, css: &str) -> String {
        self.script(&format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until `js` (an expression) is true in the page.
    fn wait_for(&self, js: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.script(&format!("return !!({js});")) != Value::Bool(true) {
            assert!(Instant::now() < deadline, "{what}: never; the page says {}", self.text("main"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, name: &str) {
        let png = self.get("screenshot")["value"].as_str().unwrap().to_string();
        let bytes = base64::engine::general_purpose::STANDARD.decode(png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000, "{name}: not a rendered page");
        std::fs::write(out_dir().join(format!("{name}.png")), bytes).unwrap();
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        call(self.driver.addr, "DELETE", &format!("/session/{}", self.session), &Value::Null);
    }
}

fn call(addr: SocketAddr, method: &str, path: &str, body: &Value) -> Value {
    let body = if body.is_null() { String::new() } else { body.to_string() };
    let a = http(addr, method, path, &[], &body);
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", a.body))
}

fn out_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("portal_browser");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_click_rehearses_the_demo_a_dry_run_is_kept_extended_and_destroyed_and_others_see_neither_secrets_nor_buttons() {
    let sb = Sandbox::new();
    let envs = environments(&sb, 0.1);
    let server = start_server(&sb, &envs, CONFIG);
    let base = format!("http://{}", server.addr);
    let driver = driver();

    // Alice asks for the demo's v2 with a click.
    let alice = Browser::new(&driver, "alice");
    alice.open(&format!("{base}/"));
    assert_eq!(alice.text("#user"), "alice");
    alice.script("document.getElementById('environment').value = 'demo';");
    alice.type_into("#release", "v2");
    alice.screenshot("1-portal");
    alice.click("#go");
    alice.wait_for("location.pathname.startsWith('/requests/')", "the run page");
    // Marked now: still there at the end means the page was never reloaded.
    alice.script("window.notReloaded = true;");
    alice.wait_for("document.getElementById('log').children.length > 3", "the run's steps on the page");
    alice.wait_for("document.getElementById('state').textContent.startsWith('passed')", "passed");
    assert_eq!(alice.script("return window.notReloaded === true;"), Value::Bool(true), "the page was reloaded");
    let log = alice.text("#log");
    for step in ["database.db restore", "suite.smoke suite", "verdict: passed"] {
        assert!(log.contains(step), "no `{step}` on the page: {log}");
    }
    // The current step's log tail, as the page shows it (the run's newest log).
    alice.wait_for("document.getElementById('tail').textContent.length > 0", "the log tail");
    assert!(alice.text("#tail-file").ends_with(".log"), "{}", alice.text("#tail-file"));
    alice.screenshot("2-run-passed");
    let request_url = alice.script("return location.href;").as_str().unwrap().to_string();
    // Its report.
    alice.click("#report");
    alice.wait_for("location.pathname.endsWith('/report.html') && document.readyState === 'complete'", "the report");
    assert!(alice.text("body").to_lowercase().contains("passed"), "{}", alice.text("body"));
    alice.screenshot("3-report");

    // A dry run: first asked for longer than the rule allows (refused, with why), then
    // for an hour; its page shows her its endpoints and the expiry counting down.
    alice.open(&format!("{base}/"));
    alice.script("document.getElementById('environment').value = 'demo';");
    alice.type_into("#release", "v2");
    alice.type_into("#ttl", "8h");
    alice.click("#keep");
    alice.wait_for("document.getElementById('form-error').textContent.length > 0", "the ttl's refusal");
    let refused = alice.text("#form-error");
    assert!(refused.contains("ttl 8h is over the maximum 3h for dry runs of demo"), "{refused}");
    alice.screenshot("4-ttl-refused");
    alice.type_into("#ttl", "1h");
    alice.click("#keep");
    alice.wait_for("location.pathname.startsWith('/requests/')", "the dry run's page");
    alice.wait_for("document.getElementById('endpoints') !== null", "the dry run's endpoints");
    let dry_run_url = alice.script("return location.href;").as_str().unwrap().to_string();
    let endpoints = alice.text("#endpoints");
    assert!(endpoints.contains("db") && endpoints.contains("127.0.0.1:"), "{endpoints}");
    alice.wait_for("/^in (59m|1h)/.test(document.getElementById('countdown').textContent)", "the countdown");
    let before = alice.text("#countdown");
    std::thread::sleep(Duration::from_millis(1100));
    assert_ne!(alice.text("#countdown"), before, "the expiry does not count down");
    alice.screenshot("5-dry-run-kept");
    // The password: on the page only after a deliberate reveal.
    let run_id = alice.text(".meta").rsplit("run ").next().unwrap().trim().to_string();
    let connection = std::fs::read_to_string(sb.state().join(format!("runs/{run_id}/connection.json"))).unwrap();
    let password = serde_json::from_str::<Value>(&connection).unwrap()["databases"]["db"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!alice.text("body").contains(&password), "the password before the reveal");
    alice.click("#reveal");
    alice.wait_for("!document.getElementById('secrets').hidden", "the secrets");
    assert_eq!(alice.text("#secrets .secret-password"), password);
    alice.screenshot("6-secrets-revealed");
    let expires = alice.text("#expires-at");
    alice.click("#extend");
    alice.wait_for(&format!("document.getElementById('expires-at').textContent !== {expires:?}"), "the extension");
    alice.wait_for("/^in 1h 5\\dm/.test(document.getElementById('countdown').textContent)", "two hours left");
    alice.screenshot("7-extended");

    // Bob sees Alice's run in the list, may open it, and may not rehearse on demo: the
    // refusal says why.
    let bob = Browser::new(&driver, "bob");
    bob.open(&format!("{base}/"));
    assert_eq!(bob.text("#user"), "bob");
    let list = bob.text("#env-demo + table");
    assert!(list.contains("alice") && list.contains("v2") && list.contains("passed"), "{list}");
    let options = bob.script("return [...document.querySelectorAll('#environment option')].map(o => o.value);");
    assert!(!options.as_array().unwrap().iter().any(|o| o == "demo"), "bob is offered demo: {options}");
    bob.open(&request_url);
    assert!(bob.text("#state").starts_with("passed"), "{}", bob.text("#state"));
    assert_eq!(bob.script("return document.querySelectorAll('button').length;"), json!(0));
    // Alice's dry run: its state, but neither its endpoints, its secrets nor its buttons.
    bob.open(&dry_run_url);
    assert!(bob.text("#state").contains("kept until"), "{}", bob.text("#state"));
    assert_eq!(bob.script("return document.getElementById('kept');"), Value::Null);
    assert_eq!(bob.script("return document.querySelectorAll('button').length;"), json!(0));
    assert!(!bob.text("body").contains(&password));
    bob.screenshot("8-others-dry-run");
    bob.open(&format!("{base}/"));
    // A request the rules refuse: asked as the page asks, its reason shown.
    bob.script("const s = document.getElementById('environment'); const o = document.createElement('option'); o.value = 'demo'; s.appendChild(o); s.value = 'demo';");
    bob.type_into("#release", "v2");
    bob.click("#go");
    bob.wait_for("document.getElementById('form-error').textContent.length > 0", "the refusal");
    assert!(bob.text("#form-error").contains("bob may not rehearse on demo"), "{}", bob.text("#form-error"));
    bob.screenshot("9-refused");

    // Alice destroys her dry run: the page follows the teardown to its end.
    alice.open(&dry_run_url);
    alice.click("#destroy");
    alice.wait_for("document.getElementById('run').dataset.state === 'finished'", "the teardown's end");
    assert!(alice.text("#state").starts_with("passed"), "{}", alice.text("#state"));
    assert!(alice.text("#error").contains("destroyed by alice; torn down, nothing left"), "{}", alice.text("#error"));
    assert!(alice.text("#log").contains("torn down: nothing is left"), "{}", alice.text("#log"));
    alice.screenshot("10-destroyed");
    crate::common::assert_nothing_left(&sb, &run_id);

    // The pages asked for nothing outside the server: no CDN, no inline script.
    let csp = http(server.addr, "GET", "/", &[("X-Forwarded-User", "bob")], "")
        .header("content-security-policy")
        .map(str::to_string);
    assert!(csp.unwrap().contains("script-src 'self'"));
}
