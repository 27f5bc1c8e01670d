//! The release on this machine (the local provider's, and the one an install on aws
//! runs from): unpack the artifact (a directory or a `.tar.gz`) into
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

use crate::engine::provider::{Ctx, Output, StepError};
use crate::plan::Resource;
use crate::sys::timing::Clock;

/// The handle of a release unpacked on this machine: its directory.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ReleaseHandle {
    pub(crate) dir: std::path::PathBuf,
}

/// The release step: `artifact` (a directory or an archive on this machine) unpacked
/// into the run's work directory as `release/`, journaled before it is written.
pub(crate) async fn place(res: &Resource, ctx: &Ctx<'_>, artifact: &Path) -> Result<Output, StepError> {
    let dest = ctx.release_dir().to_path_buf();
    ctx.created(res, &ReleaseHandle { dir: dest.clone() }).await?;
    let t = ctx.started(res, "unpack", Some(artifact.display().to_string()));
    // The release is private (whatever modes the artifact carried: no one else may
    // read or change it before it runs) and belongs to the user it runs as;
    // rehearse writes into it afterwards only through no-follow descriptors.
    let owner = ctx.run.users.release.map(|u| (u.uid, u.gid));
    let r = unpack(artifact, &dest, owner, ctx.clock).await;
    ctx.step(res, "unpack", t, r.is_ok(), Some(format!("{} {}", ctx.plan.release.version, artifact.display())));
    r?;
    Ok(Output::Release { dir: dest })
}

/// The largest artifact file unpacked.
pub(crate) const MAX_ARCHIVE_BYTES: u64 = 4 << 30;
/// The most an artifact may hold, unpacked.
pub(crate) const MAX_UNPACKED_BYTES: u64 = 16 << 30;
/// The most entries (files, directories, links) an artifact may hold.
pub(crate) const MAX_ENTRIES: u64 = 200_000;

/// Copies or unpacks `artifact` into `dest` (which must not exist yet), private to
/// `owner` (or to rehearse's user): it is unpacked inside a private staging directory,
/// checked there, made private and handed over, and only then moved to `dest` — no one
/// else can read or change a file of it at any moment.
pub(crate) async fn unpack(
    artifact: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    clock: &Clock,
) -> Result<(), StepError> {
    if !artifact.exists() {
        return Err(StepError::build(format!(
            "release artifact {} does not exist; build the release first or pass another --release",
            artifact.display()
        )));
    }
    let _span = clock.external();
    crate::sys::secure_fs::check_input(artifact)
        .map_err(|e| StepError::build(format!("the release artifact cannot be trusted: {e}")))?;
    let is_dir = artifact.is_dir();
    if !is_dir {
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
    }
    let staging = dest.with_extension("unpacking");
    std::fs::create_dir(&staging).map_err(|e| StepError::build(format!("cannot create {}: {e}", staging.display())))?;
    let root = if is_dir {
        let tree = artifact.to_path_buf();
        tokio::task::spawn_blocking(move || check_tree(&tree, &tree, true))
            .await
            .map_err(|e| StepError::build(format!("checking the release failed: {e}")))??;
        let copy = staging.join("release");
        copy_tree(artifact, &copy).await?;
        copy
    } else {
        let (a, st) = (artifact.to_path_buf(), staging.clone());
        tokio::task::spawn_blocking(move || untar(&a, &st))
            .await
            .map_err(|e| StepError::build(format!("unpacking failed: {e}")))??
    };
    // Links are judged again where they ended up (a top directory unwrapped makes a
    // link one level higher; a link through another link goes where that one goes).
    let (a, r) = (artifact.to_path_buf(), root.clone());
    tokio::task::spawn_blocking(move || check_tree(&a, &r, false))
        .await
        .map_err(|e| StepError::build(format!("checking the release failed: {e}")))??;
    crate::sys::secure_fs::Dir::open(&root)
        .and_then(|d| d.make_private_tree(owner))
        .map_err(|e| StepError::build(format!("cannot make the release private to its user: {e}")))?;
    std::fs::rename(&root, dest).map_err(|e| StepError::build(format!("cannot move the release into place: {e}")))?;
    if root != staging {
        // Best effort: the release is in place; the empty staging directory is removed with the run's.
        #[allow(clippy::let_underscore_must_use)]
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(())
}

fn refused(artifact: &Path, why: String) -> StepError {
    StepError::build(format!("refusing the release artifact {}: {why}", artifact.display()))
}

/// Copies a directory tree with `cp -a --reflink=auto`: it shares blocks where the
/// filesystem can (XFS, btrfs), and preserves modes, owners, links and times, which a
/// hand-written walk would have to re-implement. The caller accounts the time.
pub(crate) async fn copy_tree(from: &Path, to: &Path) -> Result<(), StepError> {
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

/// Whether `path` names the release's root itself (`.`, `./`).
fn is_root(path: &Path) -> bool {
    path.components().all(|c| c == Component::CurDir)
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

/// Checks a release tree (`artifact` names it in messages): every link relative, not at
/// the top, and resolving — step by step through the tree as it is, following any link
/// on the way — to a place inside the release; only files, directories and links; the
/// caps.
/// (`on_disk`: the release directory itself, which must not be writable by every user;
/// an unpacked archive's modes are the archive's word only, and made private anyway.)
fn check_tree(artifact: &Path, root: &Path, on_disk: bool) -> Result<(), StepError> {
    let mut tally = Tally::default();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd =
            std::fs::read_dir(&dir).map_err(|e| refused(artifact, format!("cannot read {}: {e}", dir.display())))?;
        for e in rd {
            let e = e.map_err(|e| refused(artifact, format!("cannot read {}: {e}", dir.display())))?;
            let at = rel.join(e.file_name());
            let m = std::fs::symlink_metadata(e.path())
                .map_err(|err| refused(artifact, format!("cannot inspect {}: {err}", at.display())))?;
            tally.add(artifact, if m.is_file() { m.len() } else { 0 })?;
            let t = m.file_type();
            if on_disk && !t.is_symlink() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o002 != 0 {
                return Err(refused(artifact, format!("{} is writable by every user of this machine", at.display())));
            }
            if t.is_symlink() {
                let target = std::fs::read_link(e.path())
                    .map_err(|err| refused(artifact, format!("cannot read the link {}: {err}", at.display())))?;
                check_link(artifact, &at, &target)?;
                resolve_inside(artifact, root, &at, 0)?;
            } else if t.is_dir() {
                stack.push(at);
            } else if !t.is_file() {
                return Err(refused(artifact, format!("{} is neither a file, a directory nor a link", at.display())));
            }
        }
    }
    Ok(())
}

/// Follows the link at `at` (relative to `root`) component by component, through any
/// further link on the way (at most 40, as the kernel allows), and refuses it if it
/// ever steps above `root`. Returns where it leads, as components below `root`.
fn resolve_inside(artifact: &Path, root: &Path, at: &Path, hops: u32) -> Result<Vec<std::ffi::OsString>, StepError> {
    let escape = || refused(artifact, format!("{} is a symbolic link that leads outside the release", at.display()));
    if hops > 40 {
        return Err(refused(artifact, format!("{} is a symbolic link in a loop", at.display())));
    }
    let target = std::fs::read_link(root.join(at)).map_err(|_| escape())?;
    if target.is_absolute() {
        return Err(escape());
    }
    // Where the link sits, as components below the root.
    let mut path: Vec<std::ffi::OsString> =
        at.parent().into_iter().flat_map(|p| p.components()).map(|c| c.as_os_str().to_os_string()).collect();
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if path.pop().is_none() {
                    return Err(escape());
                }
            }
            Component::Normal(n) => {
                path.push(n.to_os_string());
                let here: PathBuf = path.iter().collect();
                if std::fs::symlink_metadata(root.join(&here)).is_ok_and(|m| m.file_type().is_symlink()) {
                    path = resolve_inside(artifact, root, &here, hops + 1)?;
                }
            }
            _ => return Err(escape()),
        }
    }
    Ok(path)
}

/// Unpacks an archive into `staging` (private), checking every entry first; returns
/// the release's root: the archive's single top directory, or `staging` itself.
fn untar(artifact: &Path, staging: &Path) -> Result<PathBuf, StepError> {
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
    let mut archive = open()?;
    let mut tally = Tally::default();
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        let path = entry.path().map_err(err)?.into_owned();
        let kind = entry.header().entry_type();
        // `tar -czf v2.tar.gz -C build/v2 .` starts with `./`: the release's own root.
        if is_root(&path) && kind.is_dir() {
            continue;
        }
        if inside(&path).is_none() {
            return Err(refused(artifact, format!("{} is not a path inside the release", path.display())));
        }
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
        if !entry.unpack_in(staging).map_err(err)? {
            return Err(refused(artifact, format!("{} would land outside the release", path.display())));
        }
    }
    // A tarball with one top-level directory (`shop-v2/...`) is unwrapped — only a
    // real directory, never a link.
    let entries: Vec<PathBuf> =
        std::fs::read_dir(staging).map_err(err)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    let single_dir = entries.len() == 1 && std::fs::symlink_metadata(&entries[0]).is_ok_and(|m| m.file_type().is_dir());
    Ok(if single_dir { entries[0].clone() } else { staging.to_path_buf() })
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

    fn unpacked(dir: &Path, artifact: &Path) -> Result<(), StepError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(unpack(artifact, &dir.join("out"), None, &Clock::new()))
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
            let e = unpacked(t.path(), &art).unwrap_err().message;
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
        assert!(unpacked(t.path(), &art).unwrap_err().message.contains("neither a file"));
        // Unwrapping the top directory would make `x/up -> ..` a link to the run's own
        // directory, one level above the release.
        let t = tempfile::tempdir().unwrap();
        let art = tarball(t.path(), |b| {
            b.append_data(&mut header(tar::EntryType::Regular, 2), "x/run.sh", &b"ok"[..]).unwrap();
            b.append_link(&mut header(tar::EntryType::Symlink, 0), "x/up", "..").unwrap();
        });
        assert!(unpacked(t.path(), &art).unwrap_err().message.contains("top of the release"));
        // A link through another link: each looks inside on its own.
        let t = tempfile::tempdir().unwrap();
        let art = tarball(t.path(), |b| {
            b.append_data(&mut header(tar::EntryType::Regular, 2), "r/a/b/f", &b"ok"[..]).unwrap();
            b.append_link(&mut header(tar::EntryType::Symlink, 0), "r/a/b/l", "../..").unwrap();
            b.append_link(&mut header(tar::EntryType::Symlink, 0), "r/a/root", "b/l/../../../..").unwrap();
        });
        assert!(unpacked(t.path(), &art).unwrap_err().message.contains("outside the release"));
        let mut tally = Tally { entries: MAX_ENTRIES, bytes: 0 };
        assert!(tally.add(Path::new("a"), 0).unwrap_err().message.contains("more than"));
        let mut tally = Tally::default();
        assert!(tally.add(Path::new("a"), MAX_UNPACKED_BYTES + 1).unwrap_err().message.contains("GiB"));
    }

    /// Regression: `tar -czf v2.tar.gz -C build/v2 .`, the way most build scripts pack
    /// a directory, starts with a `./` entry, which was refused as "not a path inside
    /// the release".
    #[test]
    fn an_archive_of_dot_made_by_tar_is_the_release() {
        let t = tempfile::tempdir().unwrap();
        let build = t.path().join("build");
        std::fs::create_dir_all(build.join("migrations")).unwrap();
        std::fs::write(build.join("app.py"), "print('v2')").unwrap();
        std::fs::write(build.join("migrations/0001.sql"), "select 1;").unwrap();
        std::os::unix::fs::symlink("../app.py", build.join("migrations/app")).unwrap();
        let art = t.path().join("v2.tar.gz");
        let out =
            std::process::Command::new("tar").arg("-czf").arg(&art).arg("-C").arg(&build).arg(".").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let first = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&art).unwrap()))
            .entries()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .unwrap()
            .into_owned();
        assert_eq!(first, Path::new("./"), "tar's first entry");
        unpacked(t.path(), &art).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("out/app.py")).unwrap(), "print('v2')");
        assert_eq!(std::fs::read_to_string(t.path().join("out/migrations/app")).unwrap(), "print('v2')");
        // `./` is the release; what leaves it still does not get in.
        for (path, why) in [("./../x", "not a path inside"), ("./a/../../x", "not a path inside")] {
            let t = tempfile::tempdir().unwrap();
            let art = tarball(t.path(), |b| {
                b.append_data(&mut header(tar::EntryType::Directory, 0), "./", &b""[..]).unwrap();
                let mut h = header(tar::EntryType::Regular, 2);
                // The tar crate refuses to write `..`; set the name by hand, as an attacker would.
                h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                h.set_cksum();
                b.append(&h, &b"ok"[..]).unwrap();
            });
            let e = unpacked(t.path(), &art).unwrap_err().message;
            assert!(e.contains(why), "{path}: {e}");
        }
        let t = tempfile::tempdir().unwrap();
        let art = tarball(t.path(), |b| {
            let mut h = header(tar::EntryType::Regular, 2);
            h.as_old_mut().name[..2].copy_from_slice(b"./");
            h.set_cksum();
            b.append(&h, &b"ok"[..]).unwrap();
        });
        assert!(unpacked(t.path(), &art).unwrap_err().message.contains("not a path inside"), "a file named `./`");
    }

    #[test]
    fn a_release_directory_gets_the_same_checks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("rel");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/run.sh"), "ok").unwrap();
        // app/x -> ../run.sh leaves app/ but stays inside the release: allowed.
        std::os::unix::fs::symlink("../run.sh", root.join("app/x")).unwrap();
        check_tree(&root, &root, true).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("app/y")).unwrap();
        assert!(check_tree(&root, &root, true).unwrap_err().message.contains("outside the release"));
        std::fs::remove_file(root.join("app/y")).unwrap();
        std::os::unix::fs::symlink("app", root.join("top")).unwrap();
        assert!(check_tree(&root, &root, true).unwrap_err().message.contains("top of the release"));
    }
}
