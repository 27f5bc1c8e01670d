//! A game day judged: each fault's expectations against the requests the load sent
//! while it lasted and until the traffic was back, and a per-second timeline of the
//! whole load. Pure functions of the measurements; the engine runs the faults.
//!
//! For each fault, from its start `s` to its end `e` (for an instant fault, `e = s`):
//! - *recovery*: from `e` to the first request sent after `e` that starts a run of
//!   [`BACK`] good ones (none failed, none slower than its endpoint's `latency` limit):
//!   the traffic is back when it stays good, and one slow request later does not undo
//!   it. Without such a run before the load ended, it never came back;
//! - the *judged window* is `[s, e + recovery)` (to the load's end when it never came
//!   back): the error rate and each endpoint's p99 are taken over the requests sent in
//!   it;
//! - with no load, an expectation on the traffic cannot be checked and fails.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::deploy::{ms_text, quantile, seconds, secs, Limit, Second};
use super::load::Timed;
use crate::description::Expect;

/// One fault as it ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultReport {
    pub name: String,
    /// `latency`, `restart`, …
    pub kind: String,
    /// What it hit: `path web -> db`, `database db`, `service web.0`.
    pub target: String,
    /// What it did, in a phrase: `300ms ± 20ms each way`.
    pub detail: String,
    /// Ms from the load's start; `None` when it never started (see `skipped`).
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// Why it did not run (an interrupt, a failure before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Ms from its end until the traffic was back; `None` when it never was (or no
    /// request tells).
    pub recovery_ms: Option<u64>,
    pub expectations: Vec<Limit>,
}

impl FaultReport {
    pub fn passed(&self) -> bool {
        self.skipped.is_none() && self.expectations.iter().all(|l| l.passed)
    }
}

/// A game day: its faults and the traffic's timeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChaosReport {
    pub faults: Vec<FaultReport>,
    /// Requests sent, and whether a load ran at all.
    pub requests: usize,
    pub load: bool,
    /// Per second of the load and endpoint: requests, errors, p99.
    pub seconds: Vec<Second>,
    /// Whether the suites' results count (`expect.suites_pass`).
    pub suites_judged: bool,
}

impl ChaosReport {
    pub fn passed(&self) -> bool {
        self.faults.iter().all(FaultReport::passed)
    }

    /// The broken expectations, one line each, naming their fault.
    pub fn broken(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.faults {
            if let Some(why) = &f.skipped {
                out.push(format!("{}: did not run ({why})", f.name));
            }
            for l in f.expectations.iter().filter(|l| !l.passed) {
                out.push(format!("{} ({} on {}): {}", f.name, f.kind, f.target, l.reason));
            }
        }
        out
    }
}

/// A request is bad when it failed or answered slower than its endpoint's limit.
fn bad(t: &Timed, latency: &BTreeMap<String, Duration>) -> bool {
    t.sample.error || latency.get(&t.sample.endpoint).is_some_and(|max| t.sample.latency_ms > max.as_secs_f64() * 1e3)
}

/// Good requests in a row that say the traffic is back.
pub const BACK: usize = 5;

/// Ms from `end` until the traffic was back, `None` when it never was.
pub fn recovery(timed: &[Timed], end_ms: u64, latency: &BTreeMap<String, Duration>) -> Option<u64> {
    let after: Vec<&Timed> = timed.iter().filter(|t| t.sent_ms >= end_ms).collect();
    let mut run = 0;
    for (i, t) in after.iter().enumerate() {
        run = if bad(t, latency) { 0 } else { run + 1 };
        if run == BACK {
            return Some(after[i + 1 - BACK].sent_ms - end_ms);
        }
    }
    None
}

/// One fault's expectations, judged over its window of `timed` (`load`: whether a
/// load ran at all).
pub fn expectations(
    expect: &Expect,
    start_ms: u64,
    end_ms: u64,
    timed: &[Timed],
    load: bool,
) -> (Option<u64>, Vec<Limit>) {
    let mut out = Vec::new();
    let unchecked = "cannot be checked: no load ran (`chaos.load` or `compare.load`)";
    let closed = |name: String, limit: String| Limit {
        name,
        limit,
        measured: "no load".into(),
        passed: false,
        reason: unchecked.into(),
    };
    if !load {
        if let Some(max) = expect.max_error_rate {
            out.push(closed("max_error_rate".into(), format!("{max}%")));
        }
        for (endpoint, max) in &expect.latency {
            out.push(closed(format!("latency {endpoint}"), ms_text(*max)));
        }
        if let Some(max) = expect.recover_within {
            out.push(closed("recover_within".into(), ms_text(max)));
        }
        return (None, out);
    }
    let recovered = recovery(timed, end_ms, &expect.latency);
    let window_end = match recovered {
        Some(r) => end_ms + r,
        None => timed.last().map(|t| t.sent_ms + 1).unwrap_or(end_ms),
    };
    // At least the fault itself, and a request's worth after an instant one.
    let window_end = window_end.max(end_ms).max(start_ms + 1);
    let judged: Vec<&Timed> = timed.iter().filter(|t| t.sent_ms >= start_ms && t.sent_ms < window_end).collect();
    let span = format!("from {} to {}", secs(start_ms), secs(window_end));
    if let Some(max) = expect.max_error_rate {
        let n = judged.len();
        let e = judged.iter().filter(|t| t.sample.error).count();
        let rate = if n == 0 { 0.0 } else { e as f64 * 100.0 / n as f64 };
        let (passed, reason) = match n {
            0 => (false, format!("cannot be checked: no request was sent {span}")),
            _ => (rate <= max, format!("{e} of {n} requests sent {span} failed ({rate:.1}%)")),
        };
        out.push(Limit {
            name: "max_error_rate".into(),
            limit: format!("{max}%"),
            measured: format!("{rate:.1}%"),
            passed,
            reason,
        });
    }
    for (endpoint, max) in &expect.latency {
        let mut l: Vec<f64> =
            judged.iter().filter(|t| &t.sample.endpoint == endpoint).map(|t| t.sample.latency_ms).collect();
        l.sort_by(f64::total_cmp);
        let p99 = quantile(&l, 0.99);
        let (passed, measured, reason) = match p99 {
            None => (
                false,
                "no requests".to_string(),
                format!("cannot be checked: no `{endpoint}` request was sent {span}"),
            ),
            Some(p) => (
                p <= max.as_secs_f64() * 1e3,
                format!("{p:.0} ms"),
                format!("`{endpoint}` p99 {p:.0} ms over {} request(s) sent {span}", l.len()),
            ),
        };
        out.push(Limit { name: format!("latency {endpoint}"), limit: ms_text(*max), measured, passed, reason });
    }
    if let Some(max) = expect.recover_within {
        let (passed, measured, reason) = match recovered {
            Some(r) => (
                u128::from(r) <= max.as_millis(),
                secs(r),
                format!("the traffic was back {} after the fault ended", secs(r)),
            ),
            None => (false, "never".to_string(), "the traffic was not back before the load ended".to_string()),
        };
        out.push(Limit { name: "recover_within".into(), limit: ms_text(max), measured, passed, reason });
    }
    (recovered, out)
}

/// The load's timeline, a second and an endpoint a row.
pub fn timeline(timed: &[Timed]) -> Vec<Second> {
    seconds(timed)
}

#[cfg(test)]
mod tests;
