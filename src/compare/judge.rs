//! The judge: each metric of the candidate against the baseline, classified as Kayenta's
//! NetflixACAJudge does (its `MannWhitneyClassifier`), then a score over the metrics.
//!
//! Per metric: the Mann-Whitney U test of candidate against baseline, with the
//! Hodges-Lehmann estimate of the shift and its confidence interval (0.98 by default).
//! The tolerance is a fraction (0.25) of the estimate's size: the metric is **High** when
//! the whole interval lies above `+tolerance` (and an increase is what the metric's
//! direction calls bad), **Low** when it lies below `-tolerance` (a decrease is bad),
//! **Pass** otherwise, and **NoData** when either side has fewer samples than the
//! minimum (50) or none. Identical samples pass without a test.
//!
//! Score: passing metrics / judged metrics × 100 (NoData is not judged), against the
//! `pass` (95) and `marginal` (75) thresholds. The comparison fails — closed — when a
//! critical metric is High, Low or NoData, or when the score is below `pass`
//! (marginal scores fail the gate too, and say so).

use serde::{Deserialize, Serialize};

use super::stats;

/// Which change of a metric is bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Only an increase (latency, errors, size, time).
    Increase,
    /// Only a decrease (throughput).
    Decrease,
    /// Any change.
    Either,
}

/// What the judge made of one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Classification {
    Pass,
    High,
    Low,
    NoData,
}

impl Classification {
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Pass => "Pass",
            Classification::High => "High",
            Classification::Low => "Low",
            Classification::NoData => "NoData",
        }
    }
}

/// The judge's settings (the description's `compare.judge`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The confidence level of the interval. Default 0.98.
    pub confidence: f64,
    /// The tolerance as a fraction of the Hodges-Lehmann estimate. Default 0.25.
    pub tolerance: f64,
    /// Fewer samples on either side than this: NoData. Default 50.
    pub min_samples: usize,
    /// Score at or above which the comparison passes. Default 95.
    pub pass: f64,
    /// Score at or above which a failing comparison is "marginal". Default 75.
    pub marginal: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { confidence: 0.98, tolerance: 0.25, min_samples: 50, pass: 95.0, marginal: 75.0 }
    }
}

/// One metric to judge: its samples on both sides, which way is bad, and whether it is
/// critical (its failure, or its lack of data, fails the comparison whatever the score).
#[derive(Clone, Debug)]
pub struct Metric<'a> {
    pub name: &'a str,
    pub baseline: &'a [f64],
    pub candidate: &'a [f64],
    pub direction: Direction,
    pub critical: bool,
}

/// The verdict on one metric, with what it rests on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub metric: String,
    pub classification: Classification,
    pub direction: Direction,
    pub critical: bool,
    pub baseline_samples: usize,
    pub candidate_samples: usize,
    /// The Hodges-Lehmann estimate of candidate − baseline.
    pub estimate: Option<f64>,
    /// Its confidence interval.
    pub interval: Option<(f64, f64)>,
    /// ± this around 0 is tolerated.
    pub tolerance: Option<f64>,
    pub p_value: Option<f64>,
    /// One line: why.
    pub reason: String,
}

/// The most samples a side the test uses (4 million pairwise differences).
pub const MAX_SAMPLES: usize = 2000;

/// `values`, or `n` evenly spaced order statistics of them when there are more.
fn thin(values: &[f64], n: usize) -> Vec<f64> {
    if values.len() <= n {
        return values.to_vec();
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (0..n).map(|i| sorted[i * (sorted.len() - 1) / (n - 1)]).collect()
}

/// Classifies one metric.
pub fn classify(m: &Metric<'_>, s: &Settings) -> Verdict {
    let mut v = Verdict {
        metric: m.name.to_string(),
        classification: Classification::NoData,
        direction: m.direction,
        critical: m.critical,
        baseline_samples: m.baseline.len(),
        candidate_samples: m.candidate.len(),
        estimate: None,
        interval: None,
        tolerance: None,
        p_value: None,
        reason: String::new(),
    };
    let fewest = m.baseline.len().min(m.candidate.len());
    if fewest < s.min_samples {
        v.reason = format!(
            "{} baseline and {} candidate samples; at least {} each are needed",
            m.baseline.len(),
            m.candidate.len(),
            s.min_samples
        );
        return v;
    }
    if m.baseline == m.candidate {
        v.classification = Classification::Pass;
        v.reason = "identical samples".into();
        return v;
    }
    // The pairwise differences grow as n²: past 2,000 samples a side, the samples are
    // thinned to 2,000 evenly spaced quantiles of their own distribution.
    let (candidate, baseline) = (thin(m.candidate, MAX_SAMPLES), thin(m.baseline, MAX_SAMPLES));
    let t = match stats::mann_whitney(&candidate, &baseline, s.confidence) {
        Ok(t) => t,
        // Every value the same on both sides, or not a number: nothing to judge by.
        Err(stats::StatsError::AllTied) => {
            v.classification = Classification::Pass;
            v.reason = "every sample is the same value".into();
            return v;
        }
        Err(e) => {
            v.reason = e.to_string();
            return v;
        }
    };
    let tolerance = s.tolerance * t.estimate.abs();
    v.estimate = Some(t.estimate);
    v.interval = Some(t.interval);
    v.tolerance = Some(tolerance);
    v.p_value = Some(t.p_value);
    let (lo, hi) = t.interval;
    let increase_bad = matches!(m.direction, Direction::Increase | Direction::Either);
    let decrease_bad = matches!(m.direction, Direction::Decrease | Direction::Either);
    let shown = |x: f64| format!("{x:.4}");
    let outside = |word: &str, side: &str, sign: &str| {
        format!(
            "{word}: the {:.0} % interval of the shift [{}, {}] lies {side} the tolerance {sign}{}",
            s.confidence * 100.0,
            shown(lo),
            shown(hi),
            shown(tolerance)
        )
    };
    (v.classification, v.reason) = if increase_bad && lo > tolerance {
        (Classification::High, outside("higher", "above", ""))
    } else if decrease_bad && hi < -tolerance {
        (Classification::Low, outside("lower", "below", "-"))
    } else {
        let why = format!(
            "within tolerance: shift {} in [{}, {}] (p = {:.3})",
            shown(t.estimate),
            shown(lo),
            shown(hi),
            t.p_value
        );
        (Classification::Pass, why)
    };
    v
}

/// The comparison's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Marginal,
    Fail,
}

/// The score and the outcome over every metric's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Passing / judged × 100; `None` when nothing could be judged.
    pub score: Option<f64>,
    pub judged: usize,
    pub passed: usize,
    pub outcome: Outcome,
    /// The metrics that failed the comparison (High, Low, or a critical NoData).
    pub failed: Vec<String>,
    /// One line: why the outcome.
    pub reason: String,
}

/// Scores verdicts (fail closed: no judged metric, or a critical one failing or without
/// data, fails).
pub fn score(verdicts: &[Verdict], s: &Settings) -> Score {
    let judged: Vec<&Verdict> = verdicts.iter().filter(|v| v.classification != Classification::NoData).collect();
    let passed = judged.iter().filter(|v| v.classification == Classification::Pass).count();
    let failed: Vec<String> = verdicts
        .iter()
        .filter(|v| {
            matches!(v.classification, Classification::High | Classification::Low)
                || (v.critical && v.classification == Classification::NoData)
        })
        .map(|v| v.metric.clone())
        .collect();
    let critical: Vec<&Verdict> =
        verdicts.iter().filter(|v| v.critical && v.classification != Classification::Pass).collect();
    let value = (!judged.is_empty()).then(|| passed as f64 / judged.len() as f64 * 100.0);
    let (outcome, reason) = match value {
        None => (Outcome::Fail, "no metric could be judged".to_string()),
        Some(_) if !critical.is_empty() => (
            Outcome::Fail,
            format!(
                "critical metric {} is {}",
                critical[0].metric,
                critical.iter().map(|v| v.classification.as_str()).next().unwrap_or_default()
            ),
        ),
        Some(v) if v >= s.pass => (Outcome::Pass, format!("score {v:.1} ≥ {:.0}", s.pass)),
        Some(v) if v >= s.marginal => {
            (Outcome::Marginal, format!("score {v:.1} is marginal ({:.0} ≤ score < {:.0})", s.marginal, s.pass))
        }
        Some(v) => (Outcome::Fail, format!("score {v:.1} < {:.0}", s.marginal)),
    };
    Score { score: value, judged: judged.len(), passed, outcome, failed, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` latencies around `centre` ms (a deterministic spread of ±20 %).
    fn latencies(n: usize, centre: f64, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                centre * (0.8 + 0.4 * ((state >> 11) as f64 / (1u64 << 53) as f64))
            })
            .collect()
    }

    fn metric<'a>(name: &'a str, b: &'a [f64], c: &'a [f64], critical: bool) -> Metric<'a> {
        Metric { name, baseline: b, candidate: c, direction: Direction::Increase, critical }
    }

    #[test]
    fn a_slower_endpoint_is_high_an_equal_one_passes_a_faster_one_is_no_regression() {
        let s = Settings::default();
        let base = latencies(200, 20.0, 1);
        let same = latencies(200, 20.0, 2);
        let slow = latencies(200, 35.0, 3);
        let fast = latencies(200, 10.0, 4);
        assert_eq!(classify(&metric("GET /", &base, &same, false), &s).classification, Classification::Pass);
        let v = classify(&metric("GET /slow", &base, &slow, false), &s);
        assert_eq!(v.classification, Classification::High, "{v:?}");
        assert!(v.interval.unwrap().0 > v.tolerance.unwrap());
        // Latency: only an increase is bad.
        assert_eq!(classify(&metric("GET /fast", &base, &fast, false), &s).classification, Classification::Pass);
        let either = Metric { direction: Direction::Either, ..metric("GET /fast", &base, &fast, false) };
        assert_eq!(classify(&either, &s).classification, Classification::Low);
    }

    #[test]
    fn too_few_samples_is_no_data_and_fails_closed_when_critical() {
        let s = Settings::default();
        let (b, c) = (latencies(49, 20.0, 5), latencies(300, 20.0, 6));
        let v = classify(&metric("errors", &b, &c, true), &s);
        assert_eq!(v.classification, Classification::NoData);
        let ok_b = latencies(100, 20.0, 7);
        let ok_c = latencies(100, 20.0, 8);
        let fine = classify(&metric("GET /", &ok_b, &ok_c, false), &s);
        let sc = score(&[fine.clone(), v], &s);
        assert_eq!((sc.outcome, sc.failed.as_slice()), (Outcome::Fail, &["errors".to_string()][..]));
        // Not critical: not judged, and the rest decides.
        let v = classify(&metric("errors", &b, &c, false), &s);
        let sc = score(&[fine, v], &s);
        assert_eq!((sc.outcome, sc.judged, sc.score), (Outcome::Pass, 1, Some(100.0)));
        assert_eq!(score(&[], &s).outcome, Outcome::Fail, "nothing judged fails closed");
    }

    #[test]
    fn large_samples_are_thinned_to_their_quantiles() {
        let many: Vec<f64> = (0..10_001).map(f64::from).collect();
        let t = thin(&many, 101);
        assert_eq!((t.len(), t[0], t[50], t[100]), (101, 0.0, 5000.0, 10_000.0));
        let s = Settings::default();
        let (b, c) = (latencies(20_000, 20.0, 9), latencies(20_000, 30.0, 10));
        assert_eq!(classify(&metric("GET /", &b, &c, false), &s).classification, Classification::High);
    }

    #[test]
    fn the_score_against_the_thresholds() {
        let s = Settings::default();
        let pass = |name: &str| Verdict {
            metric: name.into(),
            classification: Classification::Pass,
            direction: Direction::Increase,
            critical: false,
            baseline_samples: 100,
            candidate_samples: 100,
            estimate: None,
            interval: None,
            tolerance: None,
            p_value: None,
            reason: String::new(),
        };
        let high = |name: &str| Verdict { classification: Classification::High, ..pass(name) };
        let mut v: Vec<Verdict> = (0..19).map(|i| pass(&format!("m{i}"))).collect();
        v.push(high("slow"));
        let sc = score(&v, &s);
        assert_eq!((sc.outcome, sc.score), (Outcome::Pass, Some(95.0)), "19 of 20 pass: 95");
        v.push(high("slower"));
        let sc = score(&v, &s);
        assert_eq!(sc.outcome, Outcome::Marginal, "{sc:?}");
        assert_eq!(sc.failed, ["slow", "slower"]);
        let mut v: Vec<Verdict> = (0..3).map(|i| pass(&format!("m{i}"))).collect();
        v.push(high("slow"));
        v.push(high("slower"));
        assert_eq!(score(&v, &s).outcome, Outcome::Fail, "60 < 75");
        // A critical metric that fails fails the comparison whatever the score.
        let mut v: Vec<Verdict> = (0..99).map(|i| pass(&format!("m{i}"))).collect();
        v.push(Verdict { critical: true, ..high("checkout") });
        let sc = score(&v, &s);
        assert_eq!((sc.outcome, sc.score), (Outcome::Fail, Some(99.0)));
        assert!(sc.reason.contains("checkout"), "{}", sc.reason);
    }

    // ---------------------------------------------------------------------------------
    // The false-alarm rate: the same release on both sides must (almost) never fail.
    // Checked here on recorded samples and on seeded draws, in milliseconds; the live
    // comparison of one release with itself (tests/compare.rs) runs once in `make test`
    // and twenty times in `make test-full`.

    use rand::{RngExt, SeedableRng};
    use std::collections::BTreeMap;

    /// One side of a recorded comparison (compare.json's `measured` and
    /// `migration_ms`).
    #[derive(Deserialize)]
    struct RecordedSide {
        latencies: BTreeMap<String, Vec<f64>>,
        errors: BTreeMap<String, Vec<f64>>,
        migration_ms: Vec<f64>,
    }

    #[derive(Deserialize)]
    struct Recorded {
        seed: u64,
        critical: Vec<String>,
        baseline: RecordedSide,
        candidate: RecordedSide,
    }

    /// Live comparisons of the demo's v2 with itself (testdata/README.md: how they were
    /// recorded).
    fn recorded() -> Vec<Recorded> {
        serde_json::from_str(include_str!("testdata/same_release.json")).unwrap()
    }

    /// Every metric of a comparison, as `rehearse compare` builds them: latency and
    /// errors per endpoint (an increase is bad), and the migration time.
    fn judge_sides(b: &RecordedSide, c: &RecordedSide, critical: &[String], s: &Settings) -> (Vec<Verdict>, Score) {
        let mut out = Vec::new();
        let mut add = |name: String, base: &[f64], cand: &[f64]| {
            let critical = critical.contains(&name);
            let m = Metric { name: &name, baseline: base, candidate: cand, direction: Direction::Increase, critical };
            out.push(classify(&m, s));
        };
        for (e, base) in &b.latencies {
            add(format!("latency {e}"), base, c.latencies.get(e).map_or(&[][..], Vec::as_slice));
            let errors = |side: &RecordedSide| side.errors.get(e).cloned().unwrap_or_default();
            add(format!("errors {e}"), &errors(b), &errors(c));
        }
        add("migration time".into(), &b.migration_ms, &c.migration_ms);
        let sc = score(&out, s);
        (out, sc)
    }

    /// `make test-full` (REHEARSE_TEST_FULL=1), not `make test`.
    fn full() -> bool {
        std::env::var_os("REHEARSE_TEST_FULL").is_some()
    }

    /// How many draws the seeded checks make: a tenth of the full count in `make test`,
    /// all of it in `make test-full`.
    fn draws(all: usize) -> usize {
        if full() {
            all
        } else {
            all / 10
        }
    }

    /// A latency (ms) from a log-normal distribution of median `median` (σ = 0.35 of
    /// its log), with one request in fifty 3–8× slower: the shape of the demo's.
    fn latency(rng: &mut rand::rngs::Xoshiro256PlusPlus, median: f64) -> f64 {
        let (u1, u2): (f64, f64) = (1.0 - rng.random::<f64>(), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let v = median * (0.35 * z).exp();
        let v = if rng.random::<f64>() < 0.02 { v * rng.random_range(3.0..8.0) } else { v };
        // Recorded to the microsecond, as the load measures them.
        (v * 1000.0).round() / 1000.0
    }

    #[test]
    fn recorded_same_release_pairs_raise_no_alarm() {
        let s = Settings::default();
        let pairs = recorded();
        assert!(!pairs.is_empty());
        for p in &pairs {
            let (verdicts, sc) = judge_sides(&p.baseline, &p.candidate, &p.critical, &s);
            assert!(sc.judged >= 6, "seed {}: every latency and error metric is judged: {verdicts:#?}", p.seed);
            assert_eq!(sc.outcome, Outcome::Pass, "seed {}: {sc:?}\n{verdicts:#?}", p.seed);
            // The same with the sides swapped: no metric is High either way.
            let (_, swapped) = judge_sides(&p.candidate, &p.baseline, &p.critical, &s);
            assert_eq!(swapped.outcome, Outcome::Pass, "seed {}, swapped: {swapped:?}", p.seed);
        }
    }

    /// Both sides resampled (with replacement, seeded) from the pooled recorded samples
    /// of one endpoint: two draws from one real distribution, its ties and its outliers
    /// included. The rate of High is at most the interval's one-sided miss rate,
    /// (1 − confidence) / 2 = 1 %; the tolerance makes it lower.
    #[test]
    fn resampled_recorded_latencies_raise_alarms_at_most_at_the_confidence_level() {
        let s = Settings::default();
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(24);
        let (mut judged, mut alarms) = (0usize, Vec::new());
        let n = draws(200);
        for p in recorded() {
            for (e, base) in &p.baseline.latencies {
                let pool: Vec<f64> =
                    base.iter().chain(p.candidate.latencies.get(e).into_iter().flatten()).copied().collect();
                let half = pool.len() / 2;
                for i in 0..n {
                    let mut draw = || (0..half).map(|_| pool[rng.random_range(0..pool.len())]).collect::<Vec<f64>>();
                    let (b, c) = (draw(), draw());
                    let v = classify(&metric(e, &b, &c, false), &s);
                    judged += 1;
                    if v.classification != Classification::Pass {
                        alarms.push(format!("seed {} {e} draw {i}: {}", p.seed, v.reason));
                    }
                }
            }
        }
        eprintln!("{} alarms in {judged} resampled same-release metrics", alarms.len());
        let bound = (1.0 - s.confidence) / 2.0;
        assert!(alarms.len() as f64 <= bound * judged as f64, "{} of {judged}: {alarms:#?}", alarms.len());
    }

    /// Whole comparisons of one release with itself, drawn from identical
    /// distributions in the demo's shape (three endpoints, 60 requests each, errors
    /// rare on both sides), and in `make test-full` at a larger scale too (300 requests
    /// each): a comparison fails when any of its metrics does, so its rate is bounded by
    /// the per-metric rate, (1 − confidence) / 2, times the number of judged metrics.
    #[test]
    fn seeded_same_release_comparisons_rarely_fail() {
        let s = Settings::default();
        let critical = vec!["errors GET /products".to_string()];
        // (requests an endpoint, seed, comparisons in `make test-full`)
        let scales: &[(usize, u64, usize)] = if full() { &[(60, 1, 1000), (300, 2, 100)] } else { &[(60, 1, 1000)] };
        for &(requests, seed, all) in scales {
            let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
            let endpoints = [("GET /products", 24.0), ("GET /customers/count", 9.0), ("GET /version", 2.5)];
            let side = |rng: &mut rand::rngs::Xoshiro256PlusPlus| {
                let mut sd = RecordedSide { latencies: BTreeMap::new(), errors: BTreeMap::new(), migration_ms: vec![] };
                for (e, median) in endpoints {
                    sd.latencies.insert(e.into(), (0..requests).map(|_| latency(rng, median)).collect());
                    let errors = (0..requests).map(|_| if rng.random::<f64>() < 0.002 { 1.0 } else { 0.0 }).collect();
                    sd.errors.insert(e.into(), errors);
                }
                sd.migration_ms = vec![latency(rng, 400.0)];
                sd
            };
            let n = draws(all);
            let (mut failed, mut judged) = (Vec::new(), 0);
            for i in 0..n {
                let (b, c) = (side(&mut rng), side(&mut rng));
                let (verdicts, sc) = judge_sides(&b, &c, &critical, &s);
                assert!(sc.judged >= 6, "{verdicts:#?}");
                judged += sc.judged;
                if sc.outcome != Outcome::Pass {
                    failed.push(format!("{requests} requests, draw {i}: {:?}: {}", sc.failed, sc.reason));
                }
            }
            eprintln!("{requests} requests an endpoint: {} of {n} same-release comparisons failed", failed.len());
            let bound = (1.0 - s.confidence) / 2.0 * judged as f64 / n as f64;
            assert!(failed.len() as f64 <= bound * n as f64, "{} of {n}: {failed:#?}", failed.len());
        }
    }
}
