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

/// One read of the server's locks and the migration's connections.
const SAMPLE_SQL: &str = r"
SELECT json_build_object(
  'wal', pg_current_wal_lsn()::text,
  'waits', coalesce((
    SELECT json_agg(json_build_object(
      'pid', a.pid, 'app', a.application_name, 'query', left(a.query, $2),
      'mode', l.mode, 'target', coalesce(c.relname, l.relation::text, l.locktype),
      'blockers', pg_blocking_pids(a.pid),
      'held', coalesce((
        SELECT json_agg(json_build_object('pid', h.pid, 'mode', h.mode))
        FROM pg_locks h
        WHERE h.granted AND h.pid = ANY (pg_blocking_pids(a.pid)) AND h.locktype = l.locktype
          AND h.database IS NOT DISTINCT FROM l.database AND h.relation IS NOT DISTINCT FROM l.relation
          AND h.transactionid IS NOT DISTINCT FROM l.transactionid
          AND h.virtualxid IS NOT DISTINCT FROM l.virtualxid), '[]'::json)))
    FROM pg_stat_activity a
    JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted
    LEFT JOIN pg_class c ON c.oid = l.relation
    WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid()), '[]'::json),
  'migration', coalesce((
    SELECT json_agg(json_build_object(
      'pid', a.pid, 'state', a.state, 'query', left(a.query, $2),
      'locks', coalesce((
        SELECT json_agg(json_build_object('mode', l.mode, 'target', coalesce(c.relname, l.relation::text)))
        FROM pg_locks l
        LEFT JOIN pg_class c ON c.oid = l.relation
        LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation'
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND coalesce(n.nspname, '') NOT IN ('pg_catalog', 'information_schema')
          AND coalesce(n.nspname, '') NOT LIKE 'pg_toast%'), '[]'::json)))
    FROM pg_stat_activity a
    WHERE a.application_name = $1 AND a.pid <> pg_backend_pid()), '[]'::json)
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

/// A file of the new release's migrations: its name and text.
#[derive(Clone, Debug)]
pub struct MigrationFile {
    pub name: String,
    pub text: String,
}

/// A backend's wait for a lock, over the samples that saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    pub pid: i32,
    pub app: String,
    pub query: String,
    pub mode: String,
    pub target: String,
    /// Who blocked it, with the modes they held.
    pub blockers: Vec<Held>,
    /// Whether a migration connection was among its blockers.
    pub by_migration: bool,
    /// The migration file running on a blocker when the wait was first seen.
    pub file: Option<String>,
    pub first_ms: u64,
    /// From its first sample to its last, plus one interval.
    pub waited_ms: u64,
}

/// A lock a migration file's transaction held, and for how long.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldLock {
    pub mode: String,
    pub target: String,
    pub held_ms: u64,
}

/// One migration file, as the samples saw it run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRun {
    pub file: String,
    pub start_ms: u64,
    /// From its first sample to its last, plus one interval.
    pub duration_ms: u64,
    /// The locks its transaction held, the longest held first.
    pub locks: Vec<HeldLock>,
    /// WAL written by the whole server while it ran, bytes.
    pub wal_bytes: u64,
    /// Waits of other connections it blocked.
    pub blocked: usize,
    /// The longest of those, ms.
    pub longest_wait_ms: u64,
}

/// What the samples say.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub samples: usize,
    pub interval_ms: u64,
    /// Every wait of a connection other than the migration's, the longest first.
    pub waits: Vec<Wait>,
    /// The migration's own waits (on the traffic, or `CREATE INDEX CONCURRENTLY` on
    /// older transactions): the migration was slowed, the traffic was not.
    pub migration_waits: Vec<Wait>,
    /// The migration files seen running, in order.
    pub files: Vec<FileRun>,
}

impl Analysis {
    /// The longest wait of the traffic.
    pub fn worst(&self) -> Option<&Wait> {
        self.waits.first()
    }
}

/// A statement's text without comments, in single spaces, without a final `;`:
/// what a file's text is searched for.
fn normalize(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    for line in sql.lines() {
        let code = match line.find("--") {
            Some(i) => &line[..i],
            None => line,
        };
        for word in code.split_whitespace() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
    }
    out.trim_end_matches(';').trim_end().to_lowercase()
}

/// The file among `files` whose text holds `query`.
fn file_of<'a>(query: &str, files: &'a [(String, String)]) -> Option<&'a str> {
    let q = normalize(query);
    if q.is_empty() {
        return None;
    }
    files.iter().find(|(_, text)| text.contains(&q)).map(|(name, _)| name.as_str())
}

/// An LSN's byte position (`X/Y`, hexadecimal).
fn lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Reads the samples: the waits, and what each migration file did.
pub fn analyse(samples: &[Sample], files: &[MigrationFile], every: Duration) -> Analysis {
    let interval = every.as_millis() as u64;
    let texts: Vec<(String, String)> = files.iter().map(|f| (f.name.clone(), normalize(&f.text))).collect();
    // Waits: consecutive samples of the same backend waiting for the same lock with the
    // same statement are one wait.
    let mut open: BTreeMap<(i32, String, String, String), (usize, Wait)> = BTreeMap::new();
    let mut done: Vec<Wait> = Vec::new();
    let migration_pids: BTreeSet<i32> = samples.iter().flat_map(|s| s.migration.iter().map(|m| m.pid)).collect();
    // Per file: first and last sample index, locks seen (mode, target) → samples held.
    struct Seen {
        first: usize,
        last: usize,
        locks: BTreeMap<Lock, u64>,
    }
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let running: BTreeMap<i32, Option<&str>> =
            s.migration.iter().map(|m| (m.pid, file_of(&m.query, &texts))).collect();
        for m in &s.migration {
            let Some(Some(file)) = running.get(&m.pid) else { continue };
            let e = seen.entry(file.to_string()).or_insert_with(|| {
                order.push(file.to_string());
                Seen { first: i, last: i, locks: BTreeMap::new() }
            });
            e.last = i;
            for l in &m.locks {
                *e.locks.entry(l.clone()).or_default() += 1;
            }
        }
        let mut still: BTreeSet<(i32, String, String, String)> = BTreeSet::new();
        for w in &s.waits {
            let key = (w.pid, w.mode.clone(), w.target.clone(), w.query.clone());
            still.insert(key.clone());
            let entry = open.entry(key).or_insert_with(|| {
                let file = w.blockers.iter().find_map(|b| running.get(b).copied().flatten()).map(str::to_string);
                (
                    i,
                    Wait {
                        pid: w.pid,
                        app: w.app.clone(),
                        query: w.query.clone(),
                        mode: w.mode.clone(),
                        target: w.target.clone(),
                        blockers: Vec::new(),
                        by_migration: false,
                        file,
                        first_ms: s.at_ms,
                        waited_ms: interval,
                    },
                )
            });
            entry.1.waited_ms = s.at_ms - entry.1.first_ms + interval;
            for h in &w.held {
                if !entry.1.blockers.contains(h) {
                    entry.1.blockers.push(h.clone());
                }
            }
            if w.blockers.iter().any(|b| migration_pids.contains(b)) {
                entry.1.by_migration = true;
            }
            if entry.1.file.is_none() {
                entry.1.file = w.blockers.iter().find_map(|b| running.get(b).copied().flatten()).map(str::to_string);
            }
        }
        // A wait not seen in this sample has ended.
        let ended: Vec<_> = open.keys().filter(|k| !still.contains(*k)).cloned().collect();
        for k in ended {
            if let Some((_, w)) = open.remove(&k) {
                done.push(w);
            }
        }
    }
    done.extend(open.into_values().map(|(_, w)| w));
    done.sort_by(|a, b| b.waited_ms.cmp(&a.waited_ms).then(a.first_ms.cmp(&b.first_ms)));
    let (migration_waits, waits): (Vec<Wait>, Vec<Wait>) =
        done.into_iter().partition(|w| migration_pids.contains(&w.pid));
    let files = order
        .iter()
        .map(|name| {
            let s = &seen[name];
            let start_ms = samples[s.first].at_ms;
            let end_ms = samples[s.last].at_ms + interval;
            let before = if s.first > 0 { &samples[s.first - 1] } else { &samples[s.first] };
            let after = samples.get(s.last + 1).unwrap_or(&samples[s.last]);
            let wal_bytes = match (lsn(&before.wal), lsn(&after.wal)) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => 0,
            };
            let mut locks: Vec<HeldLock> = s
                .locks
                .iter()
                .map(|(l, n)| HeldLock { mode: l.mode.clone(), target: l.target.clone(), held_ms: n * interval })
                .collect();
            locks.sort_by(|a, b| b.held_ms.cmp(&a.held_ms).then(a.target.cmp(&b.target)));
            let caused: Vec<&Wait> = waits.iter().filter(|w| w.file.as_deref() == Some(name)).collect();
            FileRun {
                file: name.clone(),
                start_ms,
                duration_ms: end_ms - start_ms,
                locks,
                wal_bytes,
                blocked: caused.len(),
                longest_wait_ms: caused.iter().map(|w| w.waited_ms).max().unwrap_or(0),
            }
        })
        .collect();
    Analysis { samples: samples.len(), interval_ms: interval, waits, migration_waits, files }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, wal: &str, waits: Vec<Waiting>, migration: Vec<Migrating>) -> Sample {
        Sample { at_ms, wal: wal.into(), waits, migration }
    }

    fn migrating(pid: i32, query: &str, locks: &[(&str, &str)]) -> Migrating {
        Migrating {
            pid,
            state: Some("active".into()),
            query: query.into(),
            locks: locks.iter().map(|(m, t)| Lock { mode: m.to_string(), target: t.to_string() }).collect(),
        }
    }

    fn waiting(pid: i32, blockers: &[i32]) -> Waiting {
        Waiting {
            pid,
            app: "shop".into(),
            query: "INSERT INTO orders (customer_id) VALUES (1)".into(),
            mode: "RowExclusiveLock".into(),
            target: "orders".into(),
            blockers: blockers.to_vec(),
            held: blockers.iter().map(|&pid| Held { pid, mode: "ShareLock".into() }).collect(),
        }
    }

    #[test]
    fn a_wait_behind_a_migration_file_is_traced_to_it_with_its_lock_and_wal() {
        let files = vec![MigrationFile {
            name: "0004_orders_index.sql".into(),
            text: "-- an index\nCREATE INDEX orders_created_at_idx\n    ON orders (created_at);\n".into(),
        }];
        let q = "CREATE INDEX orders_created_at_idx\n    ON orders (created_at)";
        let lock = [("ShareLock", "orders")];
        let samples = vec![
            sample(0, "0/1000", vec![], vec![]),
            sample(100, "0/2000", vec![waiting(7, &[42])], vec![migrating(42, q, &lock)]),
            sample(200, "0/3000", vec![waiting(7, &[42]), waiting(8, &[42])], vec![migrating(42, q, &lock)]),
            sample(300, "0/9000", vec![waiting(7, &[42])], vec![migrating(42, q, &lock)]),
            sample(400, "0/A000", vec![], vec![]),
        ];
        let a = analyse(&samples, &files, Duration::from_millis(100));
        assert_eq!(a.waits.len(), 2);
        let w = a.worst().unwrap();
        assert_eq!((w.pid, w.waited_ms, w.first_ms), (7, 300, 100));
        assert_eq!(w.file.as_deref(), Some("0004_orders_index.sql"));
        assert!(w.by_migration);
        assert_eq!(w.blockers, vec![Held { pid: 42, mode: "ShareLock".into() }]);
        assert_eq!(a.waits[1].waited_ms, 100);
        let f = &a.files[0];
        assert_eq!((f.start_ms, f.duration_ms, f.blocked, f.longest_wait_ms), (100, 300, 2, 300));
        assert_eq!(f.locks, vec![HeldLock { mode: "ShareLock".into(), target: "orders".into(), held_ms: 300 }]);
        // From the sample before it to the one after it.
        assert_eq!(f.wal_bytes, 0xA000 - 0x1000);
        assert!(a.migration_waits.is_empty());
    }

    #[test]
    fn a_wait_that_ends_and_comes_back_is_two_waits_and_the_migrations_own_are_apart() {
        let samples = vec![
            sample(0, "0/0", vec![waiting(7, &[9])], vec![]),
            sample(100, "0/0", vec![], vec![]),
            sample(200, "0/0", vec![waiting(7, &[9]), waiting(42, &[7])], vec![migrating(42, "select 1", &[])]),
        ];
        let a = analyse(&samples, &[], Duration::from_millis(100));
        assert_eq!(a.waits.len(), 2);
        assert!(a.waits.iter().all(|w| !w.by_migration && w.file.is_none()));
        assert_eq!(a.migration_waits.len(), 1);
        assert!(a.files.is_empty());
    }

    #[test]
    fn statements_are_found_in_their_file_whatever_their_comments_and_spacing() {
        let files = vec![
            ("a.sql".to_string(), normalize("create table t (id int);\n-- x\nALTER TABLE t\n  ADD c int;")),
            ("b.sql".to_string(), normalize("CREATE INDEX CONCURRENTLY i ON t (c);")),
        ];
        assert_eq!(file_of("alter table t add c int;", &files), Some("a.sql"));
        assert_eq!(file_of("CREATE  INDEX CONCURRENTLY i\nON t (c)", &files), Some("b.sql"));
        assert_eq!(file_of("insert into schema_migrations (version) values ('b')", &files), None);
        assert_eq!(file_of("-- nothing", &files), None);
        assert_eq!(lsn("1/0000000A"), Some((1 << 32) + 10));
        assert_eq!(lsn("nonsense"), None);
    }
}
