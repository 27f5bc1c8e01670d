//! Reports rendered from hand-built runs: a pass, a failed migration (the demo's v3),
//! a suite that wrote no JUnit file, and a teardown that left resources behind.

use chrono::{DateTime, TimeZone, Utc};
use quick_junit::{NonSuccessKind, Report, TestCaseStatus};

use super::files::{self, ReportFiles};
use super::junit;
use super::model::*;
use super::{html, markdown, terminal, text};

fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, h, m, s).unwrap()
}

fn case(name: &str, status: CaseStatus, message: Option<&str>) -> TestCase {
    TestCase {
        classname: Some("smoke".into()),
        name: name.into(),
        status,
        duration_ms: 120,
        message: message.map(Into::into),
    }
}

fn phase(name: &str, start_ms: u64, duration_ms: u64, status: PhaseStatus) -> PhaseTiming {
    PhaseTiming { phase: name.into(), start_ms, duration_ms, status }
}

fn smoke(cases: Vec<TestCase>) -> SuiteResult {
    let failures = cases.iter().filter(|c| c.status == CaseStatus::Failed).count() as u32;
    SuiteResult {
        name: "smoke".into(),
        status: if failures == 0 { SuiteStatus::Passed } else { SuiteStatus::Failed },
        reason: None,
        command: "python3 ../demo/suites/smoke.py".into(),
        duration_ms: 1_234,
        exit_code: Some(if failures == 0 { 0 } else { 1 }),
        tests: cases.len() as u32,
        failures,
        errors: 0,
        skipped: 0,
        cases,
        cases_omitted: 0,
        log: Some("/state/runs/r1/suites/smoke.log".into()),
    }
}

/// (a) release v2 of the demo: everything passed and was torn down.
pub(super) fn passed() -> RunReport {
    RunReport {
        schema_version: REPORT_SCHEMA_VERSION,
        run_id: "demo-20260501-020000-k3x9".into(),
        environment: "demo".into(),
        provider: ProviderKind::Local,
        description: "environments/demo.yaml".into(),
        release: "v2".into(),
        artifact: "demo/releases/v2".into(),
        started_at: at(2, 0, 0),
        finished_at: at(2, 0, 19),
        verdict: Verdict::Passed,
        exit_code: 0,
        reason: None,
        failure: None,
        backups: vec![BackupUsed {
            database: "db".into(),
            source_kind: "backup_dir".into(),
            source: "demo/backups".into(),
            backup: "shop-2026-nightly.dump".into(),
            arn: None,
            taken_at: Some(at(1, 0, 0)),
            restore: "newest-snapshot".into(),
            method: "cold".into(),
            restore_ms: 4_210,
        }],
        phases: vec![
            phase("up", 0, 6_400, PhaseStatus::Ok),
            phase("prepare-data", 6_400, 310, PhaseStatus::Ok),
            phase("install", 6_710, 2_050, PhaseStatus::Ok),
            phase("health", 8_760, 640, PhaseStatus::Ok),
            phase("suites", 9_400, 2_100, PhaseStatus::Ok),
            phase("report", 11_500, 12, PhaseStatus::Ok),
            phase("down", 11_512, 7_488, PhaseStatus::Ok),
        ],
        steps: vec![
            StepTiming {
                resource: "database.db".into(),
                kind: "local-postgres".into(),
                action: "restore".into(),
                start_ms: 1_100,
                duration_ms: 4_210,
                ok: true,
                detail: Some("shop-2026-nightly.dump".into()),
            },
            StepTiming {
                resource: "install.web".into(),
                kind: "install".into(),
                action: "install".into(),
                start_ms: 6_710,
                duration_ms: 2_050,
                ok: true,
                detail: None,
            },
        ],
        suites: vec![
            smoke(vec![
                case("health", CaseStatus::Passed, None),
                case("version", CaseStatus::Passed, None),
                case("products", CaseStatus::Passed, None),
                case("customers_count", CaseStatus::Passed, None),
            ]),
            SuiteResult {
                name: "migrations".into(),
                status: SuiteStatus::Passed,
                reason: None,
                command: "python3 ../demo/suites/migrations.py".into(),
                duration_ms: 860,
                exit_code: Some(0),
                tests: 2,
                failures: 0,
                errors: 0,
                skipped: 0,
                cases: vec![
                    TestCase {
                        classname: Some("migrations".into()),
                        name: "all_recorded".into(),
                        status: CaseStatus::Passed,
                        duration_ms: 40,
                        message: None,
                    },
                    TestCase {
                        classname: Some("migrations".into()),
                        name: "data_kept".into(),
                        status: CaseStatus::Passed,
                        duration_ms: 70,
                        message: None,
                    },
                ],
                cases_omitted: 0,
                log: None,
            },
        ],
        resources: vec![
            ResourceRecord {
                id: "database.db".into(),
                kind: "local-postgres".into(),
                provider_id: Some("/tmp/rehearse-k3x9/db".into()),
                status: ResourceStatus::Destroyed,
            },
            ResourceRecord {
                id: "service.web.0".into(),
                kind: "local-process".into(),
                provider_id: Some("pid 4242".into()),
                status: ResourceStatus::Destroyed,
            },
        ],
        teardown: Teardown {
            policy: DestroyPolicy::Always,
            status: TeardownStatus::Complete,
            duration_ms: 7_488,
            leftovers: vec![],
            expires_at: None,
        },
        total_ms: 19_000,
        overhead_ms: 420,
        access: None,
        change: None,
        deploy: None,
        chaos: None,
    }
}

/// (b) release v3 of the demo: migration 0003 fails on production's data.
fn failed_migration() -> RunReport {
    let mut r = passed();
    r.release = "v3".into();
    r.artifact = "demo/releases/v3".into();
    r.verdict = Verdict::Failed;
    r.exit_code = 1;
    r.reason = Some(
        "the release's install failed on the copy of production: migration \
         0003_unique_customer_email.sql failed; the suites were not run."
            .into(),
    );
    r.failure = Some(Failure {
        phase: "install".into(),
        resource: Some("install.web".into()),
        message: "migration 0003_unique_customer_email.sql failed".into(),
        log_tail: vec![
            "applying migrations/0003_unique_customer_email.sql".into(),
            "migration migrations/0003_unique_customer_email.sql failed:".into(),
            "psql:migrations/0003_unique_customer_email.sql:5: ERROR:  could not create unique index \
             \"customers_email_lower_key\""
                .into(),
            "DETAIL:  Key (lower(email::text))=(ana.lopez17@example.com) is duplicated.".into(),
        ],
        log: Some("/state/runs/r1/install.web.log".into()),
    });
    r.phases = vec![
        phase("up", 0, 6_400, PhaseStatus::Ok),
        phase("prepare-data", 6_400, 310, PhaseStatus::Ok),
        phase("install", 6_710, 1_020, PhaseStatus::Failed),
        phase("health", 7_730, 0, PhaseStatus::Skipped),
        phase("suites", 7_730, 0, PhaseStatus::Skipped),
        phase("report", 7_730, 11, PhaseStatus::Ok),
        phase("down", 7_741, 7_259, PhaseStatus::Ok),
    ];
    for s in &mut r.suites {
        s.status = SuiteStatus::NotRun;
        s.reason = Some("the release's install failed".into());
        s.cases.clear();
        s.tests = 0;
        s.duration_ms = 0;
        s.exit_code = None;
    }
    r.total_ms = 15_000;
    r.finished_at = at(2, 0, 15);
    r
}

/// (c) a suite that ran but wrote no JUnit file, next to one with a failing case
/// whose name is hostile HTML.
fn suite_error() -> RunReport {
    let mut r = passed();
    r.verdict = Verdict::Failed;
    r.exit_code = 1;
    r.reason = Some("2 of 2 suites did not pass.".into());
    r.suites = vec![
        smoke(vec![
            case("health", CaseStatus::Passed, None),
            case("<script>alert(1)</script>", CaseStatus::Failed, Some("expected 200, got 500 <b>boom</b>")),
        ]),
        SuiteResult {
            duration_ms: 310,
            exit_code: Some(0),
            ..SuiteResult::without_tests(
                "migrations",
                "python3 ../demo/suites/migrations.py",
                SuiteStatus::Error,
                Some("wrote no JUnit file (expected migrations.xml)".into()),
            )
        },
    ];
    r
}

fn junit_of(r: &RunReport) -> Report {
    let xml = junit::to_xml(r).unwrap();
    Report::deserialize_from_str(&xml).unwrap_or_else(|e| panic!("junit.xml does not parse: {e}\n{xml}"))
}

fn non_success_message(status: &TestCaseStatus) -> Option<(NonSuccessKind, String)> {
    match status {
        TestCaseStatus::NonSuccess { kind, message, .. } => {
            Some((*kind, message.as_ref().map(|m| m.as_str().to_string()).unwrap_or_default()))
        }
        _ => None,
    }
}

#[test]
fn junit_passed_run_counts_every_case() {
    let j = junit_of(&passed());
    assert_eq!(j.test_suites.len(), 2, "no `rehearse` suite when the run passed");
    assert_eq!((j.tests, j.failures, j.errors), (6, 0, 0));
    assert_eq!(j.test_suites[0].name.as_str(), "smoke");
    assert_eq!(j.test_suites[0].tests, 4);
}

#[test]
fn junit_failed_migration_is_a_failure_with_the_log_tail() {
    let j = junit_of(&failed_migration());
    // Two suites not run (one error case each) and the run's own failure.
    assert_eq!(j.test_suites.len(), 3);
    assert_eq!(j.failures + j.errors, 3);
    for s in &j.test_suites[..2] {
        assert_eq!((s.tests, s.errors), (1, 1), "a suite that did not run is an error: {}", s.name.as_str());
        let (kind, message) = non_success_message(&s.test_cases[0].status).unwrap();
        assert_eq!(kind, NonSuccessKind::Error);
        assert_eq!(message, "the release's install failed");
    }
    let run = &j.test_suites[2];
    assert_eq!(run.name.as_str(), junit::RUN_SUITE);
    assert_eq!((run.tests, run.failures), (1, 1));
    let case = &run.test_cases[0];
    assert_eq!(case.name.as_str(), "install.web");
    match &case.status {
        TestCaseStatus::NonSuccess { kind, message, description, .. } => {
            assert_eq!(*kind, NonSuccessKind::Failure);
            assert_eq!(message.as_ref().unwrap().as_str(), "migration 0003_unique_customer_email.sql failed");
            let text = description.as_ref().unwrap().as_str();
            assert!(text.contains("ERROR:  could not create unique index \"customers_email_lower_key\""), "{text}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn junit_suite_without_results_is_an_error_never_a_pass() {
    let j = junit_of(&suite_error());
    assert_eq!(j.test_suites.len(), 2, "the suites already say the run failed");
    let smoke = &j.test_suites[0];
    assert_eq!((smoke.tests, smoke.failures, smoke.errors), (2, 1, 0));
    let migrations = &j.test_suites[1];
    assert_eq!(migrations.name.as_str(), "migrations");
    assert_eq!((migrations.tests, migrations.failures, migrations.errors), (1, 0, 1));
    assert_eq!(migrations.test_cases[0].name.as_str(), "migrations");
    let (kind, message) = non_success_message(&migrations.test_cases[0].status).unwrap();
    assert_eq!(kind, NonSuccessKind::Error);
    assert_eq!(message, "wrote no JUnit file (expected migrations.xml)");
    assert_eq!((j.tests, j.failures, j.errors), (3, 1, 1));
}

#[test]
fn junit_failed_suite_whose_cases_all_passed_still_fails() {
    let mut r = passed();
    r.verdict = Verdict::Failed;
    r.suites[0].status = SuiteStatus::Failed;
    r.suites[0].exit_code = Some(2);
    let j = junit_of(&r);
    assert_eq!(j.test_suites[0].errors, 1);
    let (_, message) = non_success_message(&j.test_suites[0].test_cases[4].status).unwrap();
    assert_eq!(message, "exited with status 2");
}

#[test]
fn junit_exit_code_suite_that_passed_has_one_passing_case() {
    let mut r = passed();
    r.suites[1].cases.clear();
    r.suites[1].tests = 0;
    let j = junit_of(&r);
    assert_eq!((j.test_suites[1].tests, j.test_suites[1].failures + j.test_suites[1].errors), (1, 0));
}

#[test]
fn junit_interrupted_run_with_green_suites_is_not_green() {
    let mut r = passed();
    r.verdict = Verdict::Interrupted;
    r.reason = Some("interrupted by SIGINT during suites".into());
    let j = junit_of(&r);
    assert_eq!(j.errors, 1);
    assert_eq!(j.test_suites.last().unwrap().test_cases[0].name.as_str(), "run");
}

fn with_leftovers(mut r: RunReport) -> RunReport {
    r.teardown.status = TeardownStatus::Incomplete;
    r.teardown.leftovers = vec![Leftover {
        id: "database.db".into(),
        kind: "local-postgres".into(),
        provider_id: Some("/tmp/rehearse-k3x9/db".into()),
        command: "pg_ctl -D /tmp/rehearse-k3x9/db stop -m immediate && rm -rf /tmp/rehearse-k3x9".into(),
    }];
    r.resources[0].status = ResourceStatus::LeftBehind;
    r.exit_code = 4;
    r
}

#[test]
fn junit_teardown_leftovers_fail_the_run() {
    let j = junit_of(&with_leftovers(passed()));
    let run = j.test_suites.last().unwrap();
    assert_eq!(run.name.as_str(), junit::RUN_SUITE);
    assert_eq!(run.test_cases[0].name.as_str(), "teardown");
    match &run.test_cases[0].status {
        TestCaseStatus::NonSuccess { message, description, .. } => {
            assert_eq!(message.as_ref().unwrap().as_str(), "teardown left 1 resource behind");
            assert!(description.as_ref().unwrap().as_str().contains("pg_ctl -D /tmp/rehearse-k3x9/db stop"));
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn markdown_failed_migration_names_the_migration_and_the_database_error() {
    let md = markdown::markdown(&failed_migration()).unwrap();
    assert!(md.starts_with("## ❌ Rehearsal failed"), "{md}");
    assert!(md.contains("migration migrations/0003_unique_customer_email.sql failed:"), "{md}");
    assert!(md.contains("ERROR:  could not create unique index \"customers_email_lower_key\""), "{md}");
    assert!(md.contains("```text\n"), "the log tail is a code block: {md}");
}

#[test]
fn markdown_escapes_table_breaking_and_html_text() {
    let mut r = suite_error();
    r.suites[1].name = "a|b".into();
    let md = markdown::markdown(&r).unwrap();
    assert!(md.contains("| a\\|b |"), "{md}");
    // Hostile names stay inside code spans, where Markdown shows them as text.
    assert!(md.contains("`<script>alert(1)</script>`"), "{md}");
    assert!(md.contains("got 500 &lt;b&gt;boom&lt;/b&gt;"), "{md}");
    assert!(md.contains("wrote no JUnit file (expected migrations.xml)"), "{md}");
}

#[test]
fn markdown_lists_leftovers_with_their_commands() {
    let md = markdown::markdown(&with_leftovers(passed())).unwrap();
    assert!(md.contains("❌ **INCOMPLETE**: 1 resource left behind."), "{md}");
    assert!(
        md.contains("```sh\n# database.db (local-postgres, /tmp/rehearse-k3x9/db)\npg_ctl -D /tmp/rehearse-k3x9/db"),
        "{md}"
    );
}

#[test]
fn markdown_kept_says_until_when_and_how_to_remove() {
    let mut r = passed();
    r.teardown.status = TeardownStatus::Kept;
    r.teardown.policy = DestroyPolicy::Never;
    r.teardown.expires_at = Some(at(4, 0, 0));
    let md = markdown::markdown(&r).unwrap();
    assert!(md.contains("Kept until 2026-05-01 04:00:00 UTC"), "{md}");
    assert!(md.contains("`rehearse down demo-20260501-020000-k3x9`"), "{md}");
}

#[test]
fn snapshot_markdown_passed() {
    insta::assert_snapshot!("summary_passed", markdown::markdown(&passed()).unwrap());
}

#[test]
fn snapshot_markdown_failed_migration() {
    insta::assert_snapshot!("summary_failed_migration", markdown::markdown(&failed_migration()).unwrap());
}

#[test]
fn snapshot_markdown_suite_error() {
    insta::assert_snapshot!("summary_suite_error", markdown::markdown(&suite_error()).unwrap());
}

#[test]
fn html_is_self_contained_escaped_and_mobile_ready() {
    for r in [passed(), failed_migration(), suite_error(), with_leftovers(passed())] {
        let html = html::html(&r).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        assert!(html.contains(r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#));
        for banned in ["http://", "https://", "<link", "<script", "<img", "<iframe", "@import", "url("] {
            assert!(!html.contains(banned), "report.html contains {banned:?}");
        }
    }
    let html = html::html(&suite_error()).unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2F;script&gt;"), "{html}");
    assert!(html.contains("&lt;b&gt;boom&lt;&#x2F;b&gt;"), "{html}");
    assert!(html.contains(r#"class="banner v-failed""#));
    assert!(html.contains("wrote no JUnit file"));

    let html = html::html(&failed_migration()).unwrap();
    assert!(html.contains("could not create unique index &quot;customers_email_lower_key&quot;"), "{html}");
}

/// Code points that only an emoji or symbol font draws (arrows, dingbats, emoji): a
/// browser without such a font shows empty boxes.
fn symbols(text: &str) -> Vec<char> {
    text.chars().filter(|c| matches!(u32::from(*c), 0x2190..=0x2BFF | 0x1F000..=0x1FAFF | 0xFE0F)).collect()
}

#[test]
fn html_status_marks_are_drawn_svg_never_emoji() {
    for r in [passed(), failed_migration(), suite_error(), with_leftovers(passed())] {
        let html = html::html(&r).unwrap();
        assert_eq!(symbols(&html), Vec::<char>::new(), "{}", r.verdict.as_str());
        let statuses = html.matches(r#"class="status "#).count();
        // Phases, suites, failed cases, resources, steps and the teardown line.
        let failed_cases = r.suites.iter().flat_map(|s| &s.cases).filter(|c| c.status == CaseStatus::Failed).count();
        assert_eq!(statuses, r.phases.len() + r.suites.len() + failed_cases + r.resources.len() + r.steps.len() + 1);
        for cell in html.split(r#"class="status "#).skip(1) {
            let mark = &cell[cell.find('>').unwrap() + 1..];
            assert!(mark.starts_with(r#"<svg class="mark""#), "a status without its mark: {}", &cell[..80]);
        }
        assert!(html.contains(r#"<h1><svg class="mark""#), "the verdict has a mark");
    }
}

#[test]
fn html_timeline_draws_every_step_and_escapes_its_text() {
    let mut r = failed_migration();
    r.steps.push(StepTiming {
        resource: "service.</svg><script>alert(1)</script>".into(),
        kind: "local-process".into(),
        action: "start".into(),
        start_ms: 8_000,
        duration_ms: 500,
        ok: false,
        detail: Some("exit 1: \"quoted\" & <b>bold</b>".into()),
    });
    let html = html::html(&r).unwrap();
    let svg = &html[html.find(r#"<svg class="tl" id="timeline""#).unwrap()..];
    let svg = &svg[..svg.find("</svg></div>").unwrap()];
    assert_eq!(svg.matches(r#"<g class="step"#).count(), 3);
    assert_eq!(svg.matches(r#"<g class="step failed">"#).count(), 1);
    assert_eq!(svg.matches(r#"<path class="x""#).count(), 1, "the failed step is crossed");
    assert!(svg.contains("service.&lt;&#x2F;svg&gt;&lt;script&gt;alert(1)&lt;&#x2F;script&gt;"), "{svg}");
    assert!(svg.contains("exit 1: &quot;quoted&quot; &amp; &lt;b&gt;bold&lt;&#x2F;b&gt;"), "{svg}");
    assert!(!html.contains("<script"), "{html}");
    for tick in [">0s</text>", ">2s</text>", ">14s</text>"] {
        assert!(svg.contains(tick), "no tick {tick}: {svg}");
    }

    r.steps.clear();
    assert!(!html::html(&r).unwrap().contains("id=\"timeline\""), "no steps, no timeline");
}

#[test]
fn write_all_writes_every_file_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs/r1");
    let r = failed_migration();
    let files = files::write_all(&r, &out).unwrap();
    assert_eq!(files, ReportFiles::in_dir(&out));
    for p in [&files.json, &files.junit, &files.markdown, &files.html] {
        assert!(std::fs::metadata(p).unwrap().len() > 0, "{}", p.display());
    }
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 4, "no temporary files left: {names:?}");
    let back = files::read_report(&out).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&r).unwrap());
}

#[test]
fn read_report_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let err = files::read_report(dir.path()).unwrap_err();
    assert!(matches!(err, files::ReadReportError::Missing { .. }), "{err}");

    let mut v = serde_json::to_value(passed()).unwrap();
    v["schema_version"] = 99.into();
    std::fs::write(dir.path().join("report.json"), v.to_string()).unwrap();
    let err = files::read_report(dir.path()).unwrap_err();
    assert!(err.to_string().contains("schema version is 99"), "{err}");

    std::fs::write(dir.path().join("report.json"), "{").unwrap();
    assert!(matches!(files::read_report(dir.path()), Err(files::ReadReportError::Parse { .. })));
}

#[test]
fn terminal_summary_lines() {
    let files = ReportFiles::in_dir(std::path::Path::new("/state/runs/r1"));
    let text = terminal::terminal_summary(&failed_migration(), &files, false);
    let expected = "\
✘ FAILED: demo release v3 in 15.0s (run demo-20260501-020000-k3x9)
  the release's install failed on the copy of production: migration 0003_unique_customer_email.sql failed; the suites were not run.
  install install.web: migration 0003_unique_customer_email.sql failed
    │ applying migrations/0003_unique_customer_email.sql
    │ migration migrations/0003_unique_customer_email.sql failed:
    │ psql:migrations/0003_unique_customer_email.sql:5: ERROR:  could not create unique index \"customers_email_lower_key\"
    │ DETAIL:  Key (lower(email::text))=(ana.lopez17@example.com) is duplicated.
    full log: /state/runs/r1/install.web.log
  backup: db ← shop-2026-nightly.dump, taken 2026-05-01 01:00:00 UTC; cold restore 4.2s
  - smoke       not run: the release's install failed
  - migrations  not run: the release's install failed
  teardown: complete in 7.5s
  report: /state/runs/r1/summary.md
          /state/runs/r1/report.html
";
    assert_eq!(text, expected);

    let text = terminal::terminal_summary(&passed(), &files, false);
    assert!(text.starts_with("✔ PASSED: demo release v2 in 19.0s"), "{text}");
    assert!(text.contains("  ✔ smoke       4 tests, 0 failures, 1.2s\n"), "{text}");

    let text = terminal::terminal_summary(&with_leftovers(passed()), &files, false);
    assert!(text.contains("teardown: INCOMPLETE: 1 resource left behind; remove with:"), "{text}");
    assert!(text.contains("    pg_ctl -D /tmp/rehearse-k3x9/db stop -m immediate"), "{text}");

    let colored = terminal::terminal_summary(&passed(), &files, crate::style::Styles::colored());
    assert!(
        colored.starts_with("\x1b[1m\x1b[32m✔ PASSED\x1b[0m\x1b[1m: demo release v2\x1b[0m in 19.0s"),
        "{colored:?}"
    );
    assert_eq!(colored, terminal::terminal_summary(&passed(), &files, true), "`true` is the colored styles");
    assert_eq!(
        terminal::terminal_summary(&passed(), &files, crate::style::Styles::plain()),
        terminal::terminal_summary(&passed(), &files, false)
    );
}

#[test]
fn durations_read_naturally() {
    assert_eq!(text::duration(850), "850ms");
    assert_eq!(text::duration(4_210), "4.2s");
    assert_eq!(text::duration(123_000), "2m 03s");
    assert_eq!(text::duration(3_840_000), "1h 04m");
}
