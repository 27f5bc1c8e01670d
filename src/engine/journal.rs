//! The run's journal: an append-only JSON-lines file, fsynced after every record.
//!
//! It records the *intent* before each create and the provider's identifier right after
//! it, so a run killed at any instant (even SIGKILL) leaves a file from which
//! `rehearse down RUN_ID` can finish the job. A torn last line (a crash mid-write) is
//! ignored when reading.
//!
//! With a shared store, records may come from any writer the store's policy lets in
//! (another team's CI job, a compromised one), so folding them is a check, not a
//! replay: the first `run` record is the run's and a later one is refused; a resource
//! of a kind the run's provider never makes is refused; an extension beyond the run's
//! bounds is refused. Each refusal names the record (and its key in a store), so a
//! person can look at it; nothing is dropped silently. Which records this machine
//! wrote itself is known by [`HERE`], which only this machine writes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::description::{DestroyPolicy, ProviderKind};
use crate::engine::provider::Handle;
use crate::engine::store::records::RemoteJournal;
use crate::plan::Kind;
use crate::report::model::Verdict;

mod state;
pub use state::{kind_belongs, Entry, Refusal, RefusedRecord, State};

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
    Created { id: String, kind: Kind, handle: Handle, at: DateTime<Utc> },
    /// `id` is gone (or was never there).
    Deleted { id: String, at: DateTime<Utc> },
    /// The run ended with this verdict; `kept` when the environment stays up.
    Finished { verdict: Verdict, exit_code: i32, kept: bool, at: DateTime<Utc> },
    /// Teardown ran; `complete` when nothing is left.
    TornDown { complete: bool, at: DateTime<Utc> },
    /// `rehearse extend` moved the expiry (within the run's `max_ttl`).
    Extended { expires_at: DateTime<Utc>, at: DateTime<Utc> },
    /// Stands in, in a journal fetched from a shared store, for an object there that
    /// is not a journal record (written by no rehearse): kept in its place, so that
    /// every record keeps its number, and always refused when folded.
    Unreadable { why: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunMeta {
    pub run_id: String,
    pub environment: String,
    /// A run record naming a provider rehearse does not have does not read: in a
    /// journal from a shared store it stands as an unreadable record, refused.
    pub provider: ProviderKind,
    pub description: String,
    pub release: String,
    pub owner: String,
    pub started_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub destroy: DestroyPolicy,
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
        let provider = match provider {
            "aws" => ProviderKind::Aws,
            "local" => ProviderKind::Local,
            other => panic!("no provider {other}"),
        };
        RunMeta {
            run_id: run_id.into(),
            environment: "shop".into(),
            provider,
            description: String::new(),
            release: "v2".into(),
            owner: "t".into(),
            started_at: Utc::now(),
            expires_at: Utc::now(),
            destroy: DestroyPolicy::Always,
            work_dir: work_dir.map(str::to_string),
            region: (provider == ProviderKind::Aws).then(|| "eu-west-1".into()),
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
type Upload = (Vec<u8>, tokio::sync::oneshot::Sender<Result<(), crate::engine::store::StoreError>>);

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

/// Beside a journal this machine created (`runs/RUN_ID/journaled-here.json`): the run
/// id and this machine's id. Only [`Journal::create`] writes it; nothing fetched from a
/// shared store ever does (the store's files land in `journal.jsonl`, `lease.json`,
/// `connection.json`, `report/` and `logs/`). A run's `host` field is a claim anyone
/// with write access to the store can make; this file, in the private state
/// directory, is this machine's own word that it journaled the run.
pub const HERE: &str = "journaled-here.json";

#[derive(Serialize, Deserialize)]
struct Here {
    run_id: String,
    machine: String,
}

/// Writes [`HERE`] into `dir` for `run_id` (0600, never through a link), fsynced: what
/// [`Journal::create`] does (and a test that writes a journal by hand, as this machine
/// would have).
pub fn mark_here(dir: &Path, run_id: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let here = Here { run_id: run_id.to_string(), machine: crate::sys::process::machine_id() };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dir.join(HERE))?;
    f.write_all(&serde_json::to_vec(&here).map_err(std::io::Error::other)?)?;
    f.sync_all()
}

/// Why this machine did not journal a run (see [`journaled_here`]).
#[derive(Debug, thiserror::Error)]
pub enum NotHere {
    #[error("this machine did not journal it: its journal came from the state store ({} is missing)", path.display())]
    Missing { path: PathBuf },
    #[error("{} cannot be read: {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("{} is damaged: {source}", path.display())]
    Damaged { path: PathBuf, source: serde_json::Error },
    #[error("{} is of run {found}, not {run_id}", path.display())]
    OtherRun { path: PathBuf, found: String, run_id: String },
    #[error("{} was written on another machine ({machine})", path.display())]
    OtherMachine { path: PathBuf, machine: String },
}

/// Whether this machine journaled run `run_id` whose journal is in `dir`: `Err` says
/// why not (no mark of this machine's there: the journal came from a shared store).
pub fn journaled_here(dir: &Path, run_id: &str) -> Result<(), NotHere> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(HERE);
    let read = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path)
        .and_then(|f| if f.metadata()?.is_file() { Ok(f) } else { Err(std::io::Error::other("not a file")) })
        .and_then(|f| {
            let mut bytes = Vec::new();
            f.take(4096).read_to_end(&mut bytes).map(|_| bytes)
        });
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(NotHere::Missing { path }),
        Err(source) => return Err(NotHere::Unreadable { path, source }),
    };
    let here: Here = match serde_json::from_slice(&bytes) {
        Ok(h) => h,
        Err(source) => return Err(NotHere::Damaged { path, source }),
    };
    if here.run_id != run_id {
        return Err(NotHere::OtherRun { path, found: here.run_id, run_id: run_id.to_string() });
    }
    if here.machine != crate::sys::process::machine_id() {
        return Err(NotHere::OtherMachine { path, machine: here.machine });
    }
    Ok(())
}

impl Journal {
    /// Creates a new journal; fails if one exists (run ids are unique). Marks it as
    /// this machine's ([`HERE`]) before its first record.
    pub fn create(path: &Path, meta: &RunMeta) -> std::io::Result<Journal> {
        let mut file = OpenOptions::new().create_new(true).append(true).open(path)?;
        if let Some(dir) = path.parent() {
            mark_here(dir, &meta.run_id)?;
        }
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
                let r = remote.append(&line).await;
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
                Ok(Err(e)) => return Err(store_error(&url, e)),
                Err(_) => return Err(std::io::Error::other(format!("the journal's writer to {url} stopped"))),
            }
        }
        Ok(())
    }

    pub async fn intent(&self, id: &str, kind: Kind, key: Option<&str>) -> std::io::Result<()> {
        self.append(&Record::Intent { id: id.into(), kind, key: key.map(str::to_string), at: Utc::now() }).await
    }

    /// `id` exists, found and removed by `handle` (its provider's type, or a [`Handle`]).
    pub async fn created(&self, id: &str, kind: Kind, handle: impl serde::Serialize) -> std::io::Result<()> {
        let handle = Handle::of(&handle).map_err(std::io::Error::other)?;
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

    fn created(id: &str, kind: Kind, h: serde_json::Value) -> Record {
        Record::Created { id: id.into(), kind, handle: h.into(), at: Utc::now() }
    }

    /// issue 23 #6: records appended to a shared store by anyone with its policy.
    #[test]
    fn a_later_run_record_foreign_kinds_and_unbounded_extensions_are_refused_and_named() {
        let mut first = RunMeta::sample("r-20261126-000000-abcdef", "aws", None);
        first.max_ttl_secs = Some(7 * 86_400);
        let mut second = first.clone();
        second.provider = ProviderKind::Local;
        let latest = first.latest_expiry();
        let records = vec![
            Record::Run(first.clone()),
            created("database.db", Kind::AwsDbInstance, serde_json::json!({"db_instance_id": "rh-1"})),
            // A second run record claiming the local provider (whose teardown would
            // skip every AWS resource).
            Record::Run(second),
            // A local process in an AWS run.
            created("service.x.0", Kind::LocalProcess, serde_json::json!({"process": {"pid": 1, "pgid": 1}})),
            // Extensions: one past max_ttl, one that shortens, one within bounds.
            Record::Extended { expires_at: latest + chrono::Duration::days(300), at: Utc::now() },
            Record::Extended { expires_at: first.expires_at - chrono::Duration::hours(1), at: Utc::now() },
            Record::Extended { expires_at: latest, at: Utc::now() },
            Record::Finished { verdict: Verdict::Passed, exit_code: 0, kept: true, at: Utc::now() },
            Record::Finished { verdict: Verdict::Failed, exit_code: 1, kept: false, at: Utc::now() },
        ];
        let s = State::from_records(&records);
        let m = s.meta.as_ref().unwrap();
        assert_eq!(m.provider, ProviderKind::Aws, "the first run record is the run's");
        assert_eq!(s.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["database.db"]);
        assert_eq!(s.expires_at(), Some(latest));
        assert_eq!(s.finished, Some((Verdict::Passed, 0, true)));
        let refused: Vec<usize> = s.refused.iter().map(|r| r.seq).collect();
        assert_eq!(refused, [3, 4, 5, 6, 9]);
        let said = s.refused[0].describe(&m.run_id);
        assert!(
            said.contains("record 3 of the journal of r-20261126-000000-abcdef")
                && said.contains("runs/r-20261126-000000-abcdef/journal/0000000003.json")
                && said.contains("second run record"),
            "{said}"
        );
        assert!(
            s.refused[1].why.to_string().contains("local.process")
                && s.refused[1].why.to_string().contains("aws provider"),
            "{:?}",
            s.refused[1]
        );
        // And the other way round: an AWS kind in a local run.
        let local = State::from_records(&[
            Record::Run(RunMeta::sample("r-2", "local", None)),
            created("database.db", Kind::AwsDbInstance, serde_json::json!({"db_instance_id": "prod-db"})),
            created("workspace", Kind::Workspace, serde_json::json!({"dir": "/w/runs/r-2"})),
        ]);
        assert_eq!(local.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["workspace"]);
        assert_eq!(local.refused.len(), 1);
    }

    #[test]
    fn a_resource_made_again_after_it_was_gone_has_no_handle_until_created() {
        // A game day's killed instance, started again: between the intent and the
        // created, the old (dead) handle must not stand for it.
        let at = Utc::now();
        let intent = || Record::Intent { id: "service.web.0".into(), kind: Kind::LocalProcess, key: None, at };
        let records = [
            Record::Run(RunMeta::sample("r-5", "local", None)),
            intent(),
            created("service.web.0", Kind::LocalProcess, serde_json::json!({"process": {"pid": 7}})),
            Record::Deleted { id: "service.web.0".into(), at },
            intent(),
        ];
        let s = State::from_records(&records);
        let e = &s.remaining()[0];
        assert!(e.handle.is_none() && !e.deleted, "{e:?}");
        // An intent again without a deletion (a retried create) keeps what it knew.
        let s = State::from_records(&records[..3].iter().cloned().chain([intent()]).collect::<Vec<_>>());
        assert!(s.remaining()[0].handle.is_some());
    }

    #[test]
    fn a_run_record_with_a_bad_id_provider_or_name_is_not_believed() {
        let mut named = RunMeta::sample("r-3", "local", None);
        named.name = Some("shopdb;$(id)".into());
        let s = State::from_records(&[Record::Run(named)]);
        assert_eq!(s.meta.as_ref().unwrap().name, None, "the run stands, its name does not");
        assert!(s.refused[0].why.to_string().contains("is not a name"), "{:?}", s.refused);
        for (id, provider) in [("../../etc", "local"), ("r-4", "gcp")] {
            // A provider rehearse does not have does not read as a run record: in a
            // journal from a store, it stands as an unreadable record (see `sync`).
            let mut run = serde_json::to_value(Record::Run(RunMeta::sample(id, "local", None))).unwrap();
            run["provider"] = provider.into();
            let run = serde_json::from_value::<Record>(run)
                .unwrap_or_else(|e| Record::Unreadable { why: e.to_string().escape_debug().to_string() });
            let s = State::from_records(&[run, created("workspace", Kind::Workspace, serde_json::json!({"dir": "/"}))]);
            assert!(s.meta.is_none() && s.entries.is_empty(), "{id} {provider}");
            assert_eq!(s.refused.len(), 2, "{:?}", s.refused);
        }
    }
}
