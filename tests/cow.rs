//! Copy-on-write golden copies (`rehearse warm`, as root: an XFS image per
//! generation, reflink copies): a copy's writes never reach the generation, a refresh
//! leaves a mounted copy working and removes the old generation after it ends, nothing
//! stays mounted at rest, a lost journal and an orphaned mount are found. Without root,
//! the fallback (a full copy) and its reason.

use std::path::{Path, PathBuf};
use std::process::Output;

use sha2::Digest;

use super::common::{assert_nothing_left, demo_backups, mounts_under, Sandbox};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ok(out: &Output, what: &str) -> String {
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{what}:\n{so}\n{se}");
    so.into_owned()
}

fn warm(sb: &Sandbox, extra: &[&str]) -> String {
    demo_backups();
    let out = sb.cmd().args(["warm", "environments/demo.yaml"]).args(extra).output().unwrap();
    ok(&out, "rehearse warm")
}

/// `rehearse up` of v2: the new run's id.
fn up(sb: &Sandbox) -> String {
    let before = sb.run_ids();
    let out = sb.cmd().args(["up", "environments/demo.yaml", "--release", "v2"]).output().unwrap();
    ok(&out, "rehearse up");
    sb.run_ids().into_iter().find(|i| !before.contains(i)).expect("a new run")
}

fn down(sb: &Sandbox, run_id: &str) {
    ok(&sb.cmd().args(["down", run_id]).output().unwrap(), "rehearse down");
}

fn generations(sb: &Sandbox) -> PathBuf {
    sb.work().join("golden/demo/db.cow")
}

fn current(sb: &Sandbox) -> String {
    std::fs::read_to_string(generations(sb).join("current")).unwrap().trim().to_string()
}

/// SQL on a run's copy as the cluster's superuser, over its socket (root may reach it).
fn superuser_sql(sb: &Sandbox, run_id: &str, sql: &[&str]) -> String {
    let report = sb.report(run_id);
    let db = report["resources"].as_array().unwrap().iter().find(|r| r["id"] == "database.db").unwrap();
    // "PostgreSQL on 127.0.0.1:PORT in DIR"
    let pid = db["provider_id"].as_str().unwrap();
    let (port, dir) = pid.trim_start_matches("PostgreSQL on 127.0.0.1:").split_once(" in ").unwrap();
    let psql = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin/psql"))
        .find(|p| p.is_file())
        .unwrap();
    let mut cmd = std::process::Command::new(psql);
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", dir, "-p", port, "-U", "rehearse", "-d", "shop"]);
    for s in sql {
        cmd.args(["-c", s]);
    }
    ok(&cmd.output().unwrap(), &format!("psql {sql:?}"))
}

/// SHA-256 of every file under `dir`, by relative path.
fn checksums(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap();
                let hex: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
                out.push((e.path().strip_prefix(dir).unwrap().to_path_buf(), hex));
            }
        }
    }
    out.sort();
    out
}

fn method_of(sb: &Sandbox, run_id: &str) -> String {
    sb.report(run_id)["backups"][0]["method"].as_str().unwrap().to_string()
}

#[test]
fn a_copys_writes_never_reach_the_generation() {
    let sb = Sandbox::new();
    let said = warm(&sb, &[]);
    if !is_root() {
        // Not root: copies are full, and the run says so.
        assert!(said.contains("copied whole by runs: copy-on-write copies need root"), "{said}");
        let a = up(&sb);
        assert_eq!(method_of(&sb, &a), "full-copy");
        down(&sb, &a);
        return;
    }
    assert!(said.contains("copy-on-write generation"), "{said}");
    // At rest, nothing is mounted.
    assert_eq!(mounts_under(&sb.work()), Vec::<PathBuf>::new());
    let a = up(&sb);
    assert_eq!(method_of(&sb, &a), "copy-on-write");
    let generation = generations(&sb).join(current(&sb));
    assert_eq!(mounts_under(&sb.work()), vec![generation.clone()]);
    // Its loop device reads the image with direct I/O (no second copy of every page).
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&generation).unwrap());
    let dio = format!("/sys/dev/block/{}:{}/loop/dio", dev >> 8 & 0xfff, (dev & 0xff) | (dev >> 12 & 0xfff00));
    assert_eq!(std::fs::read_to_string(&dio).unwrap().trim(), "1", "{dio}");
    let golden = generation.join("golden/data");
    let before = checksums(&golden);
    assert!(before.len() > 100, "the frozen cluster's files: {}", before.len());
    // What the image takes on the host's disk (it is sparse).
    let image = generation.with_extension("img");
    let allocated = || {
        // Written through the loop device to the image's own pages first: synced, counted.
        assert!(std::process::Command::new("sync").status().unwrap().success());
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&image).unwrap()) * 512
    };
    let at_rest = allocated();

    // A migration on the copy that writes every page of the largest table, checkpointed.
    superuser_sql(
        &sb,
        &a,
        &[
            "ALTER TABLE order_items ADD COLUMN noise float8 DEFAULT random()",
            "UPDATE customers SET name = upper(name)",
            // And a table larger than the whole generation (its room comes from the host).
            "CREATE TABLE scratch AS SELECT repeat('x', 1000) AS pad FROM generate_series(1, 200000)",
            "CHECKPOINT",
        ],
    );
    assert_eq!(superuser_sql(&sb, &a, &["SELECT count(*) FROM order_items WHERE noise IS NULL"]).trim(), "0");
    assert_eq!(checksums(&golden), before, "the copy's writes reached the generation");
    let written = allocated();
    assert!(written > at_rest + (100 << 20), "the copy's writes took no room: {at_rest} → {written}");

    // A second copy is the generation's, not the first copy's.
    let b = up(&sb);
    let col =
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'order_items' AND column_name = 'noise'";
    assert_eq!(superuser_sql(&sb, &b, &[col]).trim(), "0");
    assert_eq!(superuser_sql(&sb, &a, &[col]).trim(), "1");
    down(&sb, &a);
    down(&sb, &b);
    assert_nothing_left(&sb, &b);
    // The generation stays, unmounted, for the next run; the room its copies took is
    // the host's again (the image does not grow with every copy).
    assert!(image.is_file());
    let after = allocated();
    assert!(
        after < written - (written - at_rest) / 2,
        "the copies' writes stay in the image: {at_rest} → {written} → {after}"
    );
}

#[test]
fn a_refresh_leaves_a_mounted_copy_working_and_removes_the_old_generation_after_it() {
    if !is_root() {
        // Without root there are no generations to refresh (the first test covers why).
        let sb = Sandbox::new();
        assert!(warm(&sb, &[]).contains("copy-on-write copies need root"));
        return;
    }
    let sb = Sandbox::new();
    warm(&sb, &[]);
    let a = up(&sb);
    let old = generations(&sb).join(current(&sb));
    warm(&sb, &[]);
    let new = generations(&sb).join(current(&sb));
    assert_ne!(old, new);
    // The old generation stays while its copy lives, and the copy works.
    assert!(old.with_extension("img").is_file());
    assert_eq!(superuser_sql(&sb, &a, &["SELECT count(*) > 0 FROM orders"]).trim(), "t");
    let b = up(&sb);
    let steps = sb.report(&b)["steps"].to_string();
    assert!(steps.contains(&format!("copy-on-write of generation {}", current(&sb))), "{steps}");
    let mut mounted = mounts_under(&sb.work());
    mounted.sort();
    let mut both = vec![old.clone(), new.clone()];
    both.sort();
    assert_eq!(mounted, both);
    // Its last copy gone, the old generation goes; the new one is unmounted with its own.
    down(&sb, &a);
    assert!(!old.with_extension("img").exists(), "the old generation outlived its last copy");
    assert!(!old.exists());
    assert_eq!(mounts_under(&sb.work()), vec![new.clone()]);
    down(&sb, &b);
    assert_nothing_left(&sb, &b);
    assert!(new.with_extension("img").is_file());
}

#[test]
fn full_copies_when_asked_a_lost_journal_and_an_orphaned_mount() {
    let sb = Sandbox::new();
    let said = warm(&sb, &["--method", "copy"]);
    assert!(said.contains("copied whole by runs"), "{said}");
    let a = up(&sb);
    assert_eq!(method_of(&sb, &a), "full-copy");
    assert!(sb.report(&a)["steps"].to_string().contains("full copy of"));
    down(&sb, &a);
    if !is_root() {
        let out = sb.cmd().args(["warm", "environments/demo.yaml", "--method", "copy-on-write"]).output().unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("need root"));
        return;
    }
    // Copy-on-write replaces the full copy.
    warm(&sb, &[]);
    assert!(!sb.work().join("golden/demo/db").exists());
    let a = up(&sb);
    assert_eq!(method_of(&sb, &a), "copy-on-write");
    // The journal lost: `down` finds the copy by its generation's marker.
    std::fs::remove_dir_all(sb.state().join("runs").join(&a)).unwrap();
    let out = sb.cmd().args(["sweep"]).output().unwrap();
    let swept = ok(&out, "rehearse sweep");
    assert!(swept.contains(&format!("remove it with `rehearse down {a}`")), "{swept}");
    down(&sb, &a);
    assert_nothing_left(&sb, &a);
    // An orphaned mount (as a crash between a copy's removal and the unmount leaves).
    let generation = generations(&sb).join(current(&sb));
    let out = std::process::Command::new("mount")
        .args(["-t", "xfs", "-o", "loop"])
        .arg(generation.with_extension("img"))
        .arg(&generation)
        .output()
        .unwrap();
    ok(&out, "mount");
    let swept = ok(&sb.cmd().args(["sweep"]).output().unwrap(), "rehearse sweep");
    assert!(swept.contains("mounted, nothing uses it"), "{swept}");
    assert_eq!(mounts_under(&sb.work()), vec![generation.clone()]);
    let swept = ok(&sb.cmd().args(["sweep", "--yes"]).output().unwrap(), "rehearse sweep --yes");
    assert!(swept.contains(&format!("unmounted {}", generation.display())), "{swept}");
    assert_eq!(mounts_under(&sb.work()), Vec::<PathBuf>::new());
    // Still current: the next run copies it.
    let b = up(&sb);
    assert_eq!(method_of(&sb, &b), "copy-on-write");
    down(&sb, &b);
    assert_nothing_left(&sb, &b);
}
