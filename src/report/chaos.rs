//! A game day in the report's page: each fault with its window and expectations, and a
//! timeline drawn as inline SVG — each fault as a band from its start to its end, the
//! time until the traffic was back as a band after it, and each endpoint's p99 per
//! second with its errors marked (the deploy's drawing, [`super::deploy`], without its
//! lane of lock waits).

use serde::Serialize;

use super::deploy::{band, chart_of, Chart};
use crate::compare::chaos::ChaosReport;

#[derive(Serialize)]
pub(crate) struct ChaosView {
    passed: bool,
    summary: String,
    faults: Vec<FaultRow>,
    chart: Chart,
}

#[derive(Serialize)]
struct FaultRow {
    name: String,
    what: String,
    span: String,
    recovery: String,
    passed: bool,
    skipped: Option<String>,
    expectations: Vec<ExpectRow>,
}

#[derive(Serialize)]
struct ExpectRow {
    name: String,
    limit: String,
    measured: String,
    passed: bool,
    reason: String,
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

impl ChaosView {
    pub(crate) fn new(c: &ChaosReport) -> ChaosView {
        let broken = c.faults.iter().filter(|f| !f.passed()).count();
        let load = if c.load { format!("{} request(s) sent", c.requests) } else { "no load ran".to_string() };
        let summary = format!("{} fault(s), {broken} failed its expectations; {load}", c.faults.len());
        let faults = c
            .faults
            .iter()
            .map(|f| FaultRow {
                name: f.name.clone(),
                what: format!("{} on {}: {}", f.kind, f.target, f.detail),
                span: match (f.started_ms, f.ended_ms) {
                    (Some(a), Some(b)) => format!("{} to {}", secs(a), secs(b)),
                    _ => "did not run".into(),
                },
                recovery: match (c.load, f.ended_ms, f.recovery_ms) {
                    (true, Some(_), Some(r)) => secs(r),
                    (true, Some(_), None) => "never back".into(),
                    _ => String::new(),
                },
                passed: f.passed(),
                skipped: f.skipped.clone(),
                expectations: f
                    .expectations
                    .iter()
                    .map(|l| ExpectRow {
                        name: l.name.clone(),
                        limit: l.limit.clone(),
                        measured: l.measured.clone(),
                        passed: l.passed,
                        reason: l.reason.clone(),
                    })
                    .collect(),
            })
            .collect();
        ChaosView { passed: c.passed(), summary, faults, chart: chart(c) }
    }
}

fn chart(c: &ChaosReport) -> Chart {
    let last_second = c.seconds.iter().map(|s| (s.second + 1) * 1000).max().unwrap_or(0);
    let last_fault = c.faults.iter().filter_map(|f| Some(f.ended_ms? + f.recovery_ms.unwrap_or(0))).max().unwrap_or(0);
    let end = last_second.max(last_fault).max(1);
    let mut bands = Vec::new();
    for f in &c.faults {
        let (Some(a), Some(b)) = (f.started_ms, f.ended_ms) else { continue };
        let title = format!("{} ({} on {}: {}) from {} to {}", f.name, f.kind, f.target, f.detail, secs(a), secs(b));
        bands.push(band(a, b, end as f64, f.name.clone(), title, "fault"));
        if !c.load {
            // No request tells when the traffic was back.
            continue;
        }
        match f.recovery_ms {
            Some(r) if r > 0 => {
                let title = format!("{}: the traffic was back {} after it ended", f.name, secs(r));
                bands.push(band(b, b + r, end as f64, String::new(), title, "recovery"));
            }
            None => {
                let title = format!("{}: the traffic was never back after it ended", f.name);
                bands.push(band(b, end, end as f64, String::new(), title, "recovery"));
            }
            _ => {}
        }
    }
    chart_of(end, bands, &c.seconds, "The game day".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::chaos::FaultReport;
    use crate::compare::deploy::{Limit, Second};

    #[test]
    fn each_fault_is_a_band_its_recovery_another_over_the_seconds() {
        let second =
            |s, e, p| Second { second: s, endpoint: "GET /products".into(), requests: 15, errors: e, p99_ms: p };
        let c = ChaosReport {
            faults: vec![FaultReport {
                name: "slow-db".into(),
                kind: "latency".into(),
                target: "path web -> db".into(),
                detail: "300ms each way, for 4s".into(),
                started_ms: Some(2000),
                ended_ms: Some(6000),
                recovery_ms: Some(1000),
                expectations: vec![Limit {
                    name: "latency GET /products".into(),
                    limit: "250 ms".into(),
                    measured: "930 ms".into(),
                    passed: false,
                    reason: "p99 930 ms".into(),
                }],
                ..FaultReport::default()
            }],
            requests: 150,
            load: true,
            seconds: (0..10)
                .map(|s| second(s, u64::from(s == 3) as usize, if (2..6).contains(&s) { 900.0 } else { 20.0 }))
                .collect(),
            suites_judged: true,
        };
        let v = ChaosView::new(&c);
        assert!(!v.passed);
        assert_eq!(v.summary, "1 fault(s), 1 failed its expectations; 150 request(s) sent");
        assert_eq!((v.faults[0].span.as_str(), v.faults[0].recovery.as_str()), ("2.0 s to 6.0 s", "1.0 s"));
        let ch = &v.chart;
        // 10 s over 790 units: the fault from 2 s to 6 s, its recovery to 7 s.
        assert_eq!((ch.bands[0].x, ch.bands[0].width, ch.bands[0].kind), (308.0, 316.0, "fault"));
        assert_eq!((ch.bands[1].x, ch.bands[1].width, ch.bands[1].kind), (624.0, 79.0, "recovery"));
        assert_eq!(ch.lanes.len(), 1);
        assert_eq!(ch.lanes[0].errors.len(), 1);
        assert_eq!(ch.waits_height, 0.0);
        assert_eq!(ch.ticks.len(), 11);
    }
}
