//! Where runs keep their files.
//!
//! - the *state directory* (`--state-dir`, `$REHEARSE_STATE_DIR`, else
//!   `$XDG_STATE_HOME/rehearse`, else `~/.local/state/rehearse`) holds, per run,
//!   `runs/RUN_ID/journal.jsonl`, `logs/` and `report/` — small files that outlive the
//!   environment;
//! - the *work directory* (`$REHEARSE_WORK_DIR`, else `/var/tmp/rehearse-UID`) holds
//!   what the environment itself is made of on this machine (throwaway PostgreSQL
//!   clusters, the unpacked release) and the warm golden copies. It is separate because
//!   when rehearse runs as root the clusters run as an unprivileged user, which must be
//!   able to reach them (a home directory usually is not reachable), and because
//!   reflink copies need the golden copy and the run on one filesystem.
//!
//! Both are checked before use ([`super::secure_fs`]): a directory that is a symbolic
//! link, belongs to someone else or is writable by others is refused, since another
//! user could otherwise steer what rehearse (often root) reads, runs or removes.

use std::path::{Path, PathBuf};

use chrono::Utc;

pub fn state_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("rehearse");
    }
    // Without HOME, the home directory the password database gives; without one,
    // a private directory beside the work directory — never a shared /tmp path.
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.dir))
        .filter(|h| h.is_absolute() && h != Path::new("/"));
    match home {
        Some(h) => h.join(".local/state/rehearse"),
        None => work_dir().join("state"),
    }
}

pub fn work_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("REHEARSE_WORK_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(x);
    }
    PathBuf::from(format!("/var/tmp/rehearse-{}", nix::unistd::geteuid().as_raw()))
}

/// Mode of the work directories the unprivileged cluster and release users must
/// traverse (never list): `WORK/`, `WORK/runs/`, `WORK/runs/RUN_ID/`, `WORK/golden/...`.
pub const TRAVERSABLE: u32 = 0o711;

/// Creates (or checks) a work directory others may traverse but not list, refusing
/// one that is a symbolic link, someone else's or writable by others.
pub fn traversable_dir(p: &Path) -> Result<PathBuf, super::secure_fs::FsError> {
    super::secure_fs::private_dir(p, TRAVERSABLE)
}

/// Creates (or checks) a directory only this user may enter.
pub fn private_dir(p: &Path) -> Result<PathBuf, super::secure_fs::FsError> {
    super::secure_fs::private_dir(p, 0o700)
}

/// `dir` if it is run `run_id`'s work directory under `work_root` or lies inside it;
/// else why it is refused. Journals name directories to remove, and a journal is a
/// file: what it names is removed only where rehearse itself puts such things.
pub fn in_run_work_dir(dir: &Path, work_root: &Path, run_id: &str) -> Result<PathBuf, String> {
    if !valid_run_id(run_id) {
        return Err(format!("the journal names a run `{run_id}` that is not a run id"));
    }
    let run_dir = std::path::absolute(work_root).unwrap_or_else(|_| work_root.to_path_buf()).join("runs").join(run_id);
    if dir == run_dir || super::secure_fs::is_strictly_below(dir, &run_dir) {
        Ok(dir.to_path_buf())
    } else {
        Err(format!(
            "refusing to remove {}: it is not inside the run's work directory {} (is the journal damaged?)",
            dir.display(),
            run_dir.display()
        ))
    }
}

/// Removes a directory tree (without following links inside it); gone already is fine.
pub fn remove_tree(dir: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", dir.display())),
    }
}

pub fn runs_dir(state: &Path) -> PathBuf {
    state.join("runs")
}

pub fn run_dir(state: &Path, run_id: &str) -> PathBuf {
    runs_dir(state).join(run_id)
}

/// A new run id: time-sortable and unique (`r-20261125-164001-7f3a9c`).
pub fn new_run_id() -> String {
    let mut bytes = [0u8; 3];
    let _ = getrandom::fill(&mut bytes);
    format!("r-{}-{:02x}{:02x}{:02x}", Utc::now().format("%Y%m%d-%H%M%S"), bytes[0], bytes[1], bytes[2])
}

/// Run ids are used in paths: refuse anything but the generated shape.
pub fn valid_run_id(id: &str) -> bool {
    id.len() <= 64 && id.starts_with("r-") && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}
