//! The journal in the state store: one object per record, never overwritten.
//!
//! S3 cannot append, and an object rewritten with every record would let a lost answer
//! or a second writer replace records. So record `n` of a run is the object
//! `runs/RUN_ID/journal/{n:010}.json`, written with `If-None-Match: *`: it is created
//! once and never replaced. A retried write that meets "precondition failed" reads the
//! object back and counts it as written only if it is its own (byte for byte); if it is
//! another writer's (a `down` from another machine appending to the same journal), the
//! record goes to the next number. Numbers are dense — a writer takes `n + 1` only once
//! `n` exists — so the journal is read by fetching `1, 2, …` until the first missing
//! one, without trusting a listing that may lag behind.

use std::sync::Arc;

use futures_util::future::join_all;

use super::{
    count_text, put_checked, record_key, retrying, size_text, Condition, ObjectStore, StoreError, MAX_JOURNAL,
    MAX_RECORDS,
};

/// A run's journal in the store, as one writer appends to it.
pub struct RemoteJournal {
    store: Arc<dyn ObjectStore>,
    run_id: String,
    /// The number the next record gets.
    next: u64,
}

impl RemoteJournal {
    /// A writer for a new journal: its first record is the run's, and finding one there
    /// already is an error (run ids are unique).
    pub fn new(store: Arc<dyn ObjectStore>, run_id: &str) -> RemoteJournal {
        RemoteJournal { store, run_id: run_id.to_string(), next: 1 }
    }

    /// A writer appending after the `existing` records read from the store.
    pub fn after(store: Arc<dyn ObjectStore>, run_id: &str, existing: usize) -> RemoteJournal {
        RemoteJournal { store, run_id: run_id.to_string(), next: existing as u64 + 1 }
    }

    pub fn url(&self) -> String {
        self.store.url()
    }

    /// How many records the store holds, as far as this writer knows.
    pub fn written(&self) -> u64 {
        self.next - 1
    }

    /// Makes `line` (one JSON record) durable in the store before returning.
    pub async fn append(&mut self, line: &[u8]) -> Result<(), StoreError> {
        loop {
            let key = record_key(&self.run_id, self.next);
            match put_checked(self.store.as_ref(), &key, line, Condition::Absent).await {
                Ok(_) => {
                    self.next += 1;
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed) if self.next == 1 => {
                    return Err(StoreError::Failed(format!(
                        "run {} already has a journal in {}",
                        self.run_id,
                        self.store.url()
                    )))
                }
                // Another writer's record has this number: ours goes after it.
                Err(StoreError::PreconditionFailed) => self.next += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

/// How many records are fetched at once.
const BATCH: u64 = 16;

/// Every record of a run's journal in the store, in order (empty: none there). Anyone
/// who may write the store may add records, so the reading stops at [`MAX_RECORDS`]
/// records and [`MAX_JOURNAL`] bytes, refused with the cap named, and each record is at
/// most [`MAX_RECORD`](super::MAX_RECORD) ([`ObjectStore::get`]).
pub async fn read(store: &dyn ObjectStore, run_id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    read_at_most(store, run_id, MAX_RECORDS, MAX_JOURNAL).await
}

/// [`read`], with other caps (tests).
pub async fn read_at_most(
    store: &dyn ObjectStore,
    run_id: &str,
    max_records: u64,
    max_bytes: u64,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let refused = |limit: String| StoreError::TooLarge { what: format!("runs/{run_id}/journal"), limit };
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let mut from = 1;
    loop {
        // Never past the first record beyond the cap: finding it is enough to refuse.
        let to = (from + BATCH).min(max_records + 2);
        let keys: Vec<String> = (from..to).map(|n| record_key(run_id, n)).collect();
        let got = join_all(keys.iter().map(|k| retrying(|| store.get(k)))).await;
        for g in got {
            let Some(o) = g? else { return Ok(out) };
            if out.len() as u64 == max_records {
                return Err(refused(format!("{} records", count_text(max_records))));
            }
            bytes += o.body.len() as u64;
            if bytes > max_bytes {
                return Err(refused(format!("{} of records", size_text(max_bytes))));
            }
            out.push(o.body);
        }
        from = to;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::file::FileStore;

    #[tokio::test]
    async fn two_writers_never_overwrite_and_the_reader_sees_every_record_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FileStore::open(&dir.path().join("s")).unwrap());
        let mut run = RemoteJournal::new(store.clone(), "r-1");
        run.append(b"{\"n\":1}").await.unwrap();
        run.append(b"{\"n\":2}").await.unwrap();
        // A `down` elsewhere read two records and appends; the run appends too, unaware.
        let mut down = RemoteJournal::after(store.clone(), "r-1", 2);
        down.append(b"{\"down\":1}").await.unwrap();
        run.append(b"{\"n\":3}").await.unwrap();
        let all = read(store.as_ref(), "r-1").await.unwrap();
        let text: Vec<String> = all.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        assert_eq!(text, vec!["{\"n\":1}", "{\"n\":2}", "{\"down\":1}", "{\"n\":3}"]);
        // A second run with the same id is refused, not appended.
        let err = RemoteJournal::new(store.clone(), "r-1").append(b"{}").await.unwrap_err();
        assert!(err.to_string().contains("already has a journal"), "{err}");
        // Seventeen and more records cross a batch.
        let mut many = RemoteJournal::new(store.clone(), "r-2");
        for i in 0..40 {
            many.append(format!("{{\"i\":{i}}}").as_bytes()).await.unwrap();
        }
        assert_eq!(read(store.as_ref(), "r-2").await.unwrap().len(), 40);
        assert!(read(store.as_ref(), "r-3").await.unwrap().is_empty());
    }

    /// Attack 9 of issue 23: the journal was read 1, 2, … until the first missing record,
    /// however many a stranger had written.
    #[tokio::test]
    async fn a_journal_past_its_caps_is_refused_with_the_cap_named() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FileStore::open(&dir.path().join("s")).unwrap());
        let mut j = RemoteJournal::new(store.clone(), "r-1");
        for i in 0..41 {
            j.append(format!("{{\"i\":{i:04}}}").as_bytes()).await.unwrap();
        }
        assert_eq!(read_at_most(store.as_ref(), "r-1", 41, 1 << 20).await.unwrap().len(), 41);
        let e = read_at_most(store.as_ref(), "r-1", 40, 1 << 20).await.unwrap_err();
        assert_eq!(e.to_string(), "runs/r-1/journal: more than 40 records, the most rehearse reads");
        let e = read_at_most(store.as_ref(), "r-1", 100, 400).await.unwrap_err();
        assert_eq!(e.to_string(), "runs/r-1/journal: more than 400 bytes of records, the most rehearse reads");
    }
}
