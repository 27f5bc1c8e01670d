//! The suites' files: what a description hands to the release's side (its suites'
//! scripts, a load tool's configuration, anything a command runs from the
//! description's directory), given to that side as a copy of its own.
//!
//! As root, rehearse runs the suites as an unprivileged user, who must not need the
//! operator's tree: a checkout under a home of mode 0700 is the common case, and
//! making it traversable for everyone to read it would be the wrong fix. So the paths
//! the description lists as its `bundle` (by default its own directory) are listed
//! here, checked like every input rehearse reads on a description's word (not writable
//! by every user, nor anything above them), and copied into the run's private work
//! directory, owned by the user the suites run as, each at the same place relative to
//! the description's directory as in the operator's tree — so `python3
//! ../tests/smoke.py` works the same from the copy. On an SSM runner the same listing
//! is packed and fetched by the runner instead.
//!
//! What is left out inside a listed directory, at any depth: hidden files and
//! directories (`.git`, `.env`, `.venv`, keys), build output (`target`,
//! `node_modules`), and rehearse's own state and work directories. Symbolic links are
//! copied as links, never followed. A bundle holds at most [`MAX_BYTES`] in
//! [`MAX_ENTRIES`] entries: a larger one is refused with both numbers, never cut short.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::secure_fs::{self, Dir, FsError};

/// The most a bundle may hold, in bytes of its files.
pub const MAX_BYTES: u64 = 256 << 20;
/// The most files, directories and links a bundle may hold.
pub const MAX_ENTRIES: u64 = 20_000;

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the suites' files (`bundle:`) {}: {why}", .root.display())]
    Refused { root: PathBuf, why: String },
    #[error("the suites' files (`bundle:`) {}: {source}", .root.display())]
    Fs {
        root: PathBuf,
        #[source]
        source: FsError,
    },
    #[error("cannot copy the suites' files {} to {}: {source}", .root.display(), .to.display())]
    Copy {
        root: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One entry of a bundle, by its path below the bundle's root.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Dir(PathBuf),
    File { at: PathBuf, len: u64, executable: bool },
    Link { at: PathBuf, target: PathBuf },
}

/// A bundle's entries below `root` (the deepest directory that holds the
/// description's directory and every listed path), parents before children.
#[derive(Debug)]
pub struct Listing {
    pub root: PathBuf,
    pub items: Vec<Item>,
    /// The files' bytes, all together.
    pub bytes: u64,
}

/// What a bundle leaves out inside the directories it lists, at any depth.
pub fn skipped(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || name == "target" || name == "node_modules"
}

/// Lists the bundle of a description in `dir`: `paths` (relative to `dir`, or
/// absolute), each a file or a directory with what it holds but [`skipped`] names and
/// the directories in `leave_out` (rehearse's own state and work directories);
/// checked, counted, capped. The description's directory is always there, so commands
/// can start in it.
pub fn list(dir: &Path, paths: &[PathBuf], leave_out: &[PathBuf]) -> Result<Listing, BundleError> {
    let real_dir = dir.canonicalize().map_err(|e| BundleError::Refused {
        root: dir.to_path_buf(),
        why: format!("cannot resolve the description's directory: {e}"),
    })?;
    let mut reals = Vec::new();
    for p in paths {
        let full = dir.join(p);
        let real = full.canonicalize().map_err(|e| BundleError::Refused {
            root: full.clone(),
            why: format!("cannot be used: {e} (`bundle:` lists paths relative to the description's directory)"),
        })?;
        secure_fs::check_input(&full).map_err(|source| BundleError::Fs { root: full.clone(), source })?;
        reals.push(real);
    }
    // The deepest directory above the description's and every listed path.
    let mut root = real_dir.clone();
    for r in &reals {
        while !r.starts_with(&root) {
            root = root.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
        }
    }
    let leave_out: Vec<PathBuf> = leave_out.iter().filter_map(|p| p.canonicalize().ok()).collect();
    let mut w = Walk { root: root.clone(), items: std::collections::BTreeMap::new(), bytes: 0, leave_out };
    w.parents(&real_dir);
    w.item(&real_dir)?;
    // Each directory's contents once, however often it is listed or reached.
    let mut walked = std::collections::BTreeSet::new();
    for r in &reals {
        w.parents(r);
        let mut stack = match w.item(r)? {
            true => vec![r.clone()],
            false => Vec::new(),
        };
        while let Some(d) = stack.pop() {
            if !walked.insert(d.clone()) {
                continue;
            }
            let entries =
                std::fs::read_dir(&d).and_then(|rd| rd.collect::<Result<Vec<_>, _>>()).map_err(|e| w.io(&d, e))?;
            for e in entries.into_iter().filter(|e| !skipped(&e.file_name())) {
                if w.item(&e.path())? {
                    stack.push(e.path());
                }
            }
        }
    }
    Ok(Listing { root, items: w.items.into_values().collect(), bytes: w.bytes })
}

/// A listing being made: its entries by their path below `root`.
struct Walk {
    root: PathBuf,
    items: std::collections::BTreeMap<PathBuf, Item>,
    bytes: u64,
    leave_out: Vec<PathBuf>,
}

impl Walk {
    fn refused(&self, why: String) -> BundleError {
        BundleError::Refused { root: self.root.clone(), why }
    }

    fn io(&self, at: &Path, e: std::io::Error) -> BundleError {
        self.refused(format!("cannot read {}: {e}", at.display()))
    }

    /// The directories between the root and `path`, as directories of the bundle.
    fn parents(&mut self, path: &Path) {
        let mut chain: Vec<&Path> = path.ancestors().skip(1).take_while(|a| a.starts_with(&self.root)).collect();
        chain.reverse();
        for a in chain.into_iter().filter(|a| *a != self.root) {
            let at = a.strip_prefix(&self.root).unwrap_or(a).to_path_buf();
            self.items.entry(at.clone()).or_insert(Item::Dir(at));
        }
    }

    /// Adds `path` (checked, counted); whether it is a directory whose contents belong
    /// in the bundle (not one of rehearse's own).
    fn item(&mut self, path: &Path) -> Result<bool, BundleError> {
        let at = path.strip_prefix(&self.root).unwrap_or(path).to_path_buf();
        let shown = if at.as_os_str().is_empty() { Path::new(".") } else { at.as_path() };
        let m = std::fs::symlink_metadata(path).map_err(|e| self.io(path, e))?;
        let t = m.file_type();
        if !t.is_symlink() && m.permissions().mode() & 0o002 != 0 {
            return Err(self.refused(format!(
                "{} is writable by every user of this machine (mode {:o}), who could change what the suites run",
                shown.display(),
                m.mode() & 0o7777
            )));
        }
        if t.is_dir() && self.leave_out.iter().any(|l| l == path) {
            return Ok(false);
        }
        let item = if t.is_symlink() {
            Item::Link { at: at.clone(), target: std::fs::read_link(path).map_err(|e| self.io(path, e))? }
        } else if t.is_dir() {
            Item::Dir(at.clone())
        } else if t.is_file() {
            Item::File { at: at.clone(), len: m.len(), executable: m.mode() & 0o100 != 0 }
        } else {
            return Err(self.refused(format!(
                "{} is neither a file, a directory nor a link (a socket, FIFO or device has no place in it)",
                shown.display()
            )));
        };
        if at.as_os_str().is_empty() {
            // The root itself is the copy's top directory.
            return Ok(t.is_dir());
        }
        if let Item::File { len, .. } = &item {
            if !self.items.contains_key(&at) {
                self.bytes = self.bytes.saturating_add(*len);
            }
        }
        self.items.insert(at, item);
        if self.items.len() as u64 > MAX_ENTRIES || self.bytes > MAX_BYTES {
            return Err(self.refused(format!(
                "the suites' files hold more than {MAX_ENTRIES} entries or {} MiB, the most rehearse copies for \
                 them (hidden files, `target` and `node_modules` left out): list in `bundle:` only what the \
                 suites need",
                MAX_BYTES >> 20
            )));
        }
        Ok(t.is_dir())
    }
}

/// Copies a listing to `dest` (a new directory inside `parent`, a directory only
/// rehearse can write), private (0700 directories, files 0600 or 0700 when
/// executable) and owned by `owner` when one is given. It is copied under a
/// temporary name and renamed into place once whole and handed over.
pub fn copy(listing: &Listing, parent: &Path, name: &str, owner: Option<(u32, u32)>) -> Result<PathBuf, BundleError> {
    let dest = parent.join(name);
    let staging = parent.join(format!("{name}.copying"));
    let cp = |to: &Path, source: std::io::Error| BundleError::Copy {
        root: listing.root.clone(),
        to: to.to_path_buf(),
        source,
    };
    let fs = |source: FsError| BundleError::Fs { root: listing.root.clone(), source };
    // The copy is written by path: only in a directory no one else can change.
    let m = std::fs::symlink_metadata(parent).map_err(|e| cp(parent, e))?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o022 != 0 {
        return Err(fs(FsError::Unsafe {
            path: parent.to_path_buf(),
            why: "the suites' files are copied only into a directory no one but rehearse can change".into(),
        }));
    }
    Dir::open(parent)
        .and_then(|p| p.create_dir(std::ffi::OsStr::new(&format!("{name}.copying")), 0o700))
        .map_err(fs)?;
    for item in &listing.items {
        match item {
            Item::Dir(at) => {
                let to = staging.join(at);
                std::fs::create_dir(&to).map_err(|e| cp(&to, e))?;
            }
            Item::File { at, executable, .. } => {
                let to = staging.join(at);
                std::fs::copy(listing.root.join(at), &to).map_err(|e| cp(&to, e))?;
                let mode = if *executable { 0o700 } else { 0o600 };
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).map_err(|e| cp(&to, e))?;
            }
            Item::Link { at, target } => {
                let to = staging.join(at);
                std::os::unix::fs::symlink(target, &to).map_err(|e| cp(&to, e))?;
            }
        }
    }
    Dir::open(&staging).and_then(|d| d.make_private_tree(owner)).map_err(fs)?;
    std::fs::rename(&staging, &dest).map_err(|e| cp(&dest, e))?;
    Ok(dest)
}

/// Where a command that runs from `cwd` (the description's directory) runs inside the
/// bundle's copy at `copy`: the same place relative to the bundle's root.
pub fn inside(listing: &Listing, cwd: &Path, copy: &Path) -> Result<PathBuf, BundleError> {
    let real = cwd.canonicalize().map_err(|e| BundleError::Refused {
        root: listing.root.clone(),
        why: format!("cannot resolve {}: {e}", cwd.display()),
    })?;
    let rel = real.strip_prefix(&listing.root).map_err(|_| BundleError::Refused {
        root: listing.root.clone(),
        why: format!("the suites run from the description's directory {}, which is outside it", cwd.display()),
    })?;
    Ok(copy.join(rel))
}

/// Packs a listing as a `.tar.gz` (for a runner elsewhere to unpack).
pub fn pack(listing: &Listing) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    b.follow_symlinks(false);
    for item in &listing.items {
        match item {
            Item::Dir(at) => b.append_dir(at, listing.root.join(at))?,
            Item::File { at, .. } | Item::Link { at, .. } => b.append_path_with_name(listing.root.join(at), at)?,
        }
    }
    b.into_inner()?.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["env", "suites/lib", ".git/objects", "target/debug", "suites/node_modules/x", "state"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        std::fs::write(r.join("env/shop.yaml"), "name: x").unwrap();
        std::fs::write(r.join("suites/smoke.py"), "print(1)").unwrap();
        std::fs::set_permissions(r.join("suites/smoke.py"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(r.join("suites/lib/util.py"), "x = 1").unwrap();
        std::fs::write(r.join(".env"), "SECRET=1").unwrap();
        std::fs::write(r.join(".git/objects/a"), "blob").unwrap();
        std::fs::write(r.join("target/debug/big"), "bin").unwrap();
        std::fs::write(r.join("state/journal"), "j").unwrap();
        std::os::unix::fs::symlink("suites/smoke.py", r.join("env/smoke")).unwrap();
        t
    }

    fn paths(l: &Listing) -> Vec<String> {
        l.items
            .iter()
            .map(|i| match i {
                Item::Dir(a) | Item::File { at: a, .. } | Item::Link { at: a, .. } => a.display().to_string(),
            })
            .collect()
    }

    #[test]
    fn leaves_out_hidden_build_output_and_rehearses_own_directories() {
        let t = tree();
        let l = list(t.path(), &[PathBuf::from(".")], &[t.path().join("state")]).unwrap();
        assert_eq!(
            paths(&l),
            ["env", "env/shop.yaml", "env/smoke", "suites", "suites/lib", "suites/lib/util.py", "suites/smoke.py"]
        );
        assert_eq!(l.bytes, 7 + 8 + 5);
    }

    #[test]
    fn listed_paths_keep_their_place_relative_to_the_description() {
        let t = tree();
        let env = t.path().join("env");
        // The description in env/ names ../suites/smoke.py: only that directory travels,
        // with env/ (empty) to start from.
        let l = list(&env, &[PathBuf::from("../suites")], &[]).unwrap();
        assert_eq!(l.root, t.path().canonicalize().unwrap());
        assert_eq!(paths(&l), ["env", "suites", "suites/lib", "suites/lib/util.py", "suites/smoke.py"]);
        // A file, and a path listed twice, count once.
        let l = list(&env, &[PathBuf::from("../suites/lib/util.py"), PathBuf::from("../suites/lib")], &[]).unwrap();
        assert_eq!(paths(&l), ["env", "suites", "suites/lib", "suites/lib/util.py"]);
        assert_eq!(l.bytes, 5);
        let e = list(&env, &[PathBuf::from("../missing")], &[]).unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("cannot be used"), "{e}");
    }

    #[test]
    fn a_copy_is_private_and_commands_run_from_the_same_place_inside_it() {
        let t = tree();
        let out = tempfile::tempdir().unwrap();
        let l = list(&t.path().join("env"), &[PathBuf::from("..")], &[]).unwrap();
        let copy = copy(&l, out.path(), "bundle", None).unwrap();
        assert_eq!(std::fs::read_to_string(copy.join("suites/smoke.py")).unwrap(), "print(1)");
        assert_eq!(std::fs::read_link(copy.join("env/smoke")).unwrap(), Path::new("suites/smoke.py"));
        let mode = |p: &str| std::fs::metadata(copy.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode(""), mode("suites"), mode("suites/smoke.py"), mode("env/shop.yaml")),
            (0o700, 0o700, 0o700, 0o600)
        );
        assert!(!out.path().join("bundle.copying").exists());
        assert_eq!(inside(&l, &t.path().join("env"), &copy).unwrap(), copy.join("env"));
        let elsewhere = tempfile::tempdir().unwrap();
        assert!(inside(&l, elsewhere.path(), &copy).unwrap_err().to_string().contains("outside it"));
        // Only into a directory no one else can change.
        std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(copy_err(&l, out.path()).contains("no one but rehearse"));
    }

    fn copy_err(l: &Listing, parent: &Path) -> String {
        copy(l, parent, "again", None).unwrap_err().to_string()
    }

    #[test]
    fn world_writable_files_and_fifos_are_refused() {
        let t = tree();
        std::fs::set_permissions(t.path().join("suites/lib/util.py"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = list(t.path(), &[PathBuf::from(".")], &[]).unwrap_err().to_string();
        assert!(e.contains("suites/lib/util.py is writable by every user"), "{e}");
        let t = tree();
        nix::unistd::mkfifo(&t.path().join("suites/pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = list(t.path(), &[PathBuf::from("suites")], &[]).unwrap_err().to_string();
        assert!(e.contains("suites/pipe is neither a file"), "{e}");
    }

    #[test]
    fn a_packed_bundle_holds_the_same_entries() {
        let t = tree();
        let l = list(t.path(), &[PathBuf::from(".")], &[]).unwrap();
        let bytes = pack(&l).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let names: Vec<String> =
            a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert!(
            names.contains(&"suites/smoke.py".to_string()) && !names.iter().any(|n| n.contains(".git")),
            "{names:?}"
        );
    }
}
