//! The directory store (`file://DIR`): the embedded default, with the same conditional
//! semantics as S3 so that locks and records work the same way on one machine.
//!
//! Objects are files below a private directory (0700, checked like the state
//! directory). A conditional write holds an exclusive `flock` on `DIR/.store.lock`
//! while it compares and replaces (a new file renamed into place, fsynced), so two
//! processes never both win; the version tag is the SHA-256 of the content.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::Digest;

use super::{
    listing_too_long, object_cap, too_large, valid_key, Condition, Etag, Object, ObjectStore, StoreError, StoreFuture,
    MAX_KEYS,
};

pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// A store in `root`, created (0700) if missing and refused if someone else could
    /// write in it.
    pub fn open(root: &Path) -> Result<FileStore, StoreError> {
        let root = crate::sys::secure_fs::private_dir(root, 0o700)
            .map_err(|e| StoreError::Failed(format!("state store {}: {e}", root.display())))?;
        Ok(FileStore { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !valid_key(key) {
            return Err(StoreError::Failed(format!("`{key}` is not a store key")));
        }
        Ok(self.root.join(key))
    }

    fn exclusive(&self) -> Result<Flock<File>, StoreError> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".store.lock"))
            .map_err(io)?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| io(std::io::Error::from(e)))
    }

    /// The object `key` at `path`, up to its cap: a bigger one is refused unread.
    fn read(&self, key: &str, path: &Path) -> Result<Option<Object>, StoreError> {
        use std::io::Read;
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let cap = object_cap(key);
        if f.metadata().map_err(io)?.len() > cap {
            return Err(too_large(key));
        }
        let mut body = Vec::new();
        f.take(cap + 1).read_to_end(&mut body).map_err(io)?;
        if body.len() as u64 > cap {
            return Err(too_large(key));
        }
        Ok(Some(Object { etag: etag_of(&body), body }))
    }

    fn write(&self, path: &Path, body: &[u8]) -> Result<(), StoreError> {
        let dir = path.parent().ok_or_else(|| StoreError::Failed("a key names no directory".into()))?;
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            std::process::id()
        ));
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }

    fn put_now(&self, key: &str, body: &[u8], cond: &Condition) -> Result<Etag, StoreError> {
        let path = self.path(key)?;
        let _guard = self.exclusive()?;
        let current = self.read(key, &path)?;
        match (cond, &current) {
            (Condition::Absent, Some(_)) => return Err(StoreError::PreconditionFailed),
            (Condition::Matches(_), None) => return Err(StoreError::PreconditionFailed),
            (Condition::Matches(want), Some(o)) if &o.etag != want => return Err(StoreError::PreconditionFailed),
            _ => {}
        }
        self.write(&path, body)?;
        Ok(etag_of(body))
    }

    fn delete_now(&self, key: &str, if_match: Option<&Etag>) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let _guard = self.exclusive()?;
        match (if_match, self.read(key, &path)?) {
            (_, None) => return Ok(()),
            (Some(want), Some(o)) if &o.etag != want => return Err(StoreError::PreconditionFailed),
            _ => {}
        }
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    fn list_now(&self, prefix: &str, dirs: bool) -> Result<Vec<String>, StoreError> {
        let base = match prefix.trim_end_matches('/') {
            "" => self.root.clone(),
            p => self.path(p)?,
        };
        let mut out = Vec::new();
        let mut stack = vec![(base, String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(e)),
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                match (dirs, is_dir) {
                    (true, true) => out.push(name),
                    (true, false) => {}
                    (false, true) => stack.push((e.path(), format!("{rel}{name}/"))),
                    (false, false) => out.push(format!("{rel}{name}")),
                }
                if out.len() > MAX_KEYS {
                    return Err(listing_too_long(prefix));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The version tag of a body: its SHA-256, in hex.
pub fn etag_of(body: &[u8]) -> Etag {
    Etag(sha2::Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect())
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

impl ObjectStore for FileStore {
    fn url(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Object>> {
        Box::pin(async move { self.read(key, &self.path(key)?) })
    }

    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>, cond: Condition) -> StoreFuture<'a, Etag> {
        Box::pin(async move { self.put_now(key, &body, &cond) })
    }

    fn delete<'a>(&'a self, key: &'a str, if_match: Option<Etag>) -> StoreFuture<'a, ()> {
        Box::pin(async move { self.delete_now(key, if_match.as_ref()) })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move { self.list_now(prefix, false) })
    }

    fn list_dirs<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move { self.list_now(prefix, true) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conditional_writes_hold_between_writers() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(&dir.path().join("store")).unwrap();
        let e1 = s.put("locks/a.json", b"one".to_vec(), Condition::Absent).await.unwrap();
        assert_eq!(
            s.put("locks/a.json", b"two".to_vec(), Condition::Absent).await,
            Err(StoreError::PreconditionFailed)
        );
        let e2 = s.put("locks/a.json", b"two".to_vec(), Condition::Matches(e1.clone())).await.unwrap();
        assert_eq!(
            s.put("locks/a.json", b"three".to_vec(), Condition::Matches(e1.clone())).await,
            Err(StoreError::PreconditionFailed)
        );
        assert_eq!(s.delete("locks/a.json", Some(e1)).await, Err(StoreError::PreconditionFailed));
        assert_eq!(s.get("locks/a.json").await.unwrap().unwrap().body, b"two");
        s.delete("locks/a.json", Some(e2)).await.unwrap();
        assert_eq!(s.get("locks/a.json").await.unwrap(), None);
        s.put("runs/r-1/journal/0000000001.json", b"{}".to_vec(), Condition::Absent).await.unwrap();
        s.put("runs/r-2/report/report.html", b"<p>".to_vec(), Condition::Always).await.unwrap();
        assert_eq!(s.list_dirs("runs/").await.unwrap(), vec!["r-1", "r-2"]);
        assert_eq!(s.list("runs/r-2/").await.unwrap(), vec!["report/report.html"]);
        assert!(s.get("../etc/passwd").await.is_err());
    }

    /// Attack 9 of issue 23: a store object was read whole, whatever its size.
    #[tokio::test]
    async fn objects_past_their_keys_cap_are_refused_unread() {
        use crate::engine::store::{MAX_FILE, MAX_RECORD};
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::open(&dir.path().join("store")).unwrap();
        // Sparse files: the size is what counts, and nothing is read.
        let sized = |key: &str, len: u64| {
            let p = dir.path().join("store").join(key);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            File::create(&p).unwrap().set_len(len).unwrap();
        };
        sized("runs/r-1/journal/0000000001.json", MAX_RECORD + 1);
        let e = s.get("runs/r-1/journal/0000000001.json").await.unwrap_err();
        assert_eq!(e.to_string(), "runs/r-1/journal/0000000001.json: more than 4 MiB, the most rehearse reads");
        sized("locks/staging.json", MAX_RECORD + 1);
        assert!(matches!(s.get("locks/staging.json").await, Err(StoreError::TooLarge { .. })));
        // A run's report and logs may be bigger, up to theirs.
        sized("runs/r-1/logs/service.web.0.log", MAX_RECORD + 1);
        assert_eq!(s.get("runs/r-1/logs/service.web.0.log").await.unwrap().unwrap().body.len() as u64, MAX_RECORD + 1);
        sized("runs/r-1/report/report.json", MAX_FILE + 1);
        let e = s.get("runs/r-1/report/report.json").await.unwrap_err();
        assert_eq!(e.to_string(), "runs/r-1/report/report.json: more than 64 MiB, the most rehearse reads");
    }
}
