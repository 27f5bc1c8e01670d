//! Writing a run's report: `report.json`, `junit.xml`, `summary.md`, `report.html`, and
//! the few lines printed at the end of a run.
//!
//! Everything is rendered from the one [`RunReport`]. The Markdown and HTML templates
//! never compute anything: `View` turns the report into display strings first
//! (durations, UTC times, fallback wording for missing data), so both templates say
//! the same thing and the wording lives in one place. The templates are compiled into
//! the binary so it renders the same from any working directory.
//!
//! Every file is written atomically (temporary name in the same directory, then
//! rename): a CI system picking up `junit.xml` never sees half a file.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tera::{Context, Tera, Value};

use super::junit;
use super::model::{RunReport, SuiteStatus, Verdict, REPORT_SCHEMA_VERSION};
use crate::description::template::error_chain;
use crate::style::{paint, Styles};

pub const JSON_FILE: &str = "report.json";
pub const JUNIT_FILE: &str = "junit.xml";
pub const MARKDOWN_FILE: &str = "summary.md";
pub const HTML_FILE: &str = "report.html";

const MARKDOWN_TEMPLATE: &str = include_str!("../../templates/summary.md.tera");
const HTML_TEMPLATE: &str = include_str!("../../templates/report.html.tera");

/// The Markdown summary lists at most this many failed test cases; the rest are in
/// `junit.xml` and the HTML page.
const MARKDOWN_MAX_CASES: usize = 20;

/// Where [`write_all`] put each format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    pub json: PathBuf,
    pub junit: PathBuf,
    pub markdown: PathBuf,
    pub html: PathBuf,
}

impl ReportFiles {
    /// The paths the report of a run in `dir` has (or will have).
    pub fn in_dir(dir: &Path) -> Self {
        ReportFiles {
            json: dir.join(JSON_FILE),
            junit: dir.join(JUNIT_FILE),
            markdown: dir.join(MARKDOWN_FILE),
            html: dir.join(HTML_FILE),
        }
    }
}

/// Creates `dir` if needed and writes every format into it.
///
/// `report.json` is written first: it is the source of the others and what
/// `rehearse report` reads back. A failure to write one file does not stop the
/// others; the first error is returned.
pub fn write_all(report: &RunReport, dir: &Path) -> io::Result<ReportFiles> {
    fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
    let files = ReportFiles::in_dir(dir);
    let outputs: [(&Path, io::Result<String>); 4] = [
        (&files.json, json(report)),
        (&files.junit, junit::to_xml(report)),
        (&files.markdown, markdown(report)),
        (&files.html, html(report)),
    ];
    let mut first_error = None;
    for (path, text) in outputs {
        let written = text.and_then(|t| write_atomic(path, t.as_bytes()));
        if let Err(e) = written {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(files),
    }
}

/// `report.json`: pretty JSON, newline-terminated.
pub fn json(report: &RunReport) -> io::Result<String> {
    let mut text = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    text.push('\n');
    Ok(text)
}

/// `summary.md`: Markdown for a CI step summary (GitHub, GitLab).
pub fn markdown(report: &RunReport) -> io::Result<String> {
    render_template(report, "summary.md")
}

/// `report.html`: one self-contained page, readable on a phone.
pub fn html(report: &RunReport) -> io::Result<String> {
    render_template(report, "report.html")
}

/// Why [`read_report`] could not return a report.
#[derive(Debug, thiserror::Error)]
pub enum ReadReportError {
    #[error("find a report at {}: the run wrote none (is the run id right, or is it still running?)", path.display())]
    Missing { path: PathBuf },
    #[error("read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "read {}: its schema version is {found}, this rehearse reads version {REPORT_SCHEMA_VERSION}",
        path.display()
    )]
    Version { path: PathBuf, found: u64 },
}

/// Reads `report.json` back from a run's report directory.
pub fn read_report(dir: &Path) -> Result<RunReport, ReadReportError> {
    let path = dir.join(JSON_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadReportError::Missing { path }),
        Err(source) => return Err(ReadReportError::Read { path, source }),
    };
    // Check the version before the shape, so a report from a newer rehearse says so
    // instead of failing on some renamed field.
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(source) => return Err(ReadReportError::Parse { path, source }),
    };
    match value.get("schema_version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(REPORT_SCHEMA_VERSION) => {}
        Some(found) => return Err(ReadReportError::Version { path, found }),
        None => {}
    }
    serde_json::from_value(value).map_err(|source| ReadReportError::Parse { path, source })
}

/// The end-of-run summary of `report`, whose files are `files`, painted with
/// `styles` (a `bool` works too: `true` for colours, `false` for none).
pub fn terminal_summary(report: &RunReport, files: &ReportFiles, styles: impl Into<Styles>) -> String {
    let s: Styles = styles.into();
    let mut out = String::new();

    let (mark, word, tint) = match report.verdict {
        Verdict::Passed => ("✔", "PASSED", s.pass),
        Verdict::Failed => ("✘", "FAILED", s.fail),
        Verdict::BuildFailed => ("✘", "COULD NOT BUILD", s.fail),
        Verdict::Interrupted => ("⏹", "INTERRUPTED", s.warn),
    };
    let _ = writeln!(
        out,
        "{}{} in {} {}",
        paint(s.strong(tint), format_args!("{mark} {word}")),
        paint(s.bold, format_args!(": {} release {}", report.environment, report.release)),
        duration(report.total_ms),
        paint(s.dim, format_args!("(run {})", report.run_id)),
    );
    if let Some(reason) = &report.reason {
        let _ = writeln!(out, "  {}", one_line(reason));
    }
    if let Some(f) = &report.failure {
        let at = f.resource.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
        let _ = writeln!(out, "  {} {}", paint(s.fail, format_args!("{}{at}:", f.phase)), one_line(&f.message));
        // The end of the log is where the database or compiler says what went wrong.
        let start = f.log_tail.len().saturating_sub(5);
        for line in &f.log_tail[start..] {
            let _ = writeln!(out, "    {} {line}", paint(s.dim, "│"));
        }
        if let Some(log) = &f.log {
            let _ = writeln!(out, "    {}", paint(s.dim, format_args!("full log: {log}")));
        }
    }
    for b in &report.backups {
        let taken = b.taken_at.map(|t| format!(", taken {}", time(t))).unwrap_or_default();
        let _ = writeln!(
            out,
            "  backup: {} ← {}{taken}; {} restore {}",
            b.database,
            b.backup,
            b.method,
            duration(b.restore_ms)
        );
    }

    let width = report.suites.iter().map(|s| s.name.chars().count()).max().unwrap_or(0);
    for suite in &report.suites {
        let (mark, tint) = match suite.status {
            SuiteStatus::Passed => ("✔", s.pass),
            SuiteStatus::Failed | SuiteStatus::Error => ("✘", s.fail),
            SuiteStatus::NotRun => ("-", s.warn),
        };
        let name = format!("{:width$}", suite.name);
        let mut line = format!("  {} {}  ", paint(tint, mark), paint(s.bold, name));
        match suite.status {
            SuiteStatus::NotRun => {
                line.push_str("not run");
                if let Some(reason) = &suite.reason {
                    let _ = write!(line, ": {}", one_line(reason));
                }
            }
            _ => {
                let _ = write!(
                    line,
                    "{}, {}, {}",
                    plural(suite.tests, "test"),
                    plural(suite.failures + suite.errors, "failure"),
                    duration(suite.duration_ms)
                );
            }
        }
        if matches!(suite.status, SuiteStatus::Failed | SuiteStatus::Error) {
            if let Some(reason) = &suite.reason {
                let _ = write!(line, " — {}", one_line(reason));
            } else if suite.status == SuiteStatus::Error {
                line.push_str(" — error");
            }
        }
        let _ = writeln!(out, "{line}");
    }

    let t = &report.teardown;
    match t.status.as_str() {
        "complete" => {
            let _ = writeln!(out, "  teardown: complete in {}", duration(t.duration_ms));
        }
        "kept" => {
            let until = t.expires_at.map(time).unwrap_or_else(|| "its TTL".to_string());
            let _ = writeln!(
                out,
                "  teardown: {} until {until} — remove with `rehearse down {}`",
                paint(s.warn, "kept"),
                report.run_id
            );
        }
        other => {
            let what = if other == "interrupted" { "INTERRUPTED" } else { "INCOMPLETE" };
            let _ = writeln!(
                out,
                "  teardown: {}: {} left behind{}",
                paint(s.strong(s.fail), what),
                plural(t.leftovers.len() as u32, "resource"),
                if t.leftovers.is_empty() { "" } else { "; remove with:" },
            );
            for l in &t.leftovers {
                let _ = writeln!(out, "    {}", paint(s.dim, format_args!("# {} ({})", l.id, l.kind)));
                let _ = writeln!(out, "    {}", l.command);
            }
            let _ = writeln!(out, "    or all at once: rehearse down {}", report.run_id);
        }
    }
    let _ = writeln!(out, "  report: {}", files.markdown.display());
    let _ = writeln!(out, "          {}", files.html.display());
    out
}

fn render_template(report: &RunReport, name: &str) -> io::Result<String> {
    let tera = templates().map_err(|e| io::Error::other(format!("parse template {name}: {}", error_chain(&e))))?;
    let ctx = Context::from_serialize(View::new(report))
        .map_err(|e| io::Error::other(format!("render {name}: {}", error_chain(&e))))?;
    tera.render(name, &ctx).map_err(|e| io::Error::other(format!("render {name}: {}", error_chain(&e))))
}

/// The two embedded templates; HTML autoescaped, Markdown escaped by its own filters.
fn templates() -> tera::Result<Tera> {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![".html"]);
    tera.register_filter("md", |v: &Value, _: &_| Ok(Value::String(md_text(&as_text(v)))));
    tera.register_filter("code", |v: &Value, _: &_| Ok(Value::String(md_code(&as_text(v)))));
    tera.register_filter("block", |v: &Value, args: &std::collections::HashMap<String, Value>| {
        let lang = args.get("lang").and_then(Value::as_str).unwrap_or("");
        Ok(Value::String(md_block(&as_text(v), lang)))
    });
    tera.add_raw_templates(vec![("summary.md", MARKDOWN_TEMPLATE), ("report.html", HTML_TEMPLATE)])?;
    Ok(tera)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Inline Markdown text, safe in a paragraph, a list item and a table cell: one line,
/// no HTML, no table breaks, no accidental links or code. Underscores are left alone
/// (GitHub does not emphasize inside words, and migration names are full of them).
fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in one_line(s).chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '|' | '`' | '*' | '[' | ']' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// An inline code span that survives backticks in the text and table cells.
fn md_code(s: &str) -> String {
    let text = one_line(s).replace('|', "\\|");
    let longest = longest_run(&text, '`');
    let fence = "`".repeat(longest + 1);
    if longest > 0 || text.starts_with(' ') || text.ends_with(' ') {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

/// A fenced code block whose fence is longer than any backtick run in the text.
fn md_block(s: &str, lang: &str) -> String {
    let fence = "`".repeat(longest_run(s, '`').max(2) + 1);
    format!("{fence}{lang}\n{}\n{fence}", s.trim_end_matches('\n'))
}

fn longest_run(s: &str, c: char) -> usize {
    let (mut best, mut cur) = (0, 0);
    for ch in s.chars() {
        cur = if ch == c { cur + 1 } else { 0 };
        best = best.max(cur);
    }
    best
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `850ms`, `4.2s`, `2m 03s`, `1h 04m`.
pub fn duration(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        let s = ms / 1000;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = ms / 60_000;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn plural(n: u32, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The report as the templates see it: display strings only.
#[derive(Serialize)]
struct View<'a> {
    run_id: &'a str,
    environment: &'a str,
    provider: &'a str,
    description: &'a str,
    release: &'a str,
    artifact: &'a str,
    verdict: &'static str,
    verdict_icon: &'static str,
    verdict_title: &'static str,
    exit_code: i32,
    started: String,
    finished: String,
    total: String,
    overhead: String,
    reason: Option<&'a str>,
    failure: Option<FailureView<'a>>,
    backups: Vec<BackupView<'a>>,
    phases: Vec<PhaseView<'a>>,
    steps: Vec<StepView<'a>>,
    suites: Vec<SuiteView<'a>>,
    tests: u32,
    failed_tests: u32,
    failed_cases: Vec<CaseView<'a>>,
    failed_cases_shown: usize,
    failed_cases_more: usize,
    resources: Vec<ResourceView<'a>>,
    teardown: TeardownView<'a>,
}

#[derive(Serialize)]
struct FailureView<'a> {
    phase: &'a str,
    resource: Option<&'a str>,
    message: &'a str,
    log_tail: String,
    log: Option<&'a str>,
}

#[derive(Serialize)]
struct BackupView<'a> {
    database: &'a str,
    source_kind: &'a str,
    source: &'a str,
    backup: &'a str,
    arn: Option<&'a str>,
    taken: String,
    restore: &'a str,
    method: &'a str,
    restore_time: String,
}

#[derive(Serialize)]
struct PhaseView<'a> {
    phase: &'a str,
    status: &'a str,
    ok: bool,
    start: String,
    duration: String,
}

#[derive(Serialize)]
struct StepView<'a> {
    resource: &'a str,
    kind: &'a str,
    action: &'a str,
    start: String,
    duration: String,
    ok: bool,
    detail: Option<&'a str>,
}

#[derive(Serialize)]
struct SuiteView<'a> {
    name: &'a str,
    status: &'static str,
    icon: &'static str,
    passed: bool,
    /// Why it did not pass, when no test case says it.
    why: Option<String>,
    command: &'a str,
    duration: String,
    exit_code: Option<i32>,
    tests: u32,
    failures: u32,
    skipped: u32,
    log: Option<&'a str>,
}

#[derive(Serialize)]
struct CaseView<'a> {
    suite: &'a str,
    name: String,
    status: &'a str,
    duration: String,
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct ResourceView<'a> {
    id: &'a str,
    kind: &'a str,
    provider_id: Option<&'a str>,
    status: &'a str,
    ok: bool,
}

#[derive(Serialize)]
struct TeardownView<'a> {
    policy: &'a str,
    status: &'a str,
    ok: bool,
    duration: String,
    expires: Option<String>,
    down_command: String,
    leftovers: Vec<LeftoverView<'a>>,
    /// All removal commands, each after a `#` comment naming the resource.
    script: String,
}

#[derive(Serialize)]
struct LeftoverView<'a> {
    id: &'a str,
    kind: &'a str,
    provider_id: Option<&'a str>,
    command: &'a str,
}

impl<'a> View<'a> {
    fn new(r: &'a RunReport) -> Self {
        let (verdict_icon, verdict_title) = match r.verdict {
            Verdict::Passed => ("✅", "Rehearsal passed"),
            Verdict::Failed => ("❌", "Rehearsal failed"),
            Verdict::BuildFailed => ("💥", "Environment could not be built"),
            Verdict::Interrupted => ("⏹", "Rehearsal interrupted"),
        };
        let failed_cases: Vec<CaseView> = r
            .suites
            .iter()
            .flat_map(|s| s.cases.iter().map(move |c| (s, c)))
            .filter(|(_, c)| c.status != "passed" && c.status != "skipped")
            .map(|(s, c)| CaseView {
                suite: &s.name,
                name: match &c.classname {
                    Some(class) if !class.is_empty() && class != &s.name => {
                        format!("{class}.{}", c.name)
                    }
                    _ => c.name.clone(),
                },
                status: &c.status,
                duration: duration(c.duration_ms),
                message: c.message.as_deref(),
            })
            .collect();
        let t = &r.teardown;
        let script = t
            .leftovers
            .iter()
            .map(|l| {
                let pid = l.provider_id.as_deref().map(|p| format!(", {p}")).unwrap_or_default();
                format!("# {} ({}{pid})\n{}", l.id, l.kind, l.command)
            })
            .collect::<Vec<_>>()
            .join("\n");
        View {
            run_id: &r.run_id,
            environment: &r.environment,
            provider: &r.provider,
            description: &r.description,
            release: &r.release,
            artifact: &r.artifact,
            verdict: r.verdict.as_str(),
            verdict_icon,
            verdict_title,
            exit_code: r.exit_code,
            started: time(r.started_at),
            finished: time(r.finished_at),
            total: duration(r.total_ms),
            overhead: duration(r.overhead_ms),
            reason: r.reason.as_deref().filter(|s| !s.trim().is_empty()),
            failure: r.failure.as_ref().map(|f| FailureView {
                phase: &f.phase,
                resource: f.resource.as_deref(),
                message: &f.message,
                log_tail: f.log_tail.join("\n"),
                log: f.log.as_deref(),
            }),
            backups: r
                .backups
                .iter()
                .map(|b| BackupView {
                    database: &b.database,
                    source_kind: &b.source_kind,
                    source: &b.source,
                    backup: &b.backup,
                    arn: b.arn.as_deref(),
                    taken: b.taken_at.map(time).unwrap_or_else(|| "unknown".to_string()),
                    restore: &b.restore,
                    method: &b.method,
                    restore_time: duration(b.restore_ms),
                })
                .collect(),
            phases: r
                .phases
                .iter()
                .map(|p| PhaseView {
                    phase: &p.phase,
                    status: &p.status,
                    ok: p.status == "ok" || p.status == "skipped",
                    start: format!("+{}", duration(p.start_ms)),
                    duration: duration(p.duration_ms),
                })
                .collect(),
            steps: r
                .steps
                .iter()
                .map(|s| StepView {
                    resource: &s.resource,
                    kind: &s.kind,
                    action: &s.action,
                    start: format!("+{}", duration(s.start_ms)),
                    duration: duration(s.duration_ms),
                    ok: s.ok,
                    detail: s.detail.as_deref(),
                })
                .collect(),
            suites: r
                .suites
                .iter()
                .map(|s| {
                    let has_failed_case = s.cases.iter().any(|c| c.status != "passed" && c.status != "skipped");
                    let why = match (s.status, &s.reason) {
                        (SuiteStatus::Passed, _) => None,
                        (_, Some(reason)) => Some(reason.clone()),
                        (_, None) if has_failed_case => None,
                        (SuiteStatus::NotRun, None) => Some("not run".to_string()),
                        (_, None) => Some(match s.exit_code {
                            Some(code) => format!("exited with status {code}"),
                            None => "did not produce results".to_string(),
                        }),
                    };
                    SuiteView {
                        name: &s.name,
                        status: s.status.as_str(),
                        icon: match s.status {
                            SuiteStatus::Passed => "✅",
                            SuiteStatus::Failed => "❌",
                            SuiteStatus::Error => "💥",
                            SuiteStatus::NotRun => "⏭",
                        },
                        passed: s.status == SuiteStatus::Passed,
                        why,
                        command: &s.command,
                        duration: duration(s.duration_ms),
                        exit_code: s.exit_code,
                        tests: s.tests,
                        failures: s.failures + s.errors,
                        skipped: s.skipped,
                        log: s.log.as_deref(),
                    }
                })
                .collect(),
            tests: r.suites.iter().map(|s| s.tests).sum(),
            failed_tests: r.suites.iter().map(|s| s.failures + s.errors).sum(),
            failed_cases_shown: failed_cases.len().min(MARKDOWN_MAX_CASES),
            failed_cases_more: failed_cases.len().saturating_sub(MARKDOWN_MAX_CASES),
            failed_cases,
            resources: r
                .resources
                .iter()
                .map(|x| ResourceView {
                    id: &x.id,
                    kind: &x.kind,
                    provider_id: x.provider_id.as_deref(),
                    status: &x.status,
                    ok: x.status != "left-behind",
                })
                .collect(),
            teardown: TeardownView {
                policy: &t.policy,
                status: &t.status,
                ok: t.status == "complete" || t.status == "kept",
                duration: duration(t.duration_ms),
                expires: t.expires_at.map(time),
                down_command: format!("rehearse down {}", r.run_id),
                leftovers: t
                    .leftovers
                    .iter()
                    .map(|l| LeftoverView {
                        id: &l.id,
                        kind: &l.kind,
                        provider_id: l.provider_id.as_deref(),
                        command: &l.command,
                    })
                    .collect(),
                script,
            },
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so readers
/// see the old file or the new one, never a partial one.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}
