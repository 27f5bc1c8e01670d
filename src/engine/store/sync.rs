//! Copies between this machine's state directory and a shared store: a run uploads its
//! report, logs and connection details; `list`, `report`, `down`, `env` and `logs`
//! on another machine fetch what they read into their own state directory first, and
//! then work exactly as they do on the machine that ran it.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{connection_key, records, retrying, run_files, Condition, ObjectStore, StoreError};

fn io(e: std::io::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

/// Uploads the files of `dir` (recursively) under `prefix` that are new or changed
/// since `seen` last recorded them; log text is redacted of the run's secrets on the
/// way. The number uploaded.
pub async fn push_dir(
    store: &dyn ObjectStore,
    dir: &Path,
    prefix: &str,
    redact: bool,
    seen: &mut HashMap<PathBuf, (u64, SystemTime)>,
) -> Result<usize, StoreError> {
    let mut n = 0;
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, rel)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.path().symlink_metadata() else { continue };
            if meta.is_dir() {
                stack.push((e.path(), format!("{rel}{name}/")));
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let stamp = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            if seen.get(&e.path()) == Some(&stamp) {
                continue;
            }
            let key = format!("{prefix}{rel}{name}");
            let body = read_for_store(&e.path(), &key, redact)?;
            let body = if redact { crate::secrets::redact_bytes(&body).into_owned() } else { body };
            retrying(|| store.put(&key, body.clone(), Condition::Always)).await?;
            seen.insert(e.path(), stamp);
            n += 1;
        }
    }
    Ok(n)
}

/// A file to send as `key`, at most the store's cap for it (what a reader fetches): a
/// log (`tail`) bigger than that is sent as its end, after a line that says so; any
/// other file that big is refused.
fn read_for_store(path: &Path, key: &str, tail: bool) -> Result<Vec<u8>, StoreError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let cap = super::object_cap(key);
    if len <= cap {
        let mut body = Vec::new();
        f.take(cap).read_to_end(&mut body).map_err(io)?;
        return Ok(body);
    }
    if !tail {
        return Err(super::too_large(key));
    }
    let mut body = format!(
        "[rehearse: the first bytes of this log are left out: the state store keeps its last {}]\n",
        super::size_text(cap)
    )
    .into_bytes();
    let keep = cap - body.len() as u64;
    f.seek(SeekFrom::Start(len - keep)).map_err(io)?;
    f.take(keep).read_to_end(&mut body).map_err(io)?;
    Ok(body)
}

/// Uploads one file (the connection details) as it is: created if absent, else
/// replacing the version there, never blindly ([`super::put_over`]).
pub async fn push_file(store: &dyn ObjectStore, key: &str, path: &Path) -> Result<(), StoreError> {
    let body = read_for_store(path, key, false)?;
    super::put_over(store, key, &body).await
}

/// The run ids the store has journals for (from a listing: a run started a moment ago
/// may be missing from it).
pub async fn run_ids(store: &dyn ObjectStore) -> Result<Vec<String>, StoreError> {
    let mut ids = retrying(|| store.list_dirs("runs/")).await?;
    ids.retain(|id| crate::sys::state::valid_run_id(id));
    Ok(ids)
}

/// Writes `body` to `path` (0600) through a temporary file renamed into place.
fn write_private(path: &Path, body: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().ok_or_else(|| StoreError::Failed(format!("{} has no directory", path.display())))?;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let tmp = dir.join(format!(".fetch-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Brings a run's journal from the store into `run_dir/journal.jsonl`, unless the local
/// copy already has as many records (it is then this machine's own, as complete). The
/// number of records the store has (0: none).
pub async fn pull_journal(store: &dyn ObjectStore, run_id: &str, run_dir: &Path) -> Result<usize, StoreError> {
    let remote = records::read(store, run_id).await?;
    if remote.is_empty() {
        return Ok(0);
    }
    let path = run_dir.join("journal.jsonl");
    let local = std::fs::read_to_string(&path).map(|t| t.lines().filter(|l| !l.trim().is_empty()).count()).unwrap_or(0);
    if remote.len() >= local {
        let mut text = Vec::new();
        for r in &remote {
            text.extend_from_slice(r);
            if !r.ends_with(b"\n") {
                text.push(b'\n');
            }
        }
        write_private(&path, &text)?;
    }
    Ok(remote.len())
}

/// Brings a run's `report/` or `logs/` from the store into `run_dir`; the number of files.
pub async fn pull_files(
    store: &dyn ObjectStore,
    run_id: &str,
    what: &str,
    run_dir: &Path,
) -> Result<usize, StoreError> {
    let prefix = run_files(run_id, what);
    let keys = retrying(|| store.list(&prefix)).await?;
    // Each file is at most its cap (`get`); all of them together at most these.
    if keys.len() > super::MAX_PULL_FILES {
        return Err(StoreError::TooLarge {
            what: prefix.clone(),
            limit: format!("{} files", super::count_text(super::MAX_PULL_FILES as u64)),
        });
    }
    let mut n = 0;
    let mut bytes = 0u64;
    for rel in keys {
        if !super::valid_key(&rel) {
            continue;
        }
        let key = format!("{prefix}{rel}");
        if let Some(o) = retrying(|| store.get(&key)).await? {
            bytes += o.body.len() as u64;
            if bytes > super::MAX_PULL_BYTES {
                return Err(StoreError::TooLarge {
                    what: prefix.clone(),
                    limit: format!("{} in all", super::size_text(super::MAX_PULL_BYTES)),
                });
            }
            write_private(&run_dir.join(what).join(&rel), &o.body)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Brings a kept run's connection details (0600); `false` when the store has none.
pub async fn pull_connection(store: &dyn ObjectStore, run_id: &str, run_dir: &Path) -> Result<bool, StoreError> {
    let key = connection_key(run_id);
    match retrying(|| store.get(&key)).await? {
        Some(o) => {
            write_private(&run_dir.join("connection.json"), &o.body)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Brings the run's liveness lease (`locks/run.RUN_ID.json`) into `run_dir/lease.json`,
/// or removes the local copy when the store has none.
pub async fn pull_lease(store: &dyn ObjectStore, run_id: &str, run_dir: &Path) -> Result<(), StoreError> {
    let key = super::lock_key(&super::run_lease(run_id));
    let path = run_dir.join("lease.json");
    match retrying(|| store.get(&key)).await? {
        Some(o) => write_private(&path, &o.body),
        None => match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e)),
        },
    }
}

/// Removes a torn-down run's connection details from the store (the version read).
pub async fn remove_connection(store: &dyn ObjectStore, run_id: &str) -> Result<(), StoreError> {
    super::delete_current(store, &connection_key(run_id)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fake_s3::{FakeS3, S3Faults};

    /// Connection details are written and removed only with a condition (issue 23,
    /// attack 10: the shipped policy now refuses any other), and still replace a copy
    /// someone else left there.
    #[tokio::test(start_paused = true)]
    async fn connection_details_are_written_and_removed_only_conditionally() {
        let store = FakeS3::new(3, S3Faults::chaos());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("connection.json");
        std::fs::write(&file, b"{\"ours\":1}").unwrap();
        let key = connection_key("r-1");
        store.put(&key, b"{\"forged\":1}".to_vec(), Condition::Absent).await.ok();
        let mut pushed = false;
        for _ in 0..5 {
            pushed |= push_file(&store, &key, &file).await.is_ok();
        }
        assert!(pushed);
        assert_eq!(store.peek(&key).as_deref(), Some(&b"{\"ours\":1}"[..]));
        let mut removed = false;
        for _ in 0..5 {
            removed |= remove_connection(&store, "r-1").await.is_ok();
        }
        assert!(removed && store.peek(&key).is_none());
        assert_eq!(store.unconditional(), Vec::<String>::new());
    }
}
