//! Copy-on-write golden copies: a copy of production that costs the same at 1 GB and
//! at 100 GB, on a stock ext4 host.
//!
//! As root, where loop devices and Debian's `xfsprogs` exist, `rehearse warm` restores
//! each golden copy into a *generation*: an XFS file system (reflink on) in a sparse
//! image file under the work directory. The cluster is masked, frozen (`VACUUM
//! (FREEZE, ANALYZE)` and a checkpoint: reading it later sets no hint bit and writes
//! nothing) and stopped, and its directory is made root's alone. A run's copy is a
//! reflink copy of its data directory inside the same file system: the copy shares
//! every block with the generation until it writes one, and only that block is copied.
//! (A kernel overlay was measured and refused: PostgreSQL opens every relation
//! read-write, and overlayfs copies a whole file up on such an open.)
//!
//! A generation's image is mounted only while something uses it: the refresh building
//! it, and runs with a copy in it, each counted by a marker (`ID.users/RUN_ID`) made
//! and removed under the generation's lock. The last copy removed unmounts it; a
//! generation that is no longer current is removed with its last copy. Nothing stays
//! mounted at rest, so a reboot leaves nothing behind, and `rehearse down RUN` mounts a
//! generation again to remove a crashed run's copy.
//!
//! Layout, in `WORK/golden/ENV/DB.cow/` (root's, traversable):
//! `current` (the current generation's id), `ID.img`, `ID.json` (its [`GoldenMeta`]),
//! `ID.lock`, `ID.users/`, and `ID/`, the mount point: `ID/golden/` (the frozen
//! cluster, root's 0700: no copy's server can reach it) and `ID/RUN_ID/` (a run's
//! cluster, the cluster user's).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use super::postgres;
use super::GoldenMeta;
use crate::engine::provider::StepError;
use crate::sys::process::RunAs;
use crate::sys::{secure_fs, state};

mod find;
pub(crate) use find::{retire, settle_all, sweep, used_by};

/// The directory of a database's generations.
pub(crate) fn generations_dir(golden_root: &Path, env: &str, db: &str) -> PathBuf {
    golden_root.join(env).join(format!("{db}.cow"))
}

/// Why copies cannot be copy-on-write on this machine, or `None` when they can.
pub(crate) fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("copy-on-write copies need root (to mount a file system image)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("copy-on-write copies need loop devices (/dev/loop-control is missing)".into());
    }
    if mkfs_xfs().is_none() {
        return Some("copy-on-write copies need mkfs.xfs (Debian's xfsprogs; `make deps` installs it)".into());
    }
    None
}

fn mkfs_xfs() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("mkfs.xfs"))
        .find(|p| p.is_file())
}

/// A generation's id, as made by [`Generation::create`]: `g` and eight hex digits.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 9 && id.starts_with('g') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// One generation of a database's golden copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Generation {
    /// `WORK/golden/ENV/DB.cow/ID`: the mount point; its files are beside it.
    pub(crate) path: PathBuf,
}

/// Why a generation could not be made, mounted or removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CowError {
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Fs(#[from] secure_fs::FsError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} is not a generation of a golden copy (they lie in {})", .0.display(), .1.display())]
    NotOurs(PathBuf, PathBuf),
    #[error("{} is not the image rehearse made (root's regular file, mode 0600); refusing to mount it", .0.display())]
    NotOurImage(PathBuf),
    #[error("`{0}` is not a run id")]
    NotARun(String),
    #[error("generation {0} is in use (its lock is held)")]
    Busy(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CowError + 'a {
    move |source| CowError::Io { action, path: path.to_path_buf(), source }
}

impl From<CowError> for StepError {
    fn from(e: CowError) -> StepError {
        StepError::build(e.to_string())
    }
}

impl Generation {
    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    pub(crate) fn id(&self) -> &str {
        self.path.file_name().and_then(OsStr::to_str).unwrap_or_default()
    }

    fn beside(&self, ext: &str) -> PathBuf {
        self.dir().join(format!("{}.{ext}", self.id()))
    }

    pub(crate) fn image(&self) -> PathBuf {
        self.beside("img")
    }

    fn users(&self) -> PathBuf {
        self.beside("users")
    }

    /// The frozen cluster's directory (inside the mounted image).
    pub(crate) fn golden(&self) -> PathBuf {
        self.path.join("golden")
    }

    /// The directory of `run_id`'s copy (inside the mounted image).
    pub(crate) fn copy_of(&self, run_id: &str) -> PathBuf {
        self.path.join(run_id)
    }

    /// The generation a journal names, if it is one, where rehearse makes them:
    /// `WORK/golden/ENV/DB.cow/ID`, each part a plain name, `WORK` this machine's.
    pub(crate) fn confined(path: &Path, work_root: &Path) -> Result<Generation, CowError> {
        let root = std::path::absolute(work_root).unwrap_or_else(|_| work_root.to_path_buf()).join("golden");
        let not_ours = || CowError::NotOurs(path.to_path_buf(), root.join("ENV/DB.cow/ID"));
        let rel = path.strip_prefix(&root).map_err(|_| not_ours())?;
        let parts: Vec<&OsStr> = rel.iter().collect();
        let [env, db, id] = parts.as_slice() else { return Err(not_ours()) };
        let plain = |s: &OsStr| s.to_str().is_some_and(|s| !s.is_empty() && !s.starts_with('.') && s != "..");
        let db_ok = db.to_str().and_then(|d| d.strip_suffix(".cow")).is_some_and(|d| plain(OsStr::new(d)));
        if !plain(env) || !db_ok || !id.to_str().is_some_and(valid_id) {
            return Err(not_ours());
        }
        let g = Generation { path: root.join(rel) };
        // Root's directories, no one else's to change.
        secure_fs::check_private_dir(g.dir())?;
        Ok(g)
    }

    /// The lock its users, mounts and removal are changed under (held until dropped).
    async fn lock(&self) -> Result<Flock<std::fs::File>, CowError> {
        let path = self.beside("lock");
        let f = secure_fs::lock_file(&path).map_err(io("open", &path))?;
        tokio::task::spawn_blocking(move || Flock::lock(f, FlockArg::LockExclusive))
            .await
            .map_err(|e| CowError::Command { what: "locking a generation".into(), detail: e.to_string() })?
            .map_err(|(_, e)| CowError::Io { action: "lock", path, source: e.into() })
    }

    /// Its lock if no one holds it now (for a sweep, which must not wait on a refresh
    /// building it).
    fn try_lock(&self) -> Result<Flock<std::fs::File>, CowError> {
        let path = self.beside("lock");
        let f = secure_fs::lock_file(&path).map_err(io("open", &path))?;
        Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| CowError::Busy(self.id().to_string()))
    }

    /// Whether its image is mounted: its mount point is on another device than its
    /// directory.
    pub(crate) fn mounted(&self) -> bool {
        match (std::fs::symlink_metadata(&self.path), std::fs::symlink_metadata(self.dir())) {
            (Ok(m), Ok(d)) => m.is_dir() && m.dev() != d.dev(),
            _ => false,
        }
    }

    async fn mount(&self) -> Result<(), CowError> {
        if self.mounted() {
            return Ok(());
        }
        let img = self.image();
        // The image must be root's regular file, not a link to something else.
        let m = std::fs::symlink_metadata(&img).map_err(io("inspect", &img))?;
        if !m.file_type().is_file() || m.uid() != 0 || m.mode() & 0o077 != 0 {
            return Err(CowError::NotOurImage(img));
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.is_dir() => {}
            _ => {
                secure_fs::Dir::open(self.dir())?.create_dir(self.path.file_name().unwrap_or_default(), 0o700)?;
            }
        }
        let mut cmd = tokio::process::Command::new("mount");
        // `discard`: the blocks a removed copy wrote are given back to the host (the loop
        // device punches holes in the sparse image), so the image does not keep growing
        // with every copy's writes.
        cmd.args(["-t", "xfs", "-o", "loop,nodev,nosuid,noexec,discard"]).arg(&img).arg(&self.path);
        run("mount", cmd).await?;
        self.direct_io().await;
        // The root of the file system: traversable by the cluster user to its copy.
        secure_fs::Dir::open(&self.path)?.chmod(state::TRAVERSABLE)?;
        Ok(())
    }

    /// The image's loop device reads and writes the image with direct I/O: the pages a
    /// copy reads are cached once, by the copy's own file system, not a second time as
    /// the image's (which at 12 GB pushed the copy's own pages out of memory, and cost
    /// a copy from the host's cache on every read). Where the host's file system refuses
    /// direct I/O, the device stays as it was (said in the log): slower, not wrong.
    async fn direct_io(&self) {
        let Ok(m) = std::fs::metadata(&self.path) else { return };
        let dev = m.dev();
        let sys =
            PathBuf::from(format!("/sys/dev/block/{}:{}", nix::sys::stat::major(dev), nix::sys::stat::minor(dev)));
        // Only the loop device whose backing file is this image, by its node's number.
        let image = std::fs::canonicalize(self.image()).unwrap_or_else(|_| self.image());
        let ours = std::fs::read_to_string(sys.join("loop/backing_file")).is_ok_and(|b| Path::new(b.trim()) == image);
        let name = std::fs::read_to_string(sys.join("uevent"))
            .ok()
            .and_then(|u| u.lines().find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string)));
        let node = name.map(|n| PathBuf::from("/dev").join(n));
        let node = match node {
            Some(n) if ours && std::fs::metadata(&n).map(|m| m.rdev()).ok() == Some(dev) => n,
            _ => {
                tracing::warn!("{}: its loop device was not found; reads stay buffered twice", self.path.display());
                return;
            }
        };
        let mut cmd = tokio::process::Command::new("losetup");
        cmd.arg("--direct-io=on").arg(&node);
        if let Err(e) = run("losetup --direct-io=on", cmd).await {
            tracing::warn!("{}: reads stay buffered twice: {e}", node.display());
        }
    }

    async fn unmount(&self) -> Result<(), CowError> {
        if !self.mounted() {
            return Ok(());
        }
        let mut cmd = tokio::process::Command::new("umount");
        cmd.arg(&self.path);
        run("umount", cmd).await
    }

    /// The runs with a copy in it (a listing that fails counts as used: never removed
    /// on a guess).
    fn user_count(&self) -> usize {
        match std::fs::read_dir(self.users()) {
            Ok(r) => r.flatten().filter(|e| e.file_name().to_str().is_some_and(state::valid_run_id)).count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(_) => usize::MAX,
        }
    }

    fn is_current(&self) -> bool {
        read_current(self.dir()).as_deref() == Some(self.id())
    }

    /// Unmounts it when nothing uses it, and removes it when it is not current either.
    /// Called with its lock held.
    async fn settle(&self) -> Result<(), CowError> {
        if self.user_count() > 0 {
            return Ok(());
        }
        if self.mounted() && self.golden().join("data/postmaster.pid").exists() {
            // A refresh killed outright left its server running: stopped first.
            let bin = postgres::PgBin::find().ok();
            let run_as = crate::sys::process::Users::cluster_only().ok().flatten();
            let c = postgres::Cluster { base: self.golden(), port: 0, run_as, postmaster: None };
            postgres::stop(bin.as_ref(), &c).await;
        }
        self.unmount().await?;
        if !self.is_current() {
            self.remove_files()?;
        }
        Ok(())
    }

    fn remove_files(&self) -> Result<(), CowError> {
        if self.mounted() {
            return Err(CowError::Busy(self.id().to_string()));
        }
        for p in [self.image(), self.beside("json")] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &p)(e)),
            }
        }
        for d in [self.users(), self.path.clone()] {
            state::remove_tree(&d).map_err(|e| CowError::Command { what: "removal".into(), detail: e.to_string() })?;
        }
        // Last, the lock: one waiting on it finds no image and says so.
        match std::fs::remove_file(self.beside("lock")) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &self.beside("lock"))(e)),
        }
    }

    /// A new, mounted generation in `dir` (root's), its image sized to the free space
    /// of the file system under it (sparse: it takes only what is written), its
    /// lock held until the returned guard is dropped.
    pub(crate) async fn create(dir: &Path) -> Result<(Generation, Flock<std::fs::File>), CowError> {
        state::traversable_dir(dir)?;
        let (g, lock) = Self::new_id(dir)?;
        let made = async {
            let img = g.image();
            {
                use std::os::unix::fs::OpenOptionsExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&img)
                    .map_err(io("create", &img))?;
                f.set_len(image_size(dir)).map_err(io("size", &img))?;
            }
            let mut mkfs = tokio::process::Command::new(mkfs_xfs().unwrap_or_else(|| "mkfs.xfs".into()));
            mkfs.args(["-q", "-K", "-m", "reflink=1"]).arg(&img);
            run("mkfs.xfs", mkfs).await?;
            secure_fs::Dir::open(dir)?.create_dir(OsStr::new(&format!("{}.users", g.id())), 0o700)?;
            g.mount().await
        };
        match made.await {
            Ok(()) => Ok((g, lock)),
            Err(e) => Err(g.undo(e).await),
        }
    }

    /// A fresh id in `dir`: its lock file created (never an existing one) and held.
    fn new_id(dir: &Path) -> Result<(Generation, Flock<std::fs::File>), CowError> {
        use std::os::unix::fs::OpenOptionsExt;
        for _ in 0..8 {
            let mut bytes = [0u8; 4];
            getrandom::fill(&mut bytes)
                .map_err(|e| CowError::Command { what: "randomness".into(), detail: e.to_string() })?;
            let id = format!("g{:02x}{:02x}{:02x}{:02x}", bytes[0], bytes[1], bytes[2], bytes[3]);
            let g = Generation { path: dir.join(&id) };
            let path = g.beside("lock");
            let f = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create", &path)(e)),
            };
            let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| CowError::Busy(id.clone()))?;
            // Left by a removal that stopped half-way: another id.
            if std::fs::symlink_metadata(g.image()).is_ok() || std::fs::symlink_metadata(&g.path).is_ok() {
                continue;
            }
            return Ok((g, lock));
        }
        Err(CowError::Command { what: "choosing a generation id".into(), detail: "eight ids were taken".into() })
    }

    /// Removes what a generation that failed to be made or sealed left (unmounted
    /// first); `e` is the failure, with what could not be removed added to it.
    async fn undo(&self, e: CowError) -> CowError {
        let undone = async {
            self.unmount().await?;
            self.remove_files()
        };
        match undone.await {
            Ok(()) => e,
            Err(left) => CowError::Command {
                what: e.to_string(),
                detail: format!(
                    "and {} could not be removed ({left}): `rehearse sweep --yes` removes it",
                    self.path.display()
                ),
            },
        }
    }

    /// Seals a generation just built (its cluster stopped): the frozen cluster made
    /// root's alone, `meta` written beside it, its pages on disk, unmounted, and made
    /// current; then older generations nothing uses are removed.
    pub(crate) async fn seal(self, lock: Flock<std::fs::File>, meta: &GoldenMeta) -> Result<(), CowError> {
        let sealed = async {
            {
                let golden = secure_fs::Dir::open(&self.golden())?;
                golden.chown(0, 0)?;
                golden.chmod(0o700)?;
            }
            let bytes = serde_json::to_vec_pretty(meta)
                .map_err(|e| CowError::Command { what: "writing the metadata".into(), detail: e.to_string() })?;
            secure_fs::Dir::open(self.dir())?.write_file(Path::new(&format!("{}.json", self.id())), &bytes, None)?;
            self.unmount().await
        };
        if let Err(e) = sealed.await {
            return Err(self.undo(e).await);
        }
        let tmp = self.dir().join(format!("current.{}", self.id()));
        std::fs::write(&tmp, self.id()).map_err(io("write", &tmp))?;
        let current = self.dir().join("current");
        std::fs::rename(&tmp, &current).map_err(io("replace", &current))?;
        drop(lock);
        // The refresh stands whatever older generations say; one in use stays.
        if let Err(e) = settle_all(self.dir()).await {
            tracing::warn!("older generations in {} not settled: {e}", self.dir().display());
        }
        Ok(())
    }

    /// Removes a generation whose building failed or was interrupted.
    pub(crate) async fn abandon(self, lock: Flock<std::fs::File>) -> Result<(), CowError> {
        self.unmount().await?;
        self.remove_files()?;
        drop(lock);
        Ok(())
    }

    /// Makes `run_id`'s copy of the frozen cluster: marked as a user, the image
    /// mounted, the data directory reflinked into `ID/RUN_ID/data` (given to
    /// `run_as`). Returns the copy's directory.
    pub(crate) async fn copy_for(&self, run_id: &str, run_as: Option<RunAs>) -> Result<PathBuf, CowError> {
        if !state::valid_run_id(run_id) {
            return Err(CowError::NotARun(run_id.to_string()));
        }
        let _lock = self.lock().await?;
        if std::fs::symlink_metadata(self.image()).is_err() {
            return Err(CowError::Command {
                what: format!("copying generation {}", self.id()),
                detail: "it was replaced and removed as this run started; run again".into(),
            });
        }
        secure_fs::Dir::open(&self.users())?.write_file(Path::new(run_id), b"", None)?;
        let base = self.copy_of(run_id);
        let made = async {
            self.mount().await?;
            postgres::prepare_base(&base, None)
                .map_err(|e| CowError::Command { what: "the copy".into(), detail: e.message })?;
            let mut cp = tokio::process::Command::new("cp");
            cp.args(["-a", "--reflink=always", "--"]).arg(self.golden().join("data")).arg(base.join("data"));
            run("cp --reflink=always", cp).await?;
            postgres::hand_base(&base, run_as)
                .map_err(|e| CowError::Command { what: "the copy".into(), detail: e.message })
        };
        match made.await {
            Ok(()) => Ok(base),
            Err(e) => {
                // Best effort: the copy's own error is the one returned.
                #[allow(clippy::let_underscore_must_use)]
                let _ = state::remove_tree(&base);
                #[allow(clippy::let_underscore_must_use)]
                let _ = std::fs::remove_file(self.users().join(run_id));
                #[allow(clippy::let_underscore_must_use)]
                let _ = self.settle().await;
                Err(e)
            }
        }
    }

    /// Removes `run_id`'s copy: the image mounted if it must be (after a reboot),
    /// `stop` run on the copy's directory (its server stopped), the directory removed,
    /// the run no longer a user; then the generation settled (unmounted when unused,
    /// removed when also no longer current).
    pub(crate) async fn release<F, Fut>(&self, run_id: &str, stop: F) -> Result<(), CowError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        if !state::valid_run_id(run_id) {
            return Err(CowError::NotARun(run_id.to_string()));
        }
        // Its directory gone (someone removed the golden copies): nothing is left of it.
        if std::fs::symlink_metadata(self.dir()).is_err() {
            return Ok(());
        }
        let _lock = self.lock().await?;
        let marker = self.users().join(run_id);
        let present = std::fs::symlink_metadata(self.image()).is_ok();
        if present && (self.mounted() || std::fs::symlink_metadata(&marker).is_ok()) {
            self.mount().await?;
            let base = self.copy_of(run_id);
            stop(base.clone())
                .await
                .map_err(|detail| CowError::Command { what: "stopping the copy".into(), detail })?;
            state::remove_tree(&base)
                .map_err(|e| CowError::Command { what: "removal".into(), detail: e.to_string() })?;
        }
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &marker)(e)),
        }
        if present {
            self.settle().await?;
        }
        Ok(())
    }
}

/// The current generation of a database and its metadata, when there is one.
pub(crate) fn current(dir: &Path) -> Option<(Generation, GoldenMeta)> {
    let id = read_current(dir)?;
    let g = Generation { path: dir.join(&id) };
    let meta = secure_fs::Dir::open(dir)
        .and_then(|d| d.read_file(OsStr::new(&format!("{id}.json")), 1 << 20))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())?;
    std::fs::symlink_metadata(g.image()).is_ok().then_some((g, meta))
}

fn read_current(dir: &Path) -> Option<String> {
    let b = secure_fs::Dir::open(dir).and_then(|d| d.read_file(OsStr::new("current"), 64)).ok()?;
    let id = String::from_utf8(b).ok()?.trim().to_string();
    valid_id(&id).then_some(id)
}

/// The sparse image's size: the free space of the file system it lies on (it can
/// never hold more), at least 1 GiB, in whole MiB.
fn image_size(dir: &Path) -> u64 {
    let free =
        nix::sys::statvfs::statvfs(dir).map(|s| s.blocks_available().saturating_mul(s.fragment_size())).unwrap_or(0);
    (free.max(1 << 30) >> 20) << 20
}

async fn run(what: &str, mut cmd: tokio::process::Command) -> Result<(), CowError> {
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .map_err(|_| CowError::Command { what: what.into(), detail: "no answer in 300 s".into() })?
        .map_err(|e| CowError::Command { what: what.into(), detail: format!("cannot run it: {e}") })?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(CowError::Command { what: what.into(), detail: format!("{} ({})", err.trim(), out.status) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_confinement() {
        assert!(valid_id("g0a1b2c3d"));
        for bad in ["g0a1b2c3", "h0a1b2c3d", "g0a1b2c3z", "g../../..", ""] {
            assert!(!valid_id(bad), "{bad}");
        }
        let work = Path::new("/nonexistent-work");
        for bad in [
            "/nonexistent-work/golden/demo/db/g0a1b2c3d",
            "/nonexistent-work/golden/demo/db.cow/g0a1b2c3d/x",
            "/nonexistent-work/runs/demo/db.cow/g0a1b2c3d",
            "/nonexistent-work/golden/../db.cow/g0a1b2c3d",
            "/nonexistent-work/golden/demo/.cow/g0a1b2c3d",
            "/elsewhere/golden/demo/db.cow/g0a1b2c3d",
        ] {
            assert!(
                matches!(Generation::confined(Path::new(bad), work), Err(CowError::NotOurs(..))),
                "{bad} was taken for a generation"
            );
        }
    }
}
