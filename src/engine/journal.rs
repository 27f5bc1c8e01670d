//! The run's journal: an append-only JSON-lines file, fsynced after every record.
//!
//! It records the *intent* before each create and the provider's identifier right after
//! it, so a run killed at any instant (even SIGKILL) leaves a file from which
//! `rehearse down RUN_ID` can finish the job. A torn last line (a crash mid-write) is
//! ignored when reading.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::store::records::RemoteJournal;
use crate::plan::Kind;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[allow(clippy::large_enum_variant)] // one `run` record per journal; records are written one at a time
pub enum Record {
    /// First record: what this run is. Written before anything is created.
    Run(RunMeta),
    /// About to create `id` (a crash after this may have created it). `key` is the
    /// create's idempotency key, when the provider has one: the client token
    /// (`RunInstances`) or the name (RDS identifiers, group names) that makes a repeat
    /// of the create return, or refuse, the same resource.
    Intent {
        id: String,
        kind: Kind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        at: DateTime<Utc>,
    },
    /// `id` exists; `handle` is what the provider needs to find and remove it.
    Created { id: String, kind: Kind, handle: Value, at: DateTime<Utc> },
    /// `id` is gone (or was never there).
    Deleted { id: String, at: DateTime<Utc> },
    /// The run ended with this verdict; `kept` when the environment stays up.
    Finished { verdict: String, exit_code: i32, kept: bool, at: DateTime<Utc> },
    /// Teardown ran; `complete` when nothing is left.
    TornDown { complete: bool, at: DateTime<Utc> },
    /// `rehearse extend` moved the expiry (within the run's `max_ttl`).
    Extended { expires_at: DateTime<Utc>, at: DateTime<Utc> },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunMeta {
    pub run_id: String,
    pub environment: String,
    pub provider: String,
    pub description: String,
    pub release: String,
    pub owner: String,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub destroy: String,
    /// The run's working directory (local provider), removed at teardown.
    pub work_dir: Option<String>,
    /// Region (aws).
    pub region: Option<String>,
    /// PID of the rehearse process running it.
    pub pid: u32,
    /// That process's start time (clock ticks since boot), to tell it from a later
    /// process with the same PID; 0 in journals written before it was recorded.
    #[serde(default)]
    pub pid_start: u64,
    /// The name the run goes by besides its id (`rehearse up --name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The local user who started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How far its expiry may be pushed, from `started_at` (the description's
    /// `max_ttl`); journals from before it was recorded get the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_secs: Option<u64>,
    /// The machine it runs on: its PID means something only there (elsewhere, the
    /// run's lease in the shared store says whether it still lives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The stage and generation the run builds (`rehearse rebuild`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<super::stage::StageRef>,
}

impl RunMeta {
    /// The latest expiry `rehearse extend` may set: `max_ttl` from the start, never more
    /// than the longest `max_ttl` a description may set (a journal from a shared store
    /// is anyone's, and a huge one would overflow the calendar).
    pub fn latest_expiry(&self) -> DateTime<Utc> {
        let max = self.max_ttl_secs.unwrap_or(crate::description::default_max_ttl().as_secs());
        let max = max.min(crate::description::MAX_MAX_TTL.as_secs());
        let max = chrono::Duration::seconds(i64::try_from(max).unwrap_or_default());
        self.started_at.checked_add_signed(max).unwrap_or(self.started_at)
    }
}

#[cfg(test)]
impl RunMeta {
    /// A run's facts for unit tests.
    pub(crate) fn sample(run_id: &str, provider: &str, work_dir: Option<&str>) -> RunMeta {
        RunMeta {
            run_id: run_id.into(),
            environment: "shop".into(),
            provider: provider.into(),
            description: String::new(),
            release: "v2".into(),
            owner: "t".into(),
            started_at: Utc::now(),
            expires_at: Utc::now(),
            destroy: "always".into(),
            work_dir: work_dir.map(str::to_string),
            region: (provider == "aws").then(|| "eu-west-1".into()),
            pid: 1,
            pid_start: 0,
            name: None,
            user: None,
            max_ttl_secs: None,
            host: None,
            stage: None,
        }
    }
}

pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    /// The same records in the state store, when it is shared (`s3://`).
    remote: Mutex<Option<RemoteWriter>>,
}

/// A record for the store, and where to say how its upload went.
type Upload = (Vec<u8>, tokio::sync::oneshot::Sender<Result<(), String>>);

/// The task that makes records durable in the store, one at a time and in the order
/// they were written here. A task of its own, so that a record's upload goes on
/// whether or not the future that appended it is being polled: no lock is ever held
/// across an await, and an append left waiting cannot block the others.
struct RemoteWriter {
    tx: tokio::sync::mpsc::UnboundedSender<Upload>,
    url: String,
}

fn line_of(rec: &Record) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

fn write_line(f: &mut File, line: &[u8]) -> std::io::Result<()> {
    f.write_all(line)?;
    f.sync_data()
}

fn poisoned<T>(_: T) -> std::io::Error {
    std::io::Error::other("journal lock poisoned")
}

impl Journal {
    /// Creates a new journal; fails if one exists (run ids are unique).
    pub fn create(path: &Path, meta: &RunMeta) -> std::io::Result<Journal> {
        let mut file = OpenOptions::new().create_new(true).append(true).open(path)?;
        write_line(&mut file, &line_of(&Record::Run(meta.clone()))?)?;
        // The directory entry itself must survive a crash too.
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(Journal { path: path.to_path_buf(), file: Mutex::new(file), remote: Mutex::new(None) })
    }

    /// Opens an existing journal for appending (for `down`).
    pub fn open(path: &Path) -> std::io::Result<Journal> {
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Journal { path: path.to_path_buf(), file: Mutex::new(file), remote: Mutex::new(None) })
    }

    /// From now on every record is also made durable in the state store before
    /// `append` returns; the records the store does not have yet (those before it was
    /// attached) are sent first. Inside a tokio runtime.
    pub async fn mirror_to(self, mut remote: RemoteJournal) -> std::io::Result<Journal> {
        let have = usize::try_from(remote.written()).unwrap_or(usize::MAX);
        for rec in read(&self.path)?.iter().skip(have) {
            remote.append(&line_of(rec)?).await.map_err(|e| store_error(&remote.url(), e))?;
        }
        let url = remote.url();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Upload>();
        tokio::spawn(async move {
            while let Some((line, done)) = rx.recv().await {
                let r = remote.append(&line).await.map_err(|e| e.to_string());
                // The appender may have been dropped (its step was cancelled): the
                // record is in the store all the same.
                #[allow(clippy::let_underscore_must_use)]
                let _ = done.send(r);
            }
        });
        *self.remote.lock().map_err(poisoned)? = Some(RemoteWriter { tx, url });
        Ok(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record, fsynced here and durable in the shared store (if any),
    /// before returning.
    pub async fn append(&self, rec: &Record) -> std::io::Result<()> {
        let line = line_of(rec)?;
        let uploaded = {
            let mut f = self.file.lock().map_err(poisoned)?;
            write_line(&mut f, &line)?;
            // Queued while the file is still held: the store gets records in file order.
            let remote = self.remote.lock().map_err(poisoned)?;
            match remote.as_ref() {
                None => None,
                Some(w) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    w.tx.send((line, tx)).map_err(|_| std::io::Error::other("the journal's store writer stopped"))?;
                    Some((rx, w.url.clone()))
                }
            }
        };
        if let Some((rx, url)) = uploaded {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(std::io::Error::other(format!("the journal in the state store {url}: {e}"))),
                Err(_) => return Err(std::io::Error::other(format!("the journal's writer to {url} stopped"))),
            }
        }
        Ok(())
    }

    pub async fn intent(&self, id: &str, kind: Kind, key: Option<&str>) -> std::io::Result<()> {
        self.append(&Record::Intent { id: id.into(), kind, key: key.map(str::to_string), at: Utc::now() }).await
    }

    pub async fn created(&self, id: &str, kind: Kind, handle: Value) -> std::io::Result<()> {
        self.append(&Record::Created { id: id.into(), kind, handle, at: Utc::now() }).await
    }

    pub async fn deleted(&self, id: &str) -> std::io::Result<()> {
        self.append(&Record::Deleted { id: id.into(), at: Utc::now() }).await
    }
}

fn store_error(url: &str, e: crate::engine::store::StoreError) -> std::io::Error {
    std::io::Error::other(format!("the journal in the state store {url}: {e}"))
}

/// Reads every record. A torn final line (a crash mid-write) is skipped; an
/// unreadable line anywhere else is an error: the journal is damaged, and what it no
/// longer says may still exist.
pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
    use crate::engine::store::{count_text, size_text, MAX_JOURNAL, MAX_RECORDS};
    let f = File::open(path)?;
    // The same caps as a journal in a shared store (the local copy may be one fetched).
    let refused = |limit: String| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: more than {limit}, the most rehearse reads", path.display()),
        )
    };
    if f.metadata()?.len() > MAX_JOURNAL {
        return Err(refused(size_text(MAX_JOURNAL)));
    }
    let mut out = Vec::new();
    let mut torn: Option<(usize, serde_json::Error)> = None;
    for (n, line) in BufReader::new(std::io::Read::take(f, MAX_JOURNAL)).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if out.len() as u64 == MAX_RECORDS {
            return Err(refused(format!("{} records", count_text(MAX_RECORDS))));
        }
        if let Some((at, e)) = torn.take() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {} is not a journal record ({e}); the journal is damaged", at + 1),
            ));
        }
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            Err(e) => torn = Some((n, e)),
        }
    }
    if let Some((at, e)) = torn {
        tracing::warn!("skipping the torn last line {} of {}: {e}", at + 1, path.display());
    }
    Ok(out)
}

/// A resource as the journal knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: String,
    pub kind: Kind,
    /// None: intent recorded, creation not confirmed (it may or may not exist).
    pub handle: Option<Value>,
    /// The create's idempotency key, from the intent.
    pub key: Option<String>,
    pub deleted: bool,
    /// When its (latest) intent was journaled.
    pub intent_at: Option<DateTime<Utc>>,
}

/// The journal folded into the state of a run.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub meta: Option<RunMeta>,
    /// In order of first intent (creation order).
    pub entries: Vec<Entry>,
    pub finished: Option<(String, i32, bool)>,
    pub torn_down: Option<bool>,
    /// The expiry set by the latest `rehearse extend`, if any.
    pub extended_to: Option<DateTime<Utc>>,
}

impl State {
    pub fn from_records(records: &[Record]) -> State {
        let mut s = State::default();
        for r in records {
            match r {
                Record::Run(m) => s.meta = Some(m.clone()),
                Record::Intent { id, kind, key, at } => {
                    if let Some(e) = s.entries.iter_mut().find(|e| &e.id == id) {
                        e.deleted = false;
                        e.key = key.clone().or(e.key.take());
                        e.intent_at = Some(*at);
                    } else {
                        s.entries.push(Entry {
                            id: id.clone(),
                            kind: *kind,
                            handle: None,
                            key: key.clone(),
                            deleted: false,
                            intent_at: Some(*at),
                        });
                    }
                }
                Record::Created { id, kind, handle, .. } => match s.entries.iter_mut().find(|e| &e.id == id) {
                    Some(e) => {
                        e.handle = Some(handle.clone());
                        e.deleted = false;
                    }
                    None => s.entries.push(Entry {
                        id: id.clone(),
                        kind: *kind,
                        handle: Some(handle.clone()),
                        key: None,
                        intent_at: None,
                        deleted: false,
                    }),
                },
                Record::Deleted { id, .. } => {
                    if let Some(e) = s.entries.iter_mut().find(|e| &e.id == id) {
                        e.deleted = true;
                    }
                }
                Record::Finished { verdict, exit_code, kept, .. } => {
                    s.finished = Some((verdict.clone(), *exit_code, *kept))
                }
                Record::TornDown { complete, .. } => s.torn_down = Some(*complete),
                Record::Extended { expires_at, .. } => s.extended_to = Some(*expires_at),
            }
        }
        s
    }

    /// When the run expires: its extension, else what it started with.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.extended_to.or(self.meta.as_ref().map(|m| m.expires_at))
    }

    /// Resources that may still exist, newest first (teardown order).
    pub fn remaining(&self) -> Vec<&Entry> {
        self.entries.iter().rev().filter(|e| !e.deleted).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RunMeta {
        RunMeta::sample("r-1", "local", None)
    }

    #[tokio::test]
    async fn folds_intents_creations_and_deletions_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::create(&path, &meta()).unwrap();
        j.intent("a", Kind::LocalPostgres, None).await.unwrap();
        j.created("a", Kind::LocalPostgres, serde_json::json!({"pid": 1})).await.unwrap();
        j.intent("b", Kind::LocalProcess, Some("b-key")).await.unwrap();
        j.intent("c", Kind::LocalProcess, None).await.unwrap();
        j.created("c", Kind::LocalProcess, serde_json::json!({"pid": 2})).await.unwrap();
        j.deleted("c").await.unwrap();
        drop(j);
        // A crash in the middle of a write leaves half a line.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"type\":\"deleted\",\"id\":\"a")
            .unwrap();
        let state = State::from_records(&read(&path).unwrap());
        assert_eq!(state.meta.as_ref().unwrap().run_id, "r-1");
        let remaining: Vec<(&str, bool)> =
            state.remaining().iter().map(|e| (e.id.as_str(), e.handle.is_some())).collect();
        assert_eq!(remaining, vec![("b", false), ("a", true)]);
        // An intent keeps the create's idempotency key, for `down` to look it up by.
        assert_eq!(state.remaining()[0].key.as_deref(), Some("b-key"));
    }

    #[tokio::test]
    async fn a_damaged_line_before_the_end_is_an_error_not_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let j = Journal::create(&path, &meta()).unwrap();
        j.intent("a", Kind::LocalPostgres, None).await.unwrap();
        drop(j);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}garbage\n{text}")).unwrap();
        assert_eq!(read(&path).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}
