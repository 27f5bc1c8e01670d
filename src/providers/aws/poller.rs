//! One batched poller per kind of resource per run: however many resources are
//! waiting, each polling interval costs one Describe call covering all of them, with
//! backoff between calls and a deadline per waiter.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::api::ApiResult;

/// Why a wait for a resource ended without it getting where it should.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WaitError {
    /// It never will: what the caller's check said.
    #[error(transparent)]
    Never(#[from] Never),
    /// The deadline passed; `last` is the last state seen, `failing` the latest
    /// describe's failure, if it failed.
    #[error(
        "timed out waiting for {id}; last state: {last}{}",
        .failing.as_ref().map(|e| format!(" (the latest describe failed: {e})")).unwrap_or_default()
    )]
    TimedOut { id: String, last: String, failing: Option<String> },
}

/// A wait's check saying the resource will never get where it should (a DB instance
/// that failed, an instance terminated): why, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Never(pub(crate) String);

pub(crate) struct Poller<T> {
    waiting: Mutex<BTreeSet<String>>,
    /// The latest observation of each id (None: the describe did not return it).
    seen: Mutex<HashMap<String, Option<T>>>,
    /// Why the latest describe failed, if it did: a timeout names it, since "last state:
    /// creating" alone would hide that nothing could be seen.
    failing: Mutex<Option<String>>,
    leader: tokio::sync::Mutex<()>,
    round: watch::Sender<u64>,
    /// First and longest interval between two describes.
    pub(crate) min_interval: Duration,
    pub(crate) max_interval: Duration,
    /// Describe calls made (for the benchmark's API-call count).
    pub(crate) calls: std::sync::atomic::AtomicU64,
}

impl<T: Clone> Poller<T> {
    pub(crate) fn new(min_interval: Duration, max_interval: Duration) -> Self {
        Poller {
            waiting: Mutex::default(),
            seen: Mutex::default(),
            failing: Mutex::default(),
            leader: tokio::sync::Mutex::new(()),
            round: watch::channel(0).0,
            min_interval,
            max_interval,
            calls: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Waits until `done` says the resource `id` is where it should be (`Ok(true)`),
    /// fails at once when `done` says it never will (`Err`), and fails at `deadline`
    /// naming the last state seen. `describe` is called with every id being waited for.
    pub(crate) async fn wait<F, Fut>(
        &self,
        id: &str,
        describe: F,
        key: impl Fn(&T) -> String,
        done: impl Fn(Option<&T>) -> Result<bool, Never>,
        state: impl Fn(Option<&T>) -> String,
        deadline: Instant,
    ) -> Result<Option<T>, WaitError>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = ApiResult<Vec<T>>>,
    {
        self.waiting.lock().expect("poller lock").insert(id.to_string());
        // Only observations made after this wait began count: a resource just changed
        // (modified, deleted) must be seen anew, not from before the change.
        self.seen.lock().expect("poller lock").remove(id);
        let result = self.wait_inner(id, &describe, &key, &done, &state, deadline).await;
        self.waiting.lock().expect("poller lock").remove(id);
        result
    }

    async fn wait_inner<F, Fut>(
        &self,
        id: &str,
        describe: &F,
        key: &impl Fn(&T) -> String,
        done: &impl Fn(Option<&T>) -> Result<bool, Never>,
        state: &impl Fn(Option<&T>) -> String,
        deadline: Instant,
    ) -> Result<Option<T>, WaitError>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = ApiResult<Vec<T>>>,
    {
        let mut interval = self.min_interval;
        let mut rx = self.round.subscribe();
        loop {
            let latest = self.seen.lock().expect("poller lock").get(id).cloned();
            if let Some(obs) = &latest {
                if done(obs.as_ref())? {
                    return Ok(obs.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(WaitError::TimedOut {
                    id: id.to_string(),
                    last: state(latest.flatten().as_ref()),
                    failing: self.failing.lock().expect("poller lock").clone(),
                });
            }
            // One waiter leads a round; the others wait for its result.
            if let Ok(_lead) = self.leader.try_lock() {
                let sleep = interval.min(deadline.saturating_duration_since(Instant::now()));
                tokio::time::sleep(sleep).await;
                interval = (interval * 2).min(self.max_interval);
                let ids: Vec<String> = self.waiting.lock().expect("poller lock").iter().cloned().collect();
                self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                match describe(ids.clone()).await {
                    Ok(found) => {
                        *self.failing.lock().expect("poller lock") = None;
                        let mut seen = self.seen.lock().expect("poller lock");
                        for i in &ids {
                            seen.insert(i.clone(), None);
                        }
                        for t in found {
                            seen.insert(key(&t), Some(t));
                        }
                    }
                    Err(e) => {
                        tracing::debug!("poll failed (will retry): {e}");
                        *self.failing.lock().expect("poller lock") = Some(e.to_string());
                    }
                }
                self.round.send_modify(|r| *r += 1);
            } else {
                let left = deadline.saturating_duration_since(Instant::now());
                // Best effort: a timeout only means it is time to look again.
                #[allow(clippy::let_underscore_must_use)]
                let _ = tokio::time::timeout(left, rx.changed()).await;
            }
        }
    }
}
