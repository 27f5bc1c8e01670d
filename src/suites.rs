//! Suites: commands that judge the release, with a timeout, the environment's endpoints
//! in their environment, and results read from JUnit XML or the exit code.
//!
//! Fail closed: a suite that cannot start, times out, writes no results file where one
//! is declared, writes one that does not parse, or reports zero tests is an error —
//! never a pass.

use std::path::{Path, PathBuf};

use crate::description::{Suite, SuiteResults};
use crate::report::model::{CaseStatus, SuiteResult, SuiteStatus, TestCase};
use crate::sys::process::{self, RunAs};
use crate::sys::secure_fs::{Dir, FsError};
use crate::sys::timing::Clock;

/// The largest JUnit file read (a bigger one fails the suite: reading it would cost
/// memory, and the reports would repeat it three times).
pub(crate) const MAX_JUNIT_BYTES: u64 = 16 * 1024 * 1024;
/// Test cases kept in the report per suite (failures first); counts stay exact.
pub(crate) const MAX_CASES: usize = 1000;

/// Everything needed to run one suite.
pub(crate) struct SuiteRun<'a> {
    pub(crate) name: &'a str,
    pub(crate) suite: &'a Suite,
    /// The rendered command.
    pub(crate) command: String,
    /// Working directory: the description's directory.
    pub(crate) cwd: PathBuf,
    pub(crate) env: Vec<(String, String)>,
    /// Directory for this suite's log and a copy of its results (the run's state).
    pub(crate) out_dir: PathBuf,
    /// Where the suite's own scratch directory is created (`$REHEARSE_SUITE_DIR`,
    /// holding `$REHEARSE_JUNIT_PATH`): in the run's work directory, owned by the
    /// user the suite runs as.
    pub(crate) scratch_parent: PathBuf,
    /// The unprivileged user the suite runs as (rehearse runs as root), and its HOME.
    pub(crate) run_as: Option<(RunAs, PathBuf)>,
}

pub(crate) async fn run(s: SuiteRun<'_>, clock: &Clock) -> SuiteResult {
    // Error until proven otherwise (fail closed).
    let mut result = SuiteResult::without_tests(s.name, &s.command, SuiteStatus::Error, None);
    if let Err(e) = std::fs::create_dir_all(&s.out_dir) {
        result.reason = Some(format!("cannot create {}: {e}", s.out_dir.display()));
        return result;
    }
    let scratch = match scratch_dir(&s) {
        Ok(d) => d,
        Err(e) => {
            result.reason = Some(format!("cannot create its scratch directory: {e}"));
            return result;
        }
    };
    let log = s.out_dir.join("output.log");
    result.log = Some(log.display().to_string());
    let junit_name = junit_name(s.suite);
    let mut cmd = process::shell(&s.command, &s.cwd, s.run_as.clone());
    cmd.envs(s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(j) = &junit_name {
        cmd.env("REHEARSE_JUNIT_PATH", scratch.path().join(j));
    }
    cmd.env("REHEARSE_SUITE", s.name).env("REHEARSE_SUITE_DIR", scratch.path());
    let finished = process::run_logged(&mut cmd, &log, s.suite.timeout, clock).await;
    let finished = match finished {
        Ok(f) => f,
        Err(e) => {
            result.reason = Some(format!("could not start `{}`: {e}", s.command));
            return result;
        }
    };
    // The suite's output is not trusted: the file is read without following a link,
    // only if it is a regular file, and only up to the limit.
    let junit = junit_name.map(|name| {
        let shown = scratch.path().join(&name);
        let file = match scratch.read_file(&name, MAX_JUNIT_BYTES) {
            Ok(bytes) => JunitFile::Read(bytes),
            Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => JunitFile::Missing,
            Err(FsError::TooLarge { .. }) => JunitFile::TooLarge,
            Err(e) => JunitFile::Unusable(e.to_string()),
        };
        (name, shown, file)
    });
    let ran = Ran { status: finished.status, timed_out: finished.timed_out, elapsed: finished.elapsed };
    judge(&s, ran, junit, result)
}

/// How a suite's command ended, here or on a runner.
pub struct Ran {
    pub status: Option<i32>,
    pub timed_out: bool,
    pub elapsed: std::time::Duration,
}

/// The JUnit file a suite left, as far as it could be read.
pub(crate) enum JunitFile {
    Read(Vec<u8>),
    Missing,
    TooLarge,
    Unusable(String),
}

/// The name a suite's JUnit file gets (`results: {junit: PATH}`'s file name).
pub(crate) fn junit_name(suite: &Suite) -> Option<std::ffi::OsString> {
    match &suite.results {
        SuiteResults::Junit(p) => Some(
            p.file_name().filter(|n| n.len() <= 200).map(|n| n.to_os_string()).unwrap_or_else(|| "results.xml".into()),
        ),
        SuiteResults::ExitCode => None,
    }
}

/// A suite that ran elsewhere (on a runner inside the copy's network): its output
/// goes to the log in `out_dir`, and it is judged as one run here is.
pub(crate) fn judge_elsewhere(
    s: &SuiteRun<'_>,
    ran: Ran,
    output: &[u8],
    junit: Option<Vec<u8>>,
    shown_at: &str,
) -> SuiteResult {
    let mut result = SuiteResult::without_tests(s.name, &s.command, SuiteStatus::Error, None);
    if let Err(e) = std::fs::create_dir_all(&s.out_dir) {
        result.reason = Some(format!("cannot create {}: {e}", s.out_dir.display()));
        return result;
    }
    let log = s.out_dir.join("output.log");
    if let Err(e) = std::fs::write(&log, output) {
        result.reason = Some(format!("cannot write {}: {e}", log.display()));
        return result;
    }
    result.log = Some(log.display().to_string());
    let junit = junit_name(s.suite).map(|name| {
        let shown = PathBuf::from(shown_at).join(&name);
        let file = match junit {
            Some(b) if b.len() as u64 > MAX_JUNIT_BYTES => JunitFile::TooLarge,
            Some(b) => JunitFile::Read(b),
            None => JunitFile::Missing,
        };
        (name, shown, file)
    });
    judge(s, ran, junit, result)
}

/// Judges a suite from how its command ended and the JUnit file it left (fail closed).
fn judge(
    s: &SuiteRun<'_>,
    finished: Ran,
    junit: Option<(std::ffi::OsString, PathBuf, JunitFile)>,
    mut result: SuiteResult,
) -> SuiteResult {
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
    match junit {
        None => {
            // Exit-code suites count as one test: the command.
            result.tests = 1;
            let ok = finished.status == Some(0);
            result.failures = u32::from(!ok);
            result.cases.push(TestCase {
                classname: None,
                name: s.name.to_string(),
                status: if ok { CaseStatus::Passed } else { CaseStatus::Failed },
                duration_ms: result.duration_ms,
                message: (!ok)
                    .then(|| format!("exited with {}", finished.status.map_or("a signal".into(), |c| c.to_string()))),
            });
            result.status = if ok { SuiteStatus::Passed } else { SuiteStatus::Failed };
        }
        Some((name, shown, file)) => match file {
            JunitFile::Read(bytes) => {
                // A copy beside the log, for the record.
                // Best effort: a copy for the record; the results were read from the bytes already.
                #[allow(clippy::let_underscore_must_use)]
                let _ = std::fs::write(s.out_dir.join(&name), &bytes);
                read_junit(&shown, &String::from_utf8_lossy(&bytes), &mut result, finished.status)
            }
            JunitFile::Missing => {
                result.reason = Some(format!(
                    "wrote no JUnit file (expected {}; exit code {})",
                    shown.display(),
                    finished.status.map_or("none".into(), |c| c.to_string())
                ));
            }
            JunitFile::TooLarge => {
                result.reason = Some(format!(
                    "its JUnit file {} is larger than {} MiB, the most rehearse reads",
                    shown.display(),
                    MAX_JUNIT_BYTES >> 20
                ));
            }
            JunitFile::Unusable(e) => result.reason = Some(format!("its JUnit file cannot be used: {e}")),
        },
    }
    result
}

/// Creates the suite's scratch directory, owned by the user it runs as.
fn scratch_dir(s: &SuiteRun<'_>) -> Result<Dir, FsError> {
    let parent = Dir::open(&s.scratch_parent)?;
    let dir = parent.create_dir(std::ffi::OsStr::new(s.name), 0o700)?;
    if let Some((user, _)) = &s.run_as {
        dir.chown(user.uid, user.gid)?;
    }
    Ok(dir)
}

/// Fills `result` from the text of a JUnit XML file (`path` for messages).
fn read_junit(path: &Path, text: &str, result: &mut SuiteResult, exit: Option<i32>) {
    let report = match quick_junit::Report::deserialize_from_str(text) {
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
                TestCaseStatus::Success { .. } => (CaseStatus::Passed, None),
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
                        NonSuccessKind::Failure => (CaseStatus::Failed, Some(text)),
                        NonSuccessKind::Error => (CaseStatus::Error, Some(text)),
                    }
                }
                TestCaseStatus::Skipped { message, .. } => {
                    (CaseStatus::Skipped, message.as_ref().map(|m| m.to_string()))
                }
            };
            match status {
                CaseStatus::Failed => result.failures += 1,
                CaseStatus::Error => result.errors += 1,
                CaseStatus::Skipped => result.skipped += 1,
                CaseStatus::Passed => {}
            }
            result.tests += 1;
            let passing = status == CaseStatus::Passed;
            if result.cases.len() >= MAX_CASES {
                result.cases_omitted += 1;
                // Failures matter more than passes: one takes a passing case's place.
                match result.cases.iter().rposition(|c| c.status == CaseStatus::Passed).filter(|_| !passing) {
                    Some(i) => {
                        result.cases.remove(i);
                    }
                    None => continue,
                }
            }
            result.cases.push(TestCase {
                classname: tc.classname.as_ref().map(|c| c.to_string()),
                name: tc.name.to_string(),
                status,
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
pub(crate) fn standard_env(
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
    // With one database, `psql` and every libpq client reach it without arguments
    // (and without a password on their command line).
    if let [(_, d)] = outputs.databases.iter().collect::<Vec<_>>().as_slice() {
        env.extend(d.libpq_env());
    }
    env
}

/// A suite that never ran because the environment was not ready.
pub(crate) fn not_run(name: &str, suite: &Suite, reason: &str) -> SuiteResult {
    SuiteResult::without_tests(name, &suite.command, SuiteStatus::NotRun, Some(reason.to_string()))
}
