//! The run's clock: per-step timings, and the time spent waiting on things outside the
//! tool (PostgreSQL, the release's commands, suites, the cloud) — so the report can say
//! how much the tool itself added.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Clock {
    start: Instant,
    external: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

impl Clock {
    pub fn new() -> Self {
        Clock { start: Instant::now(), external: Arc::default() }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Milliseconds since the run started.
    pub fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Marks time spent waiting on something outside the tool, until the returned
    /// guard is dropped.
    pub fn external(&self) -> ExternalSpan {
        ExternalSpan { clock: self.clone(), from: Instant::now() }
    }

    /// Total external time as the union of intervals (concurrent waits count once).
    pub fn external_total(&self) -> Duration {
        let mut spans = self.external.lock().map(|v| v.clone()).unwrap_or_default();
        spans.sort();
        let mut total = Duration::ZERO;
        let mut cur: Option<(Instant, Instant)> = None;
        for (a, b) in spans {
            match cur {
                Some((ca, cb)) if a <= cb => cur = Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    total += cb - ca;
                    cur = Some((a, b));
                }
                None => cur = Some((a, b)),
            }
        }
        if let Some((a, b)) = cur {
            total += b - a;
        }
        total
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

pub struct ExternalSpan {
    clock: Clock,
    from: Instant,
}

impl Drop for ExternalSpan {
    fn drop(&mut self) {
        if let Ok(mut v) = self.clock.external.lock() {
            v.push((self.from, Instant::now()));
        }
    }
}
