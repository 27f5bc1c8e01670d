//! What the lock sampler's samples say ([`analyse`]): each wait of a backend, with its
//! blockers and the migration file running on them; each migration file's span, the
//! locks its transaction held and for how long, and the WAL written meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Held, Lock, Sample};

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

impl Analysis {
    /// The same analysis with its times counted from `offset_ms` earlier (the load's
    /// start instead of the sampler's).
    pub fn shifted(mut self, offset_ms: u64) -> Analysis {
        for w in self.waits.iter_mut().chain(self.migration_waits.iter_mut()) {
            w.first_ms += offset_ms;
        }
        for f in &mut self.files {
            f.start_ms += offset_ms;
        }
        self
    }
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
        // A lock counts once a sample per file, however many of the migration's
        // backends (a parallel index build's workers) hold it.
        let mut held: BTreeMap<&str, BTreeSet<&Lock>> = BTreeMap::new();
        for m in &s.migration {
            let Some(Some(file)) = running.get(&m.pid) else { continue };
            let e = seen.entry(file.to_string()).or_insert_with(|| {
                order.push(file.to_string());
                Seen { first: i, last: i, locks: BTreeMap::new() }
            });
            e.last = i;
            held.entry(file).or_default().extend(m.locks.iter());
        }
        for (file, locks) in held {
            if let Some(e) = seen.get_mut(file) {
                for l in locks {
                    *e.locks.entry(l.clone()).or_default() += 1;
                }
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
    use super::super::{Migrating, Waiting};
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
