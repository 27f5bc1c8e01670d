//! What a deploy did to the traffic: the load's requests cut into windows by the
//! deploy's marks (before the migration, during it, during the switch of the services,
//! after), each endpoint's latency and errors per window and per second, the
//! description's limits checked (`deploy.max_lock_wait`, `max_error_rate`, `latency`),
//! the judge's verdicts of the during window against the before window, and the
//! one-line headline a release manager reads first.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::judge;
use super::load::{self, Timed};
use super::locks::{Analysis, Wait};
use crate::description::Deploy;

/// When each part of the deploy began and ended, ms from the load's start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    pub migration_start_ms: u64,
    pub migration_end_ms: u64,
    pub switch_start_ms: u64,
    pub switch_end_ms: u64,
    pub end_ms: u64,
}

/// One endpoint in one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub endpoint: String,
    pub requests: usize,
    pub errors: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// A part of the deploy and what the traffic saw in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// `before`, `during` (the migration), `switch` or `after`.
    pub name: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub endpoints: Vec<EndpointStats>,
}

impl Window {
    pub fn requests(&self) -> usize {
        self.endpoints.iter().map(|e| e.requests).sum()
    }

    pub fn errors(&self) -> usize {
        self.endpoints.iter().map(|e| e.errors).sum()
    }
}

/// One second of one endpoint, for the timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub second: u64,
    pub endpoint: String,
    pub requests: usize,
    pub errors: usize,
    pub p99_ms: f64,
}

/// What the traffic saw over the whole deploy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    pub windows: Vec<Window>,
    pub seconds: Vec<Second>,
    pub requests: usize,
    /// The slowest request sent during the migration, ms.
    pub longest_during_ms: Option<f64>,
}

impl Traffic {
    pub fn window(&self, name: &str) -> Option<&Window> {
        self.windows.iter().find(|w| w.name == name)
    }
}

/// A limit of the description, checked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// `max_lock_wait`, `max_error_rate` or `latency GET /products`.
    pub name: String,
    pub limit: String,
    pub measured: String,
    pub passed: bool,
    /// One line: why, naming the migration file, lock and table where one is to blame.
    pub reason: String,
}

/// The `q` quantile of sorted values (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn stats(endpoint: &str, latencies: &[f64], errors: &[f64]) -> EndpointStats {
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    EndpointStats {
        endpoint: endpoint.to_string(),
        requests: latencies.len(),
        errors: errors.iter().filter(|e| **e > 0.0).count(),
        p50_ms: quantile(&sorted, 0.5),
        p99_ms: quantile(&sorted, 0.99),
        max_ms: sorted.last().copied(),
    }
}

/// The load's requests cut into the deploy's windows and seconds.
pub fn traffic(timed: &[Timed], marks: &Marks) -> Traffic {
    let bounds = bounds(marks);
    let per_window = charged(timed, marks);
    let windows = bounds
        .iter()
        .zip(per_window)
        .map(|((name, from, to), m)| {
            let endpoints = m.latencies.iter().map(|(e, l)| stats(e, l, &m.errors[e])).collect();
            Window { name: name.to_string(), from_ms: *from, to_ms: *to, endpoints }
        })
        .collect();
    let seconds = seconds(timed);
    let longest_during_ms = timed
        .iter()
        .filter(|t| t.sent_ms >= marks.migration_start_ms && t.sent_ms < marks.migration_end_ms)
        .map(|t| t.sample.latency_ms)
        .max_by(f64::total_cmp);
    Traffic { windows, seconds, requests: timed.len(), longest_during_ms }
}

/// Per second of the load (by send time) and endpoint: requests, errors, p99.
pub(crate) fn seconds(timed: &[Timed]) -> Vec<Second> {
    let mut per: BTreeMap<(u64, String), (Vec<f64>, usize)> = BTreeMap::new();
    for t in timed {
        let e = per.entry((t.sent_ms / 1000, t.sample.endpoint.clone())).or_default();
        e.0.push(t.sample.latency_ms);
        e.1 += usize::from(t.sample.error);
    }
    per.into_iter()
        .map(|((second, endpoint), (mut l, errors))| {
            l.sort_by(f64::total_cmp);
            Second { second, endpoint, requests: l.len(), errors, p99_ms: quantile(&l, 0.99).unwrap_or(0.0) }
        })
        .collect()
}

pub(crate) fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

pub(crate) fn ms_text(d: Duration) -> String {
    crate::description::format_duration(d)
}

/// The traffic's waits the migration caused, the longest first.
fn caused(locks: &Analysis) -> Vec<&Wait> {
    locks.waits.iter().filter(|w| w.by_migration).collect()
}

/// What the migration's worst lock did, in one line: "0004_orders_index.sql held
/// ShareLock on orders for 8.2 s; 312 requests waited, the longest 8.1 s; 17 failed".
pub fn headline(locks: &Analysis, traffic: &Traffic) -> Option<String> {
    let waits = caused(locks);
    let worst = waits.first()?;
    let held = worst.blockers.first().map(|b| b.mode.as_str()).unwrap_or("a lock");
    let file = worst.file.as_deref().unwrap_or("the migration");
    let hold_ms = locks
        .files
        .iter()
        .filter(|f| Some(f.file.as_str()) == worst.file.as_deref())
        .flat_map(|f| f.locks.iter())
        .filter(|l| l.target == worst.target && l.mode == held)
        .map(|l| l.held_ms)
        .max()
        .unwrap_or(worst.waited_ms);
    let failed = traffic.window("during").map(Window::errors).unwrap_or(0);
    Some(format!(
        "{file} held {held} on {} for {}; {} request(s) waited, the longest {}; {failed} failed during the migration",
        worst.target,
        secs(hold_ms),
        waits.len(),
        secs(worst.waited_ms),
    ))
}

/// The description's limits, each checked.
pub fn limits(deploy: &Deploy, locks: &Analysis, traffic: &Traffic) -> Vec<Limit> {
    let mut out = Vec::new();
    let during = traffic.window("during");
    if let Some(max) = deploy.max_lock_wait {
        let waits = caused(locks);
        let longest = waits.first().map(|w| w.waited_ms).unwrap_or(0);
        let passed = (longest as u128) <= max.as_millis();
        let reason = match (passed, waits.first()) {
            (_, None) => "no request waited on a lock the migration held".to_string(),
            (true, Some(_)) => format!("the longest wait on the migration's locks was {}", secs(longest)),
            (false, Some(_)) => headline(locks, traffic).unwrap_or_default(),
        };
        out.push(Limit { name: "max_lock_wait".into(), limit: ms_text(max), measured: secs(longest), passed, reason });
    }
    if let Some(max) = deploy.max_error_rate {
        let (n, e) = during.map(|w| (w.requests(), w.errors())).unwrap_or((0, 0));
        let rate = if n == 0 { 0.0 } else { e as f64 * 100.0 / n as f64 };
        let passed = rate <= max;
        let reason = if n == 0 {
            "no request was sent during the migration".to_string()
        } else {
            format!("{e} of {n} requests sent during the migration failed ({rate:.1}%)")
        };
        out.push(Limit {
            name: "max_error_rate".into(),
            limit: format!("{max}%"),
            measured: format!("{rate:.1}%"),
            passed,
            reason,
        });
    }
    for (endpoint, max) in &deploy.latency {
        let p99 = during.and_then(|w| w.endpoints.iter().find(|e| &e.endpoint == endpoint)).and_then(|e| e.p99_ms);
        let passed = p99.is_none_or(|p| p <= max.as_secs_f64() * 1000.0);
        let reason = match p99 {
            None => format!("no `{endpoint}` request was sent during the migration"),
            Some(p) => format!("`{endpoint}` p99 {p:.0} ms during the migration"),
        };
        out.push(Limit {
            name: format!("latency {endpoint}"),
            limit: ms_text(*max),
            measured: p99.map(|p| format!("{p:.0} ms")).unwrap_or_else(|| "no requests".into()),
            passed,
            reason,
        });
    }
    out
}

/// The windows: before, during (the migration), switch and after, ms from the load's start.
fn bounds(marks: &Marks) -> [(&'static str, u64, u64); 4] {
    [
        ("before", 0, marks.migration_start_ms),
        ("during", marks.migration_start_ms, marks.migration_end_ms),
        ("switch", marks.switch_start_ms, marks.switch_end_ms),
        ("after", marks.switch_end_ms, marks.end_ms.max(marks.switch_end_ms)),
    ]
}

/// Each window's requests, as [`bounds`] orders them. A request is the window's it was
/// sent in; a failure is charged to the window it happened in (a request sent during
/// the migration and cut off when a restart stopped its instance is the switch's).
fn charged(timed: &[Timed], marks: &Marks) -> Vec<load::Measured> {
    let bounds = bounds(marks);
    let of = |ms: u64| bounds.iter().position(|(_, from, to)| ms >= *from && ms < *to);
    let mut per_window: Vec<load::Measured> = vec![load::Measured::default(); bounds.len()];
    for t in timed {
        let sent = of(t.sent_ms);
        let ended = of(t.sent_ms + t.sample.latency_ms as u64);
        let w = match (sent, ended) {
            (Some(s), Some(e)) if t.sample.error && e > s => Some(e),
            (s, _) => s,
        };
        if let Some(w) = w {
            per_window[w].latencies.entry(t.sample.endpoint.clone()).or_default().push(t.sample.latency_ms);
            per_window[w]
                .errors
                .entry(t.sample.endpoint.clone())
                .or_default()
                .push(f64::from(u8::from(t.sample.error)));
        }
    }
    per_window
}

/// The judge's verdicts: each endpoint's latency and errors during the migration
/// against before it (too few requests during a short migration: NoData, never a
/// failure by itself — the limits decide).
pub fn judge(timed: &[Timed], marks: &Marks, settings: &judge::Settings) -> Vec<judge::Verdict> {
    let w = charged(timed, marks);
    judge_windows(&w[0], &w[1], "", settings)
}

/// The judge's verdicts in a compared deploy: each endpoint's latency and errors during
/// the migration against the baseline twin's over the same span (the same requests at
/// the same rate, sent at the same time, without the migration).
pub fn judge_against_twin(timed: &[Timed], twin: &[Timed], marks: &Marks, s: &judge::Settings) -> Vec<judge::Verdict> {
    let (twin, during) = (charged(twin, marks).swap_remove(1), charged(timed, marks).swap_remove(1));
    judge_windows(&twin, &during, " during the migration", s)
}

/// Latency and errors of each endpoint of `base`, `cand` against it; names end with `suffix`.
fn judge_windows(
    base: &load::Measured,
    cand: &load::Measured,
    suffix: &str,
    s: &judge::Settings,
) -> Vec<judge::Verdict> {
    let mut out = Vec::new();
    let empty = Vec::new();
    for (endpoint, b) in &base.latencies {
        let c = cand.latencies.get(endpoint).unwrap_or(&empty);
        let (be, ce) = (base.errors.get(endpoint).unwrap_or(&empty), cand.errors.get(endpoint).unwrap_or(&empty));
        for (name, b, c) in
            [(format!("latency {endpoint}{suffix}"), b, c), (format!("errors {endpoint}{suffix}"), be, ce)]
        {
            let m = judge::Metric {
                name: &name,
                baseline: b,
                candidate: c,
                direction: judge::Direction::Increase,
                critical: false,
            };
            out.push(judge::classify(&m, s));
        }
    }
    out
}

/// The baseline twin of a compared deploy: its traffic cut by the deploy's marks, and
/// the judge's verdicts on the deploy's traffic during the migration against it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TwinReport {
    /// The release it kept serving.
    pub release: String,
    pub traffic: Traffic,
    pub verdicts: Vec<judge::Verdict>,
    /// Why it got no load (it never came up), when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::load::Sample;
    use crate::compare::locks::{FileRun, Held, HeldLock};

    fn t(sent_ms: u64, endpoint: &str, latency_ms: f64, error: bool) -> Timed {
        Timed {
            sent_ms,
            sample: Sample {
                endpoint: endpoint.into(),
                latency_ms,
                status: Some(if error { 500 } else { 200 }),
                error,
            },
        }
    }

    fn marks() -> Marks {
        Marks {
            migration_start_ms: 1000,
            migration_end_ms: 3000,
            switch_start_ms: 3000,
            switch_end_ms: 3500,
            end_ms: 5000,
        }
    }

    fn deploy() -> Deploy {
        Deploy {
            load: None,
            steady: Duration::from_secs(1),
            settle: Duration::from_secs(1),
            switch: crate::description::Switch::Rolling,
            migrations: "migrations/*.sql".into(),
            max_lock_wait: Some(Duration::from_millis(500)),
            max_error_rate: Some(1.0),
            latency: [("POST /orders".to_string(), Duration::from_millis(300))].into(),
        }
    }

    fn blocked() -> Analysis {
        let wait = |pid, ms| Wait {
            pid,
            app: "shop".into(),
            query: "insert into orders".into(),
            mode: "RowExclusiveLock".into(),
            target: "orders".into(),
            blockers: vec![Held { pid: 9, mode: "ShareLock".into() }],
            by_migration: true,
            file: Some("0004_orders_index.sql".into()),
            first_ms: 1200,
            waited_ms: ms,
        };
        Analysis {
            samples: 40,
            interval_ms: 100,
            waits: vec![wait(1, 1800), wait(2, 900)],
            migration_waits: Vec::new(),
            files: vec![FileRun {
                file: "0004_orders_index.sql".into(),
                start_ms: 1000,
                duration_ms: 2000,
                locks: vec![HeldLock { mode: "ShareLock".into(), target: "orders".into(), held_ms: 1900 }],
                wal_bytes: 10,
                blocked: 2,
                longest_wait_ms: 1800,
            }],
        }
    }

    #[test]
    fn against_the_twin_the_writes_that_waited_are_high_and_a_restarts_failures_are_not_the_migrations() {
        let s = judge::Settings { confidence: 0.98, tolerance: 0.25, min_samples: 5, pass: 95.0, marginal: 75.0 };
        // The same twelve requests sent during the migration (1–3 s) to both copies: the
        // deploy's waited on its lock; two more of the deploy's were cut off by its
        // restart, in the switch.
        let mut mine: Vec<Timed> =
            (0..12).map(|i| t(1000 + i * 150, "POST /orders", 900.0 + i as f64, false)).collect();
        let twin: Vec<Timed> = (0..12).map(|i| t(1000 + i * 150, "POST /orders", 20.0 + i as f64, false)).collect();
        mine.extend([t(2900, "POST /orders", 400.0, true), t(2950, "POST /orders", 300.0, true)]);
        let v = judge_against_twin(&mine, &twin, &marks(), &s);
        let names: Vec<(&str, judge::Classification)> =
            v.iter().map(|v| (v.metric.as_str(), v.classification)).collect();
        assert_eq!(
            names,
            vec![
                ("latency POST /orders during the migration", judge::Classification::High),
                ("errors POST /orders during the migration", judge::Classification::Pass),
            ],
            "{v:#?}"
        );
        assert_eq!((v[0].baseline_samples, v[0].candidate_samples), (12, 12));
    }

    #[test]
    fn the_windows_split_the_requests_and_the_limits_name_the_file_lock_and_table() {
        let timed = vec![
            t(100, "POST /orders", 10.0, false),
            t(500, "POST /orders", 12.0, false),
            t(1100, "POST /orders", 1800.0, false),
            t(1500, "POST /orders", 1400.0, true),
            t(3200, "POST /orders", 30.0, true),
            t(4000, "POST /orders", 11.0, false),
        ];
        let tr = traffic(&timed, &marks());
        let names: Vec<(&str, usize, usize)> =
            tr.windows.iter().map(|w| (w.name.as_str(), w.requests(), w.errors())).collect();
        assert_eq!(names, vec![("before", 2, 0), ("during", 2, 1), ("switch", 1, 1), ("after", 1, 0)]);
        assert_eq!(tr.longest_during_ms, Some(1800.0));
        assert_eq!(tr.seconds.iter().map(|s| s.second).collect::<Vec<_>>(), vec![0, 1, 3, 4]);
        let l = limits(&deploy(), &blocked(), &tr);
        assert_eq!(
            l.iter().map(|l| (l.name.as_str(), l.passed)).collect::<Vec<_>>(),
            vec![("max_lock_wait", false), ("max_error_rate", false), ("latency POST /orders", false)]
        );
        assert_eq!(
            l[0].reason,
            "0004_orders_index.sql held ShareLock on orders for 1.9 s; 2 request(s) waited, the longest 1.8 s; 1 \
             failed during the migration"
        );
        assert_eq!(
            (l[1].measured.as_str(), l[1].reason.as_str()),
            ("50.0%", "1 of 2 requests sent during the migration failed (50.0%)")
        );
        // The switch's error is the switch's: not counted against the migration.
        assert_eq!(l[2].measured, "1800 ms");
        // A request sent during the migration that failed during the switch (its
        // instance stopped under it) is the switch's.
        let mut cut = timed.clone();
        cut.push(t(2900, "POST /orders", 250.0, true));
        let tr = traffic(&cut, &marks());
        assert_eq!((tr.window("during").unwrap().errors(), tr.window("switch").unwrap().errors()), (1, 2));
    }

    #[test]
    fn a_deploy_without_a_migration_has_an_empty_during_window_and_passes() {
        let m = Marks {
            migration_start_ms: 1000,
            migration_end_ms: 1000,
            switch_start_ms: 1000,
            switch_end_ms: 1200,
            end_ms: 3000,
        };
        let timed: Vec<Timed> = (0..30).map(|i| t(i * 100, "POST /orders", 10.0, false)).collect();
        let tr = traffic(&timed, &m);
        assert_eq!(tr.window("during").unwrap().requests(), 0);
        let l = limits(&deploy(), &Analysis::default(), &tr);
        assert!(l.iter().all(|l| l.passed), "{l:?}");
        assert_eq!(l[0].reason, "no request waited on a lock the migration held");
        assert_eq!(l[1].reason, "no request was sent during the migration");
        assert!(headline(&Analysis::default(), &tr).is_none());
        let v = judge(&timed, &m, &judge::Settings::default());
        assert!(v.iter().all(|v| v.classification == judge::Classification::NoData), "{v:?}");
    }
}
