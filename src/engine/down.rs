//! `down` as an operation: one path that tears a run down from its journal or — when
//! the journal is lost — from what its marks find ([`super::discover`]), removing only
//! what rehearse demonstrably made. It prints nothing: progress goes to the reporter,
//! and what happened comes back typed ([`Downed`], [`DownError`]) for the caller to
//! render.
//!
//! Two steps, because the provider depends on the journal: [`locate`] reads the run's
//! journal (which names its provider and region), the caller picks the provider, and
//! [`down`] does the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;

use super::discover::{self, DiscoverError, Marked};
use super::events::Reporter;
use super::inventory::{current_generation_of, other_host_lease, run_alive, NotHere};
use super::journal::{self, Journal, Record, RunMeta, State};
use super::provider::{DestroyError, Provider};
use super::stage::StageRef;
use super::store::ObjectStore;
use super::teardown::{self, Outcome};
use crate::report::model::Leftover;
use crate::sys::signals::Signals;
use crate::sys::state;
use crate::sys::timing::Clock;

/// Where a run's journal stands.
#[derive(Debug)]
pub enum Located {
    /// The run's journal, with its run record: it names the provider.
    Journal { path: PathBuf, meta: Box<RunMeta>, finished: bool },
    /// No journal to tear down from: the run's marks must find what it made.
    Lost(Option<Lost>),
}

/// Why a journal that is there cannot be torn down from.
#[derive(Debug)]
pub enum Lost {
    /// It has no run record.
    NoRunRecord(PathBuf),
    /// It cannot be read.
    Unreadable { path: PathBuf, source: std::io::Error },
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::NoRunRecord(path) => write!(f, "the journal {} has no run record", path.display()),
            Lost::Unreadable { path, source } => write!(f, "the journal {} cannot be read ({source})", path.display()),
        }
    }
}

/// Why `down` did not tear the run down.
#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error("the journal {} belongs to run {owner}, not {run_id}", .path.display())]
    AnotherRunsJournal { path: PathBuf, owner: String, run_id: String },
    /// A local run this machine did not journal (its journal came from a shared store).
    #[error(
        "{run_id}: not this host's run: left alone ({}{}); a local run's processes and files are removed only on \
         the machine that ran it, with `rehearse down {run_id}` there",
        .not_here.why,
        .not_here.claim()
    )]
    NotHere { run_id: String, not_here: NotHere },
    /// Teardown found the run's resources are not this machine's.
    #[error("{run_id}: not this host's run: left alone ({why})")]
    NotHereAtTeardown { run_id: String, why: String },
    #[error(
        "run {run_id} is still in progress on {host} (its lease runs until {}); interrupt it there and it tears \
         itself down",
        .lease_until.format("%Y-%m-%d %H:%M:%SZ")
    )]
    InProgressElsewhere { run_id: String, host: String, lease_until: chrono::DateTime<Utc> },
    #[error("run {run_id} is still in progress (pid {pid}); interrupt it (kill -INT {pid}) and it tears itself down")]
    InProgress { run_id: String, pid: u32 },
    #[error(
        "run {run_id} is not generation {} of stage `{}` (its journal says {}): left alone",
        .want.generation,
        .want.stage,
        .is.as_ref().map_or("it is no stage's".to_string(), |s| format!("generation {} of `{}`", s.generation, s.stage.escape_debug()))
    )]
    NotThatGeneration { run_id: String, want: StageRef, is: Option<StageRef> },
    #[error(
        "run {run_id} is the current generation of stage `{stage}`, which serves through its stable names; it goes \
         when a later generation replaces it, or with `rehearse stage destroy {stage}`"
    )]
    CurrentGeneration { run_id: String, stage: String },
    #[error("cannot open the journal {}: {source}", .path.display())]
    OpenJournal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// What carries the run's marks cannot be listed.
    #[error(transparent)]
    Discover(#[from] DiscoverError),
    #[error(transparent)]
    Rejournal(#[from] RejournalError),
}

impl DownError {
    /// The run is someone else's to remove or still running (a usage error), rather
    /// than a failure to reach what would tell.
    pub fn refused(&self) -> bool {
        !matches!(self, DownError::OpenJournal { .. } | DownError::Discover(_) | DownError::Rejournal(_))
    }
}

/// Why a journal could not be rebuilt for a run whose journal was lost.
#[derive(Debug, thiserror::Error)]
pub enum RejournalError {
    #[error(transparent)]
    Directory(#[from] crate::sys::secure_fs::FsError),
    #[error("cannot write {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a run found by its marks is journaled again: the provider's name as journals
/// name it, and its region or work directory.
#[derive(Clone, Debug)]
pub struct LostRun {
    pub provider: crate::description::ProviderKind,
    pub region: Option<String>,
    pub work_dir: Option<PathBuf>,
}

/// What `down` works with besides the provider.
pub struct DownOptions<'a> {
    pub run_id: &'a str,
    /// A rebuild or `stage destroy` removing that generation of a stage: then the
    /// stage's current generation too — and only a run whose journal says it is it.
    pub generation: Option<&'a StageRef>,
    /// This machine's state directory (where a lost run's journal is rebuilt).
    pub state_root: &'a Path,
    /// The shared state store, when there is one: journals are mirrored there, and a
    /// torn-down run's connection details and lapsed lease go from it.
    pub shared: Option<Arc<dyn ObjectStore>>,
    /// Where stage records live, opened when needed (`None`: it cannot be).
    pub stages: &'a (dyn Fn() -> Option<Arc<dyn ObjectStore>> + Sync),
    /// How a run found by its marks is journaled again.
    pub lost: LostRun,
    /// What a person runs to find and remove the rest by the run's marks.
    pub by_marks: String,
    pub reporter: &'a dyn Reporter,
    pub signals: &'a Signals,
}

/// Where `down` found what to remove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The run's journal.
    Journal,
    /// The run's marks, with its journal lost: this many resources.
    Marks(usize),
    /// Neither: no journal and nothing marked.
    Nothing,
}

/// A resource still carrying the run's marks after the teardown from its journal, and
/// whether its removal failed.
#[derive(Debug)]
pub struct StillMarked {
    pub marked: Marked,
    pub error: Option<DestroyError>,
}

/// What is not said by the outcome itself: records and copies that could not be
/// updated. None of them changes what is left.
#[derive(Debug, thiserror::Error)]
pub enum DownWarning {
    #[error("cannot record the teardown in {}: {source}", .path.display())]
    RecordTeardown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the connection details in {}: {source}", .dir.display())]
    Connection {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove the connection details from {url}: {source}")]
    SharedConnection {
        url: String,
        #[source]
        source: super::store::StoreError,
    },
    #[error("cannot remove the run's lapsed lease from {url}: {source}")]
    Lease {
        url: String,
        #[source]
        source: super::store::StoreError,
    },
}

/// What `down` did.
pub struct Downed {
    pub run_id: String,
    pub source: Source,
    /// What carries the run's marks but its provider doubts rehearse made: left alone.
    pub doubtful: Vec<Marked>,
    /// After a teardown from the journal (of a provider whose resources are not this
    /// machine's): what still carried the run's marks, removed or not.
    pub still_marked: Vec<StillMarked>,
    /// The teardown, when there was something to tear down.
    pub teardown: Option<Outcome>,
    pub warnings: Vec<DownWarning>,
}

impl Downed {
    /// Nothing is left, as far as anything can tell.
    pub fn complete(&self) -> bool {
        self.teardown.as_ref().is_none_or(Outcome::complete)
    }
}

/// Reads run `run_id`'s journal in the state directory `state_root` (`None`: there is
/// none yet).
pub fn locate(state_root: Option<&Path>, run_id: &str) -> Result<Located, DownError> {
    let Some(path) = state_root.map(|r| state::run_dir(r, run_id).join("journal.jsonl")).filter(|p| p.is_file()) else {
        return Ok(Located::Lost(None));
    };
    match journal::read(&path).map(|records| State::from_records(&records)) {
        Ok(State { meta: Some(meta), finished, .. }) => {
            if meta.run_id != run_id {
                return Err(DownError::AnotherRunsJournal { path, owner: meta.run_id, run_id: run_id.to_string() });
            }
            Ok(Located::Journal { path, meta: Box::new(meta), finished: finished.is_some() })
        }
        Ok(_) => Ok(Located::Lost(Some(Lost::NoRunRecord(path)))),
        Err(source) => Ok(Located::Lost(Some(Lost::Unreadable { path, source }))),
    }
}

/// Tears the run down: from its journal when [`locate`] found one, else from what its
/// marks find through `provider`.
pub async fn down<P: Provider>(provider: &P, located: Located, opts: &DownOptions<'_>) -> Result<Downed, DownError> {
    match located {
        Located::Journal { path, meta, finished } => from_journal(provider, &path, &meta, finished, opts).await,
        Located::Lost(_) => from_marks(provider, opts).await,
    }
}

/// Refuses a run that is not this machine's, still running, not the generation asked
/// for, or a stage's current generation.
async fn check_journaled<P: Provider>(
    provider: &P,
    path: &Path,
    meta: &RunMeta,
    finished: bool,
    opts: &DownOptions<'_>,
) -> Result<(), DownError> {
    let run_id = opts.run_id.to_string();
    let dir = path.parent().unwrap_or(Path::new("."));
    // A local run's processes and files are the machine's that journaled it; what a
    // journal from the store names here is nobody's to remove.
    if provider.acts_on_this_machine() {
        if let Err(why) = journal::journaled_here(dir, &run_id) {
            return Err(DownError::NotHere {
                run_id,
                not_here: NotHere { why: why.to_string(), host: meta.host.clone() },
            });
        }
    }
    if !finished && meta.pid != std::process::id() && run_alive(meta, Some(dir)) {
        return Err(match other_host_lease(meta, Some(dir)) {
            Some(lease) => DownError::InProgressElsewhere { run_id, host: lease.host, lease_until: lease.lease_until },
            None => DownError::InProgress { run_id, pid: meta.pid },
        });
    }
    if let Some(want) = opts.generation.filter(|want| meta.stage.as_ref() != Some(*want)) {
        return Err(DownError::NotThatGeneration { run_id, want: want.clone(), is: meta.stage.clone() });
    }
    if let (Some(s), None) = (&meta.stage, opts.generation) {
        let stages = (opts.stages)();
        if let Some(stage) = current_generation_of(stages.as_deref(), &run_id, s).await {
            return Err(DownError::CurrentGeneration { run_id, stage });
        }
    }
    Ok(())
}

async fn from_journal<P: Provider>(
    provider: &P,
    path: &Path,
    meta: &RunMeta,
    finished: bool,
    opts: &DownOptions<'_>,
) -> Result<Downed, DownError> {
    check_journaled(provider, path, meta, finished, opts).await?;
    let open = async {
        let j = Journal::open(path)?;
        match &opts.shared {
            None => Ok(j),
            Some(store) => mirror(j, store.clone(), opts.run_id).await,
        }
    };
    let journal = open.await.map_err(|source| DownError::OpenJournal { path: path.to_path_buf(), source })?;
    let mut downed = tear_down(provider, &journal, Source::Journal, opts).await?;
    // A cloud's resources: what still carries the run's marks is removed too, so that
    // a journal that says something is gone (a `deleted` anyone with the store's
    // policy could append) never makes "nothing left" true by saying it.
    if let (false, Some(out)) = (provider.acts_on_this_machine(), downed.teardown.as_mut()) {
        if !out.interrupted {
            let (still, doubtful) = remove_still_marked(provider, meta, out, opts).await;
            downed.still_marked = still;
            downed.doubtful = doubtful;
        }
    }
    finish(&journal, &mut downed, opts).await;
    Ok(downed)
}

async fn from_marks<P: Provider>(provider: &P, opts: &DownOptions<'_>) -> Result<Downed, DownError> {
    let found = discover::discover(provider, opts.run_id).await?;
    if found.made.is_empty() {
        return Ok(Downed {
            run_id: opts.run_id.to_string(),
            source: Source::Nothing,
            doubtful: found.doubtful,
            still_marked: Vec::new(),
            teardown: None,
            warnings: Vec::new(),
        });
    }
    let journal = rejournal(opts, &found.made).await?;
    let mut downed = tear_down(provider, &journal, Source::Marks(found.made.len()), opts).await?;
    downed.doubtful = found.doubtful;
    finish(&journal, &mut downed, opts).await;
    Ok(downed)
}

/// The teardown from `journal`.
async fn tear_down<P: Provider>(
    provider: &P,
    journal: &Journal,
    source: Source,
    opts: &DownOptions<'_>,
) -> Result<Downed, DownError> {
    let out = from_open_journal(provider, journal, opts.reporter, opts.signals).await;
    if let Some(why) = out.not_here() {
        return Err(DownError::NotHereAtTeardown { run_id: opts.run_id.to_string(), why: why.to_string() });
    }
    Ok(Downed {
        run_id: opts.run_id.to_string(),
        source,
        doubtful: Vec::new(),
        still_marked: Vec::new(),
        teardown: Some(out),
        warnings: Vec::new(),
    })
}

/// Records the teardown; with nothing left, the run's connection details go (here and
/// in the shared store), and its lease once it has run out.
async fn finish(journal: &Journal, downed: &mut Downed, opts: &DownOptions<'_>) {
    let complete = downed.complete();
    if let Err(w) = close_journal(journal, complete).await {
        downed.warnings.push(w);
    }
    if !complete {
        return;
    }
    // Nothing left to connect to: its connection details (and their secrets) go too.
    if let Some(dir) = journal.path().parent() {
        if let Err(source) = super::connection::Connection::remove(dir) {
            downed.warnings.push(DownWarning::Connection { dir: dir.to_path_buf(), source });
        }
    }
    let Some(store) = &opts.shared else { return };
    if let Err(source) = super::store::sync::remove_connection(store.as_ref(), opts.run_id).await {
        downed.warnings.push(DownWarning::SharedConnection { url: store.url(), source });
    }
    // A runner killed outright leaves its lease behind: once it has run out, it goes
    // with the run (the version read is the version removed).
    let lease = super::store::run_lease(opts.run_id);
    if let Ok(Some((info, etag))) = super::store::lock::holder(store.as_ref(), &lease).await {
        if info.lease_until <= Utc::now() {
            let key = super::store::lock_key(&lease);
            if let Err(source) = store.delete(&key, Some(etag)).await {
                downed.warnings.push(DownWarning::Lease { url: store.url(), source });
            }
        }
    }
}

/// Tears down what an open journal lists, in the provider's order (stopped early by a
/// signal after the ones already counted): the journal path of `down`, and of a run
/// torn down after its lifecycle failed or crashed ([`super::run`]). Recorded with
/// [`close_journal`] once nothing more is to be removed.
pub async fn from_open_journal<P: Provider>(
    provider: &P,
    journal: &Journal,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Outcome {
    teardown::run(provider, journal, reporter, signals, signals.count() + 1, &Clock::new()).await
}

/// Records that teardown ran (`complete`: nothing is left).
pub async fn close_journal(journal: &Journal, complete: bool) -> Result<(), DownWarning> {
    journal
        .append(&Record::TornDown { complete, at: Utc::now() })
        .await
        .map_err(|source| DownWarning::RecordTeardown { path: journal.path().to_path_buf(), source })
}

/// After a teardown from the journal: what still carries the run's marks and that its
/// provider shows rehearse made is removed in rank order; what cannot be listed or
/// removed is added to `out`'s leftovers. The journal is trusted for what it says
/// exists, never for what it says is gone. Returns what was found, and what was left
/// alone as doubtful.
async fn remove_still_marked<P: Provider>(
    provider: &P,
    meta: &RunMeta,
    out: &mut Outcome,
    opts: &DownOptions<'_>,
) -> (Vec<StillMarked>, Vec<Marked>) {
    let found = match discover::discover(provider, opts.run_id).await {
        Ok(found) => found,
        Err(e) => {
            let place = meta.region.as_deref().map(|r| format!(" in {r}")).unwrap_or_default();
            out.add_leftovers(vec![Leftover {
                id: "(unknown)".into(),
                kind: "journal".into(),
                provider_id: Some(format!("cannot list what is {}{place}: {}", e.marks, e.message)),
                command: opts.by_marks.clone(),
            }]);
            return (Vec::new(), Vec::new());
        }
    };
    if found.made.is_empty() {
        return (Vec::new(), found.doubtful);
    }
    let entries: Vec<journal::Entry> = found.made.iter().map(Marked::entry).collect();
    let signals = opts.signals;
    let w = teardown::destroy_in_waves(
        provider,
        &entries,
        meta,
        None,
        opts.reporter,
        signals,
        signals.count() + 1,
        &Clock::new(),
    )
    .await;
    let mut still = Vec::new();
    let mut left = Vec::new();
    for m in found.made {
        let error = match w.destroyed.iter().find(|d| d.id == m.id && d.kind == m.kind) {
            Some(d) => d.error.clone(),
            None => Some(DestroyError::new(super::provider::DestroyErrorKind::Unavailable, "not attempted: stopped")),
        };
        if error.is_some() {
            left.push(Leftover {
                id: m.id.clone(),
                kind: m.kind.to_string(),
                provider_id: Some(m.provider_id.clone()),
                command: opts.by_marks.clone(),
            });
        }
        still.push(StillMarked { marked: m, error });
    }
    out.add_leftovers(left);
    (still, found.doubtful)
}

/// The facts of a run whose journal was lost, as far as they are known.
pub fn lost_meta(run_id: &str, lost: &LostRun) -> RunMeta {
    RunMeta {
        run_id: run_id.to_string(),
        environment: "(unknown: journal lost)".into(),
        provider: lost.provider,
        description: String::new(),
        release: String::new(),
        owner: String::new(),
        started_at: Utc::now(),
        expires_at: Utc::now(),
        destroy: crate::description::DestroyPolicy::Always,
        work_dir: lost.work_dir.as_ref().map(|w| w.display().to_string()),
        region: lost.region.clone(),
        pid: std::process::id(),
        pid_start: crate::sys::process::start_time(std::process::id() as i32).unwrap_or(0),
        name: None,
        user: Some(crate::sys::process::user_name(nix::unistd::geteuid().as_raw())),
        max_ttl_secs: None,
        host: Some(crate::sys::process::host_name()),
        stage: None,
    }
}

/// A journal rebuilt for a run whose journal was lost, naming what its marks found
/// (listed in creation order — the reverse of the provider's teardown order — so that
/// teardown removes users before what they use even by journal order).
async fn rejournal(opts: &DownOptions<'_>, found: &[Marked]) -> Result<Journal, RejournalError> {
    let run_id = opts.run_id;
    let root = state::private_dir(opts.state_root)?;
    let runs = state::private_dir(&state::runs_dir(&root))?;
    let dir = runs.join(run_id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(RejournalError::Io { path: dir, source }),
    }
    let meta = lost_meta(run_id, &opts.lost);
    let path = dir.join("journal.jsonl");
    // An unreadable journal is kept beside, for a person to look at; if it cannot be
    // moved, the new journal cannot be created either, and that error is the one said.
    if path.exists() {
        let kept = dir.join(format!("journal.damaged-{}.jsonl", Utc::now().format("%Y%m%d-%H%M%S")));
        std::fs::rename(&path, &kept).map_err(|source| RejournalError::Io { path: path.clone(), source })?;
    }
    let io = |source| RejournalError::Io { path: path.clone(), source };
    let j = Journal::create(&path, &meta).map_err(io)?;
    // With a shared store, the rebuilt journal goes there too (after whatever it has).
    let j = match &opts.shared {
        Some(store) => mirror(j, store.clone(), run_id).await.map_err(io)?,
        None => j,
    };
    for m in found.iter().rev() {
        j.created(&m.id, m.kind, &m.handle).await.map_err(io)?;
    }
    Ok(j)
}

/// Mirrors `j` to `store` after the records the store has of `run_id`.
pub async fn mirror(j: Journal, store: Arc<dyn ObjectStore>, run_id: &str) -> std::io::Result<Journal> {
    let have = super::store::records::read(store.as_ref(), run_id)
        .await
        .map_err(|e| std::io::Error::other(format!("the state store {}: {e}", store.url())))?
        .len();
    j.mirror_to(super::store::records::RemoteJournal::after(store, run_id, have)).await
}
