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

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::Utc;

pub fn state_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("rehearse");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/rehearse")
}

pub fn work_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("REHEARSE_WORK_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(x);
    }
    PathBuf::from(format!("/var/tmp/rehearse-{}", nix::unistd::geteuid().as_raw()))
}

/// Creates a directory (and parents) that other users may traverse but not list
/// (mode 0711): the unprivileged cluster user must reach its data directory inside.
pub fn ensure_traversable_dir(p: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(p)?;
    let mut perms = std::fs::metadata(p)?.permissions();
    if perms.mode() & 0o111 != 0o111 {
        perms.set_mode((perms.mode() & 0o7777) | 0o711);
        std::fs::set_permissions(p, perms)?;
    }
    Ok(())
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

/// A generated secret (database passwords): 32 characters from a URL- and
/// shell-safe alphabet, from the OS's random source.
pub fn new_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    // Rejection sampling keeps every character equally likely.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        for b in bytes.iter().filter(|b| **b < limit) {
            if out.len() < 32 {
                out.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
            }
        }
    }
    out
}

/// Run ids are used in paths: refuse anything but the generated shape.
pub fn valid_run_id(id: &str) -> bool {
    id.len() <= 64 && id.starts_with("r-") && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}
