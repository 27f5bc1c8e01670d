//! Suites: commands that judge the release, with a timeout, the environment's endpoints
//! in their environment, and results read from JUnit XML or the exit code.
//!
//! Fail closed: a suite that cannot start, times out, writes no results file where one
//! is declared, writes one that does not parse, or reports zero tests is an error —
//! never a pass.

use std::path::{Path, PathBuf};

use crate::description::{Suite, SuiteResults};
use crate::engine::process;
use crate::engine::timing::Clock;
use crate::report::model::{SuiteResult, SuiteStatus, TestCase};

/// Everything needed to run one suite.
pub struct SuiteRun<'a> {
    pub name: &'a str,
    pub suite: &'a Suite,
    /// The rendered command.
    pub command: String,
    /// Working directory: the description's directory.
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    /// Directory for this suite's log and results.
    pub out_dir: PathBuf,
}

pub async fn run(s: SuiteRun<'_>, clock: &Clock) -> SuiteResult {
    // Error until proven otherwise (fail closed).
    let mut result = SuiteResult::without_tests(s.name, &s.command, SuiteStatus::Error, None);
    if let Err(e) = std::fs::create_dir_all(&s.out_dir) {
        result.reason = Some(format!("cannot create {}: {e}", s.out_dir.display()));
        return result;
    }
    let log = s.out_dir.join("output.log");
    result.log = Some(log.display().to_string());
    let junit_path = match &s.suite.results {
        SuiteResults::Junit(p) => {
            let name = p.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("results.xml"));
            Some(s.out_dir.join(name))
        }
        SuiteResults::ExitCode => None,
    };
    if let Some(j) = &junit_path {
        // A stale file from an earlier attempt must never count as results.
        let _ = std::fs::remove_file(j);
    }
    let mut cmd = process::shell(&s.command, &s.cwd);
    cmd.envs(s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(j) = &junit_path {
        cmd.env("REHEARSE_JUNIT_PATH", j);
    }
    cmd.env("REHEARSE_SUITE", s.name).env("REHEARSE_SUITE_DIR", &s.out_dir);
    let finished = process::run_logged(&mut cmd, &log, s.suite.timeout, clock).await;
    let finished = match finished {
        Ok(f) => f,
        Err(e) => {
            result.reason = Some(format!("could not start `{}`: {e}", s.command));
            return result;
        }
    };
    result.duration_ms = finished.elapsed.as_millis() as u64;
    result.exit_code = finished.status;
    if finished.timed_out {
        result.reason = Some(format!("timed out after {}", crate::description::format_duration(s.suite.timeout)));
        return result;
    }
    if finished.status == Some(127) {
        result.reason = Some(format!("could not start: `{}` was not found (exit 127)", s.command));
        return result;
    }
    match junit_path {
        None => {
            // Exit-code suites count as one test: the command.
            result.tests = 1;
            let ok = finished.status == Some(0);
            result.failures = u32::from(!ok);
            result.cases.push(TestCase {
                classname: None,
                name: s.name.to_string(),
                status: if ok { "passed".into() } else { "failed".into() },
                duration_ms: result.duration_ms,
                message: (!ok)
                    .then(|| format!("exited with {}", finished.status.map_or("a signal".into(), |c| c.to_string()))),
            });
            result.status = if ok { SuiteStatus::Passed } else { SuiteStatus::Failed };
        }
        Some(path) => read_junit(&path, &mut result, finished.status),
    }
    result
}

/// Fills `result` from a JUnit XML file.
fn read_junit(path: &Path, result: &mut SuiteResult, exit: Option<i32>) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => {
            result.reason = Some(format!(
                "wrote no JUnit file (expected {}; exit code {})",
                path.display(),
                exit.map_or("none".into(), |c| c.to_string())
            ));
            return;
        }
    };
    let report = match quick_junit::Report::deserialize_from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            result.reason = Some(format!("its JUnit file {} does not parse: {e}", path.display()));
            return;
        }
    };
    for ts in &report.test_suites {
        for tc in &ts.test_cases {
            use quick_junit::{NonSuccessKind, TestCaseStatus};
            let (status, message) = match &tc.status {
                TestCaseStatus::Success { .. } => ("passed", None),
                TestCaseStatus::NonSuccess { kind, message, description, .. } => {
                    let text = [message.as_ref().map(|m| m.to_string()), description.as_ref().map(|d| d.to_string())]
                        .into_iter()
                        .flatten()
                        .map(|t| t.trim().to_string())
                        .filter(|t| !t.is_empty())
                        .collect::<Vec<_>>()
                        .join(": ");
                    let text: String = text.chars().take(2000).collect();
                    match kind {
                        NonSuccessKind::Failure => ("failed", Some(text)),
                        NonSuccessKind::Error => ("error", Some(text)),
                    }
                }
                TestCaseStatus::Skipped { message, .. } => ("skipped", message.as_ref().map(|m| m.to_string())),
            };
            match status {
                "failed" => result.failures += 1,
                "error" => result.errors += 1,
                "skipped" => result.skipped += 1,
                _ => {}
            }
            result.tests += 1;
            result.cases.push(TestCase {
                classname: tc.classname.as_ref().map(|c| c.to_string()),
                name: tc.name.to_string(),
                status: status.into(),
                duration_ms: tc.time.map_or(0, |t| t.as_millis() as u64),
                message: message.filter(|m| !m.is_empty()),
            });
        }
    }
    let ran = result.tests - result.skipped;
    result.status = if result.tests == 0 {
        result.reason = Some("reported zero tests".into());
        SuiteStatus::Error
    } else if ran == 0 {
        result.reason = Some("every test was skipped".into());
        SuiteStatus::Error
    } else if result.failures > 0 || result.errors > 0 {
        SuiteStatus::Failed
    } else if exit != Some(0) {
        result.reason = Some(format!(
            "its JUnit file shows no failure, but it exited with {}",
            exit.map_or("a signal".into(), |c| c.to_string())
        ));
        SuiteStatus::Failed
    } else {
        SuiteStatus::Passed
    };
}

/// The environment variables every suite gets besides its own `env`: the run's facts
/// and every database's and service's endpoints.
pub fn standard_env(
    run_id: &str,
    release: &str,
    outputs: &crate::description::template::Outputs,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("REHEARSE_RUN_ID".to_string(), run_id.to_string()),
        ("REHEARSE_RELEASE".to_string(), release.to_string()),
    ];
    let var = |kind: &str, name: &str, field: &str| {
        format!("REHEARSE_{kind}_{}_{field}", name.to_uppercase().replace('-', "_"))
    };
    for (name, d) in &outputs.databases {
        env.push((var("DB", name, "URL"), d.url.clone()));
        env.push((var("DB", name, "HOST"), d.host.clone()));
        env.push((var("DB", name, "PORT"), d.port.clone()));
    }
    for (name, s) in &outputs.services {
        env.push((var("SERVICE", name, "URL"), s.url.clone()));
        env.push((var("SERVICE", name, "URLS"), s.urls.join(" ")));
    }
    env
}

/// A suite that never ran because the environment was not ready.
pub fn not_run(name: &str, suite: &Suite, reason: &str) -> SuiteResult {
    SuiteResult::without_tests(name, &suite.command, SuiteStatus::NotRun, Some(reason.to_string()))
}
