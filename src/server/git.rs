//! The descriptions from a Git repository (`git:` in the configuration): cloned at the
//! server's start into its state directory (`STATE/server/checkout`, private to it),
//! then brought to the branch's newest commit every `every` (`git fetch` and a hard
//! reset to it: the checkout is the server's, nobody edits it), so that a description
//! merged is offered without a restart. The repository is trusted as the descriptions
//! are (they are code); `git` runs without a shell, its arguments taken from the
//! configuration, after `--`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::config::Git;
use crate::sys::signals::Signals;

/// Why the checkout could not be made or brought up to date.
#[derive(Debug, thiserror::Error)]
#[error("git {what} of {url} ({branch}) failed: {why}")]
pub struct GitError {
    what: &'static str,
    url: String,
    branch: String,
    why: String,
}

fn git(args: &[&str], git: &Git, what: &'static str) -> Result<(), GitError> {
    let fail = |why: String| GitError { what, url: git.url.clone(), branch: git.branch.clone(), why };
    let out = Command::new("git")
        .args(args)
        // Never a prompt for credentials on a server: fail instead.
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| fail(format!("cannot run git: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(nothing said)");
    Err(fail(crate::sys::text::printable(&format!("{} ({})", last.trim(), out.status))))
}

/// The checkout in `dir`, made if it is not there; its top directory.
pub(crate) fn checkout(g: &Git, dir: &Path) -> Result<PathBuf, GitError> {
    if dir.join(".git").is_dir() {
        pull(g, dir)?;
    } else {
        let d = dir.to_string_lossy();
        git(&["clone", "--quiet", "--depth", "1", "--branch", &g.branch, "--", &g.url, &d], g, "clone")?;
    }
    Ok(dir.to_path_buf())
}

/// Brings the checkout in `dir` to the branch's newest commit.
fn pull(g: &Git, dir: &Path) -> Result<(), GitError> {
    let d = dir.to_string_lossy();
    git(&["-C", &d, "fetch", "--quiet", "--depth", "1", "origin", "--", &g.branch], g, "fetch")?;
    git(&["-C", &d, "reset", "--quiet", "--hard", "FETCH_HEAD"], g, "reset")
}

/// Pulls every `g.every` (default five minutes) until a signal; a failure is said and
/// the checkout kept as it was.
pub(crate) fn keep_pulling(g: Git, dir: PathBuf, signals: Signals) {
    let every = g.every.unwrap_or(Duration::from_secs(300));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = signals.nth(1) => return,
            }
            let (g2, d2) = (g.clone(), dir.clone());
            match tokio::task::spawn_blocking(move || pull(&g2, &d2)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let line = format!("rehearse serve: warning: {e}; the descriptions stay as they were");
                    eprintln!("{}", crate::sys::text::printable_text(&line)); // raw: sanitized
                }
                Err(_) => return,
            }
        }
    });
}
