//! `junit.xml`: the run as CI systems read it, built with `quick-junit`.
//!
//! CI systems count test cases, not suites, and show a suite without cases as green.
//! So wherever the report says something did not pass but no test case says so, a
//! test case is added that does:
//!
//! - a suite that errored, was not run, or failed without a failing case gets one
//!   error case named after the suite, with the suite's reason;
//! - a suite that passed on its exit code alone (no JUnit file) gets one passing case;
//! - a testsuite `rehearse` holds the run's own failures: the failing phase (install,
//!   migration, health, ...), a teardown that left resources behind, and, if the run
//!   did not pass and nothing else says so, the run itself.

use std::io;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::model::{CaseStatus, RunReport, SuiteResult, SuiteStatus, TeardownStatus, Verdict};

/// Name of the testsuite holding the run's own failures.
pub(crate) const RUN_SUITE: &str = "rehearse";

/// The JUnit XML text of a report.
pub(crate) fn to_xml(report: &RunReport) -> io::Result<String> {
    build(report).to_string().map_err(io::Error::other)
}

/// The report as a `quick-junit` report: one testsuite per suite, plus [`RUN_SUITE`]
/// when the run itself failed.
pub(crate) fn build(report: &RunReport) -> Report {
    let mut junit = Report::new(format!("rehearse {} {}", report.environment, report.release));
    junit.set_timestamp(report.started_at);
    junit.set_time(Duration::from_millis(report.total_ms));
    for suite in &report.suites {
        junit.add_test_suite(suite_of(report, suite));
    }
    if let Some(d) = &report.deploy {
        junit.add_test_suite(deploy_suite(report, d));
    }
    if let Some(c) = &report.chaos {
        junit.add_test_suite(chaos_suite(report, c));
    }
    if let Some(run) = run_suite(report, junit.failures + junit.errors > 0) {
        junit.add_test_suite(run);
    }
    junit
}

/// A rehearsed deploy: one case per limit of the description (a limit broken fails its
/// case with the reason), and one for the deploy itself when it stopped before the switch.
fn deploy_suite(report: &RunReport, d: &super::model::DeployReport) -> TestSuite {
    let mut suite = TestSuite::new(DEPLOY_SUITE);
    suite.set_timestamp(report.started_at);
    suite.add_property(Property::new("rehearse.from", d.from.as_str()));
    suite.add_property(Property::new("rehearse.to", d.to.as_str()));
    if let Some(h) = &d.headline {
        suite.add_property(Property::new("rehearse.headline", h.as_str()));
    }
    for l in &d.limits {
        let status = match l.passed {
            true => TestCaseStatus::success(),
            false => with_message(TestCaseStatus::non_success(NonSuccessKind::Failure), Some(l.reason.as_str())),
        };
        let mut case = TestCase::new(format!("{} ≤ {}", l.name, l.limit), status);
        case.set_classname(DEPLOY_SUITE);
        suite.add_test_case(case);
    }
    if let Some(why) = &d.stopped {
        let status = with_message(TestCaseStatus::non_success(NonSuccessKind::Error), Some(why.as_str()));
        let mut case = TestCase::new(format!("deploy {} over {}", d.to, d.from), status);
        case.set_classname(DEPLOY_SUITE);
        suite.add_test_case(case);
    }
    suite
}

/// A game day: one case per fault, failed with its broken expectations (an error when
/// it did not run).
fn chaos_suite(report: &RunReport, c: &crate::compare::chaos::ChaosReport) -> TestSuite {
    let mut suite = TestSuite::new(CHAOS_SUITE);
    suite.set_timestamp(report.started_at);
    for f in &c.faults {
        let broken: Vec<String> = f
            .expectations
            .iter()
            .filter(|l| !l.passed)
            .map(|l| format!("{} ≤ {}: {}", l.name, l.limit, l.reason))
            .collect();
        let status = match (&f.skipped, broken.is_empty()) {
            (Some(why), _) => with_message(TestCaseStatus::non_success(NonSuccessKind::Error), Some(why.as_str())),
            (None, true) => TestCaseStatus::success(),
            (None, false) => {
                with_message(TestCaseStatus::non_success(NonSuccessKind::Failure), Some(broken.join("; ").as_str()))
            }
        };
        let mut case = TestCase::new(format!("{} ({} on {})", f.name, f.kind, f.target), status);
        case.set_classname(CHAOS_SUITE);
        if let (Some(a), Some(b)) = (f.started_ms, f.ended_ms) {
            case.set_time(Duration::from_millis(b.saturating_sub(a)));
        }
        suite.add_test_case(case);
    }
    suite
}

/// Name of the testsuite of a game day's faults.
pub(crate) const CHAOS_SUITE: &str = "chaos";

/// Name of the testsuite of a rehearsed deploy's limits.
pub(crate) const DEPLOY_SUITE: &str = "deploy";

fn suite_of(report: &RunReport, s: &SuiteResult) -> TestSuite {
    let mut suite = TestSuite::new(s.name.as_str());
    suite.set_time(Duration::from_millis(s.duration_ms));
    suite.set_timestamp(report.started_at);
    suite.add_property(Property::new("rehearse.status", s.status.as_str()));
    suite.add_property(Property::new("rehearse.command", s.command.as_str()));
    if let Some(code) = s.exit_code {
        suite.add_property(Property::new("rehearse.exit-code", code.to_string()));
    }
    if let Some(reason) = &s.reason {
        suite.add_property(Property::new("rehearse.reason", reason.as_str()));
    }
    if let Some(log) = &s.log {
        suite.add_property(Property::new("rehearse.log", log.as_str()));
    }
    for c in &s.cases {
        let status = match c.status {
            CaseStatus::Passed => TestCaseStatus::success(),
            CaseStatus::Skipped => with_message(TestCaseStatus::skipped(), c.message.as_deref()),
            CaseStatus::Failed => {
                with_message(TestCaseStatus::non_success(NonSuccessKind::Failure), c.message.as_deref())
            }
            CaseStatus::Error => with_message(TestCaseStatus::non_success(NonSuccessKind::Error), c.message.as_deref()),
        };
        let mut case = TestCase::new(c.name.as_str(), status);
        case.set_classname(c.classname.as_deref().unwrap_or(&s.name));
        case.set_time(Duration::from_millis(c.duration_ms));
        suite.add_test_case(case);
    }
    let says_failed = suite.failures + suite.errors > 0;
    match s.status {
        SuiteStatus::Passed if s.cases.is_empty() => {
            let mut case = TestCase::new(s.name.as_str(), TestCaseStatus::success());
            case.set_classname(s.name.as_str());
            case.set_time(Duration::from_millis(s.duration_ms));
            suite.add_test_case(case);
        }
        SuiteStatus::Passed => {}
        _ if says_failed => {}
        status => {
            let message = s.reason.clone().unwrap_or_else(|| match (status, s.exit_code) {
                (SuiteStatus::NotRun, _) => "not run: the environment never became ready".to_string(),
                (_, Some(code)) => format!("exited with status {code}"),
                (_, None) => "did not produce results".to_string(),
            });
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(message).set_type(s.status.as_str());
            let mut case = TestCase::new(s.name.as_str(), status);
            case.set_classname(s.name.as_str());
            case.set_time(Duration::from_millis(s.duration_ms));
            suite.add_test_case(case);
        }
    }
    suite
}

/// The run's own failures, or None when there are none to show.
fn run_suite(report: &RunReport, suites_say_failed: bool) -> Option<TestSuite> {
    let mut suite = TestSuite::new(RUN_SUITE);
    suite.set_timestamp(report.started_at);
    suite.set_time(Duration::from_millis(report.total_ms));

    if let Some(f) = report.failure.as_ref().filter(|f| !failure_is_a_suite(report, f)) {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status.set_message(f.message.as_str()).set_type(f.phase.as_str());
        if !f.log_tail.is_empty() {
            status.set_description(f.log_tail.join("\n"));
        }
        let mut case = TestCase::new(f.resource.as_deref().unwrap_or(&f.phase), status);
        case.set_classname(format!("{RUN_SUITE}.{}", f.phase));
        if let Some(log) = &f.log {
            case.add_property(Property::new("rehearse.log", log.as_str()));
        }
        suite.add_test_case(case);
    }

    let t = &report.teardown;
    if matches!(t.status, TeardownStatus::Incomplete | TeardownStatus::Interrupted) || !t.leftovers.is_empty() {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        let message = if t.leftovers.is_empty() {
            format!("teardown {}: finish it with `rehearse down {}`", t.status, report.run_id)
        } else {
            format!(
                "teardown left {} resource{} behind",
                t.leftovers.len(),
                if t.leftovers.len() == 1 { "" } else { "s" }
            )
        };
        status.set_message(message).set_type(t.status.as_str());
        let commands: Vec<String> = t
            .leftovers
            .iter()
            .map(|l| {
                let pid = l.provider_id.as_deref().map(|p| format!(", {p}")).unwrap_or_default();
                format!("# {} ({}{pid})\n{}", l.id, l.kind, l.command)
            })
            .collect();
        if !commands.is_empty() {
            status.set_description(commands.join("\n"));
        }
        let mut case = TestCase::new("teardown", status);
        case.set_classname(format!("{RUN_SUITE}.down"));
        case.set_time(Duration::from_millis(t.duration_ms));
        suite.add_test_case(case);
    }

    // A run that did not pass must not look green, whatever else is (not) in the file.
    if report.verdict != Verdict::Passed && !suites_say_failed && suite.test_cases.is_empty() {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
        let message = report.reason.clone().unwrap_or_else(|| format!("run {}", report.verdict.as_str()));
        status.set_message(message).set_type(report.verdict.as_str());
        let mut case = TestCase::new("run", status);
        case.set_classname(RUN_SUITE);
        suite.add_test_case(case);
    }

    (!suite.test_cases.is_empty()).then_some(suite)
}

/// Whether the run's failure is a suite that already shows as failed in its own
/// testsuite (so it is not counted twice).
fn failure_is_a_suite(report: &RunReport, f: &super::model::Failure) -> bool {
    let Some(resource) = f.resource.as_deref() else {
        return false;
    };
    let name = resource.strip_prefix("suite.").unwrap_or(resource);
    report.suites.iter().any(|s| s.name == name && s.status != SuiteStatus::Passed)
}

fn with_message(mut status: TestCaseStatus, message: Option<&str>) -> TestCaseStatus {
    if let Some(m) = message.map(str::trim).filter(|m| !m.is_empty()) {
        // The first line is the message attribute CI systems show; the whole text
        // goes in the element's body.
        let first = m.lines().next().unwrap_or(m);
        status.set_message(first);
        if m.contains('\n') {
            status.set_description(m);
        }
    }
    status
}
