//! The run's report, assembled from what the steps and teardown returned: phases and
//! their timings, resources and what their providers call them, every secret redacted.

use super::events::{Event, Reporter};
use super::provider::{Blame, StepError};
use crate::plan::Kind;
use crate::report::model::{PhaseStatus, PhaseTiming, RunReport, StepTiming};
use crate::secrets;

/// A journal record that could not be written after teardown: said, not fatal — what
/// exists was already decided by teardown, and the report still says it.
pub(super) fn journaled(reporter: &dyn Reporter, written: std::io::Result<()>) {
    if let Err(e) = written {
        reporter.event(Event::ClosingRecordUnwritable { error: e.to_string() });
    }
}

/// The report with every registered secret redacted, in every field.
pub(super) fn redacted(report: RunReport) -> Result<RunReport, serde_json::Error> {
    let mut v = serde_json::to_value(&report)?;
    secrets::redact_json(&mut v);
    serde_json::from_value(v)
}

/// Rewrites the run's logs (`logs/`, `suites/*/`) with secrets redacted. A log that
/// cannot be rewritten is reported, not fatal: it is private to this user anyway.
pub(super) fn redact_logs(run_state: &std::path::Path) {
    let mut dirs = vec![run_state.join("logs")];
    if let Ok(rd) = std::fs::read_dir(run_state.join("suites")) {
        dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for f in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_file())) {
            if let Err(e) = secrets::redact_file(&f.path()) {
                tracing::warn!("cannot redact {}: {e}", f.path().display());
            }
        }
    }
}

/// The phase a step belongs to.
pub(super) fn phase_for(kind: &str, action: &str) -> &'static str {
    match (kind, action) {
        (_, "suite") => "suites",
        (_, "mask") => "prepare-data",
        (_, "install") => "install",
        ("local.process", _) | ("aws.ec2.instance", "health") => "health",
        _ => "up",
    }
}

pub(super) fn phase_of(kind: Option<Kind>, e: &StepError) -> String {
    match (kind, e.blame) {
        (Some(Kind::Install), _) => "install".into(),
        (Some(Kind::LocalProcess), _) => "health".into(),
        (_, Blame::Release) => "install".into(),
        _ => "up".into(),
    }
}

/// Phase spans from the steps, in lifecycle order.
pub(super) fn phase_timings(steps: &[StepTiming], failed: Option<&str>) -> Vec<PhaseTiming> {
    let order = ["up", "prepare-data", "install", "health", "suites"];
    let failed_phase = failed
        .and_then(|id| steps.iter().rev().find(|s| s.resource == id && !s.ok))
        .map(|s| phase_for(&s.kind, &s.action));
    order
        .iter()
        .map(|phase| {
            let mine: Vec<&StepTiming> = steps.iter().filter(|s| phase_for(&s.kind, &s.action) == *phase).collect();
            if mine.is_empty() {
                return PhaseTiming {
                    phase: phase.to_string(),
                    start_ms: 0,
                    duration_ms: 0,
                    status: PhaseStatus::Skipped,
                };
            }
            let start = mine.iter().map(|s| s.start_ms).min().unwrap_or(0);
            let end = mine.iter().map(|s| s.start_ms + s.duration_ms).max().unwrap_or(start);
            let status = if failed_phase == Some(*phase) || mine.iter().any(|s| !s.ok && s.kind != "suite") {
                PhaseStatus::Failed
            } else {
                PhaseStatus::Ok
            };
            PhaseTiming { phase: phase.to_string(), start_ms: start, duration_ms: end - start, status }
        })
        .collect()
}
