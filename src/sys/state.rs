//! Where runs keep their files.
//!
//! - the *state directory* (`--state-dir`, `$REHEARSE_STATE_DIR`, else
//!   `$XDG_STATE_HOME/rehearse`, else `~/.local/state/rehearse`) holds, per run,
//!   `runs/RUN_ID/journal.jsonl`, `logs/` and `report/` — small files that outlive the
//!   environment;
//! - the *work directory* (`$REHEARSE_WORK_DIR`, else `/var/lib/rehearse` for root and
//!   `$XDG_CACHE_HOME/rehearse` (`~/.cache/rehearse`) for anyone else) holds
//!   what the environment itself is made of on this machine (throwaway PostgreSQL
//!   clusters, the unpacked release) and the warm golden copies. It is separate because
//!   when rehearse runs as root the clusters run as an unprivileged user, which must be
//!   able to reach them (root's home directory is not reachable), and because reflink
//!   copies need the golden copy and the run on one filesystem. Its default is never
//!   in a directory everyone can write (`/tmp`, `/var/tmp`): there, another user could
//!   claim the name first.
//!
//! Both are checked before use ([`super::secure_fs`]): a directory that is a symbolic
//! link, belongs to someone else or is writable by others is refused, since another
//! user could otherwise steer what rehearse (often root) reads, runs or removes.

use std::path::{Path, PathBuf};

use chrono::Utc;

pub(crate) fn state_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("rehearse");
    }
    // Without HOME, the home directory the password database gives; without one, a
    // directory of our own name — refused if someone else has it, never shared.
    match home_dir() {
        Some(h) => h.join(".local/state/rehearse"),
        None => private_fallback("state"),
    }
}

/// Where to keep things with no home at all: the session's private runtime directory
/// (`$XDG_RUNTIME_DIR`, 0700 and this user's), else a directory of our own name in
/// `/var/tmp` — checked before use, and refused if someone else has it.
fn private_fallback(what: &str) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(r) => PathBuf::from(r).join("rehearse").join(what),
        None => PathBuf::from(format!("/var/tmp/rehearse-{what}-{}", nix::unistd::geteuid().as_raw())),
    }
}

/// This user's home: `HOME`, else the password database's; not `/`.
fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.dir))
        .filter(|h| h.is_absolute() && h != Path::new("/"))
}

pub(crate) fn work_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("REHEARSE_WORK_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(x);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/rehearse");
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("rehearse");
    }
    match home_dir() {
        Some(h) => h.join(".cache/rehearse"),
        None => private_fallback("work"),
    }
}

/// Mode of the work directories the unprivileged cluster and release users must
/// traverse (never list): `WORK/`, `WORK/runs/`, `WORK/runs/RUN_ID/`, `WORK/golden/...`.
pub(crate) const TRAVERSABLE: u32 = 0o711;

/// Creates (or checks) a work directory others may traverse but not list, refusing
/// one that is a symbolic link, someone else's or writable by others.
pub(crate) fn traversable_dir(p: &Path) -> Result<PathBuf, super::secure_fs::FsError> {
    super::secure_fs::private_dir(p, TRAVERSABLE)
}

/// Creates (or checks) a directory only this user may enter.
pub(crate) fn private_dir(p: &Path) -> Result<PathBuf, super::secure_fs::FsError> {
    super::secure_fs::private_dir(p, 0o700)
}

/// Why a journaled directory was not removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RemoveError {
    /// It is not where rehearse puts a run's things: never removed.
    #[error("refusing to remove {}: {why} (is the journal damaged?)", .dir.display())]
    NotOurs { dir: PathBuf, why: String },
    /// A directory on the way could have been changed by someone else.
    #[error("{source}; nothing is removed from a directory someone else could have changed")]
    Unsafe {
        #[source]
        source: super::secure_fs::FsError,
    },
    #[error("cannot remove {}: {source}", .dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `dir` if it is the run's work directory or lies inside it; else why it is refused.
/// Journals name directories to remove, and a journal is a file: what it names is
/// removed only where rehearse itself puts such things. The work directory is the one
/// the run journals (`work_dir`), literally `WORK/runs/RUN_ID`, where `WORK` and
/// `WORK/runs` are directories of this user that no one else can write (the journal
/// itself lies in a checked state directory); a journal that names none (written by
/// `down` after the real one was lost) means `fallback_root`'s.
pub(crate) fn confined_to_run(
    dir: &Path,
    run_id: &str,
    work_dir: Option<&str>,
    fallback_root: &Path,
) -> Result<PathBuf, RemoveError> {
    let run_dir = journaled_work_dir(work_dir, fallback_root, run_id)?;
    if dir == run_dir || super::secure_fs::is_strictly_below(dir, &run_dir) {
        Ok(dir.to_path_buf())
    } else {
        Err(RemoveError::NotOurs {
            dir: dir.to_path_buf(),
            why: format!("it is not inside the run's work directory {}", run_dir.display()),
        })
    }
}

fn journaled_work_dir(journaled: Option<&str>, fallback_root: &Path, run_id: &str) -> Result<PathBuf, RemoveError> {
    let run_dir = match journaled {
        Some(j) => PathBuf::from(j),
        None => {
            std::path::absolute(fallback_root).unwrap_or_else(|_| fallback_root.to_path_buf()).join("runs").join(run_id)
        }
    };
    if !valid_run_id(run_id) {
        return Err(RemoveError::NotOurs {
            dir: run_dir,
            why: format!("the journal names a run `{run_id}` that is not a run id"),
        });
    }
    let runs = run_dir.parent().filter(|p| p.file_name().is_some_and(|n| n == "runs"));
    let (Some(runs), true) = (runs, run_dir.is_absolute() && run_dir.file_name().is_some_and(|n| n == run_id)) else {
        return Err(RemoveError::NotOurs {
            why: format!("a run's work directory is WORK/runs/{run_id}, and nothing is removed outside it"),
            dir: run_dir,
        });
    };
    for d in [runs.parent().unwrap_or(runs), runs] {
        super::secure_fs::check_private_dir(d).map_err(|source| RemoveError::Unsafe { source })?;
    }
    Ok(run_dir)
}

/// Removes a directory tree (without following links inside it); gone already is fine.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), RemoveError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RemoveError::Io { dir: dir.to_path_buf(), source }),
    }
}

/// A state store, as its URL names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateUrl {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
}

/// Why a URL names no state store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateUrlError {
    #[error("`{0}`: a file:// state store needs an absolute path (file:///var/lib/...)")]
    RelativePath(String),
    #[error("`{url}`: `{bucket}` is not an S3 bucket name (3-63 of a-z, 0-9, `-`, `.`)")]
    Bucket { url: String, bucket: String },
    #[error("`{url}`: the prefix `{prefix}` has an empty, `.` or `..` segment")]
    Prefix { url: String, prefix: String },
    #[error("`{0}` is not a state store: use file:///DIR or s3://BUCKET/PREFIX")]
    Scheme(String),
}

impl StateUrl {
    pub fn parse(url: &str) -> Result<StateUrl, StateUrlError> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(StateUrlError::RelativePath(url.to_string()));
            }
            return Ok(StateUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok = (3..=63).contains(&bucket.len())
                && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
            if !ok {
                return Err(StateUrlError::Bucket { url: url.to_string(), bucket: bucket.to_string() });
            }
            let prefix = prefix.trim_matches('/');
            let bad = |seg: &str| seg.is_empty() || seg == "." || seg == ".." || seg.chars().any(char::is_control);
            if !prefix.is_empty() && prefix.split('/').any(bad) {
                return Err(StateUrlError::Prefix { url: url.to_string(), prefix: prefix.to_string() });
            }
            return Ok(StateUrl::S3 { bucket: bucket.to_string(), prefix: prefix.to_string() });
        }
        Err(StateUrlError::Scheme(url.to_string()))
    }
}

pub(crate) fn runs_dir(state: &Path) -> PathBuf {
    state.join("runs")
}

pub(crate) fn run_dir(state: &Path, run_id: &str) -> PathBuf {
    runs_dir(state).join(run_id)
}

/// A new run id: time-sortable and unique (`r-20261125-164001-7f3a9c`).
pub(crate) fn new_run_id() -> String {
    let mut bytes = [0u8; 3];
    if getrandom::fill(&mut bytes).is_err() {
        // No system randomness (never seen on Linux): the process id and the clock's
        // nanoseconds still tell two runs started in the same second apart.
        let n = u64::from(std::process::id()) ^ u64::from(Utc::now().timestamp_subsec_nanos());
        bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
    }
    format!("r-{}-{:02x}{:02x}{:02x}", Utc::now().format("%Y%m%d-%H%M%S"), bytes[0], bytes[1], bytes[2])
}

/// Run ids are used in paths: refuse anything but the generated shape.
pub(crate) fn valid_run_id(id: &str) -> bool {
    id.len() <= 64 && id.starts_with("r-") && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_urls() {
        assert_eq!(StateUrl::parse("file:///var/lib/x").unwrap(), StateUrl::File("/var/lib/x".into()));
        assert_eq!(
            StateUrl::parse("s3://team-state/rehearse/").unwrap(),
            StateUrl::S3 { bucket: "team-state".into(), prefix: "rehearse".into() }
        );
        assert_eq!(StateUrl::parse("s3://b-1").unwrap(), StateUrl::S3 { bucket: "b-1".into(), prefix: String::new() });
        for bad in ["file://relative", "s3://UPPER/x", "s3://b/../x", "gs://b/x", "/var/lib/x"] {
            assert!(StateUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
