//! What a comparison reads from each copy's database: its size once the release's
//! migration (and the suites) have run, and per-statement times from
//! `pg_stat_statements` over the load — the counters read before and after it, the
//! statements matched by their normalized text (query ids differ between clusters).
//!
//! `pg_stat_statements` keeps aggregates (calls, total time), not samples: the
//! statements are shown side by side, never judged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One statement's counters as `pg_stat_statements` has them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub query: String,
    pub calls: u64,
    /// Total execution time, ms.
    pub total_ms: f64,
}

/// A statement's share of the load: calls made and their mean time, ms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub query: String,
    pub calls: u64,
    pub mean_ms: f64,
}

/// What one database of one side measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// `pg_database_size` before the load, bytes.
    pub size_bytes: Option<u64>,
    /// The statements run during the load, the costliest first.
    pub statements: Vec<Statement>,
    /// Why something could not be read (no `pg_stat_statements`, no route to it).
    pub note: Option<String>,
}

/// The statements run between `before` and `after`: the difference of their counters
/// (a statement first seen after the load counts whole), the costliest first.
pub fn during(before: &[Counters], after: &[Counters]) -> Vec<Statement> {
    let mut seen: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for c in before {
        let e = seen.entry(&c.query).or_default();
        e.0 += c.calls;
        e.1 += c.total_ms;
    }
    let mut now: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
    for c in after {
        let e = now.entry(&c.query).or_default();
        e.0 += c.calls;
        e.1 += c.total_ms;
    }
    let mut out: Vec<Statement> = now
        .into_iter()
        .filter_map(|(q, (calls, total))| {
            let (c0, t0) = seen.get(q).copied().unwrap_or_default();
            // Counters only grow; a reset in between counts from zero.
            let (calls, total) = if calls >= c0 { (calls - c0, (total - t0).max(0.0)) } else { (calls, total) };
            (calls > 0).then(|| Statement { query: q.to_string(), calls, mean_ms: total / calls as f64 })
        })
        .collect();
    out.sort_by(|a, b| (b.mean_ms * b.calls as f64).total_cmp(&(a.mean_ms * a.calls as f64)));
    out
}

/// The statements of both sides in one table, matched by text: (query, baseline,
/// candidate), the candidate's costliest first, at most `limit` rows.
pub fn side_by_side<'a>(
    baseline: &'a [Statement],
    candidate: &'a [Statement],
    limit: usize,
) -> Vec<(&'a str, Option<&'a Statement>, Option<&'a Statement>)> {
    let mut rows: Vec<(&str, Option<&Statement>, Option<&Statement>)> =
        candidate.iter().map(|c| (c.query.as_str(), baseline.iter().find(|b| b.query == c.query), Some(c))).collect();
    rows.extend(
        baseline
            .iter()
            .filter(|b| !candidate.iter().any(|c| c.query == b.query))
            .map(|b| (b.query.as_str(), Some(b), None)),
    );
    rows.truncate(limit);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(q: &str, calls: u64, total_ms: f64) -> Counters {
        Counters { query: q.into(), calls, total_ms }
    }

    #[test]
    fn the_load_is_the_difference_of_the_counters() {
        let before = [c("SELECT 1", 10, 5.0), c("SELECT $1 FROM t", 4, 40.0)];
        let after = [c("SELECT 1", 10, 5.0), c("SELECT $1 FROM t", 14, 140.0), c("UPDATE t SET a = $1", 2, 3.0)];
        let d = during(&before, &after);
        assert_eq!(
            d,
            vec![
                Statement { query: "SELECT $1 FROM t".into(), calls: 10, mean_ms: 10.0 },
                Statement { query: "UPDATE t SET a = $1".into(), calls: 2, mean_ms: 1.5 },
            ]
        );
    }

    #[test]
    fn a_reset_in_between_counts_from_zero_and_rows_match_by_text() {
        let d = during(&[c("q", 50, 50.0)], &[c("q", 3, 6.0)]);
        assert_eq!(d, vec![Statement { query: "q".into(), calls: 3, mean_ms: 2.0 }]);
        let b = vec![Statement { query: "a".into(), calls: 1, mean_ms: 1.0 }];
        let k = vec![
            Statement { query: "b".into(), calls: 1, mean_ms: 9.0 },
            Statement { query: "a".into(), calls: 1, mean_ms: 2.0 },
        ];
        let rows = side_by_side(&b, &k, 10);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "b");
        assert!(rows[0].1.is_none());
        assert_eq!(rows[1].1.map(|s| s.mean_ms), Some(1.0));
    }
}
