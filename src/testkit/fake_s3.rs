//! A fault-injecting fake of S3 behind [`ObjectStore`], for what the emulator cannot do:
//! latency on tokio's (pausable) clock, answers lost after the write was applied,
//! conditional writes refused with 409 (a concurrent conditional write), 5xx before
//! anything happened, and listings that lag behind writes and deletes (eventual
//! consistency) — each by seeded random choice, so a failing scenario is reproducible
//! from its seed. Conditional writes are atomic, as S3's are. It counts every call.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::store::file::etag_of;
use crate::engine::store::{Condition, Etag, Object, ObjectStore, StoreError, StoreFuture};

/// Probabilities (0..1) per call, and timings.
#[derive(Clone, Debug)]
pub struct S3Faults {
    /// The write was applied but its answer was lost (a timeout).
    pub lost_answer: f64,
    /// A 5xx before anything was done.
    pub unavailable: f64,
    /// A conditional write refused with 409 (nothing done).
    pub conflict: f64,
    /// How long a call takes (uniform in the range).
    pub latency: (Duration, Duration),
    /// How long a new or deleted key may be missing from (or linger in) listings.
    pub list_lag: Duration,
}

impl S3Faults {
    /// No faults; S3 Standard's usual latencies from within a region (tens of ms).
    pub fn realistic() -> S3Faults {
        S3Faults {
            lost_answer: 0.0,
            unavailable: 0.0,
            conflict: 0.0,
            latency: (Duration::from_millis(15), Duration::from_millis(60)),
            list_lag: Duration::ZERO,
        }
    }

    /// Everything that can go wrong, often.
    pub fn chaos() -> S3Faults {
        S3Faults {
            lost_answer: 0.05,
            unavailable: 0.03,
            conflict: 0.03,
            latency: (Duration::from_millis(5), Duration::from_millis(400)),
            list_lag: Duration::from_secs(5),
        }
    }
}

struct Stored {
    body: Vec<u8>,
    etag: Etag,
    /// When it was written (listings may not show it before `list_lag` has passed).
    at: Instant,
}

struct State {
    rng: u64,
    objects: BTreeMap<String, Stored>,
    /// Deleted keys and when: listings may still show them for a while.
    deleted: BTreeMap<String, Instant>,
    calls: BTreeMap<&'static str, u64>,
    /// Every write sent without a condition: `PutObject KEY`, `DeleteObject KEY`.
    unconditional: Vec<String>,
}

pub struct FakeS3 {
    faults: S3Faults,
    state: Mutex<State>,
    /// Counts applied writes, for a test that acts the moment one lands.
    writes: tokio::sync::watch::Sender<u64>,
}

/// What a call meets, drawn before it runs.
#[derive(PartialEq)]
enum Fate {
    Fine,
    Unavailable,
    Conflict,
    LostAnswer,
}

impl FakeS3 {
    pub fn new(seed: u64, faults: S3Faults) -> FakeS3 {
        FakeS3 {
            faults,
            state: Mutex::new(State {
                rng: seed ^ 0x9e37_79b9_7f4a_7c15,
                objects: BTreeMap::new(),
                deleted: BTreeMap::new(),
                calls: BTreeMap::new(),
                unconditional: Vec::new(),
            }),
            writes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes each time a write is applied (whether or not its answer is lost).
    pub fn writes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writes.subscribe()
    }

    /// Calls made so far, per operation (`PutObject`, `GetObject`, ...).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.lock().calls.clone()
    }

    /// Every write sent without a condition (`If-None-Match`, `If-Match`) so far, as
    /// `PutObject KEY` or `DeleteObject KEY`: what the shipped IAM policy must allow.
    pub fn unconditional(&self) -> Vec<String> {
        self.lock().unconditional.clone()
    }

    /// An object's body as stored now, without a call (no latency, no fault, not counted).
    pub fn peek(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().objects.get(key).map(|o| o.body.clone())
    }

    /// Every key stored now (exact, unlike a listing).
    pub fn keys(&self) -> Vec<String> {
        self.lock().objects.keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uniform draw in [0, 1) (splitmix64).
    fn draw(st: &mut State) -> f64 {
        super::draw(&mut st.rng)
    }

    /// Counts the call, waits its latency (before it is applied) and draws its fate.
    async fn enter(&self, op: &'static str, conditional: bool, writes: bool) -> (Fate, Duration) {
        let (latency, fate) = {
            let mut st = self.lock();
            *st.calls.entry(op).or_default() += 1;
            let (lo, hi) = self.faults.latency;
            let latency = lo + (hi.saturating_sub(lo)).mul_f64(Self::draw(&mut st));
            let d = Self::draw(&mut st);
            let f = &self.faults;
            let fate = if d < f.unavailable {
                Fate::Unavailable
            } else if conditional && d < f.unavailable + f.conflict {
                Fate::Conflict
            } else if writes && d < f.unavailable + f.conflict + f.lost_answer {
                Fate::LostAnswer
            } else {
                Fate::Fine
            };
            (latency, fate)
        };
        // Half the latency on the way there; the rest on the way back.
        tokio::time::sleep(latency / 2).await;
        (fate, latency - latency / 2)
    }

    fn listed(&self, prefix: &str) -> Vec<String> {
        let mut st = self.lock();
        let now = Instant::now();
        let lag = self.faults.list_lag;
        let mut out = Vec::new();
        let keys: Vec<(String, Instant)> =
            st.objects.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, o)| (k.clone(), o.at)).collect();
        for (k, at) in keys {
            // A recent write may not be listed yet.
            if now.duration_since(at) < lag && Self::draw(&mut st) < 0.5 {
                continue;
            }
            out.push(k);
        }
        let gone: Vec<(String, Instant)> =
            st.deleted.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, at)| (k.clone(), *at)).collect();
        for (k, at) in gone {
            // A recent delete may still be listed.
            if now.duration_since(at) < lag && Self::draw(&mut st) < 0.5 && !out.contains(&k) {
                out.push(k);
            }
        }
        out.sort();
        out
    }
}

fn failed(fate: &Fate) -> Option<StoreError> {
    match fate {
        Fate::Unavailable => Some(StoreError::Unavailable("503 Service Unavailable (fake)".into())),
        Fate::Conflict => Some(StoreError::Conflict),
        _ => None,
    }
}

impl ObjectStore for FakeS3 {
    fn url(&self) -> String {
        "s3://fake-bucket/".into()
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Object>> {
        Box::pin(async move {
            let (fate, back) = self.enter("GetObject", false, false).await;
            if let Some(e) = failed(&fate) {
                return Err(e);
            }
            let got = self.lock().objects.get(key).map(|o| Object { body: o.body.clone(), etag: o.etag.clone() });
            tokio::time::sleep(back).await;
            // As the real stores do: an object bigger than its key's cap is refused.
            match got {
                Some(o) if o.body.len() as u64 > crate::engine::store::object_cap(key) => {
                    Err(crate::engine::store::too_large(key))
                }
                got => Ok(got),
            }
        })
    }

    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>, cond: Condition) -> StoreFuture<'a, Etag> {
        Box::pin(async move {
            if cond == Condition::Always {
                self.lock().unconditional.push(format!("PutObject {key}"));
            }
            let (fate, back) = self.enter("PutObject", cond != Condition::Always, true).await;
            if let Some(e) = failed(&fate) {
                return Err(e);
            }
            let result = {
                let mut st = self.lock();
                let current = st.objects.get(key).map(|o| o.etag.clone());
                let holds = match (&cond, &current) {
                    (Condition::Always, _) => true,
                    (Condition::Absent, c) => c.is_none(),
                    (Condition::Matches(want), Some(have)) => want == have,
                    (Condition::Matches(_), None) => false,
                };
                if holds {
                    // Tags differ per write even for equal bodies, as S3's versions do.
                    let n = st.calls.values().sum::<u64>();
                    let etag = Etag(format!("{}-{n}", etag_of(&body).0));
                    st.deleted.remove(key);
                    st.objects.insert(key.to_string(), Stored { body, etag: etag.clone(), at: Instant::now() });
                    self.writes.send_modify(|n| *n += 1);
                    Ok(etag)
                } else {
                    Err(StoreError::PreconditionFailed)
                }
            };
            tokio::time::sleep(back).await;
            if fate == Fate::LostAnswer {
                return Err(StoreError::Unavailable("the answer was lost (fake)".into()));
            }
            result
        })
    }

    fn delete<'a>(&'a self, key: &'a str, if_match: Option<Etag>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if if_match.is_none() {
                self.lock().unconditional.push(format!("DeleteObject {key}"));
            }
            let (fate, back) = self.enter("DeleteObject", if_match.is_some(), true).await;
            if let Some(e) = failed(&fate) {
                return Err(e);
            }
            let result = {
                let mut st = self.lock();
                match (st.objects.get(key), &if_match) {
                    (None, _) => Ok(()),
                    (Some(o), Some(want)) if &o.etag != want => Err(StoreError::PreconditionFailed),
                    _ => {
                        st.objects.remove(key);
                        st.deleted.insert(key.to_string(), Instant::now());
                        Ok(())
                    }
                }
            };
            tokio::time::sleep(back).await;
            if fate == Fate::LostAnswer {
                return Err(StoreError::Unavailable("the answer was lost (fake)".into()));
            }
            result
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let (fate, back) = self.enter("ListObjectsV2", false, false).await;
            if let Some(e) = failed(&fate) {
                return Err(e);
            }
            let keys: Vec<String> = self.listed(prefix).into_iter().map(|k| k[prefix.len()..].to_string()).collect();
            tokio::time::sleep(back).await;
            if keys.len() > crate::engine::store::MAX_KEYS {
                return Err(crate::engine::store::listing_too_long(prefix));
            }
            Ok(keys)
        })
    }

    fn list_dirs<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let (fate, back) = self.enter("ListObjectsV2", false, false).await;
            if let Some(e) = failed(&fate) {
                return Err(e);
            }
            let mut dirs: Vec<String> = self
                .listed(prefix)
                .into_iter()
                .filter_map(|k| k[prefix.len()..].split_once('/').map(|(d, _)| d.to_string()))
                .collect();
            dirs.dedup();
            tokio::time::sleep(back).await;
            Ok(dirs)
        })
    }
}
