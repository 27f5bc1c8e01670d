//! What a comparison reads from each copy's database: its size once the release's
//! migration (and the suites) have run, and per-statement times from
//! `pg_stat_statements` over the load — the counters read before and after it, the
//! statements matched by their normalized text (query ids differ between clusters).
//!
//! `pg_stat_statements` keeps aggregates (calls, total time), not samples: the
//! statements are shown side by side, never judged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::description::template::DatabaseOutputs;

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

/// Why a database's statistics could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StatsError {
    #[error("psql took longer than 30 s")]
    TimedOut,
    #[error("cannot run psql: {0}")]
    Spawn(String),
    /// psql's first line of complaint.
    #[error("{0}")]
    Psql(String),
    #[error("unexpected pg_stat_statements output: {0}")]
    Output(String),
    #[error("cannot query the copy from here: {0}")]
    Unreachable(Box<StatsError>),
    #[error("not read after the load")]
    NotReadAfter,
}

/// A database's size before the load, and its statement counters with the database
/// of its server they were read in, or why they could not be read.
pub struct Before {
    size_bytes: Option<u64>,
    counters: Result<(String, Vec<Counters>), StatsError>,
}

/// `psql`, run with a database's libpq environment (the password never on a command
/// line): the binary to run.
#[derive(Clone, Debug)]
pub struct Psql(pub std::path::PathBuf);

impl Psql {
    /// One query in `database` of `db`'s server; its output.
    async fn query(&self, db: &DatabaseOutputs, database: &str, sql: &str) -> Result<String, StatsError> {
        let mut cmd = tokio::process::Command::new(&self.0);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .envs(db.libpq_env())
            .env("PGDATABASE", database)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| StatsError::TimedOut)?
            .map_err(|e| StatsError::Spawn(e.to_string()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(StatsError::Psql(err.lines().next().unwrap_or("psql failed").trim().to_string()))
        }
    }

    /// The release's role's statements in database `db` of the server, as
    /// `pg_stat_statements` (in database `in_db`) counts them.
    async fn counters(&self, db: &DatabaseOutputs, in_db: &str) -> Result<Vec<Counters>, StatsError> {
        let sql = format!(
            "SELECT coalesce(json_agg(json_build_object('query', s.query, 'calls', s.calls, \
             'total_ms', s.total_exec_time)), '[]') FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = '{}' \
             AND s.userid = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
            db.name.replace('\'', "''")
        );
        let out = self.query(db, in_db, &sql).await?;
        serde_json::from_str(out.trim()).map_err(|e| StatsError::Output(e.to_string()))
    }

    /// Before the load: every database's size and statement counters, over a kept
    /// environment's connection (the release's role).
    pub async fn before(&self, databases: Option<&BTreeMap<String, DatabaseOutputs>>) -> BTreeMap<String, Before> {
        let Some(databases) = databases else { return BTreeMap::new() };
        let mut out = BTreeMap::new();
        for (name, db) in databases {
            // Not reachable from here (an RDS copy inside its VPC): said once, not retried.
            let size = match self.query(db, &db.name, "SELECT pg_database_size(current_database())").await {
                Ok(s) => s.trim().parse().ok(),
                Err(e) => {
                    let counters = Err(StatsError::Unreachable(Box::new(e)));
                    out.insert(name.clone(), Before { size_bytes: None, counters });
                    continue;
                }
            };
            // The cluster's `postgres` database, where rehearse creates the extension
            // locally; else the copy's own, where one made on RDS usually is.
            let mut found = self.counters(db, "postgres").await.map(|c| ("postgres".to_string(), c));
            if found.is_err() {
                found = self.counters(db, &db.name).await.map(|c| (db.name.clone(), c));
            }
            out.insert(name.clone(), Before { size_bytes: size, counters: found });
        }
        out
    }

    /// After the load: what it ran in each database, the counters now (read where they
    /// were before) less those before.
    pub async fn during(
        &self,
        databases: Option<&BTreeMap<String, DatabaseOutputs>>,
        before: BTreeMap<String, Before>,
    ) -> BTreeMap<String, Measured> {
        let mut out = BTreeMap::new();
        for (name, b) in before {
            let statements = match (b.counters, databases.and_then(|d| d.get(&name))) {
                (Ok((in_db, before)), Some(db)) => self.counters(db, &in_db).await.map(|after| during(&before, &after)),
                (Ok(_), None) => Err(StatsError::NotReadAfter),
                (Err(e), _) => Err(e),
            };
            let size_bytes = b.size_bytes;
            let m = match statements {
                Ok(statements) => Measured { size_bytes, statements, note: None },
                Err(e) => {
                    Measured { size_bytes, statements: Vec::new(), note: Some(format!("no per-statement times: {e}")) }
                }
            };
            out.insert(name, m);
        }
        out
    }
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
