//! `rehearse serve`: the self-service server. It holds the credentials; its users hold
//! none. A request (rehearse release R of environment E) is identified (the
//! authenticating proxy's header from its addresses, or a personal API token), checked
//! against the environment's rules, recorded in the state store, and only then
//! accepted; a queue runs at most `max_running` at once, fair among users, through the
//! engine's run operation; the run's events are streamed as they happen (Server-Sent
//! Events). Every request and every decision, allowed or refused and why, goes to the
//! audit log in the state store.
//!
//! Like the commands, the server only parses, calls the engine and renders: requests
//! are `engine::requests`, a rehearsal is `engine::run`.

pub mod client;
pub mod config;

mod api;
mod audit;
mod auth;
mod comparison;
mod git;
mod github;
mod hooks;
mod kept;
mod notify;
mod outbound;
mod portal;
mod queue;
mod recover;
mod slack;
mod stages;

pub use auth::new_token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::engine::store::file::FileStore;
use crate::engine::store::ObjectStore;
use crate::sys::signals::Signals;
use crate::sys::state::StateUrl;

pub use config::Config;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the environments directory {}: {source}", .path.display())]
    Environments {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the server's state: {0}")]
    State(#[from] crate::sys::secure_fs::FsError),
    #[error("the server's state store: {0}")]
    Store(#[from] crate::engine::store::StoreError),
    #[error("the descriptions' checkout: {0}")]
    Git(#[from] git::GitError),
    #[error("the github: section: {0}")]
    GitHub(#[from] github::GitHubError),
    #[error("the server stopped: {0}")]
    Stopped(std::io::Error),
    /// Another server uses this state directory: starting would take its running
    /// requests for a dead server's and tear them down.
    #[error("another rehearse serve uses the state directory {} (its lock {} is held): one server per state directory", .dir.display(), .lock.display())]
    Busy { dir: PathBuf, lock: PathBuf },
}

/// What the handlers share.
pub(crate) struct Shared {
    pub config: Config,
    /// Requests and the audit log (the server's part of the state directory, or the
    /// store its replicas share).
    pub store: Arc<dyn ObjectStore>,
    /// The store replicas share (`store:`), where runs keep their journals and leases;
    /// `None`: one server, its own state directory.
    pub replicated: Option<Arc<dyn ObjectStore>>,
    /// A run's lease in the shared store.
    pub lease: std::time::Duration,
    /// This server's name in the requests it claims: its host and process, unique
    /// among replicas.
    pub name: String,
    /// Where runs keep their journals and reports, and where they build.
    pub state_root: PathBuf,
    pub work_root: PathBuf,
    /// The CSRF tokens' key: random, kept in the state directory (0600), so that a
    /// restart does not log anyone out.
    pub secret: Vec<u8>,
    pub queue: queue::Queue,
    /// The server's signals: a teardown asked for over HTTP stops on them too.
    pub signals: Signals,
    /// The finished requests read so far (never read twice).
    pub finished: crate::engine::requests::Finished,
    /// Each generic hook's secret, by its name.
    pub hook_secrets: std::collections::HashMap<String, Vec<u8>>,
    /// The one client of every call to another service.
    pub outbound: outbound::Outbound,
    /// The server's address as its users reach it, for links (`public_url`).
    pub public_url: String,
    /// GitHub, when configured.
    pub github: Option<github::GitHub>,
    /// Slack, when configured.
    pub slack: Option<slack::Slack>,
}

/// Where the server runs and keeps its state.
pub struct Place {
    pub state_root: PathBuf,
    pub work_root: PathBuf,
}

/// Serves until a signal: `on_listening` is told the address bound (port 0 picks one).
pub async fn serve(
    config: Config,
    place: Place,
    signals: Signals,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let mut config = config;
    let server_dir = place.state_root.join("server");
    let server_dir = crate::sys::secure_fs::private_dir(&server_dir, 0o700)?;
    // Held for the server's life: a second server on this directory would recover the
    // first one's running requests as a dead server's.
    let _only_one = only_server(&server_dir)?;
    // The descriptions from a checkout the server keeps.
    if let Some(g) = config.git.clone() {
        let dir = server_dir.join("checkout");
        let g2 = g.clone();
        let top = tokio::task::spawn_blocking(move || git::checkout(&g2, &dir))
            .await
            .map_err(|e| ServeError::Stopped(std::io::Error::other(e.to_string())))??;
        config.environments = top.join(&config.environments);
        git::keep_pulling(g, top, signals.clone());
    }
    std::fs::read_dir(&config.environments)
        .map_err(|source| ServeError::Environments { path: config.environments.clone(), source })?;
    let secret = match &config.csrf_key_file {
        Some(key) => auth::read_key_file(key)?,
        None => auth::load_or_make_secret(&server_dir.join("secret"))?,
    };
    let replicated: Option<Arc<dyn ObjectStore>> = match config.store.as_deref().map(StateUrl::parse) {
        Some(Ok(StateUrl::S3 { bucket, prefix })) => {
            Some(Arc::new(crate::providers::aws::sdk::s3::S3Store::new(&bucket, &prefix).await))
        }
        _ => None,
    };
    let store: Arc<dyn ObjectStore> = match &replicated {
        Some(s) => s.clone(),
        None => Arc::new(FileStore::open(&server_dir)?),
    };
    let shared_lease = config.lease.unwrap_or(std::time::Duration::from_secs(60));
    let mut hook_secrets = std::collections::HashMap::new();
    for h in &config.hooks {
        hook_secrets.insert(h.name.clone(), auth::read_key_file(&h.secret_file)?);
    }
    let outbound = outbound::Outbound::new().map_err(ServeError::Stopped)?;
    let github = config.github.as_ref().map(github::GitHub::load).transpose()?;
    let slack = config.slack.as_ref().map(slack::Slack::load).transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let public_url = config.public_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let shared = Arc::new(Shared {
        queue: queue::Queue::new(config.max_running),
        config,
        store,
        state_root: place.state_root,
        work_root: place.work_root,
        secret,
        signals: signals.clone(),
        finished: Default::default(),
        hook_secrets,
        outbound,
        public_url,
        github,
        slack,
        replicated,
        lease: shared_lease,
        name: server_name(),
    });
    queue::start(shared.clone(), signals.clone());
    notify::start(shared.clone(), signals.clone());
    on_listening(addr);
    let app = api::router(shared.clone());
    let stop = signals.clone();
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { stop.nth(1).await })
        .await
        .map_err(ServeError::Stopped)?;
    // The runs under way end on the same signal (each tears itself down); wait for them.
    shared.queue.drained().await;
    Ok(())
}

/// The server's lock on its directory (an exclusive `flock`, released when the process
/// ends, however it ends).
fn only_server(server_dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, ServeError> {
    let path = server_dir.join("lock");
    let file =
        crate::sys::secure_fs::lock_file(&path).map_err(|e| crate::sys::secure_fs::FsError::io("open", &path, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| ServeError::Busy { dir: server_dir.parent().unwrap_or(server_dir).to_path_buf(), lock: path })
}

/// This server's name in the records it claims: its host name and process id (replicas
/// on one host differ), by the grammar the records' readers check.
fn server_name() -> String {
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    let host = if crate::engine::requests::valid_user(&host) && host.len() <= 100 { host } else { "server".into() };
    format!("{host}-{}", std::process::id())
}
