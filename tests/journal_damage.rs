//! Teardown fails closed: when the run's journal cannot be read, nothing says what the
//! run created, so the run must not be reported as torn down — exit 4, with the reason
//! and the command that finds what is left by its tags.

use std::path::Path;

use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::events::Silent;
use rehearse::engine::journal::{Entry, RunMeta};
use rehearse::engine::lifecycle::{self, Options};
use rehearse::engine::provider::{Ctx, DestroyError, Output, Provider, StepError};
use rehearse::plan::Resource;
use rehearse::sys::signals::Signals;

/// A provider whose resources exist only in the journal — and the disk under the
/// journal fails while the run is under way: its file is overwritten with garbage.
struct DamagingProvider;

impl Provider for DamagingProvider {
    async fn create(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        ctx.created(res, &serde_json::json!({"name": res.id})).await?;
        std::fs::write(ctx.run.state_dir.join("journal.jsonl"), b"\0\0\0 not a journal \0\0\0\n\x7f garbage\n")
            .unwrap();
        Ok(Output::Nothing)
    }

    async fn destroy(&self, _: &Entry, _: &RunMeta) -> Result<(), DestroyError> {
        Ok(())
    }

    fn removal_command(&self, _: &Entry, meta: &RunMeta) -> String {
        format!("rehearse down {}", meta.run_id)
    }
}

#[tokio::test]
async fn an_unreadable_journal_at_teardown_is_exit_4_never_complete() {
    let dir = tempfile::Builder::new().prefix("rehearse-journal-").tempdir_in("/tmp").unwrap();
    let (loaded, opts) = demo_run(dir.path(), "r-20261126-000000-0d0d0d");
    let outcome = lifecycle::run(&DamagingProvider, &loaded, &opts, &Silent, &Signals::none()).await.unwrap();
    assert_eq!(outcome.report.exit_code, 4, "{:?}", outcome.report.reason);
    assert_eq!(outcome.report.teardown.status, rehearse::report::model::TeardownStatus::Unknown);
    let reason = outcome.report.reason.unwrap_or_default();
    assert!(reason.contains("cannot be read") && reason.contains("rehearse down r-20261126-000000-0d0d0d"), "{reason}");
    let left = &outcome.report.teardown.leftovers;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].kind, "journal");
}

/// A provider whose first create leaves the journal unopenable (a directory where its
/// file was) and then crashes: the run is torn down from a journal it cannot reopen.
struct CrashingProvider;

impl Provider for CrashingProvider {
    async fn create(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        ctx.created(res, &serde_json::json!({"name": res.id})).await?;
        let journal = ctx.run.state_dir.join("journal.jsonl");
        std::fs::remove_file(&journal).unwrap();
        std::fs::create_dir(&journal).unwrap();
        panic!("the provider crashed after its create");
    }

    async fn destroy(&self, _: &Entry, _: &RunMeta) -> Result<(), DestroyError> {
        Ok(())
    }

    fn removal_command(&self, _: &Entry, meta: &RunMeta) -> String {
        format!("rehearse down {}", meta.run_id)
    }
}

#[tokio::test]
async fn a_journal_that_cannot_be_reopened_after_a_crash_is_exit_4_with_the_command() {
    use rehearse::engine::run::{self, AfterFailure, Ended, RunFailure};
    let dir = tempfile::Builder::new().prefix("rehearse-journal-").tempdir_in("/tmp").unwrap();
    let run_id = "r-20261126-000000-0e0e0e";
    let (loaded, opts) = demo_run(dir.path(), run_id);
    let locks = std::sync::Arc::new(rehearse::engine::store::file::FileStore::open(dir.path()).unwrap());
    let lease = std::time::Duration::from_secs(60);
    let outcome =
        Box::pin(run::run(&CrashingProvider, &loaded, &opts, locks, lease, &Silent, &Signals::none(), &|_| {})).await;
    assert_eq!(rehearse::commands::outcome_exit_code(&outcome), 4, "never 3: something may be left");
    let Ended::Failed { error, teardown } = &outcome.ended else { panic!("the run has no report") };
    assert!(matches!(error, RunFailure::Crashed), "{error}");
    let AfterFailure::Unreopened { error, command } = teardown else { panic!("the journal is not reopened") };
    assert_eq!(command, &format!("rehearse down {run_id}"));
    assert!(error.to_string().contains("cannot be reopened"), "{error}");
}

/// The demo's description (release v2) and the options of run `run_id`, up only, its
/// state and work under `dir`.
fn demo_run(dir: &Path, run_id: &str) -> (description::Loaded, Options) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let loaded = description::load(&root.join("environments/demo.yaml"), Some("v2"))
        .unwrap_or_else(|d| panic!("{}", d.render()));
    let opts = Options {
        run_id: run_id.into(),
        release: "v2".into(),
        destroy: DestroyPolicy::Always,
        cold: false,
        up_only: true,
        state_root: dir.join("state"),
        work_root: dir.join("work"),
        run_as: None,
        exit_code: rehearse::commands::exit_code,
        name: None,
        shared: None,
        stage: None,
        pins: Default::default(),
        change: None,
        member: None,
        from: None,
        twin: None,
        deploy_twin: false,
        chaos: None,
    };
    (loaded, opts)
}
