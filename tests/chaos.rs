//! A game day on the demo shop (`rehearse run environments/gameday.yaml --chaos NAME`,
//! real PostgreSQL, the shop's two web instances): 300 ms each way on the shop's path to
//! its database fails the latency expectation and names the fault, in the verdict, the
//! report and JUnit; the database stopped as by a crash and started again under the load
//! is recovered from within the fault's stated time, and the run passes; the same
//! description without a load fails its expectations closed; one of the two web
//! instances killed under the load (spread over both) is gone around and started again
//! by its restart policy, and the run passes (asked of a server, as CI asks it); names the description does not have, and
//! a game day asked with what it cannot go with, are refused before anything is built;
//! each fault is journaled before it starts: an interrupt during one reverts it, a
//! crash leaves it for `down`.

use super::common::{assert_nothing_left, demo_backups, from_repository, root, write_description, Sandbox};

/// environments/gameday.yaml in the sandbox's project, shortened, with `edit` applied.
fn gameday(sb: &Sandbox, name: &str, edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(root().join("environments/gameday.yaml"))
        .unwrap()
        .replace("steady: 3s", "steady: 1s")
        .replace("settle: 5s", "settle: 1s")
        .replace("      duration: 10s\n", "      duration: 4s\n");
    assert!(text.contains("steady: 1s") && text.contains("duration: 4s"), "{text}");
    let file = write_description(sb, name, &edit(from_repository(&text)));
    file.to_str().unwrap().to_string()
}

/// `rehearse run FILE --chaos NAME`: its exit code, report and stderr.
fn chaos(sb: &Sandbox, file: &str, name: &str) -> (Option<i32>, serde_json::Value, String) {
    demo_backups();
    let before = sb.run_ids();
    let out = sb.cmd().args(["-q", "run", file, "--chaos", name]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let id = sb.run_ids().into_iter().find(|i| !before.contains(i)).unwrap_or_else(|| panic!("a run: {stderr}"));
    let report = sb.report(&id);
    assert_nothing_left(sb, &id);
    (out.status.code(), report, stderr)
}

fn expectation<'a>(fault: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    fault["expectations"].as_array().unwrap().iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("{fault:#}"))
}

#[test]
fn latency_on_the_shops_path_to_its_database_fails_the_latency_expectation_and_names_the_fault() {
    let sb = Sandbox::new();
    let file = gameday(&sb, "gameday.yaml", |t| t);
    let (code, r, err) = chaos(&sb, &file, "slow-db");
    assert_eq!(code, Some(1), "{err}\n{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "the game day failed its expectations: slow-db (latency on path web -> db): `GET /products` p99"
        ),
        "the verdict names the fault, its path and the expectation: {reason}"
    );
    let c = &r["chaos"];
    assert_eq!(c["faults"].as_array().unwrap().len(), 1, "only the fault asked for: {c:#}");
    let f = &c["faults"][0];
    assert_eq!((f["name"].as_str(), f["target"].as_str()), (Some("slow-db"), Some("path web -> db")));
    let (start, end) = (f["started_ms"].as_u64().unwrap(), f["ended_ms"].as_u64().unwrap());
    assert!(end - start >= 4000 && end - start < 5000, "it lasted its 4 s: {f}");
    // Each of the shop's queries crosses the path there and back, 300 ± 20 ms each way
    // (a new connection's startup, several times): far over 250 ms.
    let l = expectation(f, "latency GET /products");
    assert_eq!(l["passed"], false, "{l}");
    assert!(l["measured"].as_str().unwrap().trim_end_matches(" ms").parse::<f64>().unwrap() >= 560.0, "{l}");
    // Cleared, the path copies again: the traffic is back at once, and the suites,
    // run after it under the load, pass.
    assert_eq!(expectation(f, "recover_within")["passed"], true, "{f:#}");
    assert_eq!(r["suites"][0]["status"], "passed", "{r:#}");
    // The timeline covers the load, before the fault to after it.
    let seconds = c["seconds"].as_array().unwrap();
    assert!(seconds.first().unwrap()["second"].as_u64().unwrap() * 1000 < start, "{seconds:?}");
    assert!(seconds.last().unwrap()["second"].as_u64().unwrap() * 1000 > end, "{seconds:?}");
    // JUnit: a case per fault, failing with what broke.
    let dir = sb.report_dir(r["run_id"].as_str().unwrap());
    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert!(junit.contains(r#"<testsuite name="chaos" tests="1""#) && junit.contains(r#"failures="1""#), "{junit}");
    assert!(junit.contains(r#"<testcase name="slow-db (latency on path web -&gt; db)" classname="chaos""#), "{junit}");
    // The page: the fault's broken expectation in its table, the fault a band on the
    // timeline over the load's seconds.
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let table = html.split(r#"<table id="chaos-faults">"#).nth(1).unwrap().split("</table>").next().unwrap();
    assert!(table.contains("latency GET &#x2F;products") && table.contains("broken"), "{table}");
    let svg = html.split(r#"<svg class="tl" id="chaos-timeline""#).nth(1).unwrap().split("</svg>").next().unwrap();
    assert!(
        svg.contains(r#"<rect class="fault""#) && svg.contains("<title>slow-db (latency on path web -&gt; db"),
        "{svg}"
    );
    assert!(svg.contains(r#"<polyline class="p99""#) && !svg.contains("lock waits"), "{svg}");
}

#[test]
fn a_database_restart_under_the_load_is_recovered_from_within_its_time_and_passes() {
    let sb = Sandbox::new();
    // Stopped as by a crash: the next start recovers from the WAL.
    let file = gameday(&sb, "gameday.yaml", |t| t.replace("      mode: fast\n", "      mode: immediate\n"));
    let (code, r, err) = chaos(&sb, &file, "db-restart");
    assert_eq!(code, Some(0), "{err}\n{r:#}");
    let f = &r["chaos"]["faults"][0];
    assert_eq!((f["name"].as_str(), f["target"].as_str()), (Some("db-restart"), Some("database db")), "{f:#}");
    let (start, end) = (f["started_ms"].as_u64().unwrap(), f["ended_ms"].as_u64().unwrap());
    assert!(end - start >= 2000, "down for its 2 s: {f}");
    // Its own expectation (the recovery) instead of the section's error rate.
    let names: Vec<&str> = f["expectations"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["recover_within"], "{f:#}");
    assert_eq!(expectation(f, "recover_within")["passed"], true, "{f:#}");
    // The requests sent while it was down failed; the suites, after it, passed.
    let seconds = r["chaos"]["seconds"].as_array().unwrap();
    let failed: u64 = seconds
        .iter()
        .filter(|s| (start / 1000..=end / 1000).contains(&s["second"].as_u64().unwrap()))
        .map(|s| s["errors"].as_u64().unwrap())
        .sum();
    assert!(failed > 0, "the restart was felt: {seconds:?}");
    assert_eq!(r["suites"][0]["status"], "passed", "{r:#}");
    // The server started again is journaled (teardown found it and left nothing).
    let journal =
        std::fs::read_to_string(sb.state().join("runs").join(r["run_id"].as_str().unwrap()).join("journal.jsonl"))
            .unwrap();
    let postmasters: Vec<u64> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "created" && r["id"] == "database.db")
        .filter_map(|r| r["handle"]["cluster"]["postmaster"]["pid"].as_u64())
        .collect();
    assert!(postmasters.len() >= 2 && postmasters.first() != postmasters.last(), "{journal}");
}

/// As CI asks a game day of a server: `rehearse run gameday --release v2 --chaos
/// web-kill --server URL`, with its token; what the server cannot run is refused before
/// anything is recorded.
#[test]
fn killing_one_of_two_web_instances_passes_when_its_expectation_allows_the_recovery() {
    let sb = Sandbox::new();
    let envs = super::serve::environments(&sb, 0.1);
    let file = gameday(&sb, "gameday.yaml", |t| t);
    let (server, token) = super::serve::start_with_token(&sb, &envs);
    let addr = server.addr;
    for (body, why) in [
        (r#"{"environment":"gameday","release":"v2","chaos":["nope"]}"#, "has no fault `nope`"),
        (r#"{"environment":"gameday","release":"v2","chaos":["web-kill"],"from":"v1"}"#, "two rehearsals"),
        (r#"{"environment":"gameday","release":"v2","chaos":["../x"]}"#, "is not a fault's name"),
        (r#"{"environment":"demo","release":"v2","chaos":[]}"#, "has no `chaos:` section"),
    ] {
        let a = super::serve::post_as(addr, "alice", "/api/v1/rehearsals", body);
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(a.body.contains(why), "{body}: {}", a.body);
    }
    let before = sb.run_ids();
    let out = sb
        .cmd()
        .args(["run", &file, "--release", "v2", "--chaos", "web-kill", "--server", &format!("http://{addr}")])
        .env("REHEARSE_TOKEN", &token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("accepted: a game day of gameday release v2"), "{err}");
    let id = err.split_whitespace().find(|w| w.starts_with("q-")).unwrap().trim_end_matches(':').to_string();
    let done = super::serve::wait_finished(addr, &id);
    assert_eq!(done["ask"]["chaos"], serde_json::json!(["web-kill"]), "{done}");
    let run_id = done["state"]["run_id"].as_str().unwrap().to_string();
    assert!(!before.contains(&run_id));
    let r = sb.report(&run_id);
    let f = &r["chaos"]["faults"][0];
    assert_eq!((f["name"].as_str(), f["target"].as_str()), (Some("web-kill"), Some("service web.0")), "{f:#}");
    // Its own expectations, both held: the error rate allows the requests the killed
    // instance had in flight, the recovery its restart.
    let names: Vec<&str> = f["expectations"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["max_error_rate", "recover_within"], "{f:#}");
    assert!(f["expectations"].as_array().unwrap().iter().all(|l| l["passed"] == true), "{f:#}");
    // The load went on through the kill: requests answered in the seconds after it.
    let start = f["started_ms"].as_u64().unwrap();
    let seconds = r["chaos"]["seconds"].as_array().unwrap();
    let answered: u64 = seconds
        .iter()
        .filter(|s| s["second"].as_u64().unwrap() >= start / 1000)
        .map(|s| s["requests"].as_u64().unwrap() - s["errors"].as_u64().unwrap())
        .sum();
    assert!(answered > 0, "{seconds:?}");
    assert_eq!(r["suites"][0]["status"], "passed", "{r:#}");
    // Killed and journaled gone, then started again (another process), journaled
    // before it existed; teardown left nothing.
    let journal = std::fs::read_to_string(sb.state().join("runs").join(&run_id).join("journal.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = journal.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let web0: Vec<(&str, Option<u64>)> = records
        .iter()
        .filter(|r| r["id"] == "service.web.0")
        .map(|r| (r["type"].as_str().unwrap(), r["handle"]["process"]["pid"].as_u64()))
        .collect();
    let pids: Vec<u64> = web0.iter().filter_map(|(_, p)| *p).collect();
    assert!(pids.len() == 2 && pids[0] != pids[1], "{web0:?}");
    let kinds: Vec<&str> = web0.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds[..5], ["intent", "created", "deleted", "intent", "created"], "{web0:?}");
    assert!(!pids.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()), "{pids:?}");
    assert_nothing_left(&sb, &run_id);
}

#[test]
fn without_a_load_the_expectations_fail_closed_and_bad_asks_are_refused() {
    let sb = Sandbox::new();
    let file = gameday(&sb, "quiet.yaml", |t| {
        let (head, tail) = t.split_once("chaos:\n  load:\n").unwrap();
        let rest = tail.split_once("  steady:").unwrap().1;
        format!("{head}chaos:\n  steady:{rest}")
    });
    let (code, r, err) = chaos(&sb, &file, "slow-db");
    assert_eq!(code, Some(1), "{err}\n{r:#}");
    let f = &r["chaos"]["faults"][0];
    assert_eq!(r["chaos"]["load"], false);
    for name in ["max_error_rate", "latency GET /products", "recover_within"] {
        let l = expectation(f, name);
        assert_eq!(l["passed"], false, "{l}");
        assert!(l["reason"].as_str().unwrap().starts_with("cannot be checked: no load ran"), "{l}");
    }
    // Refused before anything is built (exit 2, no run): a fault the description does
    // not have, a kind not run yet, a game day in a description without one.
    let before = sb.run_ids();
    for (args, said) in [
        (vec!["--chaos", "nope"], "`chaos.faults` has no fault `nope` (it has `db-restart`, `slow-db`, `web-kill`)"),
        (vec!["--chaos", "slow-db", "--from", "v1"], "`--chaos` and `--from` are two rehearsals"),
        (vec!["--chaos", "slow-db", "--keep"], "a game day (`--chaos`) is always torn down"),
    ] {
        let out = sb.cmd().args(["run", &file]).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {stderr}");
    }
    let plain = write_description(
        &sb,
        "plain.yaml",
        &from_repository(&std::fs::read_to_string(root().join("environments/demo.yaml")).unwrap()),
    );
    let out = sb.cmd().args(["run", plain.to_str().unwrap(), "--chaos"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no `chaos:` section"), "{out:?}");
    assert_eq!(sb.run_ids(), before, "nothing was run");
}

/// The journal's records of `id` in run `run_id`: each record's type.
fn journaled(sb: &Sandbox, run_id: &str, id: &str) -> Vec<String> {
    let path = sb.state().join("runs").join(run_id).join("journal.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["id"] == id)
        .map(|r| r["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `rehearse run FILE --chaos db-restart` started, and its run id once the fault is
/// journaled (the database is down from then on).
// The child is the caller's to wait for.
#[allow(clippy::zombie_processes)]
fn during_the_restart(sb: &Sandbox, file: &str) -> (std::process::Child, String) {
    demo_backups();
    let before = sb.run_ids();
    // What it says goes to a file: a pipe nobody reads could stop it.
    let said = std::fs::File::create(sb.shared().join("said.txt")).unwrap();
    let mut child = sb
        .cmd()
        .args(["-q", "run", file, "--chaos", "db-restart"])
        .stdout(std::process::Stdio::null())
        .stderr(said)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if std::time::Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            let said = std::fs::read_to_string(sb.shared().join("said.txt")).unwrap_or_default();
            panic!("the fault never started: {said}");
        }
        if let Some(id) = sb.run_ids().into_iter().find(|i| !before.contains(i)) {
            if journaled(sb, &id, "chaos.db-restart").contains(&"created".to_string()) {
                return (child, id);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_interrupt_during_a_fault_reverts_it_and_a_crash_leaves_it_for_down() {
    let sb = Sandbox::new();
    // Down for a minute: whatever ends the run ends it during the fault.
    let file = gameday(&sb, "long.yaml", |t| t.replace("      duration: 2s\n", "      duration: 60s\n"));
    // Ctrl-C: the database is started again, the fault journaled reverted, the run
    // torn down, exit 130.
    let (mut child, id) = during_the_restart(&sb, &file);
    std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    let said = std::fs::read_to_string(sb.shared().join("said.txt")).unwrap_or_default();
    assert_eq!(status.code(), Some(130), "{said}");
    assert_eq!(journaled(&sb, &id, "chaos.db-restart"), ["intent", "created", "deleted"]);
    // Started again (a new server journaled) once the fault began, before the teardown.
    let text = std::fs::read_to_string(sb.state().join("runs").join(&id).join("journal.jsonl")).unwrap();
    let after: Vec<&str> = text.lines().skip_while(|l| !l.contains(r#""id":"chaos.db-restart""#)).collect();
    assert!(after.iter().any(|l| l.contains(r#""type":"created""#) && l.contains(r#""id":"database.db""#)), "{text}");
    assert_nothing_left(&sb, &id);
    // Killed outright: the fault stays journaled, and `down` takes it with the rest.
    let (mut child, id) = during_the_restart(&sb, &file);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(journaled(&sb, &id, "chaos.db-restart"), ["intent", "created"]);
    let down = sb.cmd().args(["down", &id]).output().unwrap();
    let said = String::from_utf8_lossy(&down.stderr);
    assert_eq!(down.status.code(), Some(0), "{said}");
    assert!(said.contains("chaos.db-restart"), "{said}");
    assert_nothing_left(&sb, &id);
}
