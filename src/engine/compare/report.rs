//! `compare.json` (its model, [`COMPARE_SCHEMA_VERSION`]), `compare.xml` (JUnit, a case
//! a metric) and `compare.html`, written in the comparison's directory.

use std::collections::BTreeMap;
use std::path::Path;

use crate::compare::judge::{self, Settings, Verdict};
use crate::compare::load::Measured;

/// Version of compare.json; bumped on any incompatible change.
pub const COMPARE_SCHEMA_VERSION: u32 = 1;

/// One side of the comparison, as built and measured.
#[derive(Debug, serde::Serialize)]
pub struct Side {
    pub release: String,
    pub run_id: String,
    pub verdict: String,
    pub exit_code: i32,
    /// Why the side could not be measured (its build or its suites failed).
    pub reason: Option<String>,
    /// The install steps' durations, ms (one a service with an install).
    pub migration_ms: Vec<f64>,
    /// The production backups the side was restored from (the same for both).
    pub backups: Vec<crate::report::model::BackupUsed>,
    pub measured: Measured,
    /// Why the load could not measure this side (the load command failed).
    pub load_error: Option<String>,
    /// Per database: its size after the migration and the suites, and the statements
    /// the load ran (`pg_stat_statements`).
    pub databases: BTreeMap<String, crate::compare::database::Measured>,
    /// A compared deploy (`compare --deploy`), on the candidate: its deploy over the
    /// baseline under load, with the verdicts against the baseline twin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<crate::report::model::DeployReport>,
}

impl Side {
    /// Built, whatever its suites said: the load and the judge have something to measure.
    pub fn built(&self) -> bool {
        self.verdict == "passed" || self.verdict == "failed"
    }

    /// It did not pass its own rehearsal.
    pub fn broken(&self) -> bool {
        self.verdict != "passed"
    }
}

/// What `compare.json` holds.
#[derive(Debug, serde::Serialize)]
pub struct Comparison {
    pub schema_version: u32,
    pub id: String,
    pub environment: String,
    pub baseline: Side,
    pub candidate: Side,
    /// What both restored, by database.
    pub restored_from: crate::engine::provider::Pins,
    pub load: serde_json::Value, // json: the load's settings as compare.json shows them
    pub settings: Settings,
    pub verdicts: Vec<Verdict>,
    pub score: judge::Score,
    /// One line: the outcome, naming the metrics that failed.
    pub reason: String,
    /// The change compared (the candidate's), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<crate::report::model::Change>,
}

/// Why the comparison's files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot serialize the comparison: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot serialize the JUnit file: {0}")]
    Junit(#[from] quick_junit::SerializeError),
}

/// Writes `compare.json`, `compare.xml` and `compare.html` into `dir`.
pub fn write(dir: &Path, c: &Comparison) -> Result<(), WriteError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("compare.json"), serde_json::to_vec_pretty(c)?)?;
    std::fs::write(dir.join("compare.xml"), junit(c)?)?;
    std::fs::write(dir.join("compare.html"), crate::compare::page::render(&serde_json::to_value(c)?))?;
    Ok(())
}

/// One test case a metric: Pass passes, High/Low fail, NoData is skipped (a failure
/// when the metric is critical).
fn junit(c: &Comparison) -> Result<String, quick_junit::SerializeError> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut suite = TestSuite::new(format!("compare {} against {}", c.candidate.release, c.baseline.release));
    for v in &c.verdicts {
        let status = match v.classification {
            judge::Classification::Pass => TestCaseStatus::success(),
            judge::Classification::NoData if !v.critical => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(v.reason.clone());
                s
            }
            _ => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!("{}: {}", v.classification.as_str(), v.reason));
                s
            }
        };
        suite.add_test_case(TestCase::new(v.metric.clone(), status));
    }
    let mut report = Report::new(format!("rehearse compare {}", c.id));
    report.add_test_suite(suite);
    report.to_string()
}
