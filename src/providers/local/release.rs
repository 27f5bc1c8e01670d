//! The release on this machine: unpack the artifact (a directory or a `.tar.gz`) into
//! the run's work directory and render config templates into it.
//!
//! rehearse unpacks as the user it runs as (root, in CI), so what an artifact holds is
//! checked before any of it lands: plain files, directories and links only; no path
//! that leaves the release; no symbolic link whose target is absolute or climbs out of
//! the release, and none at its top level (a release whose root is a link to `/etc`
//! would have rehearse write its config templates there); and caps on the archive's
//! size, its unpacked size and its number of entries (an archive is not allowed to
//! fill the disk).

use std::path::{Component, Path, PathBuf};

use crate::engine::timing::Clock;
use crate::providers::StepError;

/// The largest artifact file unpacked.
pub const MAX_ARCHIVE_BYTES: u64 = 4 << 30;
/// The most an artifact may hold, unpacked.
pub const MAX_UNPACKED_BYTES: u64 = 16 << 30;
/// The most entries (files, directories, links) an artifact may hold.
pub const MAX_ENTRIES: u64 = 200_000;

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
        let root = artifact.to_path_buf();
        tokio::task::spawn_blocking(move || check_tree(&root))
            .await
            .map_err(|e| StepError::build(format!("checking the release failed: {e}")))??;
        return copy_tree(artifact, dest).await;
    }
    let name = artifact.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if !(name.ends_with(".tar.gz") || name.ends_with(".tgz") || name.ends_with(".tar")) {
        return Err(StepError::build(format!(
            "release artifact {} is neither a directory nor a .tar.gz / .tgz / .tar archive",
            artifact.display()
        )));
    }
    let size = std::fs::metadata(artifact).map(|m| m.len()).unwrap_or(0);
    if size > MAX_ARCHIVE_BYTES {
        return Err(refused(artifact, format!("it is larger than {} GiB", MAX_ARCHIVE_BYTES >> 30)));
    }
    let artifact = artifact.to_path_buf();
    let dest_owned = dest.to_path_buf();
    tokio::task::spawn_blocking(move || untar(&artifact, &dest_owned))
        .await
        .map_err(|e| StepError::build(format!("unpacking failed: {e}")))?
}

fn refused(artifact: &Path, why: String) -> StepError {
    StepError::build(format!("refusing the release artifact {}: {why}", artifact.display()))
}

/// Copies a directory tree with `cp -a --reflink=auto`: it shares blocks where the
/// filesystem can (XFS, btrfs), and preserves modes, owners, links and times, which a
/// hand-written walk would have to re-implement. The caller accounts the time.
pub async fn copy_tree(from: &Path, to: &Path) -> Result<(), StepError> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--")
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

/// What an artifact's entries add up to, checked as they are counted.
#[derive(Default)]
struct Tally {
    entries: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, artifact: &Path, bytes: u64) -> Result<(), StepError> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.entries > MAX_ENTRIES {
            return Err(refused(artifact, format!("it holds more than {MAX_ENTRIES} entries")));
        }
        if self.bytes > MAX_UNPACKED_BYTES {
            return Err(refused(artifact, format!("it holds more than {} GiB", MAX_UNPACKED_BYTES >> 30)));
        }
        Ok(())
    }
}

/// A path inside the release, as plain components (a leading `./` allowed).
fn inside(path: &Path) -> Option<Vec<&std::ffi::OsStr>> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then_some(parts)
}

/// Checks a symbolic link at `at` (inside the release) pointing at `target`: relative,
/// not at the release's top level, and resolving (lexically, from the link's
/// directory) to a place inside the release.
fn check_link(artifact: &Path, at: &Path, target: &Path) -> Result<(), StepError> {
    let Some(parts) = inside(at) else {
        return Err(refused(artifact, format!("{} is not a path inside the release", at.display())));
    };
    if parts.len() == 1 {
        return Err(refused(artifact, format!("{} is a symbolic link at the top of the release", at.display())));
    }
    if target.is_absolute() {
        return Err(refused(
            artifact,
            format!("{} is a symbolic link to the absolute path {}", at.display(), target.display()),
        ));
    }
    let mut depth = parts.len() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => depth = -1,
        }
        if depth < 0 {
            return Err(refused(
                artifact,
                format!("{} is a symbolic link to {}, outside the release", at.display(), target.display()),
            ));
        }
    }
    Ok(())
}

/// Checks a release directory before it is copied: the same rules as an archive's.
fn check_tree(root: &Path) -> Result<(), StepError> {
    let mut tally = Tally::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = std::fs::read_dir(&dir).map_err(|e| refused(root, format!("cannot read {}: {e}", dir.display())))?;
        for e in rd {
            let e = e.map_err(|e| refused(root, format!("cannot read {}: {e}", dir.display())))?;
            let at = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(e.path())
                .map_err(|err| refused(root, format!("cannot inspect {}: {err}", at.display())))?;
            tally.add(root, if m.is_file() { m.len() } else { 0 })?;
            let t = m.file_type();
            if t.is_symlink() {
                let target = std::fs::read_link(e.path())
                    .map_err(|err| refused(root, format!("cannot read the link {}: {err}", at.display())))?;
                check_link(root, &at, &target)?;
            } else if t.is_dir() {
                stack.push(at);
            } else if !t.is_file() {
                return Err(refused(root, format!("{} is neither a file, a directory nor a link", at.display())));
            }
        }
    }
    Ok(())
}

fn untar(artifact: &Path, dest: &Path) -> Result<(), StepError> {
    let err = |e: std::io::Error| StepError::build(format!("cannot unpack {}: {e}", artifact.display()));
    let open = || -> Result<tar::Archive<Box<dyn std::io::Read>>, StepError> {
        let file = std::fs::File::open(artifact).map_err(err)?;
        let reader: Box<dyn std::io::Read> = if artifact.extension().is_some_and(|e| e == "tar") {
            Box::new(file)
        } else {
            Box::new(flate2::read::GzDecoder::new(file))
        };
        Ok(tar::Archive::new(reader))
    };
    let staging = dest.with_extension("unpacking");
    std::fs::create_dir(&staging).map_err(err)?;
    let mut archive = open()?;
    let mut tally = Tally::default();
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?.into_owned();
        if inside(&path).is_none() {
            return Err(refused(artifact, format!("{} is not a path inside the release", path.display())));
        }
        let kind = entry.header().entry_type();
        tally.add(artifact, if kind.is_file() { entry.header().size().unwrap_or(u64::MAX) } else { 0 })?;
        match kind {
            k if k.is_file() || k.is_dir() => {}
            k if k.is_symlink() => {
                let target = entry.link_name().map_err(err)?.unwrap_or_default().into_owned();
                check_link(artifact, &path, &target)?;
            }
            k if k.is_hard_link() => {
                // A hard link names another entry of the archive, by its path.
                let target = entry.link_name().map_err(err)?.unwrap_or_default().into_owned();
                if inside(&target).is_none() {
                    return Err(refused(
                        artifact,
                        format!("{} is a hard link to {}, outside the release", path.display(), target.display()),
                    ));
                }
            }
            // Long names and extended headers are folded into the entries above by
            // the tar crate; anything else (devices, FIFOs) has no place in a release.
            _ => {
                return Err(refused(artifact, format!("{} is neither a file, a directory nor a link", path.display())))
            }
        }
        // `unpack_in` refuses anything that would land outside the staging directory.
        if !entry.unpack_in(&staging).map_err(err)? {
            return Err(refused(artifact, format!("{} would land outside the release", path.display())));
        }
    }
    // A tarball with one top-level directory (`shop-v2/...`) is unwrapped — only a
    // real directory, never a link.
    let entries: Vec<PathBuf> =
        std::fs::read_dir(&staging).map_err(err)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    let single_dir = entries.len() == 1 && std::fs::symlink_metadata(&entries[0]).is_ok_and(|m| m.file_type().is_dir());
    let root = if single_dir { entries[0].clone() } else { staging.clone() };
    std::fs::rename(&root, dest).map_err(err)?;
    if root != staging {
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let bytes = b.into_inner().unwrap();
        let p = dir.join("release.tar");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h
    }

    fn unpacked(dir: &Path, artifact: &Path) -> Result<(), String> {
        untar(artifact, &dir.join("out")).map_err(|e| e.message)
    }

    #[test]
    fn links_out_of_the_release_and_at_its_top_are_refused() {
        let cases: [(&str, &str, &str); 4] = [
            ("app/config", "/etc", "absolute path"),
            ("app/config", "../../etc", "outside the release"),
            ("current", "app", "top of the release"),
            ("app/deep/x", "../../../x", "outside the release"),
        ];
        for (at, target, why) in cases {
            let t = tempfile::tempdir().unwrap();
            let art = tarball(t.path(), |b| {
                b.append_data(&mut header(tar::EntryType::Regular, 2), "app/run.sh", &b"ok"[..]).unwrap();
                let mut h = header(tar::EntryType::Symlink, 0);
                b.append_link(&mut h, at, target).unwrap();
            });
            let e = unpacked(t.path(), &art).unwrap_err();
            assert!(e.contains(why), "{at} -> {target}: {e}");
            assert!(!t.path().join("out").exists());
        }
        // A link that stays inside is fine.
        let t = tempfile::tempdir().unwrap();
        let art = tarball(t.path(), |b| {
            b.append_data(&mut header(tar::EntryType::Regular, 2), "app/run.sh", &b"ok"[..]).unwrap();
            b.append_link(&mut header(tar::EntryType::Symlink, 0), "app/bin/run", "../run.sh").unwrap();
        });
        unpacked(t.path(), &art).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("out/bin/run")).unwrap(), "ok");
    }

    #[test]
    fn devices_and_too_many_entries_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let art = tarball(t.path(), |b| {
            b.append_data(&mut header(tar::EntryType::Fifo, 0), "app/fifo", &b""[..]).unwrap();
        });
        assert!(unpacked(t.path(), &art).unwrap_err().contains("neither a file"));
        let mut tally = Tally { entries: MAX_ENTRIES, bytes: 0 };
        assert!(tally.add(Path::new("a"), 0).unwrap_err().message.contains("more than"));
        let mut tally = Tally::default();
        assert!(tally.add(Path::new("a"), MAX_UNPACKED_BYTES + 1).unwrap_err().message.contains("GiB"));
    }

    #[test]
    fn a_release_directory_gets_the_same_checks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rel");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/run.sh"), "ok").unwrap();
        // app/x -> ../run.sh leaves app/ but stays inside the release: allowed.
        std::os::unix::fs::symlink("../run.sh", root.join("app/x")).unwrap();
        check_tree(&root).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("app/y")).unwrap();
        assert!(check_tree(&root).unwrap_err().message.contains("outside the release"));
        std::fs::remove_file(root.join("app/y")).unwrap();
        std::os::unix::fs::symlink("app", root.join("top")).unwrap();
        assert!(check_tree(&root).unwrap_err().message.contains("top of the release"));
    }
}
