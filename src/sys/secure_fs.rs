//! Files and directories that other users of the machine can neither read nor steer.
//!
//! rehearse runs as root in CI and on shared runners, where the other local users are
//! untrusted. Everything it writes is private: the process umask is 077, so files are
//! 0600 and directories 0700 unless a mode is given on purpose (0711 for the work
//! directories the unprivileged cluster and release users must traverse, never list).
//!
//! Every directory rehearse relies on is checked as OpenSSH's StrictModes checks a
//! home directory: the directory itself must not be a symbolic link, must be owned by
//! the effective user and must not be writable by group or others; each ancestor must
//! be owned by root or the effective user and not be writable by group or others,
//! unless it is a root-owned sticky directory such as `/tmp` or `/var/tmp` (where no
//! one can rename or remove what is not theirs). Below a directory that passed, no one
//! else can add, swap or redirect anything, so ordinary path work is safe there.
//!
//! Directories handed to an unprivileged user (the cluster's, the release's, a
//! suite's) are the exception: that user can plant symbolic links in them. Work in
//! them goes through [`Dir`], an opened directory whose every step is `openat` with
//! `O_NOFOLLOW`, whose files are created under a fresh name and renamed into place,
//! and which changes owners by file descriptor.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::{Gid, Uid};

/// Why a path was refused or could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The path exists but someone else could steer what rehearse does with it.
    #[error("refusing to use {path}: {why}")]
    Unsafe { path: PathBuf, why: String },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file bigger than the caller allows.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
}

impl FsError {
    pub(crate) fn io(action: &'static str, path: &Path, source: impl Into<std::io::Error>) -> FsError {
        FsError::Io { action, path: path.to_path_buf(), source: source.into() }
    }

    fn unsafe_(path: &Path, why: impl Into<String>) -> FsError {
        FsError::Unsafe { path: path.to_path_buf(), why: why.into() }
    }
}

/// Files rehearse writes are readable by their owner only (set once, at start).
pub(crate) fn private_umask() {
    nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Checks an ancestor of a directory rehearse relies on: owned by root or us, not
/// writable by group or others, unless root-owned and sticky (`/tmp`).
fn check_ancestor(path: &Path, m: &std::fs::Metadata) -> Result<(), FsError> {
    let mode = m.mode();
    if m.uid() != 0 && m.uid() != euid() {
        return Err(FsError::unsafe_(
            path,
            format!("it is owned by uid {}, who could replace what rehearse keeps below it", m.uid()),
        ));
    }
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !(sticky && m.uid() == 0) {
        return Err(FsError::unsafe_(
            path,
            format!(
                "it is writable by {} (mode {:o}), who could replace what rehearse keeps below it",
                who(mode),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

fn who(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and all users",
        (true, false) => "its group",
        _ => "all users",
    }
}

/// Checks a directory rehearse owns: a real directory (not a symbolic link), owned by
/// the effective user, not writable by group or others.
fn check_own(path: &Path, m: &std::fs::Metadata) -> Result<(), FsError> {
    if m.file_type().is_symlink() {
        return Err(FsError::unsafe_(path, "it is a symbolic link"));
    }
    if !m.is_dir() {
        return Err(FsError::unsafe_(path, "it is not a directory"));
    }
    if m.uid() != euid() {
        return Err(FsError::unsafe_(
            path,
            format!(
                "it is owned by uid {}, not by this user (uid {}); someone else may have created it to steer rehearse",
                m.uid(),
                euid()
            ),
        ));
    }
    if m.mode() & 0o022 != 0 {
        return Err(FsError::unsafe_(
            path,
            format!("it is writable by {} (mode {:o})", who(m.mode()), m.mode() & 0o7777),
        ));
    }
    Ok(())
}

/// Every ancestor of `path` (which exists), resolved through symbolic links, passes
/// [`check_ancestor`]; and a symbolic link on the way as written belongs to root or us
/// (in `/tmp`, only a link's owner can replace it).
fn check_ancestors(path: &Path) -> Result<(), FsError> {
    for a in absolute(path)?.ancestors() {
        if let Ok(m) = std::fs::symlink_metadata(a) {
            if m.file_type().is_symlink() && m.uid() != 0 && m.uid() != euid() {
                return Err(FsError::unsafe_(
                    a,
                    format!("it is a symbolic link owned by uid {}, who can point it elsewhere", m.uid()),
                ));
            }
        }
    }
    let real = path.canonicalize().map_err(|e| FsError::io("resolve", path, e))?;
    for a in real.ancestors() {
        let m = std::fs::symlink_metadata(a).map_err(|e| FsError::io("inspect", a, e))?;
        check_ancestor(a, &m)?;
    }
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf, FsError> {
    std::path::absolute(path).map_err(|e| FsError::io("resolve", path, e))
}

/// Creates `path` (and missing parents) as a private directory with `mode`, or checks
/// the one that is there: never a symbolic link, someone else's, or writable by
/// others, below ancestors no one else can change. Returns the path made absolute.
pub(crate) fn private_dir(path: &Path, mode: u32) -> Result<PathBuf, FsError> {
    let abs = absolute(path)?;
    // The part that exists, and the components to create below it.
    let mut existing = abs.clone();
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match std::fs::symlink_metadata(&existing) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = existing.file_name().ok_or_else(|| FsError::io("create", &abs, e))?.to_os_string();
                missing.push(name);
                existing = existing.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
            }
            Err(e) => return Err(FsError::io("inspect", &existing, e)),
        }
    }
    if missing.is_empty() {
        let m = std::fs::symlink_metadata(&abs).map_err(|e| FsError::io("inspect", &abs, e))?;
        check_own(&abs, &m)?;
        if let Some(parent) = abs.parent() {
            check_ancestors(parent)?;
        }
    } else {
        check_ancestors(&existing)?;
        let mut cur = existing.canonicalize().map_err(|e| FsError::io("resolve", &existing, e))?;
        for (i, name) in missing.iter().rev().enumerate() {
            cur.push(name);
            let last = i + 1 == missing.len();
            match std::fs::DirBuilder::new().mode(if last { mode } else { 0o700 }).create(&cur) {
                Ok(()) => {}
                // Created meanwhile (by us, or by someone racing us): checked below.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(FsError::io("create", &cur, e)),
            }
            let m = std::fs::symlink_metadata(&cur).map_err(|e| FsError::io("inspect", &cur, e))?;
            check_own(&cur, &m)?;
        }
    }
    let m = std::fs::symlink_metadata(&abs).map_err(|e| FsError::io("inspect", &abs, e))?;
    if m.mode() & 0o7777 != mode {
        std::fs::set_permissions(&abs, std::fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::io("set the mode of", &abs, e))?;
    }
    Ok(abs)
}

/// Checks a directory rehearse reads state from (journals, reports): `Ok(false)` if it
/// does not exist, an error if it exists but someone else could have written it.
pub(crate) fn check_private_dir(path: &Path) -> Result<bool, FsError> {
    let abs = absolute(path)?;
    match std::fs::symlink_metadata(&abs) {
        Ok(m) => {
            check_own(&abs, &m)?;
            if let Some(parent) = abs.parent() {
                check_ancestors(parent)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FsError::io("inspect", &abs, e)),
    }
}

/// Checks a file or directory rehearse reads on a description's word (a backup, the
/// masking SQL, a release): neither it nor a directory above it may be writable by
/// every user (root-owned sticky directories such as `/tmp` excepted), or anyone could
/// swap in their own backup, masking or release. (Group-writable is allowed: on
/// systems with a private group per user that is the norm.)
pub(crate) fn check_input(path: &Path) -> Result<(), FsError> {
    let real = path.canonicalize().map_err(|e| FsError::io("resolve", path, e))?;
    for (i, a) in real.ancestors().enumerate() {
        let m = std::fs::symlink_metadata(a).map_err(|e| FsError::io("inspect", a, e))?;
        let sticky_root = m.mode() & 0o1000 != 0 && m.uid() == 0 && i > 0;
        if m.mode() & 0o002 != 0 && !sticky_root {
            return Err(FsError::unsafe_(
                a,
                format!(
                    "it is writable by every user of this machine (mode {:o}), who could replace {}",
                    m.mode() & 0o7777,
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `inner` lies strictly below `outer`, compared component by component after
/// making both absolute (no `..`, no symbolic links resolved: a journaled path must be
/// literally where rehearse puts such things).
pub(crate) fn is_strictly_below(inner: &Path, outer: &Path) -> bool {
    let (Ok(inner), Ok(outer)) = (std::path::absolute(inner), std::path::absolute(outer)) else {
        return false;
    };
    if inner.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return false;
    }
    inner != outer && inner.starts_with(&outer)
}

/// Most a single path component may be (Linux NAME_MAX).
const NAME_MAX: usize = 255;

/// A name inside a directory: one normal component.
fn one_component(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty() && b.len() <= NAME_MAX && b != b"." && b != b".." && !b.contains(&b'/')
}

/// Opens (or creates, 0600) the file a `flock` is taken on, never through a symbolic
/// link: rehearse's own lock files (a golden copy's, a generation's, the server's).
pub(crate) fn lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// An opened directory; everything done through it is relative to the descriptor and
/// never follows a symbolic link.
pub(crate) struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

impl Dir {
    /// Opens `path`, refusing a final symbolic link. (Its ancestors are the caller's
    /// business: they are rehearse's own, checked directories.)
    pub(crate) fn open(path: &Path) -> Result<Dir, FsError> {
        let fd = nix::fcntl::openat(nix::fcntl::AT_FDCWD, path, DIR_FLAGS, Mode::empty()).map_err(|e| {
            if e == nix::errno::Errno::ELOOP {
                FsError::unsafe_(path, "it is a symbolic link")
            } else {
                FsError::io("open", path, e)
            }
        })?;
        Ok(Dir { fd, path: path.to_path_buf() })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's owner, by descriptor.
    pub(crate) fn chown(&self, uid: u32, gid: u32) -> Result<(), FsError> {
        nix::unistd::fchown(&self.fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| FsError::io("change the owner of", &self.path, e))
    }

    pub(crate) fn chmod(&self, mode: u32) -> Result<(), FsError> {
        nix::sys::stat::fchmod(&self.fd, Mode::from_bits_truncate(mode))
            .map_err(|e| FsError::io("set the mode of", &self.path, e))
    }

    /// Opens the subdirectory `name` (one component), never through a symbolic link.
    pub(crate) fn open_dir(&self, name: &OsStr) -> Result<Dir, FsError> {
        let path = self.path.join(name);
        if !one_component(name) {
            return Err(FsError::unsafe_(&path, "not a plain name inside its directory"));
        }
        let fd = nix::fcntl::openat(&self.fd, name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => {
                FsError::unsafe_(&path, "it is a symbolic link or not a directory")
            }
            e => FsError::io("open", &path, e),
        })?;
        Ok(Dir { fd, path })
    }

    /// Creates the subdirectory `name` with `mode` (it must not exist) and opens it.
    pub(crate) fn create_dir(&self, name: &OsStr, mode: u32) -> Result<Dir, FsError> {
        let path = self.path.join(name);
        if !one_component(name) {
            return Err(FsError::unsafe_(&path, "not a plain name inside its directory"));
        }
        nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(mode))
            .map_err(|e| FsError::io("create", &path, e))?;
        let d = self.open_dir(name)?;
        // The umask may have taken bits the caller asked for (0711).
        d.chmod(mode)?;
        Ok(d)
    }

    /// Opens `name`, or creates it (owned by `owner`) when it does not exist.
    fn open_or_create_dir(&self, name: &OsStr, owner: Option<(u32, u32)>) -> Result<Dir, FsError> {
        match self.open_dir(name) {
            Ok(d) => Ok(d),
            Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let d = self.create_dir(name, 0o700)?;
                if let Some((u, g)) = owner {
                    d.chown(u, g)?;
                }
                Ok(d)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `contents` to `rel` (a relative path of plain components below this
    /// directory; missing directories are created), readable by `owner` (or by us)
    /// only. No component is followed through a symbolic link; the file is written
    /// under a fresh name and renamed over `rel`, so an existing file or link there is
    /// replaced, never written through.
    pub(crate) fn write_file(&self, rel: &Path, contents: &[u8], owner: Option<(u32, u32)>) -> Result<(), FsError> {
        let full = self.path.join(rel);
        let mut names: Vec<&OsStr> = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(n) if one_component(n) => names.push(n),
                _ => return Err(FsError::unsafe_(&full, "the path must stay inside its directory")),
            }
        }
        let Some((file, dirs)) = names.split_last() else {
            return Err(FsError::unsafe_(&full, "no file name"));
        };
        let mut parent: Option<Dir> = None;
        for d in dirs {
            let next = parent.as_ref().unwrap_or(self).open_or_create_dir(d, owner)?;
            parent = Some(next);
        }
        let parent = parent.as_ref().unwrap_or(self);
        let mut random = [0u8; 6];
        getrandom::fill(&mut random).map_err(|e| FsError::io("create", &full, std::io::Error::other(e.to_string())))?;
        let tmp = format!(".rehearse-{}.tmp", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&parent.fd, tmp.as_str(), flags, Mode::from_bits_truncate(0o600))
            .map_err(|e| FsError::io("create", &full, e))?;
        if let Some((u, g)) = owner {
            nix::unistd::fchown(&fd, Some(Uid::from_raw(u)), Some(Gid::from_raw(g)))
                .map_err(|e| FsError::io("change the owner of", &full, e))?;
        }
        let mut f = std::fs::File::from(fd);
        f.write_all(contents).map_err(|e| FsError::io("write", &full, e))?;
        drop(f);
        nix::fcntl::renameat(&parent.fd, tmp.as_str(), &parent.fd, *file).map_err(|e| {
            // Best effort: the rename's error is the one returned; a leftover temporary file is only untidy.
            #[allow(clippy::let_underscore_must_use)]
            let _ = nix::unistd::unlinkat(&parent.fd, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
            FsError::io("write", &full, e)
        })
    }

    /// Reads the regular file `name` (one component), at most `limit` bytes; a
    /// symbolic link, a FIFO or device, or a bigger file is refused.
    pub(crate) fn read_file(&self, name: &OsStr, limit: u64) -> Result<Vec<u8>, FsError> {
        let path = self.path.join(name);
        let (file, size) = self.open_file(name, limit)?;
        let mut out = Vec::with_capacity(size as usize);
        file.take(limit + 1).read_to_end(&mut out).map_err(|e| FsError::io("read", &path, e))?;
        if out.len() as u64 > limit {
            return Err(FsError::TooLarge { path, limit });
        }
        Ok(out)
    }

    /// Opens the regular file `name` in this directory for reading — never through a
    /// symbolic link, never a FIFO or device — when it holds at most `limit` bytes;
    /// the file and its size. A caller reading it whole still stops at `limit`.
    pub(crate) fn open_file(&self, name: &OsStr, limit: u64) -> Result<(std::fs::File, u64), FsError> {
        let path = self.path.join(name);
        if !one_component(name) {
            return Err(FsError::unsafe_(&path, "not a plain name inside its directory"));
        }
        // O_NONBLOCK: opening a FIFO planted there must not hang.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, name, flags, Mode::empty()).map_err(|e| match e {
            nix::errno::Errno::ELOOP => FsError::unsafe_(&path, "it is a symbolic link"),
            e => FsError::io("open", &path, e),
        })?;
        let st = nix::sys::stat::fstat(&fd).map_err(|e| FsError::io("inspect", &path, e))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(FsError::unsafe_(&path, "it is not a regular file"));
        }
        if st.st_size as u64 > limit {
            return Err(FsError::TooLarge { path, limit });
        }
        Ok((std::fs::File::from(fd), st.st_size.max(0) as u64))
    }

    /// Makes this directory and everything below it private — no permission for
    /// group or others, whatever the artifact said — and gives it to `owner` when one
    /// is named: by descriptor, never following a symbolic link (a link itself only
    /// changes owner).
    pub(crate) fn make_private_tree(&self, owner: Option<(u32, u32)>) -> Result<(), FsError> {
        let dup = self.fd.try_clone().map_err(|e| FsError::io("open", &self.path, e))?;
        let entries = nix::dir::Dir::from_fd(dup).map_err(|e| FsError::io("list", &self.path, e))?;
        let mut names = Vec::new();
        for e in entries {
            let e = e.map_err(|e| FsError::io("list", &self.path, e))?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(std::ffi::OsString::from(OsStr::from_bytes(name)));
            }
        }
        let (uid, gid) = (owner.map(|o| Uid::from_raw(o.0)), owner.map(|o| Gid::from_raw(o.1)));
        for name in names {
            let path = self.path.join(&name);
            let st = nix::sys::stat::fstatat(&self.fd, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| FsError::io("inspect", &path, e))?;
            match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                SFlag::S_IFDIR => self.open_dir(&name)?.make_private_tree(owner)?,
                SFlag::S_IFREG => {
                    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
                    let fd = nix::fcntl::openat(&self.fd, name.as_os_str(), flags, Mode::empty())
                        .map_err(|e| FsError::io("open", &path, e))?;
                    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(st.st_mode & 0o700))
                        .map_err(|e| FsError::io("set the mode of", &path, e))?;
                    if owner.is_some() {
                        nix::unistd::fchown(&fd, uid, gid).map_err(|e| FsError::io("change the owner of", &path, e))?;
                    }
                }
                SFlag::S_IFLNK => {
                    if owner.is_some() {
                        nix::unistd::fchownat(&self.fd, name.as_os_str(), uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                            .map_err(|e| FsError::io("change the owner of", &path, e))?;
                    }
                }
                _ => return Err(FsError::unsafe_(&path, "neither a file, a directory nor a link")),
            }
        }
        let st = nix::sys::stat::fstat(&self.fd).map_err(|e| FsError::io("inspect", &self.path, e))?;
        self.chmod((st.st_mode & 0o700) | 0o700)?;
        if let Some((u, g)) = owner {
            self.chown(u, g)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_dir_is_created_with_its_mode_and_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        private_dir(&d, 0o711).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o711);
        // Checking again is fine; a symbolic link in its place is not.
        private_dir(&d, 0o711).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        let e = private_dir(&link, 0o700).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // Writable by others: refused, not silently fixed.
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&open, 0o700).unwrap_err();
        assert!(e.to_string().contains("writable by"), "{e}");
        assert!(check_private_dir(&open).is_err());
        assert!(!check_private_dir(&t.path().join("missing")).unwrap());
    }

    #[test]
    fn files_are_written_without_following_links_and_read_with_a_limit() {
        let t = tempfile::tempdir().unwrap();
        let dir = Dir::open(t.path()).unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        // A link where the file goes is replaced, not written through.
        std::os::unix::fs::symlink(&outside, t.path().join("conf")).unwrap();
        dir.write_file(Path::new("conf"), b"new", None).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(t.path().join("conf")).unwrap(), "new");
        // A link on the way is refused.
        std::os::unix::fs::symlink(t.path(), t.path().join("sub")).unwrap();
        assert!(dir.write_file(Path::new("sub/x"), b"x", None).is_err());
        assert!(dir.write_file(Path::new("../x"), b"x", None).is_err());
        dir.write_file(Path::new("d1/d2/f"), b"deep", None).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("d1/d2/f")).unwrap(), "deep");
        // Reading: a link, a FIFO and a big file are refused.
        assert!(dir.read_file(OsStr::new("conf"), 10).is_ok());
        std::os::unix::fs::symlink(&outside, t.path().join("l")).unwrap();
        assert!(matches!(dir.read_file(OsStr::new("l"), 10), Err(FsError::Unsafe { .. })));
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(matches!(dir.read_file(OsStr::new("fifo"), 10), Err(FsError::Unsafe { .. })));
        std::fs::write(t.path().join("big"), vec![b'x'; 100]).unwrap();
        assert!(matches!(dir.read_file(OsStr::new("big"), 10), Err(FsError::TooLarge { .. })));
    }

    #[test]
    fn below_compares_components_literally() {
        assert!(is_strictly_below(Path::new("/w/runs/r-1/db"), Path::new("/w/runs/r-1")));
        assert!(!is_strictly_below(Path::new("/w/runs/r-1"), Path::new("/w/runs/r-1")));
        assert!(!is_strictly_below(Path::new("/w/runs/r-1/../../etc"), Path::new("/w/runs/r-1")));
        assert!(!is_strictly_below(Path::new("/etc"), Path::new("/w/runs/r-1")));
        assert!(!is_strictly_below(Path::new("/w/runs/r-10"), Path::new("/w/runs/r-1")));
    }
}
