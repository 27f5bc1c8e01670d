//! The state store's locks: one holder at a time, whatever the interleaving.
//!
//! - on the fault-injecting fake S3 (latency, lost answers, 409s, 5xx) on tokio's
//!   paused clock: contenders that take the lock, renew it, stall past their lease or
//!   give it back, over many seeds — no two holders ever;
//! - with real processes: twenty `rehearse lock` at once against the local default
//!   (a lock file) and against the emulator's S3 — exactly one holder, the others told
//!   who holds it, with exit code 5; a holder killed outright (SIGKILL) holds the lock
//!   until its lease runs out, and the next attempt then takes it over.

use crate::common;
use crate::emulator;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::*;
use emulator::*;
use rehearse::engine::store::lock::{self, Acquired, LockInfo, RenewError};
use rehearse::testkit::fake_s3::{FakeS3, S3Faults};

/// One holding: who, from the moment it heard it had the lock until the moment it
/// stopped believing so (its release, or the end of the lease it last wrote).
type Holding = (usize, DateTime<Utc>, DateTime<Utc>);

/// Six contenders, four attempts each, on one lock in the fake S3: the holdings, and how
/// many were takeovers of a stale lock.
fn contend(seed: u64) -> (Vec<Holding>, usize) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let store = Arc::new(FakeS3::new(seed, S3Faults::chaos()));
        let start = tokio::time::Instant::now();
        let base = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        // The contenders' shared clock: virtual time.
        let now = move || base + chrono::Duration::from_std(tokio::time::Instant::now() - start).unwrap();
        let lease = Duration::from_secs(10);
        let holdings: Arc<Mutex<Vec<Holding>>> = Arc::default();
        let takeovers = Arc::new(Mutex::new(0usize));
        let contenders = (0..6).map(|i| {
            let (store, holdings, takeovers) = (store.clone(), holdings.clone(), takeovers.clone());
            async move {
                let mut draw = Draw(seed.wrapping_mul(31).wrapping_add(i as u64));
                for round in 0..4 {
                    tokio::time::sleep(draw.millis(15_000)).await;
                    let mut me = LockInfo::for_this_process("staging", "test", None);
                    me.token = format!("{i}-{round}");
                    let Ok(Acquired::Held(mut held)) = lock::acquire(store.as_ref(), &me, lease, &now).await else {
                        continue;
                    };
                    if held.took_over.is_some() {
                        *takeovers.lock().unwrap() += 1;
                    }
                    let from = now();
                    let mut believed = held.info.lease_until;
                    // Half the holders renew while they work; the others stall, and
                    // their lease runs out under them.
                    let renews = draw.next().is_multiple_of(2);
                    let work_until = from + chrono::Duration::from_std(draw.millis(30_000)).unwrap();
                    let mut lost = false;
                    while now() < work_until {
                        tokio::time::sleep(lease / 3).await;
                        if renews {
                            match lock::renew(store.as_ref(), &mut held, lease, &now).await {
                                Ok(()) => believed = held.info.lease_until,
                                Err(RenewError::Lost(_)) => lost = true,
                                Err(RenewError::Store(_)) => {}
                            }
                        }
                        if lost || now() >= believed {
                            lost = true;
                            break;
                        }
                    }
                    let until = now().min(believed);
                    holdings.lock().unwrap().push((i, from, until));
                    if !lost {
                        let _ = lock::release(store.as_ref(), &held).await;
                    }
                }
            }
        });
        futures_util::future::join_all(contenders).await;
        // Every write and delete of a lock is conditional, as the shipped policy requires.
        assert_eq!(store.unconditional(), Vec::<String>::new(), "seed {seed}");
        let h = holdings.lock().unwrap().clone();
        let t = *takeovers.lock().unwrap();
        (h, t)
    })
}

#[test]
fn no_two_holders_over_many_seeded_interleavings_on_a_faulty_s3() {
    let (mut holdings, mut takeovers) = (0, 0);
    for seed in 0..300 {
        let (mut h, t) = contend(seed);
        h.sort_by_key(|(_, from, _)| *from);
        for pair in h.windows(2) {
            let ((a, _, a_until), (b, b_from, _)) = (pair[0], pair[1]);
            assert!(
                b_from >= a_until,
                "seed {seed}: contender {b} held the lock from {b_from} while {a} held it until {a_until}"
            );
        }
        holdings += h.len();
        takeovers += t;
    }
    eprintln!("300 seeds: {holdings} holdings, {takeovers} of them takeovers of a lease that ran out");
    // The interleavings really vary: the lock changes hands often, stale leases are
    // taken over, and most attempts are refused.
    assert!(holdings > 600 && holdings < 300 * 24, "{holdings} holdings");
    assert!(takeovers > 100, "{takeovers} takeovers");
}

/// `rehearse lock` with the sandbox's state (and `extra` environment).
fn lock_cmd(sb: &Sandbox, emu: Option<(&Emulator, &str)>, name: &str, lease: &str, command: &[&str]) -> Command {
    let mut c = match emu {
        Some((e, url)) => {
            let mut c = e.rehearse(sb);
            c.env("AWS_ENDPOINT_URL", url).env("REHEARSE_STATE", "s3://team-state/rehearse");
            c
        }
        None => sb.cmd(),
    };
    c.args(["lock", name, "--lease", lease, "--"]).args(command);
    c
}

/// Twenty processes ask for one lock at once, each holding it (if it gets it) for a
/// while: one runs its command, nineteen exit 5 naming the holder.
fn twenty_at_once(sb: &Sandbox, emu: Option<(&Emulator, &str)>) {
    let marks = sb.shared();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let script = format!("echo {i} >> {}/held; sleep 4", marks.display());
            lock_cmd(sb, emu, "staging", "30s", &["sh", "-c", &script])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let held = std::fs::read_to_string(marks.join("held")).unwrap_or_default();
    let winners: Vec<&str> = held.lines().collect();
    assert_eq!(winners.len(), 1, "holders: {winners:?}");
    let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    for o in outs.iter().filter(|o| o.status.code() != Some(0)) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(5), "{err}");
        assert!(
            err.contains("error: `staging` is locked by root@") || err.contains("`staging` is locked by "),
            "{err}"
        );
        assert!(err.contains(" since ") && err.contains(", lease until "), "{err}");
    }
}

#[test]
fn twenty_processes_one_lock_file_holder() {
    twenty_at_once(&Sandbox::new(), None);
}

#[test]
fn twenty_processes_one_lock_in_s3_and_a_killed_holder_is_taken_over_after_its_lease() {
    let (emu, rt, s3) = with_team_store();
    let proxy = one_at_a_time(&emu.url);
    let sb = Sandbox::new();
    twenty_at_once(&sb, Some((&emu, &proxy.url)));
    // Released by its holder: nothing is left in the store's locks.
    assert!(emu.keys(&rt, &s3, "team-state", "rehearse/locks/").is_empty());

    // A holder killed outright keeps the lock until its lease runs out…
    let marks = sb.shared();
    let script = format!("echo $$ > {}/pid; exec sleep 60", marks.display());
    let mut holder = lock_cmd(&sb, Some((&emu, &proxy.url)), "nightly", "3s", &["sh", "-c", &script])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !marks.join("pid").is_file() {
        assert!(std::time::Instant::now() < deadline, "the holder never ran its command");
        std::thread::sleep(Duration::from_millis(50));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    holder.wait().unwrap();
    let killed_at = std::time::Instant::now();
    let sleeper: i32 = std::fs::read_to_string(marks.join("pid")).unwrap().trim().parse().unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sleeper), nix::sys::signal::Signal::SIGKILL);
    let out = lock_cmd(&sb, Some((&emu, &proxy.url)), "nightly", "3s", &["true"]).output().unwrap();
    if killed_at.elapsed() < Duration::from_secs(2) {
        assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // …and then the next attempt takes it over, saying whose it was.
    std::thread::sleep(Duration::from_secs(4));
    let out = lock_cmd(&sb, Some((&emu, &proxy.url)), "nightly", "3s", &["true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("took over the lock `nightly`: its lease ran out"), "{err}");
    assert!(emu.keys(&rt, &s3, "team-state", "rehearse/locks/").is_empty());

    // `unlock` says who holds a lock and removes it only with --force.
    let mut holder = lock_cmd(&sb, Some((&emu, &proxy.url)), "nightly", "30s", &["sleep", "30"]).spawn().unwrap();
    let unlock = |force: bool| {
        let mut c = emu.rehearse(&sb);
        c.env("AWS_ENDPOINT_URL", &proxy.url)
            .env("REHEARSE_STATE", "s3://team-state/rehearse")
            .args(["unlock", "nightly"]);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = unlock(false);
        if out.status.code() == Some(5) || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`nightly` is locked by ") && err.contains("--force"), "{err}");
    let out = unlock(true);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed the lock"));
    // The holder finds out at its next renewal and stops its command.
    let status = holder.wait().unwrap();
    assert_eq!(status.code(), Some(5));
}

// ---------------------------------------------------------------------------------
// Journals in the store are a stranger's input (issue 23, part 2, item 2)
// ---------------------------------------------------------------------------------

/// A process of this machine in a process group of its own, that rehearse must never
/// signal (as root: a root process).
fn bait() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    Command::new("sleep").arg("600").process_group(0).stdin(Stdio::null()).spawn().unwrap()
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn alive(c: &mut std::process::Child) -> bool {
    c.try_wait().unwrap().is_none()
}

/// Writes `records` as journal records `first`, `first + 1`, … of `run_id` in the
/// emulator's S3, as anyone with the shipped IAM policy may (If-None-Match: *).
fn plant_records(
    rt: &tokio::runtime::Runtime,
    s3: &aws_sdk_s3::Client,
    run_id: &str,
    first: usize,
    records: &[serde_json::Value],
) {
    for (i, r) in records.iter().enumerate() {
        let key = format!("rehearse/runs/{run_id}/journal/{:010}.json", first + i);
        rt.block_on(
            s3.put_object()
                .bucket("team-state")
                .key(&key)
                .if_none_match("*")
                .body(format!("{r}\n").into_bytes().into())
                .send(),
        )
        .unwrap_or_else(|e| panic!("cannot plant {key}: {e:?}"));
    }
}

/// A forged journal in the shared store of a local run "from another host": its
/// process handle names a live process with its true start time (here: this test) as
/// the pid and a victim's process group as the pgid, its cluster's postmaster another
/// victim — the finding used `{pid: 1, start_time: <init's>, pgid: <victim>}`.
/// `sweep --yes` killed both (local teardown never compared the journal's host, checked
/// the start time on `pid` and signalled `pgid`). This machine did not journal the run:
/// `sweep` and `down` leave it alone and say so, with no command that would remove it.
#[test]
fn a_forged_journal_from_another_host_never_signals_a_process_here() {
    let (emu, rt, s3) = with_team_store();
    let sb = Sandbox::new();
    // The run's work directory would be WORK/runs/RUN: its parents exist, and are ours.
    std::fs::create_dir_all(sb.work().join("runs")).unwrap();
    std::fs::set_permissions(sb.work().join("runs"), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
    let run_id = "r-20000101-000000-f0f0f0";
    let work = sb.work().join("runs").join(run_id);
    let (mut group_victim, mut server_victim) = (bait(), bait());
    let me = std::process::id();
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let records = [
        serde_json::json!({
            "type": "run", "run_id": run_id, "environment": "shop", "provider": "local",
            "description": "environments/demo.yaml", "release": "v2", "owner": "ci@example.com",
            "started_at": "2000-01-01T00:00:00Z", "expires_at": "2000-01-01T02:00:00Z", "destroy": "always",
            "work_dir": work, "region": null, "pid": dead, "pid_start": 1, "host": "ci-7"
        }),
        serde_json::json!({
            "type": "created", "id": "database.db", "kind": "local.postgres", "at": "2000-01-01T00:00:01Z",
            "handle": {"cluster": {"base": work.join("db-db"), "port": 5432, "run_as": null,
                "postmaster": {"pid": server_victim.id(), "pgid": 0, "start_time": start_time(server_victim.id())}}}
        }),
        serde_json::json!({
            "type": "created", "id": "service.web.0", "kind": "local.process", "at": "2000-01-01T00:00:02Z",
            "handle": {"port": 8080, "process": {"pid": me, "start_time": start_time(me), "pgid": group_victim.id()}}
        }),
    ];
    plant_records(&rt, &s3, run_id, 1, &records);
    let shared = || {
        let mut c = emu.rehearse(&sb);
        c.env("REHEARSE_STATE", "s3://team-state/rehearse");
        c
    };

    let sweep = shared().args(["sweep", "--yes"]).output().unwrap();
    let down = shared().args(["down", run_id]).output().unwrap();
    let (group_alive, server_alive) = (alive(&mut group_victim), alive(&mut server_victim));
    for mut c in [group_victim, server_victim] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let said = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };
    let (sweep_said, down_said) = (said(&sweep), said(&down));
    assert!(
        group_alive && server_alive,
        "a forged journal had processes here killed (its process handle's group: {}, its postmaster: {}):\n\
         {sweep_said}\n{down_said}",
        if group_alive { "alive" } else { "KILLED" },
        if server_alive { "alive" } else { "KILLED" },
    );
    assert_eq!(sweep.status.code(), Some(0), "{sweep_said}");
    assert!(sweep_said.contains(&format!("{run_id}: not this host's run: left alone")), "{sweep_said}");
    assert_eq!(down.status.code(), Some(2), "{down_said}");
    assert!(down_said.contains(&format!("{run_id}: not this host's run: left alone")), "{down_said}");
    for text in [&sweep_said, &down_said] {
        assert!(!text.contains("kill ") && !text.contains("remove with"), "a removal command was offered:\n{text}");
    }
}

/// A run this machine journaled, kept, with a shared store: another writer appends a
/// `created` record to its journal in the store naming a process of this machine —
/// well formed, group leader, true start time. Fetching the journal used to replace
/// the local one whenever the store had more records, and `down` then stopped that
/// process. The machine's own journal is kept: the record is refused with its key
/// named, the stranger's process lives, and the run is still removed completely.
#[test]
fn a_record_appended_in_the_store_to_this_machines_run_is_refused() {
    let (emu, rt, s3) = with_team_store();
    let sb = Sandbox::new();
    let release = sb.dir.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::write(release.join("README"), "a release with nothing in it\n").unwrap();
    let file = write_description(
        &sb,
        "mini.yaml",
        &format!(
            "name: mini\nprovider: local\nowner: tests@example.com\nrelease:\n  version: v1\n  artifact: \"{}\"\n\
             services:\n  web:\n    command: \"exec sleep 300\"\n",
            release.display()
        ),
    );
    let shared = || {
        let mut c = emu.rehearse(&sb);
        c.env("REHEARSE_STATE", "s3://team-state/rehearse");
        c
    };
    let up = shared().arg("up").arg(&file).output().unwrap();
    assert_eq!(up.status.code(), Some(0), "{}", String::from_utf8_lossy(&up.stderr));
    let run_id = sb.run_ids().pop().unwrap();
    let have = emu.keys(&rt, &s3, "team-state", &format!("rehearse/runs/{run_id}/journal/")).len();
    let mut victim = bait();
    let forged = serde_json::json!({
        "type": "created", "id": "service.web.1", "kind": "local.process", "at": "2026-01-01T00:00:00Z",
        "handle": {"port": 8080, "process": {"pid": victim.id(), "pgid": victim.id(), "start_time": start_time(victim.id())}}
    });
    plant_records(&rt, &s3, &run_id, have + 1, &[forged]);

    let down = shared().args(["down", &run_id]).output().unwrap();
    let victim_alive = alive(&mut victim);
    let _ = victim.kill();
    let _ = victim.wait();
    let said = format!("{}{}", String::from_utf8_lossy(&down.stdout), String::from_utf8_lossy(&down.stderr));
    assert!(victim_alive, "a record appended in the store had `down` kill a process it never started:\n{said}");
    assert_eq!(down.status.code(), Some(0), "{said}");
    // Named, and not taken: a local run is this machine's alone.
    assert!(
        said.contains(&format!("runs/{run_id}/journal/{:010}.json", have + 1)) && said.contains("they are not taken"),
        "{said}"
    );
    assert_nothing_left(&sb, &run_id);
}
