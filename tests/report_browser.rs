//! `report.html` in a real browser: Debian's Chromium, headless, renders the page of a
//! large, hostile run (long ids and ARNs, hundreds of steps, markup in names) and a
//! script in a *copy* of the page measures what a person would see. The shipped page
//! itself has no script.
//!
//! What is checked: at 1280 px nothing overflows the page and the wide tables (backup,
//! resources) show every column; at phone width anything too wide scrolls inside its
//! own wrapper, never the page; no request leaves the page (Chromium's own network log
//! and the page's resource timings both say so, with every host unresolvable anyway);
//! status marks are drawn SVG, not emoji a font may lack; the timeline draws its rows,
//! failures and axis; markup in user text stays text. A screenshot is kept in
//! `target/tmp/report_browser/` to look at.
//!
//! Chromium is a test dependency (`make test-deps`); without it these tests fail.

use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{TimeZone, Utc};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rehearse::report::model::*;
use rehearse::report::write_all;
use serde_json::Value;

/// The longest a page may take to load and render in Chromium.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
/// One browser at a time: the machine has two cores.
static BROWSER: Mutex<()> = Mutex::new(());

const HOSTILE: &str = "service.<script>document.title='pwned'</script></svg><img src=x>";
const LONG_DB: &str = "database.orders-primary-with-a-deliberately-long-identifier-for-layout-0001";

// ---------------------------------------------------------------------------------
// A realistic report: an AWS run of a shop with 3 databases, 120 resources, 250+
// steps, 4 suites and a teardown that left 2 resources behind.

fn realistic() -> RunReport {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 2, 0, 0).unwrap();
    let mut resources = Vec::new();
    let mut steps = Vec::new();
    let mut step = |resource: &str, kind: &str, action: &str, start_ms: u64, duration_ms: u64, ok: bool| {
        steps.push(StepTiming {
            resource: resource.into(),
            kind: kind.into(),
            action: action.into(),
            start_ms,
            duration_ms,
            ok,
            detail: (!ok).then(|| format!("{action} of {resource} failed: timed out after {}s", duration_ms / 1000)),
        })
    };
    for i in 0..3u64 {
        let id = if i == 0 { LONG_DB.to_string() } else { format!("database.shard-{i}") };
        step(&id, "rds-instance", "restore", 2_000 + i * 300, 380_000 + i * 20_000, true);
        step(&id, "rds-instance", "mask", 400_000 + i * 5_000, 12_000, true);
        step(&id, "rds-instance", "destroy", 900_000, 240_000, i != 2);
        resources.push(ResourceRecord {
            id,
            kind: "rds-instance".into(),
            provider_id: Some(format!(
                "arn:aws:rds:eu-west-1:123456789012:db:rehearse-shop-20260501-020000-q7w2-orders-shard-{i}-copy"
            )),
            status: if i == 2 { ResourceStatus::LeftBehind } else { ResourceStatus::Destroyed },
        });
    }
    for i in 0..116u64 {
        let id = format!("instance.web-{i:03}");
        let start = 1_000 + i * 900;
        step(&id, "ec2-instance", "create", start, 45_000, true);
        step(&id, "ec2-instance", "health", 430_000 + i * 200, 8_000 + i * 50, i != 77);
        step(&id, "ec2-instance", "destroy", 880_000 + i * 100, 30_000, i != 101);
        resources.push(ResourceRecord {
            id,
            kind: "ec2-instance".into(),
            provider_id: Some(format!("i-0{i:016x}")),
            status: if i == 101 { ResourceStatus::LeftBehind } else { ResourceStatus::Destroyed },
        });
    }
    step("install.web", "install", "install", 470_000, 95_000, false);
    step(HOSTILE, "local-process", "start", 560_000, 2_000, true);
    resources.push(ResourceRecord {
        id: HOSTILE.into(),
        kind: "local-process".into(),
        provider_id: Some("pid 4242".into()),
        status: ResourceStatus::Destroyed,
    });

    let case = |name: &str, status: CaseStatus, message: Option<&str>| TestCase {
        classname: Some("api".into()),
        name: name.into(),
        status,
        duration_ms: 340,
        message: message.map(Into::into),
    };
    let suite = |name: &str, status: SuiteStatus, cases: Vec<TestCase>, reason: Option<&str>| SuiteResult {
        name: name.into(),
        status,
        reason: reason.map(Into::into),
        command: format!(
            "./suites/{name}.sh --base-url \"$REHEARSE_WEB_URL\" --junit \"$REHEARSE_JUNIT_DIR/{name}.xml\""
        ),
        duration_ms: 61_000,
        exit_code: match status {
            SuiteStatus::Passed => Some(0),
            SuiteStatus::NotRun => None,
            _ => Some(1),
        },
        tests: cases.len() as u32,
        failures: cases.iter().filter(|c| c.status == CaseStatus::Failed).count() as u32,
        errors: 0,
        skipped: 0,
        cases,
        cases_omitted: 0,
        log: Some(format!("/var/lib/rehearse/runs/shop-20260501-020000-q7w2/suites/{name}.log")),
    };

    RunReport {
        schema_version: REPORT_SCHEMA_VERSION,
        run_id: "shop-20260501-020000-q7w2".into(),
        environment: "shop".into(),
        provider: ProviderKind::Aws,
        description: "environments/shop-aws.yaml".into(),
        release: "v2.4.0-rc.1".into(),
        artifact: "s3://releases/shop/v2.4.0-rc.1/shop-v2.4.0-rc.1-linux-x86_64.tar.gz".into(),
        started_at: t0,
        finished_at: t0 + chrono::Duration::seconds(1_200),
        verdict: Verdict::Failed,
        exit_code: 4,
        reason: Some("the release's install failed on the copy of production, and teardown left 2 resources.".into()),
        failure: Some(Failure {
            phase: "install".into(),
            resource: Some("install.web".into()),
            message: "migration migrations/0042_backfill_order_totals_for_every_customer_since_2019.sql failed".into(),
            log_tail: vec![
                "applying migrations/0042_backfill_order_totals_for_every_customer_since_2019.sql".into(),
                format!("ERROR:  canceling statement due to statement timeout; {}", "x".repeat(300)),
            ],
            log: Some("/var/lib/rehearse/runs/shop-20260501-020000-q7w2/logs/install.web.log".into()),
        }),
        backups: (0..3)
            .map(|i| BackupUsed {
                database: if i == 0 { "orders_primary_with_a_long_name".into() } else { format!("shard_{i}") },
                source_kind: "rds_instance".into(),
                source: format!("shop-prod-orders-primary-eu-west-1-shard-{i}"),
                backup: format!("rds:shop-prod-orders-primary-eu-west-1-shard-{i}-2026-05-01-01-00"),
                arn: Some(format!(
                    "arn:aws:rds:eu-west-1:123456789012:snapshot:rds:shop-prod-orders-primary-eu-west-1-shard-{i}-2026-05-01-01-00"
                )),
                taken_at: Some(t0 - chrono::Duration::hours(1)),
                restore: "newest-snapshot".into(),
                method: "cold".into(),
                restore_ms: 380_000,
            })
            .collect(),
        phases: [
            ("up", 0, 420_000, PhaseStatus::Ok),
            ("prepare-data", 420_000, 40_000, PhaseStatus::Ok),
            ("install", 460_000, 110_000, PhaseStatus::Failed),
            ("health", 570_000, 0, PhaseStatus::Skipped),
            ("suites", 570_000, 300_000, PhaseStatus::Ok),
            ("report", 870_000, 500, PhaseStatus::Ok),
            ("down", 870_500, 329_500, PhaseStatus::Failed),
        ]
        .into_iter()
        .map(|(phase, start_ms, duration_ms, status)| PhaseTiming {
            phase: phase.into(),
            start_ms,
            duration_ms,
            status,
        })
        .collect(),
        steps,
        suites: vec![
            suite("smoke", SuiteStatus::Passed, vec![case("health", CaseStatus::Passed, None), case("home", CaseStatus::Passed, None)], None),
            suite(
                "api",
                SuiteStatus::Failed,
                vec![
                    case("orders_total_matches_line_items_for_every_order_in_the_backfill", CaseStatus::Failed, Some(&format!("expected 1042.50, got 1040.00 for order {}", "8".repeat(120)))),
                    case("<b>bold</b> & \"quoted\"", CaseStatus::Failed, Some("<script>alert(1)</script>")),
                    case("list_products", CaseStatus::Passed, None),
                ],
                None,
            ),
            suite("perf", SuiteStatus::Error, vec![], Some("wrote no JUnit file (expected perf.xml)")),
            suite("migrations", SuiteStatus::NotRun, vec![], Some("the release's install failed")),
        ],
        resources,
        teardown: Teardown {
            policy: DestroyPolicy::Always,
            status: TeardownStatus::Incomplete,
            duration_ms: 329_500,
            leftovers: vec![
                Leftover {
                    id: "database.shard-2".into(),
                    kind: "rds-instance".into(),
                    provider_id: Some("rehearse-shop-20260501-020000-q7w2-orders-shard-2-copy".into()),
                    command: "aws rds delete-db-instance --region eu-west-1 --db-instance-identifier rehearse-shop-20260501-020000-q7w2-orders-shard-2-copy --skip-final-snapshot --delete-automated-backups".into(),
                },
                Leftover {
                    id: "instance.web-101".into(),
                    kind: "ec2-instance".into(),
                    provider_id: Some("i-00000000000000065".into()),
                    command: "aws ec2 terminate-instances --region eu-west-1 --instance-ids i-00000000000000065".into(),
                },
            ],
            expires_at: None,
        },
        total_ms: 1_200_000,
        overhead_ms: 2_300,
        access: None,
        change: None,
        deploy: None,
        chaos: None,
    }
}

// ---------------------------------------------------------------------------------
// Chromium, headless, with a private profile, no network and a deadline.

fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "Chromium is not installed (no `chromium` or `chromium-browser` on PATH): run `make test-deps`, \
             which installs Debian's chromium package"
        )
    })
}

/// What one Chromium run left: its standard output and its network log.
struct Browsed {
    stdout: String,
    netlog: Value,
}

/// Runs headless Chromium on `page` at `width`x`height` with `mode` (`--dump-dom` or
/// `--screenshot=FILE`) and the `extra` flags, in a fresh profile and home under
/// `scratch`, with every host name unresolvable and a network log. The whole process
/// group is killed afterwards: after a normal exit, on timeout, and if the test panics.
fn browse(page: &Path, width: u32, height: u32, extra: &[&str], mode: &str, scratch: &Path) -> Browsed {
    let _one_at_a_time = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let profile = scratch.join("profile");
    let home = scratch.join("home");
    fs::create_dir_all(&profile).unwrap();
    fs::create_dir_all(&home).unwrap();
    let netlog = scratch.join("netlog.json");
    let stdout = scratch.join("stdout");
    let stderr = scratch.join("stderr");
    let browser = chromium();
    let mut cmd = Command::new(&browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--disable-breakpad",
        "--disable-quic",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--log-net-log={}", netlog.display()))
    .arg(format!("--window-size={width},{height}"))
    .args(extra)
    .arg(mode)
    .arg(format!("file://{}", page.display()))
    .env("HOME", &home)
    .env("XDG_CONFIG_HOME", home.join(".config"))
    .env("XDG_CACHE_HOME", home.join(".cache"))
    .stdin(Stdio::null())
    .stdout(File::create(&stdout).unwrap())
    .stderr(File::create(&stderr).unwrap())
    .process_group(0);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", browser.display()));
    let mut group = Group(child);
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        if let Some(status) = group.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "chromium took longer than {BROWSER_TIMEOUT:?} on {}; its stderr:\n{}",
            page.display(),
            fs::read_to_string(&stderr).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(group);
    let err = fs::read_to_string(&stderr).unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}) on {}:\n{err}", page.display());
    let out = fs::read_to_string(&stdout).unwrap();
    let log = fs::read_to_string(&netlog).unwrap_or_else(|e| panic!("chromium wrote no network log: {e}\n{err}"));
    let netlog = serde_json::from_str(&log).unwrap_or_else(|e| panic!("network log is not JSON: {e}"));
    Browsed { stdout: out, netlog }
}

/// The browser's process group, killed when dropped: no Chromium helper outlives a test.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = Pid::from_raw(self.0.id() as i32);
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The URLs of the requests in Chromium's network log that a page started. Chromium
/// starts requests of its own too (component updates, network time, accounts), which
/// fail here as every host is unresolvable; the log marks those as having no
/// initiator origin ("not an origin"), while a page's requests carry its origin.
fn page_requests(netlog: &Value) -> Vec<String> {
    let start_job = netlog["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64();
    assert!(start_job.is_some(), "the network log names no URL_REQUEST_START_JOB events");
    let events = netlog["events"].as_array().map(Vec::as_slice).unwrap_or_default();
    events
        .iter()
        .filter(|e| e["type"].as_u64() == start_job)
        .filter(|e| e["params"]["initiator"].as_str() != Some("not an origin"))
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect()
}

fn assert_no_requests(netlog: &Value) {
    let outside: Vec<String> =
        page_requests(netlog).into_iter().filter(|u| !(u.starts_with("file:") || u.starts_with("data:"))).collect();
    assert!(outside.is_empty(), "the page asked for something beyond itself: {outside:?}");
}

// ---------------------------------------------------------------------------------
// The page, and the measuring copy of it.

/// Where the page, its measuring copy and the screenshot are kept for a person to
/// look at after the tests.
fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report_browser")
}

/// Writes the realistic report once (tests share it) and returns `report.html`.
fn page() -> PathBuf {
    static PAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        let dir = out_dir().join("report");
        let _ = fs::remove_dir_all(&dir);
        write_all(&realistic(), &dir).unwrap().html
    })
    .clone()
}

/// Measures the page as rendered and writes the result, as base64 JSON, into the DOM
/// for `--dump-dom`.
const MEASURE: &str = r#"<script>
(function () {
  var out;
  try { out = measure(); } catch (e) { out = { error: String(e) + ' ' + (e.stack || '') }; }
  // In a frame (a phone-sized one), the result goes to the page that holds it.
  var into = window.parent !== window ? parent.document : document;
  var pre = into.createElement('pre');
  pre.id = 'rehearse-measure';
  pre.textContent = btoa(unescape(encodeURIComponent(JSON.stringify(out))));
  into.body.appendChild(pre);
})();
function measure() {
  function describe(el) {
    var s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    if (typeof el.className === 'string' && el.className.trim()) s += '.' + el.className.trim().split(/\s+/).join('.');
    return s;
  }
  function scrollingAncestor(el) {
    for (var p = el.parentElement; p; p = p.parentElement) {
      var ox = getComputedStyle(p).overflowX;
      if (ox === 'auto' || ox === 'scroll') return p;
    }
    return null;
  }
  var out = { viewport: innerWidth, page_width: document.documentElement.scrollWidth, overflowing: [], scrolling: [], beyond: [] };
  document.querySelectorAll('body *').forEach(function (el) {
    if (el.tagName === 'SCRIPT' || (el.closest('svg') && el.tagName !== 'svg')) return;
    var r = el.getBoundingClientRect();
    if (r.right > innerWidth + 1 && !scrollingAncestor(el)) out.beyond.push(describe(el));
    if (el.clientWidth === 0 || el.scrollWidth <= el.clientWidth + 1) return;
    var ox = getComputedStyle(el).overflowX;
    (ox === 'auto' || ox === 'scroll' ? out.scrolling : out.overflowing).push(describe(el));
  });
  out.tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
    var w = t.parentElement, head = t.rows[0].cells, last = head[head.length - 1];
    return {
      id: t.id,
      wrapper_overflow_x: getComputedStyle(w).overflowX,
      scrolls: w.scrollWidth > w.clientWidth + 1,
      last_column_visible: last.getBoundingClientRect().right <= w.getBoundingClientRect().right + 1
    };
  });
  var statuses = document.querySelectorAll('.status');
  out.status_cells = statuses.length;
  out.status_without_mark = [];
  statuses.forEach(function (el) {
    var m = el.querySelector('svg.mark');
    var drawn = m && m.querySelector('path, rect, circle') && m.getBoundingClientRect().width >= 8;
    if (!drawn) out.status_without_mark.push(describe(el) + ': ' + el.textContent.slice(0, 40));
  });
  out.symbols = [];
  var walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (var n = walk.nextNode(); n; n = walk.nextNode()) {
    if (n.parentElement.closest('script')) continue;
    for (var ch of n.data) {
      var c = ch.codePointAt(0);
      if ((c >= 0x2190 && c <= 0x2bff) || (c >= 0x1f000 && c <= 0x1faff) || c === 0xfe0f) out.symbols.push(ch + ' U+' + c.toString(16));
    }
  }
  out.scripts = document.scripts.length;
  out.images = document.querySelectorAll('img, image, iframe, object, embed').length;
  out.title = document.title;
  out.hostile_shown = document.body.textContent.indexOf("\x3cscript>document.title='pwned'\x3c/script>\x3c/svg>\x3cimg src=x>") >= 0;
  var tl = document.getElementById('timeline');
  if (tl) {
    var box = tl.viewBox.baseVal, lw = +tl.querySelector('svg.labels').getAttribute('width');
    var texts = Array.prototype.slice.call(tl.querySelectorAll('text'));
    out.timeline = {
      width: tl.getBoundingClientRect().width,
      wrapper_scrolls: tl.parentElement.scrollWidth > tl.parentElement.clientWidth + 1,
      rows: tl.querySelectorAll('svg.labels g.row').length,
      failed_rows: tl.querySelectorAll('svg.labels g.row.failed').length,
      lane: !!tl.querySelector('svg.labels g.lane'),
      steps: tl.querySelectorAll('g.step').length,
      failed_steps: tl.querySelectorAll('g.step.failed').length,
      crosses: tl.querySelectorAll('g.step.failed path.x').length,
      ticks: Array.prototype.map.call(tl.querySelectorAll('text.tick'), function (t) { return t.textContent; }),
      labels_cut: Array.prototype.filter.call(tl.querySelectorAll('svg.labels text'), function (t) { return t.getComputedTextLength() > lw; }).length,
      bar_text_spills: Array.prototype.filter.call(tl.querySelectorAll('text.bar-text'), function (t) {
        return t.getComputedTextLength() + 3 > +t.parentNode.querySelector('rect').getAttribute('width');
      }).length,
      outside_view: texts.concat(Array.prototype.slice.call(tl.querySelectorAll('rect.bar'))).filter(function (e) {
        var b = e.getBBox();
        return b.x < box.x - 0.5 || b.y < box.y - 0.5 || b.x + b.width > box.x + box.width + 0.5 || b.y + b.height > box.y + box.height + 0.5;
      }).length
    };
  }
  out.requests = performance.getEntriesByType('resource').map(function (e) { return e.name; });
  return out;
}
</script>
"#;

/// Renders the measuring copy of the page `width` CSS px wide and returns what it
/// measured. Headless Chromium's window is at least 500 px wide, so a narrower page is
/// measured in a frame of that width (file pages may reach into each other's frames
/// only with `--allow-file-access-from-files`, which only that run gets).
fn measure(width: u32, height: u32) -> Value {
    let html = fs::read_to_string(page()).unwrap();
    let body_end = html.rfind("</body>").expect("the page has a </body>");
    let scratch = out_dir().join(format!("measure-{width}"));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let copy = scratch.join("measured.html");
    fs::write(&copy, format!("{}{MEASURE}{}", &html[..body_end], &html[body_end..])).unwrap();

    let run = if width >= 500 {
        browse(&copy, width, height, &[], "--dump-dom", &scratch)
    } else {
        let frame = scratch.join("frame.html");
        fs::write(
            &frame,
            format!(
                "<!DOCTYPE html><body style=\"margin:0\"><iframe src=\"measured.html\" \
                 style=\"border:0;width:{width}px;height:{height}px\"></iframe></body>"
            ),
        )
        .unwrap();
        browse(&frame, 800, height, &["--allow-file-access-from-files"], "--dump-dom", &scratch)
    };
    assert_no_requests(&run.netlog);
    let start = run.stdout.find(r#"<pre id="rehearse-measure">"#).unwrap_or_else(|| {
        panic!("the measuring script left no result; the DOM was:\n{}", &run.stdout[..run.stdout.len().min(3000)])
    });
    let encoded = &run.stdout[start + r#"<pre id="rehearse-measure">"#.len()..];
    let encoded = &encoded[..encoded.find("</pre>").unwrap()];
    let json = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap();
    let measured: Value = serde_json::from_slice(&json).unwrap();
    assert!(measured.get("error").is_none(), "the measuring script failed: {}", measured["error"]);
    measured
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

// ---------------------------------------------------------------------------------

#[test]
fn shipped_page_asks_for_nothing_outside_itself() {
    let html = fs::read_to_string(page()).unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"), "report.html names a web address");
    // User text has every `<` escaped, so each `<` starts real markup: none of it may
    // point anywhere (the hostile resource's `<img src=x>` must be text, not a tag).
    let tags: Vec<&str> = html.split('<').skip(1).map(|t| &t[..t.find('>').unwrap_or(t.len())]).collect();
    assert!(tags.len() > 1000, "{} tags", tags.len());
    for tag in &tags {
        // Attribute names, with the quoted values (user text among them) left out.
        let unquoted: String = tag.split('"').step_by(2).collect::<Vec<_>>().join(" ");
        let mut words = unquoted.split_whitespace().map(|w| w.to_ascii_lowercase());
        let name = words.next().unwrap_or_default();
        assert!(
            !["script", "link", "img", "image", "iframe", "object", "embed", "use"].contains(&name.as_str()),
            "<{tag}>"
        );
        for attr in words.map(|w| w.split('=').next().unwrap_or_default().to_string()) {
            assert!(
                !(["src", "href", "srcset", "xlink:href", "style", "background"].contains(&attr.as_str())
                    || attr.starts_with("on")),
                "<{tag}> has the attribute {attr}"
            );
        }
    }
    let style = &html[html.find("<style>").unwrap()..html.find("</style>").unwrap()];
    for banned in ["url(", "@import", "@font-face"] {
        assert!(!style.contains(banned), "the style sheet has {banned}");
    }
}

#[test]
fn desktop_width_shows_every_column_and_draws_marks_and_timeline() {
    let m = measure(1280, 2000);
    assert_eq!(m["viewport"], 1280);
    assert!(m["page_width"].as_u64().unwrap() <= 1280, "the page scrolls sideways: {m}");
    assert_eq!(strings(&m["overflowing"]), Vec::<String>::new(), "content spills out of its box");
    assert_eq!(strings(&m["beyond"]), Vec::<String>::new(), "content right of the window");

    let tables = m["tables"].as_array().unwrap();
    let ids: Vec<&str> = tables.iter().map(|t| t["id"].as_str().unwrap()).collect();
    for id in ["backups", "phases", "suites", "failed-cases", "leftovers", "resources", "steps"] {
        assert!(ids.contains(&id), "no table {id}: {ids:?}");
    }
    for t in tables {
        assert_eq!(t["wrapper_overflow_x"], "auto", "table {} is not in a scrolling wrapper", t["id"]);
        assert_eq!(t["scrolls"], false, "table {} needs sideways scrolling at 1280 px", t["id"]);
        assert_eq!(t["last_column_visible"], true, "table {} loses its last column at 1280 px", t["id"]);
    }

    // One mark per phase, suite, failed case, resource and step, and the teardown.
    let r = realistic();
    let failed_cases = r.suites.iter().flat_map(|s| &s.cases).filter(|c| c.status == CaseStatus::Failed).count();
    let expected = r.phases.len() + r.suites.len() + failed_cases + r.resources.len() + r.steps.len() + 1;
    assert_eq!(m["status_cells"].as_u64().unwrap() as usize, expected);
    assert_eq!(strings(&m["status_without_mark"]), Vec::<String>::new(), "statuses without a drawn mark");
    assert_eq!(strings(&m["symbols"]), Vec::<String>::new(), "symbols that need an emoji or symbol font");

    // User text is text: no script ran, no image was made, the markup shows as written.
    assert_eq!(m["scripts"], 1, "only the measuring script");
    assert_eq!(m["images"], 0);
    assert!(m["title"].as_str().unwrap().starts_with("Rehearsal failed: shop"), "{}", m["title"]);
    assert_eq!(m["hostile_shown"], true);

    let tl = &m["timeline"];
    assert!(tl.is_object(), "no timeline: {m}");
    assert_eq!(tl["wrapper_scrolls"], false, "the timeline needs sideways scrolling at 1280 px");
    assert!(tl["width"].as_f64().unwrap() >= 900.0, "the timeline is squeezed: {}", tl["width"]);
    assert_eq!(tl["rows"], 40, "rows are capped");
    assert_eq!(tl["lane"], true, "the phases lane");
    // Rows with a failed step are shown first: web-077's health, web-101's and
    // shard-2's destroy, and the install.
    assert_eq!(tl["failed_rows"], 4);
    assert_eq!(tl["failed_steps"], 4);
    assert_eq!(tl["crosses"], 4);
    assert!(tl["steps"].as_u64().unwrap() >= 100, "{}", tl["steps"]);
    let ticks = strings(&tl["ticks"]);
    assert!(ticks.len() >= 4 && ticks[0] == "0s" && ticks.iter().all(|t| t.ends_with('s')), "{ticks:?}");
    assert_eq!(tl["labels_cut"], 0, "row labels wider than their column");
    assert_eq!(tl["bar_text_spills"], 0, "bar text wider than its bar");
    assert_eq!(tl["outside_view"], 0, "drawn outside the timeline's box");

    assert_eq!(strings(&m["requests"]), Vec::<String>::new(), "the page loaded resources");
}

#[test]
fn phone_width_scrolls_wide_content_inside_its_wrapper_never_the_page() {
    let m = measure(390, 844);
    assert_eq!(m["viewport"], 390);
    assert!(m["page_width"].as_u64().unwrap() <= 390, "the page scrolls sideways on a phone: {m}");
    assert_eq!(strings(&m["overflowing"]), Vec::<String>::new(), "content spills out of its box");
    assert_eq!(strings(&m["beyond"]), Vec::<String>::new(), "content right of the screen");
    assert!(!strings(&m["scrolling"]).is_empty(), "wide tables scroll in their wrappers on a phone");
}

/// The network check is worth something only if it sees what a page asks for.
#[test]
fn network_log_catches_a_page_that_asks_for_something() {
    let scratch = out_dir().join("control");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let page = scratch.join("requests.html");
    fs::write(
        &page,
        "<!DOCTYPE html><html><head><link rel=stylesheet href=\"https://cdn.example.invalid/a.css\"></head>\
         <body><img src=\"http://images.example.invalid/b.png\"></body></html>",
    )
    .unwrap();
    let run = browse(&page, 800, 600, &[], "--dump-dom", &scratch);
    let mut asked = page_requests(&run.netlog);
    asked.sort();
    asked.dedup();
    assert_eq!(asked, ["http://images.example.invalid/b.png", "https://cdn.example.invalid/a.css"]);
}

#[test]
fn screenshot_at_1280_shows_a_rendered_page() {
    let scratch = out_dir().join("screenshot");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let png = out_dir().join("report.png");
    let _ = fs::remove_file(&png);
    let run = browse(&page(), 1280, 2000, &[], &format!("--screenshot={}", png.display()), &scratch);
    assert_no_requests(&run.netlog);
    let bytes = fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 2000));
    assert!(bytes.len() > 60_000, "a screenshot of {} bytes is too plain to be the page", bytes.len());
}

// ---------------------------------------------------------------------------------
// compare.html: baseline and candidate side by side.

/// A comparison as compare.json holds it: three endpoints, one slowed, hostile text in
/// a reason.
fn comparison() -> Value {
    let lat =
        |centre: f64, n: usize| -> Vec<f64> { (0..n).map(|i| centre * (0.8 + 0.4 * (i as f64 / n as f64))).collect() };
    let zeros = |n: usize| vec![0.0; n];
    // A statement as pg_stat_statements normalizes it: long, unbroken, and hostile.
    let long =
        format!("select {} from products where name = {HOSTILE}", "p.a_very_long_column_name_without_spaces".repeat(8));
    let side = |release: &str, products: f64| {
        let other =
            if release == "v2" { "select count(*) from customers" } else { "select * from orders where id = $1" };
        serde_json::json!({
            "release": release, "run_id": format!("r-20261127-000000-{release}"), "verdict": "passed",
            "exit_code": 0, "reason": null, "migration_ms": [160.0],
            "databases": {"db": {"size_bytes": 11787623, "note": null, "statements": [
                {"query": long, "calls": 60, "mean_ms": products / 100.0},
                {"query": other, "calls": 60, "mean_ms": 0.39}
            ]}},
            "measured": {
                "latencies": {"GET /products": lat(products, 60), "GET /version": lat(2.0, 60), "GET /customers/count": lat(78.0, 60)},
                "errors": {"GET /products": zeros(60), "GET /version": zeros(60), "GET /customers/count": zeros(60)}
            }
        })
    };
    let verdict = |metric: &str, class: &str| {
        serde_json::json!({
            "metric": metric, "classification": class, "direction": "increase", "critical": false,
            "baseline_samples": 60, "candidate_samples": 60, "estimate": 57.5, "interval": [51.2, 64.6],
            "tolerance": 14.4, "p_value": 0.0001, "reason": format!("{class}: {HOSTILE}")
        })
    };
    serde_json::json!({
        "schema_version": 1, "id": "c-20261127-000000-abcdef", "environment": "demo",
        "baseline": side("v2", 62.0), "candidate": side("v2-slow", 118.0),
        "load": {"requests": "load/shop.requests", "target": "web", "rate": 15.0, "duration": "12s", "seed": 1},
        "settings": {"confidence": 0.98, "tolerance": 0.25, "min_samples": 50, "pass": 95.0, "marginal": 75.0},
        "verdicts": [verdict("latency GET /products", "High"), verdict("latency GET /version", "Pass"), verdict("migration time", "NoData")],
        "score": {"score": 83.3, "judged": 6, "passed": 5, "outcome": "marginal", "failed": ["latency GET /products"], "reason": "marginal"},
        "reason": "score 83.3 is marginal; failed: latency GET /products"
    })
}

#[test]
fn compare_page_shows_both_sides_at_1280_and_asks_for_nothing() {
    let scratch = out_dir().join("compare");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).unwrap();
    let html = rehearse::compare::page::render(&comparison());
    assert!(!html.contains("<script>document"), "markup in a reason stays text");
    assert!(!html.contains("http://") && !html.contains("https://"), "compare.html names a web address");
    let page = scratch.join("compare.html");
    fs::write(&page, &html).unwrap();
    // A copy measures what a person sees: where each side's column is.
    let measure = r#"<pre id="rehearse-measure"></pre><script>
      const r = [...document.querySelectorAll('.side')].map(e => e.getBoundingClientRect());
      const svgs = document.querySelectorAll('svg rect').length;
      const rows = document.querySelectorAll('table.statements tr').length;
      document.getElementById('rehearse-measure').textContent = btoa(JSON.stringify({
        page_width: document.documentElement.scrollWidth, sides: r.map(b => [b.left, b.right, b.top, b.width]),
        boxes: svgs, rows, title: document.title }));
    </script>"#;
    let body_end = html.rfind("</body>").unwrap();
    let copy = scratch.join("measured.html");
    fs::write(&copy, format!("{}{measure}{}", &html[..body_end], &html[body_end..])).unwrap();
    let run = browse(&copy, 1280, 1100, &[], "--dump-dom", &scratch.join("dom"));
    assert_no_requests(&run.netlog);
    let start = run.stdout.find(r#"<pre id="rehearse-measure">"#).expect("the measuring script ran");
    let encoded = &run.stdout[start + r#"<pre id="rehearse-measure">"#.len()..];
    let encoded = &encoded[..encoded.find("</pre>").unwrap()];
    let m: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(encoded.trim()).unwrap()).unwrap();
    assert!(m["page_width"].as_u64().unwrap() <= 1280, "the page scrolls sideways: {m}");
    let sides = m["sides"].as_array().unwrap();
    assert_eq!(sides.len(), 2, "{m}");
    let (b, c) = (&sides[0], &sides[1]);
    // Side by side: the same row, baseline left of candidate, both within the window.
    assert_eq!(b[2], c[2], "{m}");
    assert!(b[1].as_f64().unwrap() <= c[0].as_f64().unwrap() && c[1].as_f64().unwrap() <= 1280.0, "{m}");
    assert!(b[3].as_f64().unwrap() > 300.0 && c[3].as_f64().unwrap() > 300.0, "{m}");
    assert_eq!(m["boxes"], 6, "a box a side an endpoint: {m}");
    // The statements side by side: the shared one in one row, each side's own in its
    // own (a header and three rows), the long one wrapped within the window.
    assert_eq!(m["rows"], 4, "{m}");
    assert_eq!(m["title"], "MARGINAL: demo v2-slow against v2");
    let shot = scratch.join("compare.png");
    let run = browse(&page, 1280, 1100, &[], &format!("--screenshot={}", shot.display()), &scratch.join("shot"));
    assert_no_requests(&run.netlog);
    assert!(fs::metadata(&shot).unwrap().len() > 10_000, "the screenshot shows a rendered page");
}
