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
use crate::report::model::{Leftover, RunReport, Verdict};
use crate::sys::signals::Signals;
use crate::sys::state;

use super::{down_generation, run_generation, Opened};
use crate::commands::edge::down::{Down, DownEnd};

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
                change: super::super::edge::run::change_of(self.g),
                member: None,
                from: None,
                twin: None,
                deploy_twin: false,
                chaos: None,
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
            torn_down(run_id, down_generation(self.g, run_id, Some(generation)).await)
        })
    }
}

/// A generation's `down` (said as it ran) as the rebuild takes it: why it did not tear
/// the generation down completely — what it left, or the refusal or failure in its
/// own words.
fn torn_down(run_id: &str, down: Down) -> Result<(), TearDownError> {
    match down.end {
        DownEnd::Engine(Ok(_)) if down.code == exit::PASSED => Ok(()),
        DownEnd::Engine(Ok(d)) => {
            let command = format!("rehearse down {run_id}");
            let left = d.teardown.map(|out| out.listed(&command)).unwrap_or_default();
            Err(TearDownError::Left(left.iter().map(leftover_name).collect()))
        }
        DownEnd::Engine(Err(e)) => Err(TearDownError::Down(e)),
        DownEnd::Edge(refusal) => Err(TearDownError::Failed(Box::new(refusal))),
    }
}

/// "db (container)", "unknown (journal): cannot list ...".
fn leftover_name(l: &Leftover) -> String {
    match &l.provider_id {
        Some(p) if l.kind == "journal" => format!("unknown: {p}"),
        _ => format!("{} ({})", l.id, l.kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::down::DownError;
    use crate::engine::rebuild::{RebuildError, TearingDown};

    /// A rebuild whose old generation's teardown is refused says why, not an exit code.
    #[test]
    fn a_refused_teardown_reaches_the_rebuild_with_its_reason() {
        let run_id = "r-20261125-164001-7f3a9c";
        let refused = DownError::InProgress { run_id: run_id.to_string(), pid: 4242 };
        let down = Down { code: exit::USAGE, end: DownEnd::Engine(Err(refused)) };
        let source = torn_down(run_id, down).unwrap_err();
        assert!(matches!(source, TearDownError::Down(DownError::InProgress { pid: 4242, .. })), "{source:?}");
        let e = RebuildError::TearDown { number: 3, run_id: run_id.to_string(), when: TearingDown::Retiring, source };
        let text = e.to_string();
        assert!(text.contains("generation 3 was not torn down completely"), "{text}");
        assert!(text.contains("still in progress (pid 4242)"), "{text}");
        assert!(!text.contains("exited with"), "{text}");
        let chain = std::error::Error::source(&e).and_then(std::error::Error::source);
        assert!(chain.is_some_and(|s| s.to_string().contains("pid 4242")), "the engine's error is the source");
    }

    #[test]
    fn leftovers_are_named() {
        let l = |kind: &str, p: Option<&str>| Leftover {
            id: "db".into(),
            kind: kind.into(),
            provider_id: p.map(str::to_string),
            command: "rehearse down r".into(),
        };
        assert_eq!(leftover_name(&l("container", Some("abc"))), "db (container)");
        assert_eq!(leftover_name(&l("journal", Some("cannot list"))), "unknown: cannot list");
        let e = TearDownError::Left(vec![leftover_name(&l("container", None))]);
        assert_eq!(e.to_string(), "left: db (container)");
    }
}
