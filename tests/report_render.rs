//! The report's public API from outside the crate: write every format of a run that
//! could not be built, read it back, and print the end-of-run summary.

use chrono::{TimeZone, Utc};
use rehearse::report::model::*;
use rehearse::report::{read_report, terminal_summary, write_all};

fn build_failed() -> RunReport {
    let t0 = Utc.with_ymd_and_hms(2026, 5, 1, 2, 0, 0).unwrap();
    RunReport {
        schema_version: REPORT_SCHEMA_VERSION,
        run_id: "shop-20260501-020000-q7w2".into(),
        environment: "shop".into(),
        provider: ProviderKind::Aws,
        description: "environments/shop-aws.yaml".into(),
        release: "v2.4.0".into(),
        artifact: "s3://releases/shop-v2.4.0.tar.gz".into(),
        started_at: t0,
        finished_at: t0 + chrono::Duration::seconds(95),
        verdict: Verdict::BuildFailed,
        exit_code: 3,
        reason: Some("no snapshot of RDS instance shop-prod is available".into()),
        failure: Some(Failure {
            phase: "up".into(),
            resource: Some("database.db".into()),
            message: "find the newest snapshot of shop-prod: none available".into(),
            log_tail: vec![],
            log: None,
        }),
        backups: vec![],
        phases: vec![PhaseTiming { phase: "up".into(), start_ms: 0, duration_ms: 2_000, status: PhaseStatus::Failed }],
        steps: vec![],
        suites: vec![SuiteResult::without_tests(
            "smoke",
            "./smoke.sh",
            SuiteStatus::NotRun,
            Some("the environment was never built".into()),
        )],
        resources: vec![],
        teardown: Teardown {
            policy: DestroyPolicy::Always,
            status: TeardownStatus::Complete,
            duration_ms: 900,
            leftovers: vec![],
            expires_at: None,
        },
        total_ms: 95_000,
        overhead_ms: 300,
        access: None,
        change: None,
        deploy: None,
        chaos: None,
    }
}

#[test]
fn build_failure_is_written_read_back_and_summarized() {
    let dir = tempfile::tempdir().unwrap();
    let report = build_failed();
    let files = write_all(&report, dir.path()).unwrap();

    let back = read_report(dir.path()).unwrap();
    assert_eq!(back.verdict, Verdict::BuildFailed);
    assert_eq!(back.run_id, report.run_id);

    let junit = quick_junit::Report::deserialize_from_str(&std::fs::read_to_string(&files.junit).unwrap()).unwrap();
    assert_eq!(junit.tests, 2, "the not-run suite and the build failure");
    assert_eq!(junit.failures + junit.errors, 2, "nothing in a build failure passes");

    let md = std::fs::read_to_string(&files.markdown).unwrap();
    assert!(md.starts_with("## 💥 Environment could not be built: shop, release v2.4.0"), "{md}");

    let html = std::fs::read_to_string(&files.html).unwrap();
    assert!(html.contains(r#"class="banner v-build-failed""#));
    assert!(!html.contains("s3://"), "user data is escaped, even URLs: {html}");
    assert!(html.contains(r#"<h1><svg class="mark""#), "the verdict's mark is drawn, not a glyph: {html}");
    assert!(!html.contains('💥') && !html.contains('✅') && !html.contains('❌'), "no emoji in the page: {html}");
    assert!(!html.contains(r#"id="timeline""#), "a run without steps has no timeline");

    let text = terminal_summary(&report, &files, false);
    assert!(text.starts_with("✘ COULD NOT BUILD: shop release v2.4.0 in 1m 35s"), "{text}");
    assert!(text.contains(&format!("report: {}", files.markdown.display())), "{text}");
    assert!(text.contains(&files.html.display().to_string()), "{text}");
}
