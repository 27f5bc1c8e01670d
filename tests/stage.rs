//! A stage rebuilt as cattle (`rehearse rebuild`), on this machine: real PostgreSQL,
//! the demo shop's releases, and clients that only know the stage's stable ports.

use crate::common;
use crate::emulator;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// environments/staging.yaml in the sandbox: the same description, its paths pointed at
/// the repository, its stable ports free ones (tests run side by side).
fn staging(sb: &Sandbox) -> (PathBuf, u16, u16) {
    demo_backups();
    let (db, web) = (free_port(), free_port());
    let text = from_repository(&std::fs::read_to_string(root().join("environments/staging.yaml")).unwrap())
        .replace("db: 25432", &format!("db: {db}"))
        .replace("web: 28080", &format!("web: {web}"));
    assert!(text.contains(&format!("db: {db}")) && text.contains(&format!("web: {web}")), "{text}");
    (write_description(sb, "staging.yaml", &text), db, web)
}

fn rebuild(sb: &Sandbox, file: &std::path::Path, release: &str, drain: &str) -> (i32, String) {
    let out = sb.cmd().args(["rebuild"]).arg(file).args(["--release", release, "--drain", drain]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn status(sb: &Sandbox) -> serde_json::Value {
    let out = sb.cmd().args(["--format", "json", "stage", "status", "staging"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The stage's connection through its stable names, as `rehearse stage env` prints it.
fn stage_env(sb: &Sandbox) -> Vec<(String, String)> {
    let out = sb.cmd().args(["--format", "json", "stage", "env", "staging"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let db = &c["databases"]["db"];
    ["host", "port", "user", "password", "name"]
        .iter()
        .zip(["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"])
        .map(|(k, var)| (var.to_string(), db[*k].as_str().unwrap().to_string()))
        .collect()
}

/// A query's answer: the answering server's port and its newest migration, or the error.
type Answer = Result<(u16, String), String>;

/// One query on a new connection through the stable database port: the port of the
/// server that answered and the newest migration it has.
fn query(env: &[(String, String)]) -> Answer {
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("select inet_server_port(), (select max(version) from schema_migrations)")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (port, version) = text.split_once('|').ok_or(format!("unexpected answer `{text}`"))?;
    Ok((port.parse().map_err(|_| format!("unexpected answer `{text}`"))?, version.to_string()))
}

/// The release the shop says it is, through the stable web port.
fn shop_version(web: u16) -> String {
    let out =
        Command::new("curl").args(["-sS", "--max-time", "5"]).arg(format!("http://127.0.0.1:{web}/version")).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!("(curl failed: {})", String::from_utf8_lossy(&o.stderr)),
        Err(e) => format!("(curl: {e})"),
    }
}

/// The port generation `n`'s database listens on, from the stage's record.
fn db_port_of(status: &serde_json::Value, n: u64) -> u16 {
    let gens = status["stage"]["generations"].as_array().unwrap();
    let g = gens.iter().find(|g| g["number"] == n).unwrap();
    g["targets"]["db"][0].as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap()
}

fn fate_of(status: &serde_json::Value, n: u64) -> String {
    let gens = status["stage"]["generations"].as_array().unwrap();
    gens.iter().find(|g| g["number"] == n).unwrap()["fate"].as_str().unwrap().to_string()
}

/// Queries through the stable database port, each on a new connection, until stopped.
struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Answer>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Client {
    fn start(env: Vec<(String, String)>) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let answer = query(&env);
                r.lock().unwrap().push(answer);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Client { stop, seen, thread }
    }

    fn finish(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

/// Three nightly rebuilds — pass, fail, pass — seen by clients that only know the
/// stable ports: generation 1 after the first, still generation 1 after the failing
/// one, generation 3 after the third; a client querying all along never fails.
#[test]
fn three_rebuilds_pass_fail_pass_behind_stable_ports() {
    let sb = Sandbox::new();
    let (file, _db, web) = staging(&sb);

    // 1: v1 passes and becomes generation 1.
    let (code, stderr) = rebuild(&sb, &file, "v1", "0s");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("stage `staging` now on generation 1 (release v1"), "{stderr}");
    let s = status(&sb);
    assert_eq!(s["stage"]["current"], 1);
    assert_eq!(s["names_point_at"], 1);
    let env = stage_env(&sb);
    let gen1 = db_port_of(&s, 1);
    assert_eq!(query(&env), Ok((gen1, "0001_init".to_string())));
    assert_eq!(shop_version(web), "v1");

    // 2: v3's migration fails on production's data: nothing moves, and it says so.
    let client = Client::start(env.clone());
    let (code, stderr) = rebuild(&sb, &file, "v3", "0s");
    let seen = client.finish();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("generation 2 was not promoted; stage `staging` still on generation 1 (release v1, backup"),
        "{stderr}"
    );
    assert!(stderr.contains("0003_unique_customer_email.sql"), "{stderr}");
    assert!(seen.len() > 5, "the client queried {} times", seen.len());
    assert!(seen.iter().all(|a| *a == Ok((gen1, "0001_init".to_string()))), "{seen:?}");
    let s = status(&sb);
    assert_eq!(s["stage"]["current"], 1);
    assert_eq!(fate_of(&s, 2), "failed");
    assert_eq!(query(&env), Ok((gen1, "0001_init".to_string())));
    assert_eq!(shop_version(web), "v1");
    let gen2 = s["stage"]["generations"][1]["run_id"].as_str().unwrap().to_string();
    assert_run_gone(&sb, &gen2);
    // Its report, as any run's, says why — and what still serves.
    let report = sb.report(&gen2);
    assert_eq!(report["verdict"], "failed");
    let reason = report["reason"].as_str().unwrap();
    assert!(reason.contains("0003_unique_customer_email.sql"), "{reason}");
    assert!(reason.contains("stage `staging` still on generation 1 (release v1, backup"), "{reason}");

    // 3: v2 passes; the client querying through the promotion and the drain never fails,
    // and moves from generation 1 to generation 3 once, never back.
    let client = Client::start(env.clone());
    let started = Instant::now();
    let (code, stderr) = rebuild(&sb, &file, "v2", "3s");
    let took = started.elapsed();
    let seen = client.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("stage `staging` now on generation 3 (release v2"), "{stderr}");
    let s = status(&sb);
    assert_eq!(s["stage"]["current"], 3);
    assert_eq!(s["names_point_at"], 3);
    let gen3 = db_port_of(&s, 3);
    let failures: Vec<&String> = seen.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} of {} queries failed: {failures:?}", failures.len(), seen.len());
    let ports: Vec<u16> = seen.iter().map(|a| a.as_ref().unwrap().0).collect();
    let switch = ports.iter().position(|p| *p == gen3).expect("the client never reached generation 3");
    assert!(switch > 0, "the client saw generation 3 before the promotion: {ports:?}");
    assert!(ports[..switch].iter().all(|p| *p == gen1), "{ports:?}");
    assert!(ports[switch..].iter().all(|p| *p == gen3), "the client went back: {ports:?}");
    assert!(took >= Duration::from_secs(3), "the drain was not waited for: {took:?}");
    assert_eq!(query(&env), Ok((gen3, "0002_add_order_status".to_string())));
    assert_eq!(shop_version(web), "v2");
    // Generation 1 drained and was retired: nothing of it is left.
    assert_eq!(fate_of(&s, 1), "retired");
    let gen1_run = s["stage"]["generations"][0]["run_id"].as_str().unwrap().to_string();
    assert_run_gone(&sb, &gen1_run);

    let gen3_run = s["stage"]["generations"][2]["run_id"].as_str().unwrap().to_string();
    // `list` names each generation after its stage and points at the stage, not `down`.
    let out = sb.cmd().arg("list").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.contains(&gen3_run)).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("staging#3") && row.contains("→ rehearse stage status staging"), "{row}");

    // The current generation is no TTL's or `down`'s to remove.
    let out = sb.cmd().args(["down", &gen3_run]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("current generation of stage `staging`"));
    assert_eq!(query(&env), Ok((gen3, "0002_add_order_status".to_string())));

    // `stage destroy` removes everything, the forwarder and its ports included.
    let out = sb.cmd().args(["stage", "destroy", "staging"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_nothing_left(&sb, &gen3_run);
    assert!(query(&env).is_err(), "the stable port still answers");
    assert!(!sb.state().join("stages/staging").exists());
    let out = sb.cmd().args(["stage", "status", "staging"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A rollback points every name back at the previous generation while it drains.
#[test]
fn a_rollback_returns_to_the_draining_generation() {
    let sb = Sandbox::new();
    let (file, _db, web) = staging(&sb);
    assert_eq!(rebuild(&sb, &file, "v1", "0s").0, 0);
    // Nothing to roll back to yet.
    let out = sb.cmd().args(["stage", "rollback", "staging"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    // The second rebuild drains for long; roll back while it does.
    let mut child = sb
        .cmd()
        .arg("rebuild")
        .arg(&file)
        .args(["--release", "v2", "--drain", "10m"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while shop_version(web) != "v2" {
        assert!(Instant::now() < deadline, "generation 2 was never promoted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sb.cmd().args(["stage", "rollback", "staging"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled back to generation 1"));
    assert_eq!(shop_version(web), "v1");
    let s = status(&sb);
    assert_eq!(s["stage"]["current"], 1);
    assert_eq!(fate_of(&s, 2), "draining");
    // The draining rebuild, interrupted, leaves the stage as the rollback made it.
    unsafe_kill(child.id() as i32, 2);
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(130));
    assert_eq!(shop_version(web), "v1");
    let out = sb.cmd().args(["stage", "destroy", "staging"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for g in status_runs(&s) {
        assert_nothing_left(&sb, &g);
    }
}

/// Nothing of one run is left (other generations may well run beside it).
fn assert_run_gone(sb: &Sandbox, run_id: &str) {
    let procs = tagged_processes(run_id);
    assert!(procs.is_empty(), "processes of {run_id} still alive: {procs:?}");
    let dir = sb.work().join("runs").join(run_id);
    let pg = postgres_under(&dir);
    assert!(pg.is_empty(), "PostgreSQL of {run_id} still running: {pg:?}");
    assert!(!dir.exists(), "run directory {} still exists", dir.display());
}

fn status_runs(s: &serde_json::Value) -> Vec<String> {
    s["stage"]["generations"].as_array().unwrap().iter().map(|g| g["run_id"].as_str().unwrap().to_string()).collect()
}

fn unsafe_kill(pid: i32, sig: i32) {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid}");
}

/// A stage's record as rehearse writes it (local provider, one current generation),
/// with `edit` applied.
fn stage_record(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut record = serde_json::json!({
        "stage": "staging", "environment": "staging", "provider": "local", "revision": 3,
        "written_by": "x", "updated_at": "2026-11-27T02:00:00Z", "current": 1,
        "names": {"db": "127.0.0.1:25432"},
        "databases": {"db": {"name": "shop", "user": "app", "port": "25432"}},
        "record_ttl_secs": 0, "drain_secs": 0,
        "generations": [{
            "number": 1, "run_id": "r-20261127-020000-abcdef", "release": "v1",
            "started_at": "2026-11-27T02:00:00Z", "fate": "current",
            "targets": {"db": ["127.0.0.1:5432"]}
        }]
    });
    edit(&mut record);
    serde_json::to_vec_pretty(&record).unwrap()
}

/// Where a test plants a stage's record: the directory store (`file://`) or the
/// emulator's S3 — written as anyone with the shipped IAM policy may (a plain PUT).
enum Store<'a> {
    File(PathBuf),
    S3(&'a emulator::Emulator, &'a tokio::runtime::Runtime, aws_sdk_s3::Client),
}

impl Store<'_> {
    fn url(&self) -> String {
        match self {
            Store::File(state) => format!("file://{}", state.display()),
            Store::S3(..) => "s3://team-state/rehearse".into(),
        }
    }

    fn plant(&self, body: Vec<u8>) {
        use std::os::unix::fs::PermissionsExt;
        match self {
            Store::File(state) => {
                let dir = state.join("stages").join("staging");
                std::fs::create_dir_all(&dir).unwrap();
                for d in [state.clone(), state.join("stages"), dir.clone()] {
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
                }
                std::fs::write(dir.join("stage.json"), body).unwrap();
            }
            Store::S3(_, rt, s3) => {
                let put =
                    s3.put_object().bucket("team-state").key("rehearse/stages/staging/stage.json").body(body.into());
                rt.block_on(put.send()).unwrap();
            }
        }
    }

    fn cmd(&self, sb: &Sandbox) -> Command {
        let mut c = match self {
            Store::File(_) => sb.cmd(),
            Store::S3(emu, ..) => emu.rehearse(sb),
        };
        c.env("REHEARSE_STATE", self.url());
        c
    }
}

/// Mode and entries of a directory: what must not change.
fn dir_state(dir: &std::path::Path) -> (u32, Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    (mode, names)
}

/// The state store is a stranger's input (issue 23, part 2, item 1): a stage record
/// planted under `stages/staging/stage.json` whose `stage` is `../../victimdir` made
/// `stage status staging` change a directory outside the state directory to 0700 and
/// (with an S3 store) `stage destroy staging` delete it. Such a record is refused now,
/// with its key named, and the directory is untouched; so are records whose names,
/// targets or run ids lack their grammar (a target elsewhere than 127.0.0.1 would have
/// the forwarder hand clients — and the stage's password — to a stranger), and a
/// rebuild refuses a record with a stable name its description does not have.
#[test]
fn a_forged_stage_record_is_refused_and_reaches_nothing_outside_the_stage() {
    use std::os::unix::fs::PermissionsExt;
    let emu = emulator::Emulator::start(false);
    let rt = emulator::rt();
    let s3 = emu.bucket(&rt, "team-state");
    for shared in [true, false] {
        let sb = Sandbox::new();
        let store = if shared { Store::S3(&emu, &rt, s3.clone()) } else { Store::File(sb.state()) };
        // The state directory as any local stage leaves it.
        std::fs::create_dir_all(sb.state().join("stages")).unwrap();
        for d in [sb.state(), sb.state().join("stages")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let stage = |args: &[&str]| {
            let out = store.cmd(&sb).arg("stage").args(args).output().unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.code().unwrap_or(-1), said)
        };
        let key = format!("{}/stages/staging/stage.json", store.url());
        // A directory beside the state directory, as `STATE/stages/../../victimdir` names it.
        let victim = sb.dir.path().join("victimdir");
        let make_victim = || {
            std::fs::create_dir_all(&victim).unwrap();
            std::fs::write(victim.join("canary"), "must survive").unwrap();
            std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o755)).unwrap();
            dir_state(&victim)
        };
        let before = make_victim();
        store.plant(stage_record(|r| r["stage"] = "../../victimdir".into()));
        let mut failures = Vec::new();
        for args in [&["status", "staging"][..], &["env", "staging"], &["destroy", "staging"]] {
            let (code, said) = stage(args);
            let command = format!("`rehearse stage {}` with a forged record in {}", args.join(" "), store.url());
            let after = dir_state(&victim);
            if after != before {
                failures.push(format!("{command} changed {} from {before:?} to {after:?}:\n{said}", victim.display()));
                make_victim();
            }
            let refused = said.contains(&format!("refusing the stage's record {key}"))
                && said.contains(r#"its `stage` is "../../victimdir", not `staging`"#);
            if code == 0 || !refused {
                failures.push(format!("{command} exited {code} without refusing the record:\n{said}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));

        // Names, targets, run ids, database names: each must have its grammar.
        type Edit = fn(&mut serde_json::Value);
        let forged: [(&str, Edit); 5] = [
            ("a target elsewhere", |r| r["generations"][0]["targets"]["db"][0] = "203.0.113.7:5432".into()),
            ("a stable name that is no port", |r| r["names"]["db"] = "127.0.0.1:25432/../../x".into()),
            ("a run id with a path in it", |r| r["generations"][0]["run_id"] = "r-1/../../../etc".into()),
            ("a database name with URL parameters", |r| r["databases"]["db"]["name"] = "shop?host=203.0.113.7".into()),
            ("a current generation it does not have", |r| r["current"] = 7.into()),
        ];
        for (what, edit) in forged {
            store.plant(stage_record(edit));
            let (code, said) = stage(&["status", "staging"]);
            assert_ne!(code, 0, "a record with {what} was accepted:\n{said}");
            assert!(said.contains(&format!("refusing the stage's record {key}")), "{what}: {said}");
        }
        if shared {
            continue;
        }

        // With the description at hand, the record must agree with it.
        let (file, db, web) = staging(&sb);
        store.plant(stage_record(|r| {
            r["names"] = serde_json::json!({"db": format!("127.0.0.1:{db}"), "web": format!("127.0.0.1:{web}"),
                "admin": "127.0.0.1:29999"});
        }));
        let out = store.cmd(&sb).arg("rebuild").arg(&file).args(["--release", "v1"]).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{said}");
        assert!(said.contains(&format!("refusing the stage's record {key}")), "{said}");
        assert!(
            said.contains("it has a stable name for `admin` (127.0.0.1:29999), which the description does not"),
            "{said}"
        );
        assert!(sb.run_ids().is_empty(), "a generation was built from a record that disagrees with the description");
    }
}
