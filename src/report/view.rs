//! The report as the Markdown and HTML templates see it: display strings only.
//!
//! The templates never compute anything: [`View`] turns the report into display
//! strings first (durations, UTC times, fallback wording for missing data), so both
//! templates say the same thing and the wording lives in one place. How a status
//! *looks* (an emoji in Markdown, an SVG mark in HTML) is each template's business: the
//! view gives the status word (`passed`, `not-run`, ...), never a glyph.

use std::io;

use serde::Serialize;
use tera::{Context, Tera};

use super::model::{ResourceStatus, RunReport, SuiteStatus, TeardownStatus, Verdict};
use super::text::{duration, time};
use crate::description::template::error_chain;

/// The Markdown summary lists at most this many failed test cases; the rest are in
/// `junit.xml` and the HTML page.
const MARKDOWN_MAX_CASES: usize = 20;

/// Renders template `name` of `tera` with `ctx`; errors say which template failed.
pub(super) fn render(name: &str, tera: tera::Result<Tera>, ctx: tera::Result<Context>) -> io::Result<String> {
    let tera = tera.map_err(|e| io::Error::other(format!("parse template {name}: {}", error_chain(&e))))?;
    ctx.and_then(|ctx| tera.render(name, &ctx))
        .map_err(|e| io::Error::other(format!("render {name}: {}", error_chain(&e))))
}

/// The template context for `report`: a [`View`] of it.
pub(super) fn context(report: &RunReport) -> tera::Result<Context> {
    Context::from_serialize(View::new(report))
}

#[derive(Serialize)]
struct View<'a> {
    /// The change rehearsed, one line ("commit 9fceb02 by alice · #12 Faster checkout").
    change: Option<String>,
    run_id: &'a str,
    environment: &'a str,
    provider: &'a str,
    description: &'a str,
    release: &'a str,
    artifact: &'a str,
    /// `passed`, `failed`, `build-failed`, `interrupted`.
    verdict: &'static str,
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
    failed_steps: usize,
    suites: Vec<SuiteView<'a>>,
    tests: u32,
    failed_tests: u32,
    failed_cases: Vec<CaseView<'a>>,
    failed_cases_shown: usize,
    failed_cases_more: usize,
    resources: Vec<ResourceView<'a>>,
    teardown: TeardownView<'a>,
    /// A rehearsed deploy: what the migration and the switch did to the traffic.
    deploy: Option<super::deploy::DeployView>,
    /// A game day: each fault, its expectations, and the timeline.
    chaos: Option<super::chaos::ChaosView>,
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
    status: &'static str,
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
    /// `passed`, `failed`, `error`, `not-run`.
    status: &'static str,
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
    status: &'static str,
    duration: String,
    message: Option<&'a str>,
}

#[derive(Serialize)]
struct ResourceView<'a> {
    id: &'a str,
    kind: &'a str,
    provider_id: Option<&'a str>,
    status: &'static str,
    ok: bool,
}

#[derive(Serialize)]
struct TeardownView<'a> {
    policy: &'static str,
    status: &'static str,
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
        let verdict_title = match r.verdict {
            Verdict::Passed => "Rehearsal passed",
            Verdict::Failed => "Rehearsal failed",
            Verdict::BuildFailed => "Environment could not be built",
            Verdict::Interrupted => "Rehearsal interrupted",
        };
        let failed_cases: Vec<CaseView> = r
            .suites
            .iter()
            .flat_map(|s| s.cases.iter().map(move |c| (s, c)))
            .filter(|(_, c)| c.status.failed())
            .map(|(s, c)| CaseView {
                suite: &s.name,
                name: match &c.classname {
                    Some(class) if !class.is_empty() && class != &s.name => {
                        format!("{class}.{}", c.name)
                    }
                    _ => c.name.clone(),
                },
                status: c.status.as_str(),
                duration: duration(c.duration_ms),
                message: c.message.as_deref(),
            })
            .collect();
        View {
            change: r.change.as_ref().map(change_line),
            run_id: &r.run_id,
            environment: &r.environment,
            provider: r.provider.as_str(),
            description: &r.description,
            release: &r.release,
            artifact: &r.artifact,
            verdict: r.verdict.as_str(),
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
                    status: p.status.as_str(),
                    ok: p.status.is_ok(),
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
            failed_steps: r.steps.iter().filter(|s| !s.ok).count(),
            suites: r.suites.iter().map(SuiteView::new).collect(),
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
                    status: x.status.as_str(),
                    ok: x.status != ResourceStatus::LeftBehind,
                })
                .collect(),
            teardown: TeardownView::new(r),
            deploy: r.deploy.as_ref().map(super::deploy::DeployView::new),
            chaos: r.chaos.as_ref().map(super::chaos::ChaosView::new),
        }
    }
}

impl<'a> SuiteView<'a> {
    fn new(s: &'a super::model::SuiteResult) -> Self {
        let has_failed_case = s.cases.iter().any(|c| c.status.failed());
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
    }
}

impl<'a> TeardownView<'a> {
    fn new(r: &'a RunReport) -> Self {
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
        TeardownView {
            policy: t.policy.as_str(),
            status: t.status.as_str(),
            ok: matches!(t.status, TeardownStatus::Complete | TeardownStatus::Kept),
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
        }
    }
}

/// A change in one line: "#12 Faster checkout · commit 9fceb02d0ae5 by alice".
pub fn change_line(c: &crate::report::model::Change) -> String {
    let mut parts = Vec::new();
    if let Some(n) = c.pull_request {
        parts.push(match &c.title {
            Some(t) => format!("#{n} {t}"),
            None => format!("#{n}"),
        });
    } else if let Some(t) = &c.title {
        parts.push(t.clone());
    }
    match (&c.commit, &c.author) {
        (Some(sha), Some(a)) => parts.push(format!("commit {} by {a}", &sha[..sha.len().min(12)])),
        (Some(sha), None) => parts.push(format!("commit {}", &sha[..sha.len().min(12)])),
        (None, Some(a)) => parts.push(format!("by {a}")),
        (None, None) => {}
    }
    crate::sys::text::printable(&parts.join(" · "))
}
