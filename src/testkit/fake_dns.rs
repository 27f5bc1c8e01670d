//! A fault-injecting fake of Route 53 behind [`DnsApi`], for what the emulator cannot
//! do: a change batch that takes Route 53's propagation time to be `INSYNC` (on tokio's
//! pausable clock), throttling (`Throttling`, nothing applied), 5xx before anything
//! happened, and answers lost after the batch was applied — each by seeded random
//! choice. A batch is applied all or nothing, as Route 53's are: a `DELETE` that does
//! not match the record set exactly refuses the whole batch (`InvalidChangeBatch`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::providers::aws::api::{ApiError, ApiResult, ErrorKind};
use crate::providers::aws::dns::{Action, DnsApi, RecordKind, RecordSet};

/// Probabilities (0..1) per call, and timings.
#[derive(Clone, Debug)]
pub struct DnsFaults {
    pub throttle: f64,
    pub unavailable: f64,
    /// The batch was applied but its answer was lost.
    pub lost_answer: f64,
    /// How long a call takes.
    pub latency: (Duration, Duration),
    /// From a change's acceptance to `INSYNC`.
    pub propagation: (Duration, Duration),
}

impl DnsFaults {
    /// No faults; Route 53's usual times: ~100 ms a call, `INSYNC` within 60 s (AWS:
    /// "generally within 60 seconds"), most often in a few seconds.
    pub fn realistic() -> DnsFaults {
        DnsFaults {
            throttle: 0.0,
            unavailable: 0.0,
            lost_answer: 0.0,
            latency: (Duration::from_millis(50), Duration::from_millis(150)),
            propagation: (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }

    /// Everything that can go wrong, often.
    pub fn chaos() -> DnsFaults {
        DnsFaults { throttle: 0.1, unavailable: 0.05, lost_answer: 0.05, ..DnsFaults::realistic() }
    }
}

struct State {
    rng: u64,
    records: BTreeMap<(String, &'static str), RecordSet>,
    changes: BTreeMap<String, Instant>,
    next_change: u64,
    calls: BTreeMap<&'static str, u64>,
}

pub struct FakeDns {
    faults: DnsFaults,
    state: Mutex<State>,
    /// Counts applied change batches, for a test that acts the moment one lands.
    applied: tokio::sync::watch::Sender<u64>,
}

fn key(name: &str, kind: RecordKind) -> (String, &'static str) {
    (name.trim_end_matches('.').to_ascii_lowercase(), kind.as_str())
}

fn fail(code: &str, kind: ErrorKind) -> ApiError {
    ApiError { code: Some(code.into()), message: format!("{code} (injected)"), kind }
}

impl FakeDns {
    pub fn new(seed: u64, faults: DnsFaults) -> FakeDns {
        FakeDns {
            faults,
            state: Mutex::new(State {
                rng: seed ^ 0x5851_f42d_4c95_7f2d,
                records: BTreeMap::new(),
                changes: BTreeMap::new(),
                next_change: 1,
                calls: BTreeMap::new(),
            }),
            applied: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes each time a change batch is applied.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every record set in the zone now.
    pub fn records(&self) -> Vec<RecordSet> {
        self.lock().records.values().cloned().collect()
    }

    /// Calls made so far, per operation.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.lock().calls.clone()
    }

    fn draw(st: &mut State) -> f64 {
        super::draw(&mut st.rng)
    }

    fn between(st: &mut State, (lo, hi): (Duration, Duration)) -> Duration {
        lo + hi.saturating_sub(lo).mul_f64(Self::draw(st))
    }

    /// Counts the call, waits its latency; the fault it meets, if any (before anything
    /// is done), and whether its answer will be lost.
    async fn enter(&self, op: &'static str, writes: bool) -> (Option<ApiError>, bool) {
        let (latency, fault, lost) = {
            let mut st = self.lock();
            *st.calls.entry(op).or_default() += 1;
            let latency = Self::between(&mut st, self.faults.latency);
            let d = Self::draw(&mut st);
            let f = &self.faults;
            let fault = if d < f.throttle {
                Some(fail("Throttling", ErrorKind::Throttled))
            } else if d < f.throttle + f.unavailable {
                Some(fail("ServiceUnavailable", ErrorKind::ServerError))
            } else {
                None
            };
            let lost = writes && fault.is_none() && Self::draw(&mut st) < f.lost_answer;
            (latency, fault, lost)
        };
        tokio::time::sleep(latency).await;
        (fault, lost)
    }
}

impl DnsApi for FakeDns {
    async fn change(&self, _zone: &str, changes: &[(Action, RecordSet)], _comment: &str) -> ApiResult<String> {
        let (fault, lost) = self.enter("ChangeResourceRecordSets", true).await;
        if let Some(e) = fault {
            return Err(e);
        }
        let id = {
            let mut st = self.lock();
            // All or nothing: every DELETE must match what is there, exactly.
            for (action, set) in changes {
                if *action == Action::Delete && st.records.get(&key(&set.name, set.kind)) != Some(set) {
                    return Err(fail("InvalidChangeBatch", ErrorKind::Refused));
                }
            }
            for (action, set) in changes {
                match action {
                    Action::Upsert => st.records.insert(key(&set.name, set.kind), set.clone()),
                    Action::Delete => st.records.remove(&key(&set.name, set.kind)),
                };
            }
            self.applied.send_modify(|n| *n += 1);
            let id = format!("/change/C{:06}", st.next_change);
            st.next_change += 1;
            let insync_at = Instant::now() + Self::between(&mut st, self.faults.propagation);
            st.changes.insert(id.clone(), insync_at);
            id
        };
        if lost {
            return Err(fail("RequestTimeout", ErrorKind::Unreachable));
        }
        Ok(id)
    }

    async fn in_sync(&self, change_id: &str) -> ApiResult<bool> {
        if let (Some(e), _) = self.enter("GetChange", false).await {
            return Err(e);
        }
        let st = self.lock();
        match st.changes.get(change_id) {
            Some(at) => Ok(Instant::now() >= *at),
            None => Err(fail("NoSuchChange", ErrorKind::NotFound)),
        }
    }

    async fn record(&self, _zone: &str, name: &str, kind: RecordKind) -> ApiResult<Option<RecordSet>> {
        if let (Some(e), _) = self.enter("ListResourceRecordSets", false).await {
            return Err(e);
        }
        Ok(self.lock().records.get(&key(name, kind)).cloned())
    }

    /// The fake's one zone is `staging.shop.internal.`.
    async fn apex(&self, _zone: &str) -> ApiResult<Option<String>> {
        if let (Some(e), _) = self.enter("ListResourceRecordSets", false).await {
            return Err(e);
        }
        Ok(Some("staging.shop.internal.".into()))
    }
}
