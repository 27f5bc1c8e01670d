//! `rehearse lock NAME -- COMMAND` and `rehearse unlock NAME --force`: the state
//! store's named locks, for scripts and CI jobs that must not overlap (two jobs
//! rebuilding the same staging) and for the human who clears a dead holder's lock.

use std::time::Duration;

use chrono::Utc;
use tokio::signal::unix::{signal, SignalKind};

use super::edge::lock::{give_back, take};
use super::store;
use crate::cli::{Global, Name};
use crate::engine::store::lock::{self};
use crate::exit;

/// `rehearse lock NAME --lease DURATION -- COMMAND` (the name and lease checked by the
/// command line's parsers, [`crate::cli::value`]).
pub(crate) fn lock(g: &Global, name: &Name, lease: Duration, command: &[String]) -> i32 {
    super::runtime().block_on(async {
        let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(i), Ok(t)) => (i, t),
            _ => {
                errln!("error: cannot install signal handlers");
                return exit::BUILD_FAILED;
            }
        };
        let store = match store::lock_store(g).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let held = match take(store, name, &format!("rehearse lock -- {}", command.join(" ")), None, lease).await {
            Ok(l) => l,
            Err(code) => return code,
        };
        let mut lost = held.lost.clone();
        let mut child = match tokio::process::Command::new(&command[0]).args(&command[1..]).kill_on_drop(true).spawn() {
            Ok(c) => c,
            Err(e) => {
                errln!("error: cannot start `{}`: {e}", command[0]);
                give_back(held, name).await;
                return exit::USAGE;
            }
        };
        let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
        let stop = |why: &str| {
            errln!("rehearse: {why}: stopping `{}`", command[0]);
            if let Some(pid) = pid {
                // Gone already is fine: it is stopping anyway.
                #[allow(clippy::let_underscore_must_use)]
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        };
        let code = tokio::select! {
            status = child.wait() => status.map(|s| s.code().unwrap_or(exit::INTERRUPTED)).unwrap_or(exit::BUILD_FAILED),
            why = lost.wait_for(|l| l.is_some()) => {
                let why = why.map(|w| w.clone().unwrap_or_default()).unwrap_or_default();
                stop(&why);
                #[allow(clippy::let_underscore_must_use)]
                // Its status no longer matters: the lock was lost, and that is the exit code.
                let _ = child.wait().await;
                return exit::LOCKED;
            }
            _ = int.recv() => { stop("interrupted"); wait_code(&mut child).await }
            _ = term.recv() => { stop("terminated"); wait_code(&mut child).await }
        };
        give_back(held, name).await;
        code
    })
}

async fn wait_code(child: &mut tokio::process::Child) -> i32 {
    match child.wait().await {
        Ok(s) if s.success() => exit::INTERRUPTED,
        Ok(s) => s.code().unwrap_or(exit::INTERRUPTED),
        Err(_) => exit::INTERRUPTED,
    }
}

pub(crate) fn unlock(g: &Global, name: &Name, force: bool) -> i32 {
    super::runtime().block_on(async {
        let store = match store::lock_store(g).await {
            Ok(s) => s,
            Err(code) => return code,
        };
        let fail = |e: lock::LockError| {
            errln!("error: the lock `{name}` in {}: {e}", store.url());
            exit::BUILD_FAILED
        };
        if !force {
            return match lock::holder(store.as_ref(), name).await {
                Ok(None) => {
                    outln!("`{name}` is not locked");
                    exit::PASSED
                }
                Ok(Some((info, _))) => {
                    let stale = if info.lease_until <= Utc::now() { " (its lease has run out)" } else { "" };
                    errln!(
                        "error: {}{stale}; `rehearse unlock {name} --force` removes it — only do that when its holder is dead",
                        info.refusal()
                    );
                    exit::LOCKED
                }
                Err(e) => fail(e),
            };
        }
        match lock::force_unlock(store.as_ref(), name).await {
            Ok(None) => {
                outln!("`{name}` is not locked");
                exit::PASSED
            }
            Ok(Some(info)) => {
                outln!("removed the lock {}", info.refusal().trim_start_matches(&format!("`{name}` is locked ")));
                exit::PASSED
            }
            Err(e) => fail(e),
        }
    })
}
