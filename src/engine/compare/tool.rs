//! `compare.load.command`: the user's own load tool (k6, vegeta, locust…), run once
//! per environment, both at the same time, from the description's directory inside a
//! private copy of the suites' files (`bundle:`, [`crate::sys::bundle`]) — as the
//! release's user when rehearse runs as root, like a suite. It is told where to send
//! the load and where to write what it measured; rehearse reads that file in its
//! `format` (see [`crate::compare::tool`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::compare::load::Measured;
use crate::description::template::ServiceOutputs;
use crate::description::{Load, Loaded};
use crate::sys::process::{self, RunAs};
use crate::sys::secure_fs::Dir;
use crate::sys::timing::Clock;

/// The largest results file read (a bigger one is refused, not truncated). It is
/// read as a stream: k6's JSON output takes about 4 KB a request, so this is a
/// million requests of k6, many more of the CSV formats.
const MAX_RESULTS: u64 = 4 << 30;
/// A load command gets its duration and this much more to start and write its results.
const GRACE: Duration = Duration::from_secs(60);

/// Why the load command measured nothing of a side.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The suites' files cannot be listed or copied for the tool.
    #[error(transparent)]
    Bundle(#[from] std::sync::Arc<crate::sys::bundle::BundleError>),
    #[error("no load command")]
    NoCommand,
    #[error("no service `{0}`")]
    NoService(String),
    #[error("cannot make the load command's directory in {}: {source}", .scratch.display())]
    Directory {
        scratch: PathBuf,
        #[source]
        source: crate::sys::secure_fs::FsError,
    },
    #[error("cannot run the load command: {0}")]
    Run(#[source] std::io::Error),
    #[error(
        "the load command ran past {} (its duration + {} s) and was stopped; its output: {}",
        crate::description::format_duration(*.limit),
        GRACE.as_secs(),
        .log.display()
    )]
    TimedOut { limit: Duration, log: PathBuf },
    #[error(
        "the load command (exit {}) wrote no readable results to $REHEARSE_RESULTS: {source}; its output: {}",
        .status.map_or("by a signal".into(), |c| c.to_string()),
        .log.display()
    )]
    NoResults {
        status: Option<i32>,
        log: PathBuf,
        #[source]
        source: crate::sys::secure_fs::FsError,
    },
    #[error("its results ($REHEARSE_RESULTS, format `{format}`) are not readable: {source}")]
    Unreadable {
        format: &'static str,
        #[source]
        source: crate::compare::tool::ResultsError,
    },
}

impl From<crate::sys::bundle::BundleError> for ToolError {
    fn from(e: crate::sys::bundle::BundleError) -> Self {
        ToolError::Bundle(std::sync::Arc::new(e))
    }
}

/// One environment the tool loads.
pub(crate) struct Side<'a> {
    /// `baseline` or `candidate`.
    pub(crate) name: &'static str,
    pub(crate) services: &'a BTreeMap<String, ServiceOutputs>,
}

/// Runs the load command against every side at once; what each measured, or why not.
/// `scratch` holds a private directory per side (the tool's HOME and results), `logs`
/// its output (`SIDE.load.log`).
pub(crate) async fn run_all(
    load: &Load,
    loaded: &Loaded,
    sides: &[Side<'_>],
    scratch: &Path,
    logs: &Path,
    user: Option<RunAs>,
    own: &[PathBuf],
) -> Vec<Result<Measured, ToolError>> {
    let paths = loaded.desc.bundle.clone().unwrap_or_else(|| vec![PathBuf::new()]);
    let listing = match crate::sys::bundle::list(&loaded.dir, &paths, own) {
        Ok(l) => l,
        Err(e) => {
            let e = std::sync::Arc::new(e);
            return sides.iter().map(|_| Err(ToolError::Bundle(e.clone()))).collect();
        }
    };
    let runs = sides.iter().map(|s| run_one(load, loaded, &listing, s, scratch, logs, user));
    futures_util::future::join_all(runs).await
}

async fn run_one(
    load: &Load,
    loaded: &Loaded,
    listing: &crate::sys::bundle::Listing,
    side: &Side<'_>,
    scratch: &Path,
    logs: &Path,
    user: Option<RunAs>,
) -> Result<Measured, ToolError> {
    let command = load.command.as_deref().ok_or(ToolError::NoCommand)?;
    let url = &side.services.get(&load.target).ok_or_else(|| ToolError::NoService(load.target.clone()))?.url;
    let dir = private_dir(scratch, side.name, user)?;
    let results = dir.join("results");
    // The tool's own copy of the suites' files, beside its private directory (made
    // where only rehearse can write, then handed over).
    let owner = user.map(|u| (u.uid, u.gid));
    let copy = crate::sys::bundle::copy(listing, scratch, &format!("{}.bundle", side.name), owner)?;
    let cwd = crate::sys::bundle::inside(listing, &loaded.dir, &copy)?;
    let mut cmd = process::shell(command, &cwd, user.map(|u| (u, dir.clone())));
    cmd.env("REHEARSE_URL", url)
        .env("REHEARSE_SIDE", side.name)
        .env("REHEARSE_RATE", load.rate.to_string())
        .env("REHEARSE_DURATION", load.duration.as_secs().max(1).to_string())
        .env("REHEARSE_RESULTS", &results);
    for (name, s) in side.services {
        cmd.env(format!("REHEARSE_SERVICE_{}_URL", name.to_uppercase().replace('-', "_")), &s.url);
    }
    let log = logs.join(format!("{}.load.log", side.name));
    let limit = load.duration + GRACE;
    let finished = process::run_logged(&mut cmd, &log, limit, &Clock::new()).await.map_err(ToolError::Run)?;
    if finished.timed_out {
        return Err(ToolError::TimedOut { limit, log });
    }
    // A tool may exit non-zero over its own thresholds (k6: 99) and still have
    // measured: its results decide, and are judged like any.
    let (file, _) = Dir::open(&dir)
        .and_then(|d| d.open_file(std::ffi::OsStr::new("results"), MAX_RESULTS))
        .map_err(|source| ToolError::NoResults { status: finished.status, log, source })?;
    use std::io::Read as _;
    let input = std::io::BufReader::new(file.take(MAX_RESULTS));
    crate::compare::tool::parse(load.format, input)
        .map_err(|source| ToolError::Unreadable { format: load.format.as_str(), source })
}

/// `scratch/SIDE`, new, 0700, the tool's user's.
fn private_dir(scratch: &Path, side: &str, user: Option<RunAs>) -> Result<PathBuf, ToolError> {
    let why = |source| ToolError::Directory { scratch: scratch.to_path_buf(), source };
    // Traversable, not listable: the tool's user reaches its own directory only.
    for d in [scratch.parent().unwrap_or(scratch), scratch] {
        crate::sys::state::traversable_dir(d).map_err(why)?;
    }
    let d = Dir::open(scratch).and_then(|d| d.create_dir(std::ffi::OsStr::new(side), 0o700)).map_err(why)?;
    if let Some(u) = user {
        d.chown(u.uid, u.gid).map_err(why)?;
    }
    Ok(scratch.join(side))
}
