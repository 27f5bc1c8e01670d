//! Copies between this machine's state directory and a shared store: a run uploads its
//! report, logs and connection details; `list`, `report`, `down`, `env` and `logs`
//! on another machine fetch what they read into their own state directory first, and
//! then work exactly as they do on the machine that ran it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{connection_key, records, retrying, run_files, Condition, ObjectStore, StoreError};
use crate::engine::journal::{journaled_here, Record};

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

/// Brings a run's journal from the store into `run_dir/journal.jsonl`. The number of
/// records the store has (0: none).
///
/// A run this machine journaled ([`journaled_here`]) keeps its own journal: it is never
/// replaced by the store's. Of the local provider, it takes nothing from the store:
/// such a run lives on this machine alone, which wrote every record that matters, so
/// what others appended there (a `deleted` that would stop teardown of a cluster still
/// running here, a `created` naming someone else's process) is named in a warning
/// instead. Of another provider, the store's records it does not have — another
/// machine's `down`, `extend` — are appended, except those that would make this
/// machine act on something: `run`, `intent` and `created` records (a run's identity
/// and what it made only the machine that made it knows), which are refused, each named
/// by its key. Another machine's run is copied as the store has it, when the store has
/// at least as many records.
pub async fn pull_journal(store: &dyn ObjectStore, run_id: &str, run_dir: &Path) -> Result<usize, StoreError> {
    let remote = records::read(store, run_id).await?;
    if remote.is_empty() {
        return Ok(0);
    }
    let path = run_dir.join("journal.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let local = text.lines().filter(|l| !l.trim().is_empty()).count();
    if journaled_here(run_dir, run_id).is_ok() {
        if !own_local_run(&text) {
            merge_into_own(store, run_id, &path, &remote)?;
        } else if remote.len() > local {
            tracing::warn!(
                "the state store {} has {} record(s) of run {run_id} beyond the journal this machine wrote \
                 ({} to {}); a local run is this machine's alone: they are not taken",
                store.url(),
                remote.len() - local,
                super::record_key(run_id, local as u64 + 1),
                super::record_key(run_id, remote.len() as u64)
            );
        }
        return Ok(remote.len());
    }
    if remote.len() >= local {
        // One line per object, in the store's order: each record as rehearse writes it,
        // and an object that is not one (a stranger's, or spread over several lines)
        // as a record that says so, which the fold refuses under its own number.
        let mut text = Vec::new();
        for r in &remote {
            let rec = serde_json::from_slice::<Record>(r)
                .unwrap_or_else(|e| Record::Unreadable { why: e.to_string().escape_debug().to_string() });
            let line = serde_json::to_vec(&rec).map_err(|e| StoreError::Failed(e.to_string()))?;
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        write_private(&path, &text)?;
    }
    Ok(remote.len())
}

/// Appends to this machine's own journal of `run_id` the store's records it does not
/// have, refusing those that could make it act on anything (see [`pull_journal`]).
fn merge_into_own(store: &dyn ObjectStore, run_id: &str, path: &Path, remote: &[Vec<u8>]) -> Result<(), StoreError> {
    let local = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        read => read.map_err(io)?,
    };
    let have: HashSet<&[u8]> = local.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    let mut add = Vec::new();
    for (n, r) in remote.iter().enumerate() {
        let line = r.strip_suffix(b"\n").unwrap_or(r);
        if have.contains(line) {
            continue;
        }
        let key = format!("{}/{}", store.url().trim_end_matches('/'), super::record_key(run_id, n as u64 + 1));
        match serde_json::from_slice::<Record>(line) {
            Ok(Record::Run(_) | Record::Intent { .. } | Record::Created { .. }) => tracing::warn!(
                "refusing the record {key}: run {run_id} was journaled on this machine, and what it is and what it \
                 made here only this machine's journal says"
            ),
            Ok(_) => {
                add.extend_from_slice(line);
                add.push(b'\n');
            }
            Err(e) => tracing::warn!("refusing the record {key}: it is not a journal record ({e})"),
        }
    }
    if add.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(io)?;
    f.write_all(&add).map_err(io)?;
    f.sync_data().map_err(io)
}

/// Whether a journal's first record is a run of the local provider.
fn own_local_run(text: &str) -> bool {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    matches!(serde_json::from_str(first), Ok(Record::Run(m)) if m.provider == crate::description::ProviderKind::Local)
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

    use crate::engine::journal::{self, Journal, Record, RunMeta, State};
    use crate::engine::store::records::RemoteJournal;
    use crate::plan::Kind;

    /// This machine's journal of its own local run is never replaced by the store's,
    /// nor added to (`created`, a second `run`, `extended`: a local run is this
    /// machine's alone); another machine's run is copied as the store has it.
    #[tokio::test]
    async fn the_store_cannot_add_to_what_this_machine_made() {
        let dir = tempfile::tempdir().unwrap();
        let store: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(crate::testkit::fake_s3::FakeS3::new(
            1,
            crate::testkit::fake_s3::S3Faults::realistic(),
        ));
        let run_id = "r-20261127-000000-abcdef";
        let mine = dir.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        let meta = RunMeta::sample(run_id, "local", None);
        let j = Journal::create(&mine.join("journal.jsonl"), &meta)
            .unwrap()
            .mirror_to(RemoteJournal::new(store.clone(), run_id))
            .await
            .unwrap();
        j.created(
            "service.web.0",
            Kind::LocalProcess,
            serde_json::json!({"process": {"pid": 7, "pgid": 7, "start_time": 1}}),
        )
        .await
        .unwrap();
        drop(j);
        // Another writer, through the store alone.
        let mut other = RemoteJournal::after(store.clone(), run_id, 2);
        let at = chrono::Utc::now();
        for r in [
            Record::Created {
                id: "service.web.1".into(),
                kind: Kind::LocalProcess,
                handle: serde_json::json!({}).into(),
                at,
            },
            Record::Run(RunMeta::sample(run_id, "local", Some("/"))),
            Record::Extended { expires_at: at, at },
        ] {
            let mut line = serde_json::to_vec(&r).unwrap();
            line.push(b'\n');
            other.append(&line).await.unwrap();
        }
        for _ in 0..2 {
            assert_eq!(pull_journal(store.as_ref(), run_id, &mine).await.unwrap(), 5);
            let state = State::from_records(&journal::read(&mine.join("journal.jsonl")).unwrap());
            let ids: Vec<&str> = state.entries.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, ["service.web.0"], "the store added what this machine made");
            assert_eq!(state.meta.unwrap().work_dir, None, "the store replaced the run");
            assert_eq!(state.extended_to, None, "the store extended a local run of this machine's");
        }
        // Another machine's copy is the store's.
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        assert_eq!(pull_journal(store.as_ref(), run_id, &theirs).await.unwrap(), 5);
        assert_eq!(journal::read(&theirs.join("journal.jsonl")).unwrap().len(), 5);
    }

    /// A run journaled in `state/runs/RUN_ID` and mirrored to `store`, with a cluster;
    /// then a stranger appends `deleted` for it in the store.
    async fn run_with_forged_deletion(store: &std::sync::Arc<FakeS3>, state: &Path, provider: &str) -> PathBuf {
        let dir = state.join("r-1");
        std::fs::create_dir_all(&dir).unwrap();
        let j = Journal::create(&dir.join("journal.jsonl"), &RunMeta::sample("r-1", provider, None)).unwrap();
        let j = j.mirror_to(RemoteJournal::new(store.clone(), "r-1")).await.unwrap();
        let kind = if provider == "local" { Kind::LocalPostgres } else { Kind::AwsDbInstance };
        j.created("database.db", kind, serde_json::json!({"db_instance_id": "rh-1"})).await.unwrap();
        drop(j);
        let forged = serde_json::to_vec(&journal::Record::Deleted { id: "database.db".into(), at: chrono::Utc::now() });
        let mut stranger = RemoteJournal::after(store.clone(), "r-1", 2);
        stranger.append(&forged.unwrap()).await.unwrap();
        dir
    }

    fn remaining(dir: &Path) -> Vec<String> {
        let s = State::from_records(&journal::read(&dir.join("journal.jsonl")).unwrap());
        s.remaining().iter().map(|e| e.id.clone()).collect()
    }

    /// issue 23 #6: a `deleted` from the store must not stop teardown of what this
    /// machine journaled for a local run.
    #[tokio::test(start_paused = true)]
    async fn a_local_run_journaled_here_takes_nothing_a_stranger_appended_in_the_store() {
        let state = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FakeS3::new(7, S3Faults::realistic()));
        let dir = run_with_forged_deletion(&store, &state.path().join("here"), "local").await;
        assert_eq!(pull_journal(store.as_ref(), "r-1", &dir).await.unwrap(), 3);
        assert_eq!(remaining(&dir), ["database.db"], "the forged deletion was taken");
        // Another machine (no journal of its own) sees the store's journal as it is,
        // and an AWS run here takes what others appended (teardown confirms by tag).
        let elsewhere = state.path().join("elsewhere/r-1");
        assert_eq!(pull_journal(store.as_ref(), "r-1", &elsewhere).await.unwrap(), 3);
        assert!(journal::journaled_here(&elsewhere, "r-1").is_err());
        assert!(remaining(&elsewhere).is_empty());
        let store = std::sync::Arc::new(FakeS3::new(8, S3Faults::realistic()));
        let dir = run_with_forged_deletion(&store, &state.path().join("aws"), "aws").await;
        pull_journal(store.as_ref(), "r-1", &dir).await.unwrap();
        assert!(remaining(&dir).is_empty());
    }

    /// A stranger's object among the records (not JSON, or JSON over several lines)
    /// neither makes the fetched journal unreadable (`down` would then find nothing to
    /// remove) nor moves the records after it: it is refused under its own number.
    #[tokio::test(start_paused = true)]
    async fn an_object_that_is_not_a_record_is_refused_in_its_place() {
        let state = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FakeS3::new(9, S3Faults::realistic()));
        let mut w = RemoteJournal::new(store.clone(), "r-1");
        let run = serde_json::to_vec(&journal::Record::Run(RunMeta::sample("r-1", "aws", None))).unwrap();
        w.append(&run).await.unwrap();
        w.append(b"\x00 garbage\n{").await.unwrap();
        let created = journal::Record::Created {
            id: "database.db".into(),
            kind: Kind::AwsDbInstance,
            handle: serde_json::json!({"db_instance_id": "rh-1"}).into(),
            at: chrono::Utc::now(),
        };
        w.append(&serde_json::to_vec_pretty(&created).unwrap()).await.unwrap();
        let dir = state.path().join("r-1");
        assert_eq!(pull_journal(store.as_ref(), "r-1", &dir).await.unwrap(), 3);
        let s = State::from_records(&journal::read(&dir.join("journal.jsonl")).unwrap());
        assert_eq!(remaining(&dir), ["database.db"]);
        assert_eq!(s.refused.len(), 1);
        let said = s.refused[0].describe("r-1");
        assert!(said.contains("runs/r-1/journal/0000000002.json") && said.contains("not a journal record"), "{said}");
    }
}
