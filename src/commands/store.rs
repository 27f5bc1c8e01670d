//! Which state store a command uses (`--state URL`, `$REHEARSE_STATE`, a
//! description's `state:`), and fetching from a shared one what a command reads.
//!
//! `file://DIR` is this machine's state directory (the default). With `s3://BUCKET/PREFIX`
//! this machine's state directory remains the fsynced local copy: a run writes every
//! journal record there and to the store, and commands that read a run fetch it from
//! the store into it first — so `list`, `report`, `down`, `env`, `psql` and `logs` work
//! from any machine pointed at the same store, the same way they work locally.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cli::Global;
use crate::engine::store::file::FileStore;
use crate::engine::store::{sync, ObjectStore, StoreError};
use crate::exit;
use crate::sys::state::{self, StateUrl};

/// The store named on the command line or in the environment (`Err`: the exit code, said).
pub(crate) fn url(g: &Global) -> Result<Option<StateUrl>, i32> {
    match g.state.as_deref() {
        None => Ok(None),
        Some(u) => StateUrl::parse(u).map(Some).map_err(|e| {
            errln!("error: --state {e}");
            exit::USAGE
        }),
    }
}

/// This machine's state directory: `--state file://DIR`, else `--state-dir`, else the default.
pub(crate) fn local_root(g: &Global) -> PathBuf {
    local_root_for(g, url(g).ok().flatten().as_ref())
}

/// This machine's state directory when `url` names the store.
/// The state store a creating command works with: where its runs' journals are shared
/// (if anywhere), where locks are taken, and the local state directory.
pub(crate) struct Opened {
    pub shared: Option<Arc<dyn ObjectStore>>,
    pub locks: Arc<dyn ObjectStore>,
    pub local_root: PathBuf,
}

/// Opens the state store `g` names (or the local one); the exit code when it cannot be.
pub(crate) async fn open_for_runs(g: &Global) -> Result<Opened, i32> {
    let url = url(g)?;
    let shared = shared_for(url.clone()).await?;
    let locks = lock_store_for(g, url.as_ref(), shared.clone())?;
    let local_root = local_root_for(g, url.as_ref());
    Ok(Opened { shared, locks, local_root })
}

pub(crate) fn local_root_for(g: &Global, url: Option<&StateUrl>) -> PathBuf {
    match url {
        Some(StateUrl::File(dir)) => dir.clone(),
        _ => state::state_dir(g.state_dir.as_deref()),
    }
}

/// The shared store, when there is one (`s3://`); `None` for the local default.
pub(crate) async fn shared(g: &Global) -> Result<Option<Arc<dyn ObjectStore>>, i32> {
    shared_for(url(g)?).await
}

pub(crate) async fn shared_for(url: Option<StateUrl>) -> Result<Option<Arc<dyn ObjectStore>>, i32> {
    match url {
        Some(StateUrl::S3 { bucket, prefix }) => {
            Ok(Some(Arc::new(crate::providers::aws::sdk::s3::S3Store::new(&bucket, &prefix).await)))
        }
        _ => Ok(None),
    }
}

/// Where locks live: the shared store, else `locks/` in this machine's state directory.
pub(crate) async fn lock_store(g: &Global) -> Result<Arc<dyn ObjectStore>, i32> {
    let url = url(g)?;
    let shared = shared_for(url.clone()).await?;
    lock_store_for(g, url.as_ref(), shared)
}

/// Where locks live when `url` names the store and `shared` is it opened.
pub(crate) fn lock_store_for(
    g: &Global,
    url: Option<&StateUrl>,
    shared: Option<Arc<dyn ObjectStore>>,
) -> Result<Arc<dyn ObjectStore>, i32> {
    if let Some(s) = shared {
        return Ok(s);
    }
    let root = local_root_for(g, url);
    FileStore::open(&root).map(|s| Arc::new(s) as Arc<dyn ObjectStore>).map_err(|e| {
        errln!("error: {e}");
        exit::USAGE
    })
}

/// Where stage records live (as [`lock_store_for`]), or `None` when it cannot be
/// opened — said by whoever asks (a stage's record that cannot be read protects it).
pub(crate) fn stage_store(
    g: &Global,
    url: Option<&StateUrl>,
    shared: Option<Arc<dyn ObjectStore>>,
) -> Option<Arc<dyn ObjectStore>> {
    match shared {
        Some(s) => Some(s),
        None => FileStore::open(&local_root_for(g, url)).ok().map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
    }
}

fn said(store: &dyn ObjectStore, e: StoreError) -> i32 {
    errln!("error: the state store {}: {e}", store.url());
    exit::BUILD_FAILED
}

/// What of a run a command reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Journal,
    Report,
    Logs,
    Connection,
}

/// The checked local runs directory, created if needed.
fn local_runs(g: &Global) -> Result<PathBuf, i32> {
    let root = state::private_dir(&local_root(g)).map_err(|e| {
        errln!("error: {e}");
        exit::USAGE
    })?;
    state::private_dir(&state::runs_dir(&root)).map_err(|e| {
        errln!("error: {e}");
        exit::USAGE
    })
}

/// Fetches `parts` of `run_id` from the shared store (if any) into the local state
/// directory. A run the store does not have is left as this machine has it.
pub(crate) async fn fetch(g: &Global, run_id: &str, parts: &[Part]) -> Result<(), i32> {
    let Some(store) = shared(g).await? else { return Ok(()) };
    if !state::valid_run_id(run_id) {
        return Ok(());
    }
    let dir = local_runs(g)?.join(run_id);
    for part in parts {
        let got = match part {
            Part::Journal => match sync::pull_journal(store.as_ref(), run_id, &dir).await {
                Ok(0) => Ok(()),
                Ok(_) => sync::pull_lease(store.as_ref(), run_id, &dir).await,
                Err(e) => Err(e),
            },
            Part::Report => sync::pull_files(store.as_ref(), run_id, "report", &dir).await.map(|_| ()),
            Part::Logs => sync::pull_files(store.as_ref(), run_id, "logs", &dir).await.map(|_| ()),
            Part::Connection => sync::pull_connection(store.as_ref(), run_id, &dir).await.map(|_| ()),
        };
        got.map_err(|e| said(store.as_ref(), e))?;
    }
    Ok(())
}

/// Fetches every run's journal from the shared store (for `list`, names and `sweep`).
pub(crate) async fn fetch_all(g: &Global) -> Result<(), i32> {
    let Some(store) = shared(g).await? else { return Ok(()) };
    let runs = local_runs(g)?;
    let ids = sync::run_ids(store.as_ref()).await.map_err(|e| said(store.as_ref(), e))?;
    let pulls = ids.iter().map(|id| {
        let (store, dir) = (store.clone(), runs.join(id));
        async move {
            sync::pull_journal(store.as_ref(), id, &dir).await?;
            sync::pull_lease(store.as_ref(), id, &dir).await
        }
    });
    for (id, r) in ids.iter().zip(futures_util::future::join_all(pulls).await) {
        match r {
            Ok(()) => {}
            // One run's journal beyond what rehearse reads (anyone may write the store)
            // is left out, said; the others are listed.
            Err(e @ StoreError::TooLarge { .. }) => {
                errln!("rehearse: warning: the state store {}: {e}; run {id} is left out", store.url())
            }
            Err(e) => return Err(said(store.as_ref(), e)),
        }
    }
    Ok(())
}

/// Runs `f` inside a runtime with the shared store's copy fetched first.
pub(crate) fn fetched<T>(g: &Global, run_id: Option<&str>, parts: &[Part], f: impl FnOnce() -> T) -> Result<T, i32> {
    if url(g)?.is_some_and(|u| matches!(u, StateUrl::S3 { .. })) {
        super::runtime().block_on(async {
            match run_id {
                Some(id) => fetch(g, id, parts).await,
                None => fetch_all(g).await,
            }
        })?;
    }
    Ok(f())
}

/// How long a lease runs without renewal: `$REHEARSE_LEASE` (from a second to a day;
/// tests shorten it), else a minute. `Err`: the exit code, said.
pub(crate) fn lease() -> Result<std::time::Duration, i32> {
    use crate::engine::store::lock::{MAX_LEASE, MIN_LEASE};
    match std::env::var("REHEARSE_LEASE") {
        Ok(v) if !v.is_empty() => crate::description::bounded_duration("REHEARSE_LEASE", &v, MIN_LEASE, MAX_LEASE)
            .map_err(|why| {
                errln!("error: {why}");
                exit::USAGE
            }),
        _ => Ok(std::time::Duration::from_secs(60)),
    }
}
