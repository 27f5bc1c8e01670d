//! The state store: where runs keep what must outlive them and be seen from other
//! machines (journals, reports, logs, connection details), and the locks that let one
//! holder at a time act on a name.
//!
//! It is chosen by URL (`--state`, `$REHEARSE_STATE`, the description's `state:`):
//! `file://DIR` is the embedded default, the state directory itself; `s3://BUCKET/PREFIX`
//! is shared by a team. Both are an [`ObjectStore`]: keys and bytes, with the two
//! conditional writes S3 has — create only if absent (`If-None-Match: *`) and replace
//! only the version one has read (`If-Match: ETAG`). Everything that must not race is
//! built from those two: journal records that are never overwritten ([`records`]) and
//! leased locks taken over by compare-and-swap, never by a blind delete ([`lock`]).
//!
//! Keys, relative to the store's root:
//! - `runs/RUN_ID/journal/0000000001.json` … one object per journal record;
//! - `runs/RUN_ID/report/…`, `runs/RUN_ID/logs/…`, `runs/RUN_ID/connection.json`;
//! - `locks/NAME.json`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub mod file;
pub mod lock;
pub mod records;
pub mod sync;

/// What a store call returns: boxed, so that stores can be chosen at run time.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// An object's version as the store names it (S3's ETag; a content hash in a directory).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Etag(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub body: Vec<u8>,
    pub etag: Etag,
}

/// When a write may happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always (reports, logs).
    Always,
    /// Only if no object has the key (`If-None-Match: *`).
    Absent,
    /// Only if the object is still this version (`If-Match`).
    Matches(Etag),
}

/// Why a store call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The condition did not hold (S3's 412): someone else's object is there, or it
    /// changed since it was read.
    #[error("the object changed or exists already (precondition failed)")]
    PreconditionFailed,
    /// A concurrent conditional write to the same key (S3's 409): send again.
    #[error("a concurrent write to the same object (conflict)")]
    Conflict,
    /// No answer (a timeout, a reset, a 5xx): the call may or may not have happened.
    #[error("{0}")]
    Unavailable(String),
    /// This identity may not make the call.
    #[error("access denied: {0}")]
    Denied(String),
    /// Anything else (a missing bucket, a malformed key).
    #[error("{0}")]
    Failed(String),
    /// More than rehearse reads: an object bigger than its key's cap ([`object_cap`]), a
    /// journal with more records, a listing with more keys. Refused before it is read
    /// whole: what is in the store is anyone's who may write there.
    #[error("{what}: more than {limit}, the most rehearse reads")]
    TooLarge { what: String, limit: String },
}

impl StoreError {
    /// Worth sending again: the answer was lost or the write collided.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict)
    }
}

/// The most rehearse reads of a run's report or log file in the store (a log bigger
/// than this is sent as its last [`MAX_FILE`] bytes).
pub const MAX_FILE: u64 = 64 << 20;
/// The most rehearse reads of any other object: a journal record, a lock, a stage's
/// record or password, connection details (a stage record of ten thousand generations
/// is far below it).
pub const MAX_RECORD: u64 = 4 << 20;
/// The most records rehearse reads of one run's journal (a run of hundreds of
/// resources writes a few thousand).
pub const MAX_RECORDS: u64 = 100_000;
/// The most bytes of one run's journal, all records together.
pub const MAX_JOURNAL: u64 = 64 << 20;
/// The most keys one listing returns.
pub const MAX_KEYS: usize = 100_000;
/// The most files, and bytes in all, one pull of a run's report or logs brings.
pub const MAX_PULL_FILES: usize = 10_000;
pub const MAX_PULL_BYTES: u64 = 1 << 30;

/// The most rehearse reads of the object `key` (relative to the store's root).
pub fn object_cap(key: &str) -> u64 {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("runs"), Some(_), Some("report" | "logs")) => MAX_FILE,
        _ => MAX_RECORD,
    }
}

/// `n` bytes the way the caps are written: `64 MiB`, `4 MiB`, `1 GiB`.
pub fn size_text(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n.is_multiple_of(1 << 30) => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A count the way the caps are written: `100,000`.
pub fn count_text(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The refusal of object `key`, bigger than its cap.
pub fn too_large(key: &str) -> StoreError {
    StoreError::TooLarge { what: key.to_string(), limit: size_text(object_cap(key)) }
}

/// Keys and bytes with conditional writes: a directory or an S3 bucket (or, in tests,
/// a fake with lost answers and listings that lag).
pub trait ObjectStore: Send + Sync {
    /// The store's URL, for messages (`s3://bucket/prefix`, `file:///home/me/...`).
    fn url(&self) -> String;
    /// The object, or `None` when there is none. One bigger than [`object_cap`] of its
    /// key is refused ([`StoreError::TooLarge`]) without being read whole.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Object>>;
    /// Writes `body` under `key` if `cond` holds; the new version's tag.
    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>, cond: Condition) -> StoreFuture<'a, Etag>;
    /// Removes `key` (only if it is still `if_match`, when given); gone already is fine.
    fn delete<'a>(&'a self, key: &'a str, if_match: Option<Etag>) -> StoreFuture<'a, ()>;
    /// The keys below `prefix` (which ends with `/`), relative to it. Listings may lag
    /// behind writes (eventual consistency): nothing that must be exact reads them. More
    /// than [`MAX_KEYS`] are refused ([`listing_too_long`]).
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;
    /// The names one level below `prefix` (`runs/` → run ids), from a delimited listing
    /// (at most [`MAX_KEYS`] too).
    fn list_dirs<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;
}

/// The refusal of a listing of `prefix` longer than [`MAX_KEYS`].
pub fn listing_too_long(prefix: &str) -> StoreError {
    StoreError::TooLarge {
        what: format!("the listing of {prefix}"),
        limit: format!("{} keys", count_text(MAX_KEYS as u64)),
    }
}

/// How often and how long a transient failure is retried.
pub(crate) const ATTEMPTS: u32 = 6;

pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64 << attempt.min(6))
}

/// A conditional write that survives a lost answer. When a retry meets "precondition
/// failed", the first attempt may have succeeded without its answer arriving: the
/// object is read back, and if it is byte for byte the one this call wrote, the write
/// stands (callers make every body unique: a record's time, a lock's token).
pub async fn put_checked(store: &dyn ObjectStore, key: &str, body: &[u8], cond: Condition) -> Result<Etag, StoreError> {
    let mut sent = false;
    let mut attempt = 0;
    loop {
        match store.put(key, body.to_vec(), cond.clone()).await {
            Ok(etag) => return Ok(etag),
            Err(StoreError::PreconditionFailed) if sent && cond != Condition::Always => {
                return match store.get(key).await? {
                    Some(o) if o.body == body => {
                        tracing::debug!("put {key}: the lost answer was ours");
                        Ok(o.etag)
                    }
                    _ => Err(StoreError::PreconditionFailed),
                };
            }
            Err(e) if e.is_transient() && attempt + 1 < ATTEMPTS => {
                tracing::debug!("put {key}: {e}; sending again");
                // A conflict (409) means ours was not applied; a lost answer may have been.
                sent |= matches!(e, StoreError::Unavailable(_));
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes `key` as it is now: the version read is the version removed (`If-Match`), so
/// a write that lands in between is never removed blindly — it is read, and removed, in
/// turn. Gone already is fine. (Every delete rehearse makes is conditional: the shipped
/// policy refuses any other.)
pub async fn delete_current(store: &dyn ObjectStore, key: &str) -> Result<(), StoreError> {
    for _ in 0..ATTEMPTS {
        let Some(o) = retrying(|| store.get(key)).await? else { return Ok(()) };
        match retrying(|| store.delete(key, Some(o.etag.clone()))).await {
            Err(StoreError::PreconditionFailed) => continue,
            other => return other,
        }
    }
    Err(StoreError::Failed(format!("{key} changed on every attempt to remove it")))
}

/// Writes `body` under `key` whatever is there now, yet never blindly: created with
/// `If-None-Match: *`, or replacing the version read with `If-Match` (read again if
/// it changed meanwhile). For objects that are rehearse's to replace but must not be
/// written unconditionally (connection details: the shipped policy refuses that).
pub async fn put_over(store: &dyn ObjectStore, key: &str, body: &[u8]) -> Result<(), StoreError> {
    for _ in 0..ATTEMPTS {
        let cond = match retrying(|| store.get(key)).await? {
            Some(o) if o.body == body => return Ok(()),
            Some(o) => Condition::Matches(o.etag),
            None => Condition::Absent,
        };
        match put_checked(store, key, body, cond).await {
            Err(StoreError::PreconditionFailed) => continue,
            other => return other.map(|_| ()),
        }
    }
    Err(StoreError::Failed(format!("{key} changed on every attempt to write it")))
}

/// A read or delete, sent again while the answer is lost (both are safe to repeat).
pub async fn retrying<'a, T, F>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> StoreFuture<'a, T>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if e.is_transient() && attempt + 1 < ATTEMPTS => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The key of journal record `seq` (1-based) of a run.
pub fn record_key(run_id: &str, seq: u64) -> String {
    format!("runs/{run_id}/journal/{seq:010}.json")
}

/// The prefix of a run's files of one kind (`report`, `logs`).
pub fn run_files(run_id: &str, what: &str) -> String {
    format!("runs/{run_id}/{what}/")
}

pub fn connection_key(run_id: &str) -> String {
    format!("runs/{run_id}/connection.json")
}

/// The lock that says a run still lives (its lease), for machines that cannot ask its PID.
pub fn run_lease(run_id: &str) -> String {
    format!("run.{run_id}")
}

pub fn lock_key(name: &str) -> String {
    format!("locks/{name}.json")
}

/// Whether `key` is one rehearse writes: relative, `/`-separated, no `.`/`..` or empty
/// segments, no control characters (a directory store turns keys into paths).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 512
        && !key.starts_with('/')
        && key.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && !key.chars().any(|c| c.is_control() || c == '\\')
}
