//! Complete rehearsals on this machine: real PostgreSQL clusters, the demo shop's
//! releases, real suites — and what is left afterwards on every exit path.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run_demo(sb: &Sandbox, release: &str, extra: &[&str]) -> (i32, String, String) {
    demo_backups();
    let mut args = vec!["run", "environments/demo.yaml", "--release", release];
    args.extend_from_slice(extra);
    let out = sb.cmd().args(&args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn v2_passes_on_the_copy_of_production_and_leaves_nothing() {
    let sb = Sandbox::new();
    let (code, _, stderr) = run_demo(&sb, "v2", &[]);
    assert_eq!(code, 0, "{stderr}");
    let ids = sb.run_ids();
    assert_eq!(ids.len(), 1);
    let report = sb.report(&ids[0]);
    assert_eq!(report["verdict"], "passed");
    assert_eq!(report["exit_code"], 0);
    // The newest backup by recorded time, not by name.
    let backup = &report["backups"][0];
    assert!(backup["backup"].as_str().unwrap().ends_with("shop-2026-nightly.dump"), "{backup}");
    assert!(backup["taken_at"].is_string());
    let suites = report["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 2);
    for s in suites {
        assert_eq!(s["status"], "passed", "{s}");
        assert!(s["tests"].as_u64().unwrap() > 0);
    }
    for f in ["report.json", "junit.xml", "summary.md", "report.html"] {
        assert!(sb.report_dir(&ids[0]).join(f).is_file(), "{f} missing");
    }
    let junit = std::fs::read_to_string(sb.report_dir(&ids[0]).join("junit.xml")).unwrap();
    assert!(junit.contains("<testsuite") && junit.contains("failures=\"0\""), "{junit}");
    assert_eq!(report["teardown"]["status"], "complete");
    assert_nothing_left(&sb, &ids[0]);
}

#[test]
fn v3_fails_at_its_migration_and_the_summary_says_why() {
    let sb = Sandbox::new();
    // Named: the change it is, as a developer gives it on the command line.
    let change = ["--change", "pr=12", "--change", "title=Unique customer emails", "--change", "author=alice"];
    let (code, _, stderr) = run_demo(&sb, "v3", &change);
    assert_eq!(code, 1, "{stderr}");
    let ids = sb.run_ids();
    let summary = std::fs::read_to_string(sb.report_dir(&ids[0]).join("summary.md")).unwrap();
    assert!(summary.contains("Change: #12 Unique customer emails · by alice"), "{summary}");
    let html = std::fs::read_to_string(sb.report_dir(&ids[0]).join("report.html")).unwrap();
    assert!(html.contains("Change: #12 Unique customer emails · by alice"), "{html}");
    // A field that is not one is refused before anything runs.
    let (code, _, stderr) = run_demo(&sb, "v3", &["--change", "pr=twelve"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--change pr=twelve: pr is a pull request's number"), "{stderr}");
    assert_eq!(sb.run_ids().len(), 1);
    assert!(summary.contains("0003_unique_customer_email.sql"), "{summary}");
    assert!(summary.contains("could not create unique index"), "{summary}");
    let report = sb.report(&ids[0]);
    assert_eq!(report["verdict"], "failed");
    assert_eq!(report["failure"]["phase"], "install");
    // Suites that never ran are not passes.
    for s in report["suites"].as_array().unwrap() {
        assert_eq!(s["status"], "not-run");
    }
    let junit = std::fs::read_to_string(sb.report_dir(&ids[0]).join("junit.xml")).unwrap();
    assert!(junit.contains("could not create unique index"), "{junit}");
    assert_nothing_left(&sb, &ids[0]);
}

/// A description in the sandbox built from the demo, with the given suites section
/// and service install command.
fn custom(sb: &Sandbox, install: &str, suites: &str) -> PathBuf {
    custom_description(sb, install, "python3 app.py", suites)
}

fn run_file(sb: &Sandbox, file: &Path) -> (i32, serde_json::Value, String) {
    let out = sb.cmd().arg("run").arg(file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let ids = sb.run_ids();
    let report = sb.report(ids.last().expect("a run"));
    (out.status.code().unwrap_or(-1), report, stderr)
}

#[test]
fn a_suite_that_writes_no_junit_file_fails_the_run() {
    let sb = Sandbox::new();
    let file = custom(
        &sb,
        "sh migrate.sh",
        "  quiet:\n    command: \"true\"\n    timeout: 10s\n    results:\n      junit: out.xml\n",
    );
    let (code, report, stderr) = run_file(&sb, &file);
    assert_eq!(code, 1, "{stderr}");
    let s = &report["suites"][0];
    assert_eq!(s["status"], "error");
    assert!(s["reason"].as_str().unwrap().contains("wrote no JUnit file"), "{s}");
    assert_nothing_left(&sb, report["run_id"].as_str().unwrap());
}

#[test]
fn a_suite_that_reports_zero_tests_fails_the_run() {
    let sb = Sandbox::new();
    let suite = "  empty:\n    command: \"echo '<testsuites><testsuite name=\\\"x\\\" tests=\\\"0\\\"></testsuite></testsuites>' > $REHEARSE_JUNIT_PATH\"\n    timeout: 10s\n    results:\n      junit: out.xml\n";
    let file = custom(&sb, "sh migrate.sh", suite);
    let (code, report, stderr) = run_file(&sb, &file);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(report["suites"][0]["status"], "error");
    assert!(report["suites"][0]["reason"].as_str().unwrap().contains("zero tests"));
}

#[test]
fn a_suite_that_cannot_start_or_times_out_fails_the_run() {
    let sb = Sandbox::new();
    let suites = "  missing:\n    command: ./no-such-suite\n    timeout: 10s\n    results: exit-code\n  slow:\n    command: sleep 30\n    timeout: 1s\n    results: exit-code\n";
    let file = custom(&sb, "sh migrate.sh", suites);
    let started = Instant::now();
    let (code, report, stderr) = run_file(&sb, &file);
    assert_eq!(code, 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(25), "the timeout was not enforced");
    let by_name = |n: &str| report["suites"].as_array().unwrap().iter().find(|s| s["name"] == n).unwrap().clone();
    assert_eq!(by_name("missing")["status"], "error");
    assert!(by_name("missing")["reason"].as_str().unwrap().contains("could not start"));
    assert_eq!(by_name("slow")["status"], "error");
    assert!(by_name("slow")["reason"].as_str().unwrap().contains("timed out"));
    assert_nothing_left(&sb, report["run_id"].as_str().unwrap());
}

#[test]
fn a_missing_backup_is_a_build_failure_that_creates_nothing() {
    let sb = Sandbox::new();
    demo_backups();
    let empty = sb.dir.path().join("no-backups");
    std::fs::create_dir_all(&empty).unwrap();
    let text = format!(
        "name: nobackup\nprovider: local\nowner: t\nrelease:\n  version: v2\n  artifact: \"{{root}}/demo/build/releases/v2\"\ndatabases:\n  db:\n    name: shop\n    source:\n      backup_dir: {}\nsuites:\n  s:\n    command: \"true\"\n    timeout: 5s\n    results: exit-code\n",
        empty.display()
    );
    let file = write_description(&sb, "nobackup.yaml", &text);
    let (code, report, stderr) = run_file(&sb, &file);
    assert_eq!(code, 3, "{stderr}");
    assert_eq!(report["verdict"], "build-failed");
    assert!(report["reason"].as_str().unwrap().contains("no pg_dump archive found"), "{}", report["reason"]);
    assert_nothing_left(&sb, report["run_id"].as_str().unwrap());
}

#[test]
fn kept_environment_is_listed_and_removed_by_down() {
    let sb = Sandbox::new();
    let (code, _, stderr) = run_demo(&sb, "v2", &["--keep"]);
    assert_eq!(code, 0, "{stderr}");
    let id = sb.run_ids().pop().unwrap();
    assert!(!tagged_processes(&id).is_empty(), "the kept service should still run");
    let list = sb.cmd().args(["list", "--format", "json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows[0]["run_id"], id.as_str());
    assert_eq!(rows[0]["status"], "kept");
    let down = sb.cmd().args(["down", &id]).output().unwrap();
    assert_eq!(down.status.code(), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    assert_nothing_left(&sb, &id);
    // Destroy is idempotent.
    let again = sb.cmd().args(["down", &id]).output().unwrap();
    assert_eq!(again.status.code(), Some(0));
}

/// Starts a run in the background and waits until `marker` exists.
fn start_until(sb: &Sandbox, file: &Path, marker: &Path) -> Child {
    let mut child = sb.cmd().arg("run").arg(file).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    wait_for_marker(&mut child, marker, Duration::from_secs(60));
    child
}

/// Waits until `marker` exists; a run that ends first fails the test with its exit
/// code and what it said, instead of a wait for the marker until the limit.
fn wait_for_marker(child: &mut Child, marker: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !marker.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("rehearse ended ({status}) before {} appeared:\n{err}", marker.display());
        }
        assert!(Instant::now() < deadline, "{} never appeared", marker.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a run, waits until `marker` exists, sends `sig`, and waits for the exit:
/// (run id, exit code, stderr).
fn interrupt_at(sb: &Sandbox, file: &Path, marker: &Path, sig: i32) -> (String, i32, String) {
    let child = start_until(sb, file, marker);
    let id = sb.run_ids().pop().unwrap();
    signal(&child, sig);
    let (code, stderr) = wait_exit(child, Duration::from_secs(30));
    (id, code, stderr)
}

fn wait_exit(mut child: Child, limit: Duration) -> (i32, String) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.code().unwrap_or(-1), err);
        }
        assert!(Instant::now() < deadline, "rehearse did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    unsafe_kill(child.id() as i32, sig);
}

fn unsafe_kill(pid: i32, sig: i32) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

/// A PATH on which `tool` is replaced by `script` (`{real}` is the real binary
/// directory) and the other PostgreSQL tools are the real ones, so a test can make one
/// step slow and interrupt the run in the middle of it.
fn wrapped_pg_path(sb: &Sandbox, tool: &str, script: &str) -> String {
    let bin = sb.dir.path().join(format!("wrapped-{tool}"));
    std::fs::create_dir_all(&bin).unwrap();
    let real = pg_bindir();
    for t in ["initdb", "pg_ctl", "postgres", "psql", "pg_dump", "pg_restore"].into_iter().filter(|t| *t != tool) {
        std::os::unix::fs::symlink(real.join(t), bin.join(t)).unwrap();
    }
    std::fs::write(bin.join(tool), script.replace("{real}", &real.display().to_string())).unwrap();
    std::fs::set_permissions(bin.join(tool), std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// A `pg_restore` that touches a marker and sleeps before restoring (`-l` listings,
/// used to find the newest backup, stay fast). The listing is told by an argument that
/// is `-l`, not by "-l" anywhere in the arguments: the sandbox's random directory name
/// (`rehearse-test-lOOZpq`) has it one time in sixty-two, and the restore then ran at
/// once and the run passed before the test could interrupt it.
fn slow_pg_restore(sb: &Sandbox, marker: &Path) -> String {
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -l ] && exec {{real}}/pg_restore \"$@\"; done\ntouch {}\nsleep 60\nexec {{real}}/pg_restore \"$@\"\n",
        marker.display()
    );
    wrapped_pg_path(sb, "pg_restore", &script)
}

fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect("PostgreSQL server binaries are installed (make test-deps)")
}

#[test]
fn sigint_during_restore_tears_down_and_exits_130() {
    let sb = Sandbox::new();
    demo_backups();
    let marker = sb.dir.path().join("restore-started");
    let path = slow_pg_restore(&sb, &marker);
    let mut child = sb
        .cmd()
        .env("PATH", path)
        .args(["run", "environments/demo.yaml", "--release", "v2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_marker(&mut child, &marker, Duration::from_secs(180));
    let id = sb.run_ids().pop().unwrap();
    signal(&child, 2);
    let (code, stderr) = wait_exit(child, Duration::from_secs(30));
    assert_eq!(code, 130, "{stderr}");
    assert_eq!(sb.report(&id)["verdict"], "interrupted");
    assert_nothing_left(&sb, &id);
}

/// A description whose install touches the returned marker, then hangs for a minute.
fn hanging_install(sb: &Sandbox) -> (PathBuf, PathBuf) {
    let marker = sb.shared().join("install-started");
    let file = custom(
        sb,
        &format!("touch {} && sleep 60", marker.display()),
        "  s:\n    command: \"true\"\n    timeout: 5s\n    results: exit-code\n",
    );
    (file, marker)
}

#[test]
fn sigint_during_install_tears_down_and_exits_130() {
    let sb = Sandbox::new();
    let (file, marker) = hanging_install(&sb);
    let (id, code, stderr) = interrupt_at(&sb, &file, &marker, 2);
    assert_eq!(code, 130, "{stderr}");
    assert_nothing_left(&sb, &id);
}

#[test]
fn sigterm_during_suites_tears_down_and_exits_130() {
    let sb = Sandbox::new();
    let marker = sb.shared().join("suite-started");
    let suite = format!(
        "  s:\n    command: \"touch {} && sleep 60\"\n    timeout: 2m\n    results: exit-code\n",
        marker.display()
    );
    let file = custom(&sb, "sh migrate.sh", &suite);
    let (id, code, stderr) = interrupt_at(&sb, &file, &marker, 15);
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_nothing_left(&sb, &id);
}

#[test]
fn sigkill_then_down_removes_everything_even_without_the_journal() {
    for lose_journal in [false, true] {
        let sb = Sandbox::new();
        let (file, marker) = hanging_install(&sb);
        let (id, _, _) = interrupt_at(&sb, &file, &marker, 9);
        // The cluster and the install command survived the kill.
        assert!(!postgres_under(&sb.work()).is_empty(), "the cluster should outlive a SIGKILL");
        if lose_journal {
            std::fs::remove_file(sb.state().join("runs").join(&id).join("journal.jsonl")).unwrap();
        }
        let list = sb.cmd().args(["list"]).output().unwrap();
        if !lose_journal {
            assert!(
                String::from_utf8_lossy(&list.stdout).contains("crashed"),
                "{}",
                String::from_utf8_lossy(&list.stdout)
            );
        }
        let down = sb.cmd().args(["down", &id]).output().unwrap();
        assert_eq!(
            down.status.code(),
            Some(0),
            "lose_journal={lose_journal}: {}",
            String::from_utf8_lossy(&down.stderr)
        );
        assert_nothing_left(&sb, &id);
    }
}

#[test]
fn warm_golden_copy_is_used_and_matches_the_backup() {
    let sb = Sandbox::new();
    demo_backups();
    let warm = sb.cmd().args(["warm", "environments/demo.yaml"]).output().unwrap();
    assert_eq!(warm.status.code(), Some(0), "{}", String::from_utf8_lossy(&warm.stderr));
    assert!(String::from_utf8_lossy(&warm.stdout).contains("golden copy refreshed"));
    // The run a command made: the id not seen before it (two runs in one second sort by
    // their random part, not by time).
    let mut seen: Vec<String> = Vec::new();
    let mut newest = |sb: &Sandbox| {
        let id = sb.run_ids().into_iter().find(|i| !seen.contains(i)).expect("a new run");
        seen.push(id.clone());
        id
    };
    let (code, _, stderr) = run_demo(&sb, "v2", &[]);
    assert_eq!(code, 0, "{stderr}");
    let id = newest(&sb);
    let report = sb.report(&id);
    let cow = if nix::unistd::geteuid().is_root() { "copy-on-write" } else { "full-copy" };
    assert_eq!(report["backups"][0]["method"], cow, "{}", report["backups"]);
    // --cold ignores it.
    let (code, _, _) = run_demo(&sb, "v2", &["--cold"]);
    assert_eq!(code, 0);
    let id = newest(&sb);
    assert_eq!(sb.report(&id)["backups"][0]["method"], "cold");
    assert_nothing_left(&sb, &id);
    // The golden copy itself is stopped: no server runs from it.
    assert!(postgres_under(&sb.work()).is_empty());
}

#[test]
fn report_command_reprints_a_finished_run() {
    let sb = Sandbox::new();
    let (code, _, _) = run_demo(&sb, "v2", &[]);
    assert_eq!(code, 0);
    let id = sb.run_ids().pop().unwrap();
    let out = sb.cmd().args(["report", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("PASSED"), "{}", String::from_utf8_lossy(&out.stdout));
    let out = sb.cmd().args(["report", "r-nope"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn tar_gz_artifact_config_templates_and_a_live_url_source() {
    // "Production" here is a kept rehearsal of the demo: a live PostgreSQL to dump from.
    let prod = Sandbox::new();
    let (code, _, stderr) = run_demo(&prod, "v2", &["--keep"]);
    assert_eq!(code, 0, "{stderr}");
    let prod_id = prod.run_ids().pop().unwrap();
    let prod_report = prod.report(&prod_id);
    // The report names the copy's server, "PostgreSQL on 127.0.0.1:PORT in DIR".
    let server = prod_report["resources"].as_array().unwrap().iter().find(|r| r["id"] == "database.db").unwrap()
        ["provider_id"]
        .as_str()
        .unwrap()
        .to_string();
    let port: String = server.split("127.0.0.1:").nth(1).unwrap().chars().take_while(char::is_ascii_digit).collect();
    // The password is a per-run secret; read it back the way an operator would, from
    // the kept service's environment (as root, /proc/PID/environ is readable).
    let pid = tagged_processes(&prod_id)
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.contains("app.py")));
    let url = pid
        .and_then(|p| std::fs::read(format!("/proc/{p}/environ")).ok())
        .and_then(|env| {
            env.split(|b| *b == 0)
                .find_map(|kv| String::from_utf8_lossy(kv).strip_prefix("DATABASE_URL=").map(str::to_string))
        })
        .expect("the kept service has DATABASE_URL");
    assert!(url.contains(&format!(":{port}/")), "{url}");

    let sb = Sandbox::new();
    let tarball = sb.dir.path().join("shop-v2.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(root().join("demo/build/releases"))
        .arg("v2")
        .status()
        .unwrap();
    assert!(status.success());
    let text = format!(
        r#"name: fromurl
provider: local
owner: t
release:
  version: v2
  artifact: "{}"
databases:
  db:
    name: shop
    source:
      url: "{url}"
services:
  web:
    depends_on: [db]
    install: "sh migrate.sh && test -f config/app.conf && grep -q release=v2 config/app.conf"
    command: python3 app.py
    templates:
      - source: app.conf.tera
        dest: config/app.conf
    health:
      path: /health
      timeout: 30s
bundle: [../demo/suites]
suites:
  smoke:
    command: python3 ../demo/suites/smoke.py
    timeout: 30s
    results:
      junit: smoke.xml
    env:
      SHOP_URL: "{{{{ services.web.url }}}}"
"#,
        tarball.display()
    );
    let file = write_description(&sb, "fromurl.yaml", &text);
    std::fs::write(
        file.with_file_name("app.conf.tera"),
        "release={{ release.version }}\ndb={{ databases.db.host }}:{{ databases.db.port }}\n",
    )
    .unwrap();
    let (code, report, stderr) = run_file(&sb, &file);
    assert_eq!(code, 0, "{stderr}\n{report}");
    assert_eq!(report["backups"][0]["source_kind"], "url");
    // The password never appears in the report.
    let secret = url.split(':').nth(2).unwrap().split('@').next().unwrap();
    assert!(!report.to_string().contains(secret), "the report leaks the production password");
    assert_nothing_left(&sb, report["run_id"].as_str().unwrap());

    let down = prod.cmd().args(["down", &prod_id]).output().unwrap();
    assert_eq!(down.status.code(), Some(0));
    assert_nothing_left(&prod, &prod_id);
}

#[test]
fn second_signal_stops_teardown_and_lists_what_is_left() {
    let sb = Sandbox::new();
    demo_backups();
    // A pg_ctl whose `stop` hangs: teardown of the database takes long enough to be
    // interrupted a second time. pg_ctl runs as the cluster's user (rehearse-db, as
    // root), so its marker goes into a directory anyone may write.
    let stopping = sb.shared().join("stopping");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = stop ] && touch {} && sleep 60; done\nexec {{real}}/pg_ctl \"$@\"\n",
        stopping.display()
    );
    let path = wrapped_pg_path(&sb, "pg_ctl", &script);
    let marker = sb.shared().join("suite-started");
    let suite = format!(
        "  s:\n    command: \"touch {} && sleep 60\"\n    timeout: 2m\n    results: exit-code\n",
        marker.display()
    );
    let file = custom(&sb, "sh migrate.sh", &suite);
    let child =
        sb.cmd().env("PATH", path).arg("run").arg(&file).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "suite never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = sb.run_ids().pop().unwrap();
    signal(&child, 2);
    while !stopping.exists() {
        assert!(Instant::now() < deadline, "teardown never reached the database");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&child, 2);
    let (code, stderr) = wait_exit(child, Duration::from_secs(30));
    assert_eq!(code, 4, "resources remain, so the exit code is 4:\n{stderr}");
    assert!(stderr.contains("database.db") && stderr.contains("rehearse down"), "{stderr}");
    // What was left is removable with the command it printed.
    let down = sb.cmd().args(["down", &id]).output().unwrap();
    assert_eq!(down.status.code(), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    assert_nothing_left(&sb, &id);
}

/// The terminal closing (SIGHUP) or a quit (SIGQUIT) tears down like SIGTERM: the copy
/// of production never outlives the session that started it.
#[test]
fn sighup_and_sigquit_tear_down_like_sigterm() {
    for sig in [1, 3] {
        let sb = Sandbox::new();
        let marker = sb.shared().join("suite-started");
        let suite = format!(
            "  s:\n    command: \"touch {} && sleep 60\"\n    timeout: 2m\n    results: exit-code\n",
            marker.display()
        );
        let file = custom(&sb, "sh migrate.sh", &suite);
        let (id, code, stderr) = interrupt_at(&sb, &file, &marker, sig);
        assert_eq!(code, 130, "signal {sig}: {stderr}");
        assert_eq!(sb.report(&id)["verdict"], "interrupted", "signal {sig}");
        assert_eq!(sb.report(&id)["teardown"]["status"], "complete", "signal {sig}");
        assert_nothing_left(&sb, &id);
    }
}

/// A journal whose recorded PID now belongs to another process (the PID was reused
/// after the run died) is not "still in progress": `list` says crashed and `down`
/// removes the run.
#[test]
fn a_reused_pid_does_not_keep_a_dead_run_alive() {
    let sb = Sandbox::new();
    let (file, marker) = hanging_install(&sb);
    let (id, _, _) = interrupt_at(&sb, &file, &marker, 9);
    // Another process, alive, now under the PID the journal names (as if reused).
    let mut stranger = Command::new("sleep").arg("60").spawn().unwrap();
    let journal = sb.state().join("runs").join(&id).join("journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines[0]["pid"] = serde_json::json!(stranger.id());
    // Its start time is not the stranger's (the run's process started earlier).
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", stranger.id())).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(19).unwrap().parse().unwrap();
    lines[0]["pid_start"] = serde_json::json!(start - 1);
    let rewritten: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&journal, rewritten).unwrap();

    let list = sb.cmd().args(["list", "--format", "json"]).output().unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows[0]["status"], "crashed", "{rows}");
    let down = sb.cmd().args(["down", &id]).output().unwrap();
    assert_eq!(down.status.code(), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    assert_nothing_left(&sb, &id);
    assert!(stranger.try_wait().unwrap().is_none(), "the process under the reused PID was signalled");
    let _ = stranger.kill();
    let _ = stranger.wait();
}

/// A suite's output is not trusted: a JUnit file over the size limit fails the suite
/// (it is not read into memory, nor copied into three reports), and a JUnit "file"
/// that is a link to a file only root may read is not followed.
#[test]
fn junit_files_that_are_too_large_or_links_are_refused() {
    let sb = Sandbox::new();
    let suites = "  big:\n    command: \"head -c 17000000 /dev/zero | tr '\\\\0' x > $REHEARSE_JUNIT_PATH\"\n    timeout: 30s\n    results:\n      junit: big.xml\n  link:\n    command: \"ln -s /etc/shadow $REHEARSE_JUNIT_PATH\"\n    timeout: 30s\n    results:\n      junit: link.xml\n";
    let file = custom(&sb, "sh migrate.sh", suites);
    let (code, report, stderr) = run_file(&sb, &file);
    assert_eq!(code, 1, "{stderr}");
    let suite = |name: &str| report["suites"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone();
    let big = suite("big");
    assert_eq!(big["status"], "error", "{big}");
    assert!(big["reason"].as_str().unwrap().contains("larger than 16 MiB"), "{big}");
    let link = suite("link");
    assert_eq!(link["status"], "error", "{link}");
    assert!(link["reason"].as_str().unwrap().contains("symbolic link"), "{link}");
    let dir = sb.report_dir(report["run_id"].as_str().unwrap());
    for f in ["report.json", "junit.xml", "summary.md", "report.html"] {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len < 1 << 20, "{f} is {len} bytes");
        assert!(!std::fs::read_to_string(dir.join(f)).unwrap().contains("root:"), "{f} holds /etc/shadow");
    }
    assert_nothing_left(&sb, report["run_id"].as_str().unwrap());
}

/// A suite command templated with the database URL (password included): the password
/// reaches neither the report files, nor the logs, nor the terminal.
#[test]
fn a_templated_password_is_redacted_from_reports_logs_and_terminal() {
    let sb = Sandbox::new();
    let capture = sb.shared().join("seen-password");
    let suites = format!(
        "  leaky:\n    command: \"echo url={{{{ databases.db.url }}}} && printf %s \\\"$PGPASSWORD\\\" > {} && exit 1\"\n    timeout: 30s\n    results: exit-code\n",
        capture.display()
    );
    let file = custom(&sb, "sh migrate.sh", &suites);
    let (code, report, stderr) = run_file(&sb, &file);
    assert_eq!(code, 1, "{stderr}");
    let password = std::fs::read_to_string(&capture).unwrap();
    assert!(password.len() >= 20, "the suite saw the password: {password:?}");
    assert!(!stderr.contains(&password), "the terminal shows the password");
    let run = sb.state().join("runs").join(report["run_id"].as_str().unwrap());
    let mut files = vec![run.clone()];
    let mut checked = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(&password), "{} holds the password", p.display());
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} files checked");
    // What the suite printed is there, with the password masked.
    let log = std::fs::read_to_string(run.join("suites/leaky/output.log")).unwrap();
    assert!(log.contains("url=postgres://app:***@127.0.0.1:"), "{log}");
    assert_nothing_left(&sb, report["run_id"].as_str().unwrap());
}

/// Rows of `table` in a pg_dump archive, counted from its data as pg_restore prints it.
fn rows_in_backup(archive: &str, table: &str) -> usize {
    let out = Command::new(pg_bindir().join("pg_restore"))
        .args(["--data-only", "-t", table, "-f", "-", archive])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&format!("COPY public.{table} ")));
    assert!(lines.next().is_some(), "no COPY of {table} in {archive}");
    lines.take_while(|l| *l != "\\.").count()
}

/// Every process's command line on this machine, as one text.
fn all_argv() -> String {
    let mut out = String::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_str().is_some_and(|n| n.parse::<u32>().is_ok()) {
            if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
                out.push_str(&String::from_utf8_lossy(&b).replace('\0', " "));
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn a_kept_dry_run_is_reachable_with_env_psql_and_logs_and_its_password_shows_only_in_env() {
    let sb = Sandbox::new();
    demo_backups();
    let up = sb.cmd().args(["up", "environments/demo.yaml", "--release", "v2", "--format", "json"]).output().unwrap();
    let up_err = String::from_utf8_lossy(&up.stderr).into_owned();
    assert_eq!(up.status.code(), Some(0), "{up_err}");
    let report: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let id = report["run_id"].as_str().unwrap().to_string();
    // `up` says how to reach it: the service's URL and the database's address.
    let access = &report["access"];
    let url = access["services"]["web"][0].as_str().expect("the service URL in up's output").to_string();
    assert_eq!(access["databases"]["db"]["name"], "shop", "{access}");
    assert!(access["commands"].as_array().unwrap().iter().any(|c| c == &format!("rehearse psql {id} db")));
    let text_up = sb.cmd().args(["report", &id]).output().unwrap();
    let text_up = String::from_utf8_lossy(&text_up.stdout).into_owned();
    assert!(text_up.contains(&url) && text_up.contains("rehearse env"), "{text_up}");

    // `env --format json`: the service URL and the database URL, password included.
    let env = sb.cmd().args(["env", &id, "--format", "json"]).output().unwrap();
    assert_eq!(env.status.code(), Some(0), "{}", String::from_utf8_lossy(&env.stderr));
    let conn: serde_json::Value = serde_json::from_slice(&env.stdout).unwrap();
    assert_eq!(conn["services"]["web"]["url"], url.as_str());
    let password = conn["databases"]["db"]["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 16, "{conn}");
    let db_url = conn["databases"]["db"]["url"].as_str().unwrap();
    assert!(db_url.starts_with("postgres://") && db_url.contains(&password), "{db_url}");
    // The shell form evaluates in a shell.
    let shell = sb.cmd().args(["env", &id]).output().unwrap();
    let check = Command::new("sh")
        .arg("-c")
        .arg(format!("{}\nprintf %s \"$PGPASSWORD\"", String::from_utf8_lossy(&shell.stdout)))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&check.stdout), password);

    // psql on the copy: production's row count (from the backup the copy was made of).
    let backup = report["backups"][0]["backup"].as_str().unwrap().to_string();
    let expected = rows_in_backup(&backup, "customers");
    let psql = sb.cmd().args(["psql", &id, "--", "-Atc", "select count(*) from customers"]).output().unwrap();
    assert_eq!(psql.status.code(), Some(0), "{}", String::from_utf8_lossy(&psql.stderr));
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), expected.to_string());
    assert!(expected > 0);

    // The service answers on the printed URL, and its log shows it.
    let health = Command::new("curl").args(["-fsS", &format!("{url}/health")]).output();
    let answered = match health {
        Ok(o) => o.status.success(),
        // Without curl: one GET by hand.
        Err(_) => {
            let addr = url.trim_start_matches("http://");
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            use std::io::{Read, Write};
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200")
        }
    };
    assert!(answered, "{url}/health did not answer");
    let logs = sb.cmd().args(["logs", &id, "web"]).output().unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout).into_owned();
    assert!(logs.contains("listening on") && logs.contains("GET /health"), "{logs}");
    // `-f` shows what the service writes next.
    let mut follow = sb.cmd().args(["logs", &id, "web", "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(follow.stdout.take().unwrap()));
    let seen = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if seen.0.send(line).is_err() {
                break;
            }
        }
    });
    // First what is there already; only then a request, whose line can come only from
    // following the file.
    let start = Instant::now();
    while !seen.1.recv_timeout(Duration::from_secs(1)).is_ok_and(|l| l.contains("listening on")) {
        assert!(start.elapsed() < Duration::from_secs(20), "`logs -f` printed nothing");
    }
    std::thread::sleep(Duration::from_millis(600));
    let addr = url.trim_start_matches("http://").to_string();
    let mut found = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !found && Instant::now() < deadline {
        {
            use std::io::Write as _;
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /followed-by-logs HTTP/1.0\r\n\r\n").unwrap();
            let mut sink = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut sink).unwrap();
        }
        while let Ok(line) = seen.1.recv_timeout(Duration::from_millis(500)) {
            if line.contains("GET /followed-by-logs") {
                found = true;
                break;
            }
        }
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
    reader.join().unwrap();
    assert!(found, "`logs -f` did not show the request made after it started");

    // `extend RUN 1h` moves the expiry that `list` shows by an hour.
    let expiry = |sb: &Sandbox| {
        let out = sb.cmd().args(["list", "--format", "json"]).output().unwrap();
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        chrono::DateTime::parse_from_rfc3339(rows[0]["expires_at"].as_str().unwrap()).unwrap()
    };
    let before = expiry(&sb);
    let extend = sb.cmd().args(["extend", &id, "1h"]).output().unwrap();
    assert_eq!(extend.status.code(), Some(0), "{}", String::from_utf8_lossy(&extend.stderr));
    assert_eq!(expiry(&sb) - before, chrono::Duration::hours(1));

    // The password shows in `env` only: not in up's output, the reports, the journal,
    // the logs as `logs` prints them, or any process's command line.
    assert!(!up_err.contains(&password) && !String::from_utf8_lossy(&up.stdout).contains(&password));
    assert!(!text_up.contains(&password) && !logs.contains(&password));
    let run_dir = sb.state().join("runs").join(&id);
    for f in ["journal.jsonl", "report/report.json", "report/summary.md", "report/report.html", "report/junit.xml"] {
        let text = std::fs::read_to_string(run_dir.join(f)).unwrap();
        assert!(!text.contains(&password), "the password is in {f}");
    }
    assert!(!all_argv().contains(&password), "the password is on a command line");
    // The connection file holds it, for the owner only.
    let meta = std::fs::metadata(run_dir.join("connection.json")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // `env` does not hand out the tag of the run's own processes: a program started
    // from a shell that evaluated it is not stopped by `down`. Nor is a shell that
    // carries the tag from its start (a CI job that set it) and runs `down` itself.
    assert!(!String::from_utf8_lossy(&shell.stdout).contains("REHEARSE_RUN_ID"));
    let down = sb.cmd();
    let rehearse = down.get_program().to_owned();
    let envs: Vec<(std::ffi::OsString, Option<std::ffi::OsString>)> =
        down.get_envs().map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned()))).collect();
    let mut sh = Command::new("sh");
    for (k, v) in envs {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    if let Some(dir) = down.get_current_dir() {
        sh.current_dir(dir);
    }
    sh.env("REHEARSE_RUN_ID", &id);
    let script = format!(
        "unset REHEARSE_RUN_ID\n{}\nsleep 30 &\nsibling=$!\n\"$0\" down {id} || exit 9\n\
         kill -0 $sibling && echo the sibling survived\nkill $sibling\necho the shell survived",
        String::from_utf8_lossy(&shell.stdout)
    );
    let down = sh.arg("-c").arg(script).arg(&rehearse).output().unwrap();
    assert_eq!(down.status.code(), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(said.contains("the sibling survived") && said.contains("the shell survived"), "{down:?}");
    assert_nothing_left(&sb, &id);
    assert!(!run_dir.join("connection.json").exists(), "the connection details outlive the environment");
    let gone = sb.cmd().args(["env", &id]).output().unwrap();
    assert_eq!(gone.status.code(), Some(2));
}

#[test]
fn a_named_dry_run_is_extended_within_its_max_ttl_and_sweep_honours_the_new_expiry() {
    let sb = Sandbox::new();
    demo_backups();
    let up = sb.cmd().args(["up", "environments/demo.yaml", "--release", "v2", "--name", "my-try"]).output().unwrap();
    assert_eq!(up.status.code(), Some(0), "{}", String::from_utf8_lossy(&up.stderr));
    let id = sb.run_ids().pop().unwrap();
    // The name is taken while the run lives.
    let again =
        sb.cmd().args(["up", "environments/demo.yaml", "--release", "v2", "--name", "my-try"]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is taken by the live run"), "{again:?}");
    assert_eq!(sb.run_ids().len(), 1, "a refused name creates nothing");

    let rows = |sb: &Sandbox| -> serde_json::Value {
        let out = sb.cmd().args(["list", "--mine", "--format", "json"]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = rows(&sb);
    assert_eq!(before[0]["name"], "my-try", "{before}");
    assert_eq!(before[0]["run_id"], id.as_str());
    let expires =
        |v: &serde_json::Value| chrono::DateTime::parse_from_rfc3339(v[0]["expires_at"].as_str().unwrap()).unwrap();
    let t0 = expires(&before);

    // The name works where the id does.
    let env = sb.cmd().args(["env", "my-try", "--format", "json"]).output().unwrap();
    assert_eq!(env.status.code(), Some(0), "{}", String::from_utf8_lossy(&env.stderr));
    let extend = sb.cmd().args(["extend", "my-try", "1h"]).output().unwrap();
    assert_eq!(extend.status.code(), Some(0), "{}", String::from_utf8_lossy(&extend.stderr));
    let t1 = expires(&rows(&sb));
    assert_eq!(t1 - t0, chrono::Duration::hours(1), "{t0} → {t1}");
    // Not past max_ttl (7 days from its start by default).
    let too_far = sb.cmd().args(["extend", "my-try", "8d"]).output().unwrap();
    assert_eq!(too_far.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&too_far.stderr).contains("max_ttl"), "{too_far:?}");
    assert_eq!(expires(&rows(&sb)), t1, "a refused extension changes nothing");

    // Sweep goes by the journal's latest expiry: as if its time had run out (an
    // extension never shortens a run, so the run record's expiry and the extension
    // above are moved back), then extended.
    let journal = sb.state().join("runs").join(&id).join("journal.jsonl");
    let past = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let text: Vec<String> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).unwrap();
            match r["type"].as_str() {
                Some("run") | Some("extended") => r["expires_at"] = serde_json::json!(past),
                _ => {}
            }
            format!("{r}\n")
        })
        .collect();
    std::fs::write(&journal, text.concat()).unwrap();
    let sweep = sb.cmd().args(["sweep"]).output().unwrap();
    assert!(String::from_utf8_lossy(&sweep.stdout).contains(&format!("would remove {id}")), "{sweep:?}");
    let extend = sb.cmd().args(["extend", &id, "30m"]).output().unwrap();
    assert_eq!(extend.status.code(), Some(0), "{}", String::from_utf8_lossy(&extend.stderr));
    let sweep = sb.cmd().args(["sweep"]).output().unwrap();
    assert!(String::from_utf8_lossy(&sweep.stdout).contains("nothing to sweep"), "{sweep:?}");

    let down = sb.cmd().args(["down", "my-try"]).output().unwrap();
    assert_eq!(down.status.code(), Some(0), "{}", String::from_utf8_lossy(&down.stderr));
    assert_nothing_left(&sb, &id);
    // Once the run is gone, so is its name.
    let gone = sb.cmd().args(["env", "my-try"]).output().unwrap();
    assert_eq!(gone.status.code(), Some(2));
}
