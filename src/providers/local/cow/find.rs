//! Finding generations: every one of a database (by its lock or image file), those a
//! run has a copy in (by its marker), and what a sweep finds among them.

use std::path::{Path, PathBuf};

use super::{io, valid_id, CowError, Generation};
use crate::sys::state;

/// Makes no generation of `dir` current (a refresh by full copy replaced them); each
/// is removed once nothing uses it.
pub(crate) async fn retire(dir: &Path) -> Result<(), CowError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    match std::fs::remove_file(dir.join("current")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &dir.join("current"))(e)),
    }
    settle_all(dir).await
}

/// Every generation in `dir`.
fn generations(dir: &Path) -> Vec<Generation> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut ids: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| n.strip_suffix(".lock").or_else(|| n.strip_suffix(".img")).map(str::to_string))
        .filter(|id| valid_id(id))
        .collect();
    ids.sort();
    ids.dedup();
    ids.into_iter().map(|id| Generation { path: dir.join(id) }).collect()
}

/// Settles every generation of `dir`: unmounts those nothing uses (a crash between a
/// copy's removal and the unmount leaves one mounted), removes those neither current
/// nor used.
pub(crate) async fn settle_all(dir: &Path) -> Result<(), CowError> {
    for g in generations(dir) {
        // One in use (a run copying it, a refresh) is settled by whoever uses it.
        match g.try_lock() {
            Ok(_lock) => g.settle().await?,
            Err(CowError::Busy(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a sweep finds among the generations under `golden_root`: mounted ones nothing
/// uses (a crash between a copy's removal and the unmount), ones neither current nor
/// used, and copies of runs whose journal is gone (for `rehearse down RUN`). With
/// `remove`, the first two are unmounted and removed. One line each.
pub(crate) async fn sweep(golden_root: &Path, journaled: &dyn Fn(&str) -> bool, remove: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for g in all_dirs(golden_root).iter().flat_map(|d| generations(d)) {
        let users: Vec<String> = std::fs::read_dir(g.users())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        for run_id in users.iter().filter(|r| state::valid_run_id(r) && !journaled(r)) {
            lines.push(format!(
                "{}: a copy of run {run_id}, whose journal is gone: remove it with `rehearse down {run_id}`",
                g.path.display()
            ));
        }
        let unused_mount = users.is_empty() && g.mounted();
        let stale = users.is_empty() && !g.is_current();
        if !unused_mount && !stale {
            continue;
        }
        let (what, verb, done) = if stale {
            ("an old generation nothing uses", "remove", "removed")
        } else {
            ("mounted, nothing uses it", "unmount", "unmounted")
        };
        if !remove {
            lines.push(format!("would {verb} {}: {what}", g.path.display()));
            continue;
        }
        let settled = match g.try_lock() {
            Ok(_lock) => g.settle().await,
            Err(e) => Err(e),
        };
        lines.push(match settled {
            Ok(()) => format!("{done} {}: {what}", g.path.display()),
            Err(e) => format!("could not {verb} {}: {e}", g.path.display()),
        });
    }
    lines
}

/// Every generation-holding directory under the golden root (`ENV/DB.cow`).
pub(crate) fn all_dirs(golden_root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for env in std::fs::read_dir(golden_root).into_iter().flatten().flatten() {
        for db in std::fs::read_dir(env.path()).into_iter().flatten().flatten() {
            let is_cow = db.file_name().to_str().is_some_and(|n| n.ends_with(".cow"));
            if is_cow && db.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(db.path());
            }
        }
    }
    out
}

/// The generations holding a copy of `run_id` (by their markers: found without
/// mounting anything, so a run whose journal is lost is found too).
pub(crate) fn used_by(golden_root: &Path, run_id: &str) -> Vec<Generation> {
    all_dirs(golden_root)
        .iter()
        .flat_map(|d| generations(d))
        .filter(|g| std::fs::symlink_metadata(g.users().join(run_id)).is_ok())
        .collect()
}
