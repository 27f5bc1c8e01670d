//! A stage's generations as runs of its description on this machine's provider
//! (the engine's `Generations`): built as `rehearse run` builds a run, judged by its
//! report, torn down by `rehearse down` — each through its adapter in the parent.

use crate::cli::{Global, RebuildArgs};
use crate::description::{DestroyPolicy, Loaded};
use crate::engine::connection::Connection;
use crate::engine::events::Reporter;
use crate::engine::lifecycle::Options;
use crate::engine::rebuild::{Built, Generations, LocalFuture, Spec, TearDownError};
use crate::engine::stage::{self as st, GenerationBackup};
use crate::exit;
use crate::report::model::{RunReport, Verdict};
use crate::sys::signals::Signals;
use crate::sys::state;

use super::{down_generation, run_generation, Opened};

fn read_report(state_root: &std::path::Path, run_id: &str) -> Option<RunReport> {
    crate::report::read_report(&state::run_dir(state_root, run_id).join("report")).ok()
}

/// Generations as runs of the description on this machine's provider.
pub(super) struct Runs<'a> {
    pub(super) g: &'a Global,
    /// The description and the command's arguments (a rebuild); none to tear down only.
    build_from: Option<(&'a Loaded, &'a RebuildArgs)>,
    release: &'a str,
    pub(super) opened: &'a Opened,
    pub(super) reporter: &'a dyn Reporter,
    pub(super) signals: &'a Signals,
    stage: &'a str,
    /// The exit code of the last run built: the rebuild's, when its generation is not
    /// promoted.
    pub(super) last_code: std::cell::Cell<Option<i32>>,
}

impl<'a> Runs<'a> {
    pub(super) fn new(
        g: &'a Global,
        build_from: Option<(&'a Loaded, &'a RebuildArgs)>,
        release: &'a str,
        opened: &'a Opened,
        reporter: &'a dyn Reporter,
        signals: &'a Signals,
        stage: &'a str,
    ) -> Runs<'a> {
        Runs { g, build_from, release, opened, reporter, signals, stage, last_code: Default::default() }
    }

    /// What a run of generation `spec` came to, from its exit code and its report.
    fn built(&self, code: i32, state_root: &std::path::Path, run_id: &str) -> Built {
        let report = read_report(state_root, run_id);
        let backups = report
            .as_ref()
            .map(|r| {
                r.backups
                    .iter()
                    .map(|b| GenerationBackup {
                        database: b.database.clone(),
                        backup: b.backup.clone(),
                        taken_at: b.taken_at,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let verdict = report.as_ref().map_or(Verdict::BuildFailed, |r| r.verdict);
        let connection = (code == exit::PASSED && verdict == Verdict::Passed)
            .then(|| Connection::read(&state::run_dir(state_root, run_id), run_id))
            .transpose();
        match connection {
            Ok(connection) => Built {
                verdict,
                kept: report.as_ref().is_some_and(|r| r.teardown.status == crate::report::model::TeardownStatus::Kept),
                reason: report.and_then(|r| r.reason),
                backups,
                connection,
            },
            Err(e) => {
                self.last_code.set(Some(exit::BUILD_FAILED));
                Built {
                    verdict: Verdict::BuildFailed,
                    reason: Some(format!("its connection details cannot be read: {e}")),
                    backups,
                    connection: None,
                    kept: false,
                }
            }
        }
    }
}

impl Generations for Runs<'_> {
    fn build<'a>(&'a self, spec: &'a Spec) -> LocalFuture<'a, Built> {
        let run_id = spec.run_id.as_str();
        Box::pin(async move {
            self.last_code.set(None);
            let Some((loaded, args)) = self.build_from else {
                return Built {
                    verdict: Verdict::BuildFailed,
                    reason: Some("no description to build from".into()),
                    backups: Vec::new(),
                    connection: None,
                    kept: false,
                };
            };
            let opts = Options {
                run_id: run_id.to_string(),
                release: self.release.to_string(),
                destroy: if args.keep_failed { DestroyPolicy::Passing } else { DestroyPolicy::Always },
                cold: args.cold,
                up_only: false,
                state_root: super::super::store::local_root_for(self.g, self.opened.url.as_ref()),
                work_root: state::work_dir(),
                run_as: args.run_as.clone(),
                // A run's, set by the adapter that runs it.
                exit_code: |_, _| exit::BUILD_FAILED,
                name: None,
                shared: self.opened.shared.clone(),
                stage: Some(spec.run(self.stage)),
                pins: Default::default(),
            };
            let state_root = opts.state_root.clone();
            let code = run_generation(self, loaded, opts).await;
            self.last_code.set(Some(code));
            self.built(code, &state_root, run_id)
        })
    }

    fn tear_down<'a>(&'a self, run_id: &'a str, number: u64) -> LocalFuture<'a, Result<(), TearDownError>> {
        Box::pin(async move {
            let generation = st::StageRef { stage: self.stage.to_string(), generation: number };
            match down_generation(self.g, run_id, Some(generation)).await {
                exit::PASSED => Ok(()),
                code => Err(TearDownError::Failed(Box::new(DownExited { run_id: run_id.to_string(), code }))),
            }
        })
    }
}

/// `rehearse down` of a generation ended with an exit code (it said why as it ran).
#[derive(Debug, thiserror::Error)]
#[error("`rehearse down {run_id}` exited with {code}")]
struct DownExited {
    run_id: String,
    code: i32,
}
