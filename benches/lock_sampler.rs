//! The lock sampler's own cost under the demo's load (`cargo bench --bench lock_sampler`,
//! part of `make bench`): a kept copy of `environments/deploy.yaml` with v2 serving
//! (`rehearse up`, real PostgreSQL, the demo shop), the description's load replayed
//! against it (`environments/load/deploy.requests` at its rate), in rounds of
//! $BENCH_SAMPLER_SECS seconds (default 15), alternately with the sampler running
//! (every 100 ms) and without, $BENCH_SAMPLER_ROUNDS times each (default 3).
//!
//! Per round: the CPU time of the sampler's backend against that of the whole database
//! server (every process of the cluster, from /proc, the connections that ended
//! included: the demo shop opens one per request); from `pg_stat_statements` (counters
//! read before and after) the time the server spent executing the sampler's statement
//! against the time it spent on every statement; and the load's p50/p99 latency, with
//! and without the sampler (the same requests at the same rate). Throughout, a watcher reads `pg_locks` for the sampler's
//! backend after every statement of its own: every relation lock it was seen holding
//! is counted, and those on relations outside `pg_catalog` (the watcher's own backend's
//! CPU is taken out of the server's; it runs in the rounds without the sampler too, on
//! no backend, so that both carry its work). As during a deploy, a connection of the
//! migration's is open throughout, so that every sample reads the lock table.
//!
//! Then the sampler where it runs, during the demo's migrations: in each round the load
//! runs 3 s, then the index of `demo/migrations/deploy/{blocking,concurrent}` is built
//! over a connection named as the migration's (the blocking one in a transaction, as
//! `migrate.sh` runs it), with the sampler running from just before the build to just
//! after it, as a deploy runs it, or without; then the index is dropped. Per round: the
//! sampler's backend's share of the server's CPU time over that span, the build's
//! duration, and the load's p99 over the requests sent during it. Prints Markdown tables.

mod common;
use common::quantile;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rehearse::compare::load;
use rehearse::compare::locks::{self, Sampler};
use rehearse::description::template::DatabaseOutputs;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rehearse(dirs: &(tempfile::TempDir, tempfile::TempDir), args: &[&str]) -> std::process::Output {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_rehearse"))
        .args(args)
        .current_dir(root)
        .env("REHEARSE_STATE_DIR", dirs.0.path())
        .env("REHEARSE_WORK_DIR", dirs.1.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("rehearse runs");
    assert!(out.status.success(), "rehearse {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

async fn client(db: &DatabaseOutputs, dbname: &str, app: &str) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::new();
    c.host(&db.host).port(db.port.parse().unwrap()).user(&db.user).password(&db.password).dbname(dbname);
    c.application_name(app);
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// (the sampler's statement's execution ms, every statement's execution ms) so far:
/// the benchmark's own statements (these counters, the watcher's) are not counted, so
/// that the share is of the time the application and the sampler take.
async fn counters(stats: &tokio_postgres::Client) -> (f64, f64) {
    let row = stats
        .query_one(
            "SELECT coalesce(sum(total_exec_time) FILTER (WHERE query LIKE '%pg_blocking_pids%'), 0)::float8, \
             coalesce(sum(total_exec_time), 0)::float8 FROM pg_stat_statements \
             WHERE query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%l.pid = $1%'",
            &[],
        )
        .await
        .expect("pg_stat_statements");
    (row.get(0), row.get(1))
}

/// CPU seconds of a process (`utime + stime`, and with `children` its reaped
/// children's too), from /proc/PID/stat.
fn cpu(pid: i32, children: bool) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0.0 };
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // Fields 14-17 of stat(5), counted from `state` (field 3) here: utime, stime, cutime, cstime.
    let (u, s, cu, cs) = (f[11], f[12], f[13], f[14]);
    let ticks = 100.0;
    if children {
        (u + s + cu + cs) / ticks
    } else {
        (u + s) / ticks
    }
}

fn parent(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// The CPU seconds of the whole database server: the postmaster, its live processes,
/// and those it has reaped (connections that ended).
fn server_cpu(postmaster: i32) -> f64 {
    let live: f64 = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| parent(*p) == postmaster)
        .map(|p| cpu(p, false))
        .sum();
    cpu(postmaster, true) + live
}

fn stats(xs: &[f64]) -> String {
    common::spread(xs, 2)
}

/// The kept copy's `rehearse down`, when dropped.
struct Down<'a> {
    dirs: &'a (tempfile::TempDir, tempfile::TempDir),
    id: String,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(env!("CARGO_BIN_EXE_rehearse"))
            .args(["-q", "down", &self.id])
            .current_dir(root)
            .env("REHEARSE_STATE_DIR", self.dirs.0.path())
            .env("REHEARSE_WORK_DIR", self.dirs.1.path())
            .output();
        if !out.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("lock_sampler: `rehearse down {}` failed: {out:?}", self.id);
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = env_or("BENCH_SAMPLER_SECS", 15);
    let rounds = env_or("BENCH_SAMPLER_ROUNDS", 3);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let generate = Command::new("sh").arg(root.join("demo/backup/generate-deploy.sh")).output().unwrap();
    assert!(generate.status.success(), "{}", String::from_utf8_lossy(&generate.stderr));
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for d in [&dirs.0, &dirs.1] {
        std::fs::set_permissions(d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    }
    rehearse(&dirs, &["-q", "up", "environments/deploy.yaml", "--release", "v2"]);
    let id = std::fs::read_dir(dirs.0.path().join("runs")).unwrap().flatten().next().unwrap().file_name();
    let id = id.to_string_lossy().into_owned();
    // Torn down however the benchmark ends (a failed assertion unwinds through here).
    let _down = Down { dirs: &dirs, id: id.clone() };
    let env = rehearse(&dirs, &["env", &id, "--format", "json"]);
    let conn: serde_json::Value = serde_json::from_slice(&env.stdout).unwrap();
    let db: DatabaseOutputs = serde_json::from_value(conn["databases"]["db"].clone()).unwrap();
    let url = conn["services"]["web"]["url"].as_str().unwrap().to_string();
    let requests =
        load::parse_requests(&std::fs::read_to_string(root.join("environments/load/deploy.requests")).unwrap())
            .unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        let stats_client = client(&db, "postgres", "bench-stats").await;
        // A backend's parent is the postmaster.
        let me: i32 = stats_client.query_one("SELECT pg_backend_pid()", &[]).await.expect("a backend").get(0);
        let postmaster = parent(me);
        // As during a deploy: a connection of the migration's is open (idle here), so
        // that the sampler reads the lock table at every sample, as it does then.
        let _migration = client(&db, &db.name, locks::MIGRATION_APP).await;
        let mut rows: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let (mut seen_locks, mut app_locks, mut samples) = (0u64, 0u64, 0usize);
        for _ in 0..rounds {
            for with in [true, false] {
                let before = counters(&stats_client).await;
                let cpu_before = server_cpu(postmaster);
                let sampler = if with {
                    Some(Sampler::start(&db, locks::MIGRATION_APP, locks::INTERVAL).await.unwrap())
                } else {
                    None
                };
                // The watcher: the sampler's locks, read after each statement of its own.
                // It runs in the rounds without a sampler too (reading the locks of no
                // backend, pid 0), so that both kinds of round carry the same work
                // besides the sampler's.
                let stop_watch = Arc::new(AtomicBool::new(false));
                let watcher = {
                    let (db, stop, pid) = (db.clone(), stop_watch.clone(), sampler.as_ref().map_or(0, |s| s.pid));
                    tokio::spawn(async move {
                        let c = client(&db, &db.name, "bench-watcher").await;
                        let me: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
                        let (mut all, mut app) = (0u64, 0u64);
                        while !stop.load(Ordering::Relaxed) {
                            for row in c
                                .query(
                                    "SELECT coalesce(n.nspname, '') FROM pg_locks l \
                                     LEFT JOIN pg_class c ON c.oid = l.relation \
                                     LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
                                     WHERE l.pid = $1 AND l.locktype = 'relation'",
                                    &[&pid],
                                )
                                .await
                                .unwrap()
                            {
                                all += 1;
                                if row.get::<_, String>(0) != "pg_catalog" {
                                    app += 1;
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        // Its own backend's CPU, read before it ends: not the server's work.
                        (all, app, cpu(me, false))
                    })
                };
                let (_to, target) = tokio::sync::watch::channel(load::target(&url).unwrap());
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let reqs = requests.clone();
                let run = tokio::spawn(async move {
                    load::replay_until(&reqs, target, 20.0, Duration::from_secs(10), stopped).await
                });
                tokio::time::sleep(Duration::from_secs(secs)).await;
                stop.send_replace(true);
                let timed = run.await.unwrap();
                let sampler_cpu = sampler.as_ref().map(|s| cpu(s.pid, false)).unwrap_or(0.0);
                stop_watch.store(true, Ordering::Relaxed);
                let (all, app, watcher_cpu) = watcher.await.unwrap();
                seen_locks += all;
                app_locks += app;
                let cpu_all = server_cpu(postmaster) - cpu_before - watcher_cpu;
                if let Some(s) = sampler {
                    let (taken, error) = s.stop().await;
                    assert!(error.is_none(), "{error:?}");
                    samples += taken.len();
                }
                let after = counters(&stats_client).await;
                let (sampler_ms, all_ms) = (after.0 - before.0, after.1 - before.1);
                let mut lat: Vec<f64> = timed.iter().map(|t| t.sample.latency_ms).collect();
                let errors = timed.iter().filter(|t| t.sample.error).count();
                assert_eq!(errors, 0, "the load failed {errors} requests");
                let (p50, p99) = (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99));
                if with {
                    rows.entry("cpu_share").or_default().push(100.0 * sampler_cpu / cpu_all.max(0.01));
                    rows.entry("cpu_sampler").or_default().push(sampler_cpu);
                    rows.entry("cpu_with").or_default().push(cpu_all);
                    rows.entry("share").or_default().push(100.0 * sampler_ms / all_ms.max(f64::MIN_POSITIVE));
                    rows.entry("sampler_ms").or_default().push(sampler_ms);
                    rows.entry("all_with_ms").or_default().push(all_ms);
                    rows.entry("p50_with").or_default().push(p50);
                    rows.entry("p99_with").or_default().push(p99);
                } else {
                    rows.entry("cpu_without").or_default().push(cpu_all);
                    rows.entry("all_without_ms").or_default().push(all_ms);
                    rows.entry("p50_without").or_default().push(p50);
                    rows.entry("p99_without").or_default().push(p99);
                }
            }
        }
        let migrating = migration_rounds(&db, &url, &requests, postmaster, rounds).await;
        (rows, seen_locks, app_locks, samples, migrating)
    });
    let (rows, seen_locks, app_locks, samples, migrating) = result;
    println!("the lock sampler under the demo's load ({rounds} rounds of {secs} s each way, interleaved; min / median / max)");
    println!();
    println!("| what | with the sampler | without |");
    println!("|---|--:|--:|");
    println!(
        "| the sampler's backend's share of the database server's CPU time (every process of the cluster, \
         those that ended included), % | {} | |",
        stats(&rows["cpu_share"])
    );
    println!("| the sampler's backend's CPU time per round, s | {} | |", stats(&rows["cpu_sampler"]));
    println!("| the server's CPU time per round, s | {} | {} |", stats(&rows["cpu_with"]), stats(&rows["cpu_without"]));
    println!(
        "| the sampler's share of the server's statement execution time (`pg_stat_statements`), % | {} | |",
        stats(&rows["share"])
    );
    println!("| the sampler's statement time per round, ms | {} | |", stats(&rows["sampler_ms"]));
    println!(
        "| every statement's time per round, ms | {} | {} |",
        stats(&rows["all_with_ms"]),
        stats(&rows["all_without_ms"])
    );
    println!("| the load's p50 latency, ms | {} | {} |", stats(&rows["p50_with"]), stats(&rows["p50_without"]));
    println!("| the load's p99 latency, ms | {} | {} |", stats(&rows["p99_with"]), stats(&rows["p99_without"]));
    println!();
    println!(
        "{samples} samples; the sampler's relation locks seen by the watcher: {seen_locks}, of which on a relation outside pg_catalog: {app_locks}"
    );
    println!();
    println!(
        "the lock sampler during the demo's migrations, under the same load ({rounds} rounds a release each way, \
         interleaved; min / median / max)"
    );
    println!();
    println!("| release | what | with the sampler | without |");
    println!("|---|---|--:|--:|");
    for (release, rows) in &migrating {
        let row = |what: &str, with: &str, without: &str| {
            let cell = |k: &str| rows.get(k).map(|v| stats(v)).unwrap_or_default();
            println!("| {release} | {what} | {} | {} |", cell(with), cell(without));
        };
        row("**the sampler's backend's share of the server's CPU time**, %", "cpu_share", "");
        row("the sampler's backend's CPU time, s", "cpu_sampler", "");
        row("the server's CPU time over the build, s", "cpu_with", "cpu_without");
        row("samples taken", "samples", "");
        row("the build's duration, s", "build_with", "build_without");
        row("requests sent during the build", "sent_with", "sent_without");
        row("their p99 latency, ms", "p99_with", "p99_without");
    }
    assert_eq!(app_locks, 0, "the sampler held a lock on a relation of the application");
    // The target (≤ 2% of the database's time) is judged in BENCHMARKS.md from both
    // shares above; the run fails only on a lock the sampler must never hold.
}

/// The demo's two migrations (`demo/migrations/deploy`), each built under the load
/// `rounds` times with the sampler and as many without, interleaved; by release, the
/// figures of each round.
async fn migration_rounds(
    db: &DatabaseOutputs,
    url: &str,
    requests: &[load::Request],
    postmaster: i32,
    rounds: u64,
) -> Vec<(&'static str, BTreeMap<&'static str, Vec<f64>>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let migration = client(db, &db.name, locks::MIGRATION_APP).await;
    let admin = client(db, &db.name, "bench-admin").await;
    let mut out = Vec::new();
    for (release, dir, in_transaction) in [("v4-blocking", "blocking", true), ("v4-concurrent", "concurrent", false)] {
        let sql = std::fs::read_to_string(
            root.join("demo/migrations/deploy").join(dir).join("0004_order_events_kind_at_index.sql"),
        )
        .unwrap();
        let sql = if in_transaction { format!("BEGIN;\n{sql}\nCOMMIT;") } else { sql };
        let mut rows: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for _ in 0..rounds {
            for with in [true, false] {
                let (_to, target) = tokio::sync::watch::channel(load::target(url).unwrap());
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let reqs = requests.to_vec();
                let load_start = tokio::time::Instant::now();
                let run = tokio::spawn(async move {
                    load::replay_until(&reqs, target, 20.0, Duration::from_secs(30), stopped).await
                });
                tokio::time::sleep(Duration::from_secs(3)).await;
                let cpu_before = server_cpu(postmaster);
                let sampler = if with {
                    Some(Sampler::start(db, locks::MIGRATION_APP, locks::INTERVAL).await.unwrap())
                } else {
                    None
                };
                let begun = load_start.elapsed();
                migration.batch_execute(&sql).await.expect("the migration");
                let ended = load_start.elapsed();
                let (sampler_cpu, taken) = match sampler {
                    Some(s) => {
                        let own = cpu(s.pid, false);
                        let (taken, error) = s.stop().await;
                        assert!(error.is_none(), "{error:?}");
                        (own, taken.len())
                    }
                    None => (0.0, 0),
                };
                let cpu_all = server_cpu(postmaster) - cpu_before;
                stop.send_replace(true);
                let timed = run.await.unwrap();
                admin.batch_execute("DROP INDEX order_events_kind_at_idx").await.expect("drop the index");
                let (from, to) = (begun.as_millis() as u64, ended.as_millis() as u64);
                let mut during: Vec<f64> = timed
                    .iter()
                    .filter(|t| t.sent_ms >= from && t.sent_ms <= to)
                    .map(|t| t.sample.latency_ms)
                    .collect();
                let sent = during.len() as f64;
                let p99 = if during.is_empty() { 0.0 } else { quantile(&mut during, 0.99) };
                let build = (ended - begun).as_secs_f64();
                let key = |w: &'static str, wo: &'static str| if with { w } else { wo };
                rows.entry(key("cpu_with", "cpu_without")).or_default().push(cpu_all);
                rows.entry(key("build_with", "build_without")).or_default().push(build);
                rows.entry(key("sent_with", "sent_without")).or_default().push(sent);
                rows.entry(key("p99_with", "p99_without")).or_default().push(p99);
                if with {
                    rows.entry("cpu_share").or_default().push(100.0 * sampler_cpu / cpu_all.max(0.01));
                    rows.entry("cpu_sampler").or_default().push(sampler_cpu);
                    rows.entry("samples").or_default().push(taken as f64);
                }
            }
        }
        out.push((release, rows));
    }
    out
}
