//! The release on this machine: unpack the artifact (a directory or a `.tar.gz`) into
//! the run's work directory and render config templates into it.

use std::path::{Path, PathBuf};

use crate::engine::timing::Clock;
use crate::providers::StepError;

/// Copies or unpacks `artifact` into `dest` (which must not exist yet).
pub async fn unpack(artifact: &Path, dest: &Path, clock: &Clock) -> Result<(), StepError> {
    if !artifact.exists() {
        return Err(StepError::build(format!(
            "release artifact {} does not exist; build the release first or pass another --release",
            artifact.display()
        )));
    }
    let _span = clock.external();
    if artifact.is_dir() {
        return copy_tree(artifact, dest).await;
    }
    let name = artifact.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !(name.ends_with(".tar.gz") || name.ends_with(".tgz") || name.ends_with(".tar")) {
        return Err(StepError::build(format!(
            "release artifact {} is neither a directory nor a .tar.gz / .tgz / .tar archive",
            artifact.display()
        )));
    }
    let artifact = artifact.to_path_buf();
    let dest_owned = dest.to_path_buf();
    tokio::task::spawn_blocking(move || untar(&artifact, &dest_owned))
        .await
        .map_err(|e| StepError::build(format!("unpacking failed: {e}")))?
}

/// Copies a directory tree with `cp -a --reflink=auto`: it shares blocks where the
/// filesystem can (XFS, btrfs), and preserves modes, owners, links and times, which a
/// hand-written walk would have to re-implement. The caller accounts the time.
pub async fn copy_tree(from: &Path, to: &Path) -> Result<(), StepError> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(|e| StepError::build(format!("cannot run cp: {e}")))?;
    if !out.status.success() {
        return Err(StepError::build(format!(
            "cannot copy {} to {}: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn untar(artifact: &Path, dest: &Path) -> Result<(), StepError> {
    let err = |e: std::io::Error| StepError::build(format!("cannot unpack {}: {e}", artifact.display()));
    let file = std::fs::File::open(artifact).map_err(err)?;
    let reader: Box<dyn std::io::Read> = if artifact.extension().is_some_and(|e| e == "tar") {
        Box::new(file)
    } else {
        Box::new(flate2::read::GzDecoder::new(file))
    };
    let staging = dest.with_extension("unpacking");
    std::fs::create_dir_all(&staging).map_err(err)?;
    // `unpack` refuses entries that would escape the destination (`..`, absolute).
    tar::Archive::new(reader).unpack(&staging).map_err(err)?;
    // A tarball with one top-level directory (`shop-v2/...`) is unwrapped.
    let entries: Vec<PathBuf> =
        std::fs::read_dir(&staging).map_err(err)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    let root = if entries.len() == 1 && entries[0].is_dir() { entries[0].clone() } else { staging.clone() };
    std::fs::rename(&root, dest).map_err(err)?;
    if root != staging {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(())
}
