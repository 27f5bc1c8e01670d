//! What a migration does to the traffic, seen from the database: a sampler that reads
//! `pg_stat_activity` and `pg_locks` every 100 ms over one connection of its own while
//! a release's migration runs against a copy that serves load, and what its samples say
//! ([`analyse`]): who waited on a lock, for what mode of which relation, blocked by
//! whom holding what; for each migration file, when it ran, the locks its transaction
//! held and for how long, and the WAL written meanwhile.
//!
//! The migration's connections are told apart by their `application_name` (rehearse
//! sets `PGAPPNAME` for the release's install, which libpq-based clients such as `psql`
//! take); a statement is traced to its file by its text (comments and white space
//! aside), among the files the new release brings.
//!
//! The sampler's own cost: one prepared statement a tick, and the locks it takes are
//! `AccessShareLock`s on the catalogs and statistics views it reads — never one on a
//! relation of the application, so it cannot block the traffic or the migration
//! (`lock_timeout` and `statement_timeout` bound it if a catalog is locked). Resolution:
//! a wait seen in consecutive samples is one wait, lasting from its first sample to its
//! last plus one interval (so at most one interval more than it did).
//!
//! A PostgreSQL client crate (tokio-postgres) instead of `psql` processes as elsewhere
//! in this module: ten queries a second over one connection, for minutes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, MissedTickBehavior};

use crate::description::template::DatabaseOutputs;

/// How often the sampler reads the server's locks.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// The `application_name` the release's install runs with, so that its connections are
/// known as the migration's.
pub const MIGRATION_APP: &str = "rehearse-migration";
/// The sampler's own `application_name`.
pub const SAMPLER_APP: &str = "rehearse-lock-sampler";
/// The most samples kept (50 minutes at 100 ms): a longer migration keeps its first.
pub const MAX_SAMPLES: usize = 30_000;
/// The most of a statement's text kept per backend and sample.
const QUERY_CHARS: i32 = 2048;

/// One read of the server's locks and the migration's connections (`$1` the migration's
/// `application_name`, `$2` the most of a statement kept). The backends that
/// matter (waiting on a lock, or the migration's) are read from `pg_stat_activity`
/// first; the lock table (`pg_locks`, the costlier read) is read once, and only when
/// there is one; each waiter's blockers (`pg_blocking_pids`, which reads the lock table
/// again) once per waiter, not once per lock compared.
pub const SAMPLE_SQL: &str = r"
WITH a AS MATERIALIZED (
  SELECT pid, application_name AS app, state, wait_event_type, left(query, $2) AS query
  FROM pg_stat_activity
  WHERE pid <> pg_backend_pid() AND (wait_event_type = 'Lock' OR application_name = $1)
), l AS MATERIALIZED (
  SELECT pid, locktype, mode, granted, database, relation, transactionid, virtualxid
  FROM pg_locks
  WHERE EXISTS (SELECT 1 FROM a)
), w AS MATERIALIZED (
  SELECT a.pid, a.app, a.query, x.mode, x.locktype, x.database, x.relation, x.transactionid, x.virtualxid,
    pg_blocking_pids(a.pid) AS blockers
  FROM a
  JOIN l x ON x.pid = a.pid AND NOT x.granted
  WHERE a.wait_event_type = 'Lock'
)
SELECT json_build_object(
  'wal', pg_current_wal_lsn()::text,
  'waits', coalesce((
    SELECT json_agg(json_build_object(
      'pid', w.pid, 'app', w.app, 'query', w.query,
      'mode', w.mode, 'target', coalesce(c.relname, w.relation::text, w.locktype),
      'blockers', w.blockers,
      'held', coalesce((
        SELECT json_agg(json_build_object('pid', h.pid, 'mode', h.mode))
        FROM l h
        WHERE h.granted AND h.pid = ANY (w.blockers) AND h.locktype = w.locktype
          AND h.database IS NOT DISTINCT FROM w.database AND h.relation IS NOT DISTINCT FROM w.relation
          AND h.transactionid IS NOT DISTINCT FROM w.transactionid
          AND h.virtualxid IS NOT DISTINCT FROM w.virtualxid), '[]'::json)))
    FROM w
    LEFT JOIN pg_class c ON c.oid = w.relation), '[]'::json),
  'migration', coalesce((
    SELECT json_agg(json_build_object(
      'pid', a.pid, 'state', a.state, 'query', a.query,
      'locks', coalesce((
        SELECT json_agg(json_build_object('mode', m.mode, 'target', coalesce(c.relname, m.relation::text)))
        FROM l m
        LEFT JOIN pg_class c ON c.oid = m.relation
        LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE m.pid = a.pid AND m.granted AND m.locktype = 'relation'
          AND m.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND coalesce(n.nspname, '') NOT IN ('pg_catalog', 'information_schema')
          AND coalesce(n.nspname, '') NOT LIKE 'pg_toast%'), '[]'::json)))
    FROM a
    WHERE a.app = $1), '[]'::json)
)::text";

/// A backend waiting for a heavyweight lock, as one sample saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Waiting {
    pub pid: i32,
    pub app: String,
    pub query: String,
    /// The mode it asked for.
    pub mode: String,
    /// The relation's name, or the kind of lock (`transactionid`, `virtualxid`, ...).
    pub target: String,
    pub blockers: Vec<i32>,
    /// What its blockers hold on the same object.
    pub held: Vec<Held>,
}

/// A lock held by a blocker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub pid: i32,
    pub mode: String,
}

/// One of the migration's connections, as one sample saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Migrating {
    pub pid: i32,
    pub state: Option<String>,
    pub query: String,
    /// The relation locks its transaction holds (the application's relations only).
    pub locks: Vec<Lock>,
}

/// A lock on a relation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lock {
    pub mode: String,
    pub target: String,
}

/// One read of the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Since the sampler started, ms.
    #[serde(default)]
    pub at_ms: u64,
    /// `pg_current_wal_lsn()`.
    pub wal: String,
    pub waits: Vec<Waiting>,
    pub migration: Vec<Migrating>,
}

/// Why the sampler could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    #[error("cannot connect to the copy's database at {endpoint} to watch its locks: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot read the copy's locks: {0}")]
    Query(#[source] tokio_postgres::Error),
    #[error("unexpected answer to the lock sampler's query: {0}")]
    Answer(String),
}

/// A running sampler: [`Sampler::stop`] ends it and hands over its samples.
pub struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(Vec<Sample>, Option<SamplerError>)>,
    /// The sampler's own backend, to read its locks from `pg_locks`.
    pub pid: i32,
}

impl Sampler {
    /// Connects to `db` and samples every `every` until stopped. The migration's
    /// connections are those whose `application_name` is `migration_app`.
    pub async fn start(db: &DatabaseOutputs, migration_app: &str, every: Duration) -> Result<Sampler, SamplerError> {
        let endpoint = db.endpoint.clone();
        let connect_err = |source| SamplerError::Connect { endpoint: endpoint.clone(), source };
        let mut config = tokio_postgres::Config::new();
        config
            .host(&db.host)
            .port(db.port.parse().unwrap_or(5432))
            .user(&db.user)
            .password(&db.password)
            .dbname(&db.name)
            .application_name(SAMPLER_APP)
            .connect_timeout(Duration::from_secs(5))
            // Never wait behind a lock, never run long: a sample missed is one gap.
            .options("-c lock_timeout=200ms -c statement_timeout=2s");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(connect_err)?;
        let conn = tokio::spawn(connection);
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(SamplerError::Query)?
            .try_get(0)
            .map_err(SamplerError::Query)?;
        let statement = client.prepare(SAMPLE_SQL).await.map_err(SamplerError::Query)?;
        let app = migration_app.to_string();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut samples = Vec::new();
            let mut error = None;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                let at_ms = start.elapsed().as_millis() as u64;
                let row = match client.query_one(&statement, &[&app, &QUERY_CHARS]).await {
                    Ok(row) => row,
                    Err(e) if e.as_db_error().is_some() => {
                        // A timeout (a catalog locked): this sample is missed.
                        continue;
                    }
                    Err(e) => {
                        error = Some(SamplerError::Query(e));
                        break;
                    }
                };
                let text: String = match row.try_get(0) {
                    Ok(t) => t,
                    Err(e) => {
                        error = Some(SamplerError::Query(e));
                        break;
                    }
                };
                match serde_json::from_str::<Sample>(&text) {
                    Ok(mut s) => {
                        s.at_ms = at_ms;
                        if samples.len() < MAX_SAMPLES {
                            samples.push(s);
                        }
                    }
                    Err(e) => {
                        error = Some(SamplerError::Answer(e.to_string()));
                        break;
                    }
                }
            }
            // Relations the migration made were not visible while its transaction was
            // open: named now, where they exist.
            if error.is_none() {
                name_new_relations(&client, &mut samples).await;
            }
            drop(client);
            conn.abort();
            (samples, error)
        });
        Ok(Sampler { stop, task, pid })
    }

    /// Stops sampling; the samples taken, and why sampling ended early if it did.
    pub async fn stop(self) -> (Vec<Sample>, Option<SamplerError>) {
        // Gone already when the task stopped on its own.
        self.stop.send(()).ok();
        match self.task.await {
            Ok(out) => out,
            Err(e) => (Vec::new(), Some(SamplerError::Answer(format!("the sampler stopped: {e}")))),
        }
    }
}

/// Gives a name to every lock target that is an oid (a relation made by an open
/// transaction when it was sampled) and exists now.
async fn name_new_relations(client: &tokio_postgres::Client, samples: &mut [Sample]) {
    let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let oids: BTreeSet<u32> = samples
        .iter()
        .flat_map(|s| {
            let waits = s.waits.iter().map(|w| w.target.as_str());
            waits.chain(s.migration.iter().flat_map(|m| m.locks.iter().map(|l| l.target.as_str())))
        })
        .filter(|t| numeric(t))
        .filter_map(|t| t.parse().ok())
        .collect();
    if oids.is_empty() {
        return;
    }
    let list: Vec<u32> = oids.into_iter().collect();
    let Ok(rows) = client.query("SELECT oid, relname::text FROM pg_class WHERE oid = ANY ($1)", &[&list]).await else {
        return;
    };
    let names: BTreeMap<String, String> =
        rows.iter().map(|r| (r.get::<_, u32>(0).to_string(), r.get::<_, String>(1))).collect();
    for s in samples.iter_mut() {
        for w in &mut s.waits {
            if let Some(n) = names.get(&w.target) {
                w.target = n.clone();
            }
        }
        for l in s.migration.iter_mut().flat_map(|m| m.locks.iter_mut()) {
            if let Some(n) = names.get(&l.target) {
                l.target = n.clone();
            }
        }
    }
}

mod analysis;
pub use analysis::*;
