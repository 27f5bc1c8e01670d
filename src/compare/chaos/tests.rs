use super::*;
use crate::compare::load::Sample;

/// A request sent at `sent_ms` to `GET /products`, answered in `ms`, failed or not.
fn req(sent_ms: u64, ms: f64, error: bool) -> Timed {
    Timed {
        sent_ms,
        sample: Sample {
            endpoint: "GET /products".into(),
            latency_ms: ms,
            status: Some(if error { 500 } else { 200 }),
            error,
        },
    }
}

/// Ten a second for `secs` seconds, each as `f(sent_ms)` says.
fn load(secs: u64, f: impl Fn(u64) -> (f64, bool)) -> Vec<Timed> {
    (0..secs * 10)
        .map(|i| i * 100)
        .map(|t| {
            let (ms, e) = f(t);
            req(t, ms, e)
        })
        .collect()
}

fn expect(rate: f64, p99_ms: u64, recover_s: u64) -> Expect {
    Expect {
        max_error_rate: Some(rate),
        latency: [("GET /products".to_string(), Duration::from_millis(p99_ms))].into(),
        recover_within: Some(Duration::from_secs(recover_s)),
        suites_pass: true,
    }
}

#[test]
fn a_latency_fault_fails_the_latency_expectation_and_recovers_at_once() {
    // 300 ms each way from 3 s to 8 s: every request then takes about 620 ms.
    let timed = load(12, |t| if (3000..8000).contains(&t) { (620.0, false) } else { (20.0, false) });
    let (recovered, limits) = expectations(&expect(5.0, 250, 10), 3000, 8000, &timed, true);
    assert_eq!(recovered, Some(0));
    let by: BTreeMap<&str, &Limit> = limits.iter().map(|l| (l.name.as_str(), l)).collect();
    assert!(by["max_error_rate"].passed, "{:?}", by["max_error_rate"]);
    assert!(!by["latency GET /products"].passed);
    assert_eq!(by["latency GET /products"].measured, "620 ms");
    assert!(
        by["latency GET /products"].reason.contains("50 request(s) sent from 3.0 s to 8.0 s"),
        "{}",
        by["latency GET /products"].reason
    );
    assert!(by["recover_within"].passed);
}

#[test]
fn a_restart_is_judged_until_the_traffic_is_back() {
    // Down from 3 s to 5 s; the first requests after it still fail for 1.5 s.
    let timed = load(12, |t| if (3000..6500).contains(&t) { (5.0, true) } else { (20.0, false) });
    let (recovered, limits) = expectations(&expect(50.0, 250, 2), 3000, 5000, &timed, true);
    // Good again from 6.5 s on: 1.5 s after the fault's end.
    assert_eq!(recovered, Some(1500));
    let by: BTreeMap<&str, &Limit> = limits.iter().map(|l| (l.name.as_str(), l)).collect();
    assert!(by["recover_within"].passed, "{:?}", by["recover_within"]);
    // The window runs to 6.5 s: 35 requests, all failed.
    assert!(by["max_error_rate"].reason.starts_with("35 of 35 requests"), "{}", by["max_error_rate"].reason);
    assert!(!by["max_error_rate"].passed);
    let (_, limits) = expectations(&expect(100.0, 250, 1), 3000, 5000, &timed, true);
    assert!(!limits.iter().find(|l| l.name == "recover_within").unwrap().passed);
}

#[test]
fn one_slow_request_after_the_traffic_is_back_does_not_undo_it() {
    let timed = load(12, |t| match t {
        3000..5000 => (5.0, true),
        9000 => (900.0, false),
        _ => (20.0, false),
    });
    assert_eq!(recovery(&timed, 5000, &expect(5.0, 250, 10).latency), Some(0));
    // Four good ones between two bad ones are not back yet.
    let timed = load(12, |t| match t {
        5000 | 5500 => (5.0, true),
        _ => (20.0, false),
    });
    assert_eq!(recovery(&timed, 5000, &BTreeMap::new()), Some(600));
}

#[test]
fn traffic_that_never_comes_back_or_no_load_fails_closed() {
    let timed = load(6, |t| if t >= 3000 { (5.0, true) } else { (20.0, false) });
    let (recovered, limits) = expectations(&expect(100.0, 250, 60), 3000, 4000, &timed, true);
    assert_eq!(recovered, None);
    let rec = limits.iter().find(|l| l.name == "recover_within").unwrap();
    assert!(!rec.passed && rec.measured == "never", "{rec:?}");
    let (recovered, limits) = expectations(&expect(1.0, 250, 10), 3000, 4000, &[], false);
    assert_eq!(recovered, None);
    assert_eq!(limits.len(), 3);
    assert!(limits.iter().all(|l| !l.passed && l.reason.starts_with("cannot be checked: no load ran")), "{limits:?}");
    // An expectation on an endpoint the load never sent fails too.
    let mut e = expect(1.0, 250, 10);
    e.latency.insert("GET /orders".into(), Duration::from_millis(100));
    let timed = load(6, |_| (20.0, false));
    let (_, limits) = expectations(&e, 1000, 2000, &timed, true);
    let orders = limits.iter().find(|l| l.name == "latency GET /orders").unwrap();
    assert!(!orders.passed && orders.reason.contains("no `GET /orders` request"), "{orders:?}");
}
