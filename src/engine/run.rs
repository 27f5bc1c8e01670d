//! The run operation (`rehearse run`, `up`, a rebuild's generation, each side of a
//! comparison): the run's lease taken in a shared store, the lifecycle driven with the
//! provider it is handed, the report's files written, a crash or an error caught and
//! torn down from the journal, what the run leaves sent to the shared store. Prints
//! nothing: the caller renders the [`RunOutcome`] and decides the exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;

use super::down::{self, DownWarning};
use super::events::Reporter;
use super::journal::Journal;
use super::lifecycle::{self, Options, RunError};
use super::provider::Provider;
use super::store::lock::{self, Acquired, Lease, LockError, LockInfo};
use super::store::records::{self, RemoteJournal};
use super::store::{sync, ObjectStore, StoreError};
use crate::description::Loaded;
use crate::report::model::Leftover;
use crate::report::model::RunReport;
use crate::sys::signals::Signals;
use crate::sys::state;

/// How a run ended.
pub struct RunOutcome {
    pub run_id: String,
    /// The run's lease in the shared store was taken over from a holder whose lease ran
    /// out (its run id is this run's: a crashed earlier attempt).
    pub took_over: Option<LockInfo>,
    pub ended: Ended,
    /// What could not be sent to the shared store (the local files are complete).
    pub unpublished: Vec<PublishError>,
}

impl RunOutcome {
    /// The run's report, when it has one and its files were written.
    pub fn report(&self) -> Option<&RunReport> {
        match &self.ended {
            Ended::Reported { report, unwritten: None, .. } => Some(report),
            _ => None,
        }
    }

    /// Why the run ended without a (written) report, redacted; `None` when it has one.
    pub fn error_text(&self) -> Option<String> {
        match &self.ended {
            Ended::Reported { unwritten: None, .. } => None,
            Ended::Reported { report_dir, unwritten: Some(e), .. } => {
                Some(format!("cannot write the report to {}: {e}", report_dir.display()))
            }
            Ended::Failed { error, .. } => Some(crate::secrets::redact(&error.to_string()).into_owned()),
        }
    }
}

/// The run's end: its report, or why it has none and what was torn down then.
pub enum Ended {
    /// The lifecycle ran to its report; its teardown is in the report.
    Reported {
        report: Box<RunReport>,
        report_dir: PathBuf,
        /// The report's files could not be written.
        unwritten: Option<std::io::Error>,
    },
    /// The run ended before it had a report.
    Failed { error: RunFailure, teardown: AfterFailure },
}

/// Why a run ended before its report.
#[derive(Debug, thiserror::Error)]
pub enum RunFailure {
    /// Another process holds the run's lease.
    #[error("{refusal}")]
    LeaseHeld { refusal: String },
    #[error("cannot take the lock `{name}` in {url}: {source}")]
    Lease {
        name: String,
        url: String,
        #[source]
        source: LockError,
    },
    #[error(transparent)]
    Lifecycle(#[from] RunError),
    #[error("rehearse crashed (a bug: please report it); tearing down from the journal")]
    Crashed,
}

/// What was torn down after a run ended before its report.
pub enum AfterFailure {
    /// Nothing to tear down: the run ended before it had a journal (nothing was created).
    NothingStarted,
    /// Whatever the journal listed is gone.
    Complete { unrecorded: Option<std::io::Error> },
    /// Teardown left resources behind: each with the command that removes it.
    Left { leftovers: Vec<Leftover>, unrecorded: Option<std::io::Error> },
    /// The journal exists but cannot be reopened: nothing was torn down, and what the
    /// run created may be left. `command` removes it.
    Unreopened { error: ReopenError, command: String },
}

impl AfterFailure {
    /// Whether something may be left behind.
    pub fn left(&self) -> bool {
        matches!(self, AfterFailure::Left { .. } | AfterFailure::Unreopened { .. })
    }
}

/// Why a run's journal could not be reopened for its teardown.
#[derive(Debug, thiserror::Error)]
pub enum ReopenError {
    #[error("the journal {} cannot be reopened: {source}", .path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the journal cannot be mirrored to the state store {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the shared store did not get.
#[derive(Debug, thiserror::Error)]
#[error("cannot send the {what} to {url}: {source}")]
pub struct PublishError {
    pub what: &'static str,
    pub url: String,
    #[source]
    pub source: StoreError,
}

/// Told why a run ended before its report, before its teardown from the journal
/// starts (a terminal says the error first, then the teardown's progress).
pub type OnFailure<'a> = &'a (dyn Fn(&RunFailure) + Sync);

/// Runs one rehearsal with `provider`. With a shared store (`opts.shared`), the run's
/// lease (`lease` long, renewed) is taken in `locks` first, so that other machines
/// know it lives.
#[allow(clippy::too_many_arguments)]
pub async fn run<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    locks: Arc<dyn ObjectStore>,
    lease: Duration,
    reporter: &dyn Reporter,
    signals: &Signals,
    on_failure: OnFailure<'_>,
) -> RunOutcome {
    let run_id = opts.run_id.clone();
    let lease_name = super::store::run_lease(&run_id);
    let (alive, took_over) = match &opts.shared {
        Some(_) => match take_lease(locks, &lease_name, &run_id, lease).await {
            Ok((l, took_over)) => (Some(l), took_over),
            Err(error) => {
                let ended = Ended::Failed { error, teardown: AfterFailure::NothingStarted };
                return RunOutcome { run_id, took_over: None, ended, unpublished: Vec::new() };
            }
        },
        None => (None, None),
    };
    let run_state = state::run_dir(&opts.state_root, &run_id);
    let result = {
        let run =
            std::panic::AssertUnwindSafe(lifecycle::run(provider, loaded, opts, reporter, signals)).catch_unwind();
        // Long runs show their logs in the shared store as they go.
        let logs = publish_logs_periodically(opts.shared.clone(), &run_id, &run_state);
        tokio::pin!(logs);
        tokio::select! {
            r = run => match r {
                Ok(Ok(outcome)) => Ok(outcome),
                Ok(Err(e)) => Err(Caught::Error(e)),
                Err(_) => Err(Caught::Crashed),
            },
            () = &mut logs => Err(Caught::Crashed),
        }
    };
    let ended = match result {
        Ok(outcome) => {
            // The report's files: the lifecycle only assembles the report.
            let unwritten = crate::report::write_all(&outcome.report, &outcome.report_dir).err();
            Ended::Reported { report: Box::new(outcome.report), report_dir: outcome.report_dir, unwritten }
        }
        Err(caught) => {
            let error = match caught {
                Caught::Error(e) => RunFailure::Lifecycle(e),
                Caught::Crashed => RunFailure::Crashed,
            };
            on_failure(&error);
            // Whatever the journal says exists is removed.
            let teardown = down_after_failure(opts, provider, reporter, signals).await;
            Ended::Failed { error, teardown }
        }
    };
    let unpublished = publish(opts.shared.as_deref(), &run_id, &run_state).await;
    if let Some(l) = alive {
        give_back(l, &lease_name).await;
    }
    RunOutcome { run_id, took_over, ended, unpublished }
}

/// How the lifecycle ended without its report.
enum Caught {
    Error(RunError),
    /// A panic inside (or the log publisher, which never ends, ended).
    Crashed,
}

async fn take_lease(
    locks: Arc<dyn ObjectStore>,
    name: &str,
    run_id: &str,
    lease: Duration,
) -> Result<(Lease, Option<LockInfo>), RunFailure> {
    let me = LockInfo::for_this_process(name, "run", Some(run_id));
    match lock::acquire(locks.as_ref(), &me, lease, &Utc::now).await {
        Ok(Acquired::Held(held)) => {
            let took_over = held.took_over.clone();
            Ok((Lease::keep(locks, held, lease), took_over))
        }
        Ok(Acquired::Refused(holder)) => Err(RunFailure::LeaseHeld { refusal: holder.refusal() }),
        Err(source) => Err(RunFailure::Lease { name: name.to_string(), url: locks.url(), source }),
    }
}

/// Gives the run's lease back; one lost on the way frees itself when it runs out.
async fn give_back(lease: Lease, name: &str) {
    match lease.release().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("the lock `{name}` was no longer this process's when it ended"),
        Err(e) => tracing::warn!("cannot release the lock `{name}` ({e}); it frees itself when its lease runs out"),
    }
}

/// After an error outside the normal path: tear down whatever the run's journal lists.
/// A journal that exists but cannot be reopened is said, never taken for "nothing left".
async fn down_after_failure<P: Provider>(
    opts: &Options,
    provider: &P,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> AfterFailure {
    let path = state::run_dir(&opts.state_root, &opts.run_id).join("journal.jsonl");
    let command = format!("rehearse down {}", opts.run_id);
    let j = match reopen(&path, opts.shared.clone(), &opts.run_id).await {
        Ok(Some(j)) => j,
        // The journal is written before the first create: without one, nothing exists.
        Ok(None) => return AfterFailure::NothingStarted,
        Err(error) => return AfterFailure::Unreopened { error, command },
    };
    // `down`'s own teardown from the journal; nothing else of `down`'s (the run is this
    // process's, and it is not over: its files and lease are the run's to settle).
    let out = down::from_open_journal(provider, &j, reporter, signals).await;
    let unrecorded = down::close_journal(&j, out.complete()).await.err().map(|w| match w {
        DownWarning::RecordTeardown { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    });
    if out.complete() {
        AfterFailure::Complete { unrecorded }
    } else {
        AfterFailure::Left { leftovers: out.listed(&command), unrecorded }
    }
}

/// Reopens a run's journal for appending, mirrored to the shared store (if any) after
/// the records the store has; `None` when the run never wrote one.
pub async fn reopen(
    path: &Path,
    shared: Option<Arc<dyn ObjectStore>>,
    run_id: &str,
) -> Result<Option<Journal>, ReopenError> {
    let j = match Journal::open(path) {
        Ok(j) => j,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ReopenError::Local { path: path.to_path_buf(), source }),
    };
    let Some(store) = shared else { return Ok(Some(j)) };
    let url = store.url();
    let have = records::read(store.as_ref(), run_id)
        .await
        .map_err(|e| ReopenError::Store { url: url.clone(), source: std::io::Error::other(e) })?
        .len();
    let j = j.mirror_to(RemoteJournal::after(store, run_id, have)).await;
    j.map(Some).map_err(|source| ReopenError::Store { url, source })
}

/// How often a run's logs are sent to the shared store while it runs.
const LOG_PUBLISH_EVERY: Duration = Duration::from_secs(30);

/// Sends the run's new log text to the shared store every [`LOG_PUBLISH_EVERY`]
/// (redacted); never ends (and does nothing without a shared store).
async fn publish_logs_periodically(shared: Option<Arc<dyn ObjectStore>>, run_id: &str, run_state: &Path) {
    let mut seen = std::collections::HashMap::new();
    let prefix = super::store::run_files(run_id, "logs");
    loop {
        tokio::time::sleep(LOG_PUBLISH_EVERY).await;
        if let Some(store) = &shared {
            if let Err(e) = sync::push_dir(store.as_ref(), &run_state.join("logs"), &prefix, true, &mut seen).await {
                tracing::warn!("cannot send the logs to {}: {e}", store.url());
            }
        }
    }
}

/// Sends what a finished run leaves (its report, its logs redacted, a kept
/// environment's connection details) to the shared store; a failure is returned, not
/// fatal: the journal there is complete, and these are copies of local files.
async fn publish(shared: Option<&dyn ObjectStore>, run_id: &str, run_state: &Path) -> Vec<PublishError> {
    let Some(store) = shared else { return Vec::new() };
    let mut seen = std::collections::HashMap::new();
    let mut failed = Vec::new();
    for (what, redact) in [("report", false), ("logs", true)] {
        let prefix = super::store::run_files(run_id, what);
        if let Err(source) = sync::push_dir(store, &run_state.join(what), &prefix, redact, &mut seen).await {
            failed.push(PublishError { what, url: store.url(), source });
        }
    }
    let conn = run_state.join("connection.json");
    if conn.is_file() {
        if let Err(source) = sync::push_file(store, &super::store::connection_key(run_id), &conn).await {
            failed.push(PublishError { what: "connection details", url: store.url(), source });
        }
    }
    failed
}
