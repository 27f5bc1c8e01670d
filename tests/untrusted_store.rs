//! The state store is a stranger's input (issue 23, part 2, attacks 8 and 9): whoever may
//! write it — every runner with the shipped IAM policy, a compromised CI job — writes
//! objects here the way rehearse's own would look, and the real binary reads them back.
//!
//! - attack 8: escape sequences (window title, OSC 52 clipboard, OSC 8 links, screen
//!   clear, 8-bit CSI/OSC, backspace and carriage-return overprinting, bidirectional
//!   overrides) in a forged journal, report and log, in a `file://` store and in the
//!   emulator's S3, read through `list`, `report`, `logs` and `logs -f` on a
//!   pseudo-terminal (script(1)) and through a pipe: the bytes printed hold none, the
//!   text around them is kept, and `--format json` stays valid JSON with the text escaped;
//! - attack 9: durations past the calendar (`--lease 300000y`, `REHEARSE_LEASE`,
//!   `extend`, a journal's `max_ttl_secs`) refused at parse time or clamped, never a
//!   panic; objects past their cap refused with the cap named.

use crate::common;
use crate::emulator;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::*;
use emulator::*;
use rehearse::engine::journal::{Record, RunMeta};
use rehearse::report::model::*;

const RUN: &str = "r-20260101-000000-0a0b0c";

/// Every kind of sequence a terminal acts on, between words that must still show.
const EVIL: &str = "[title\u{1b}]0;pwned\u{7}|clip\u{1b}]52;c;cm0gLXJmIH4=\u{7}|clear\u{1b}[2J\u{1b}[H|\
    \u{1b}]8;;https://evil.example\u{1b}\\link\u{1b}]8;;\u{1b}\\|csi8\u{9b}31m|osc8\u{9d}0;t\u{9c}|\
    dcs\u{1b}P+q\u{1b}\\|bs\u{8}\u{8}X|cr\rFAKE|bidi\u{202e}txt.exe]";

/// What a terminal shows of EVIL once made printable (a carriage return is a line break:
/// on one line, a space).
const EVIL_SHOWN: &str = "[title|clip|clear|link|csi8|osc8|dcs|bsX|cr FAKE|biditxt.exe]";

/// Fails if `out` holds anything a terminal acts on: a C0 control but the line feed and
/// tab (a pseudo-terminal's `\r\n` counts as a line feed), DEL, a C1 control (U+0080 to
/// U+009F, as UTF-8), a bidirectional override or isolate.
fn assert_inert(what: &str, out: &[u8]) {
    let text = String::from_utf8_lossy(out).replace("\r\n", "\n");
    let bad: Vec<(usize, char)> = text
        .char_indices()
        .filter(|(_, c)| {
            (c.is_control() && !matches!(c, '\n' | '\t'))
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} sequence characters reached the output, first at {:?}:\n{text:?}",
        bad.len(),
        bad[0]
    );
}

/// The forged run: kept, with EVIL in every free-text field a person is shown.
fn forged_meta() -> RunMeta {
    let started = Utc::now() - chrono::Duration::minutes(5);
    RunMeta {
        run_id: RUN.into(),
        environment: format!("shop{EVIL}"),
        provider: ProviderKind::Local,
        description: format!("shop.yaml{EVIL}"),
        release: format!("v2{EVIL}"),
        owner: format!("owner{EVIL}"),
        started_at: started,
        expires_at: started + chrono::Duration::hours(2),
        destroy: DestroyPolicy::Never,
        work_dir: None,
        region: None,
        pid: 999_999,
        pid_start: 0,
        name: Some(format!("evil{EVIL}")),
        user: Some(format!("ci{EVIL}")),
        max_ttl_secs: None,
        host: Some(format!("runner{EVIL}")),
        stage: None,
    }
}

fn forged_records(meta: RunMeta) -> Vec<Record> {
    vec![
        Record::Run(meta),
        // The verdict is one of rehearse's words, not free text: a stranger's other word
        // makes the record unreadable (refused), so it carries nothing to print.
        Record::Finished { verdict: Verdict::Passed, exit_code: 0, kept: true, at: Utc::now() },
    ]
}

fn forged_report() -> RunReport {
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut suite = SuiteResult::without_tests(&format!("smoke{EVIL}"), "./smoke.sh", SuiteStatus::Failed, None);
    suite.reason = Some(format!("reason{EVIL}"));
    RunReport {
        schema_version: REPORT_SCHEMA_VERSION,
        run_id: RUN.into(),
        environment: format!("shop{EVIL}"),
        provider: ProviderKind::Local,
        description: "shop.yaml".into(),
        release: format!("v2{EVIL}"),
        artifact: "./releases/v2".into(),
        started_at: t0,
        finished_at: t0 + chrono::Duration::seconds(95),
        verdict: Verdict::Failed,
        exit_code: 1,
        reason: Some(format!("why{EVIL}")),
        failure: Some(Failure {
            phase: format!("suites{EVIL}"),
            resource: Some(format!("suite.smoke{EVIL}")),
            message: format!("message{EVIL}"),
            log_tail: vec![format!("tail one{EVIL}"), format!("tail two{EVIL}")],
            log: Some(format!("/tmp/log{EVIL}")),
        }),
        backups: vec![],
        phases: vec![],
        steps: vec![],
        suites: vec![suite],
        resources: vec![],
        teardown: Teardown {
            policy: DestroyPolicy::Never,
            status: TeardownStatus::Incomplete,
            duration_ms: 900,
            leftovers: vec![Leftover {
                id: format!("database.db{EVIL}"),
                kind: format!("local.postgres{EVIL}"),
                provider_id: None,
                command: format!("rm -rf -- /nowhere{EVIL}"),
            }],
            expires_at: None,
        },
        total_ms: 95_000,
        overhead_ms: 300,
        change: None,
        deploy: None,
        chaos: None,
        access: Some(Access {
            expires_at: t0,
            logs_dir: format!("/logs{EVIL}"),
            services: [(format!("web{EVIL}"), vec![format!("http://127.0.0.1:1{EVIL}")])].into(),
            databases: [(
                format!("db{EVIL}"),
                DatabaseAccess {
                    host: format!("127.0.0.1{EVIL}"),
                    port: "5432".into(),
                    name: format!("shop{EVIL}"),
                    user: format!("app{EVIL}"),
                },
            )]
            .into(),
            commands: vec![format!("rehearse psql {RUN}{EVIL}")],
        }),
    }
}

fn forged_log() -> String {
    format!("first line{EVIL}\nsecond\tline{EVIL}\n")
}

fn write_private(path: &Path, body: &[u8]) {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(path, body).unwrap();
}

/// The forged run written into the `file://` store at `root` (the state directory
/// itself): its journal, report and a service's log.
fn forge_in_directory(root: &Path, meta: RunMeta) {
    let run = root.join("runs").join(RUN);
    let journal: String = forged_records(meta).iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    write_private(&run.join("journal.jsonl"), journal.as_bytes());
    write_private(&run.join("report/report.json"), &serde_json::to_vec_pretty(&forged_report()).unwrap());
    write_private(&run.join("logs/service.web.0.log"), forged_log().as_bytes());
    for d in [root.to_path_buf(), root.join("runs"), run.clone(), run.join("report"), run.join("logs")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// `cmd` with a pseudo-terminal for its stdout and stderr (script(1)): its exit code and
/// every byte it wrote there.
fn on_a_terminal(cmd: &Command) -> (i32, Vec<u8>) {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shlex::try_quote(&a.to_string_lossy()).unwrap().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = Command::new("script");
    script.args(["-q", "-e", "-c", &line, "/dev/null"]).stdin(Stdio::null());
    script_like(cmd, &mut script);
    let out = script.output().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// Gives `to` the environment and directory of `from`.
fn script_like(from: &Command, to: &mut Command) {
    for (k, v) in from.get_envs() {
        match v {
            Some(v) => to.env(k, v),
            None => to.env_remove(k),
        };
    }
    if let Some(d) = from.get_current_dir() {
        to.current_dir(d);
    }
}

/// The sandbox's binary with the `file://` store named on the command line.
fn in_directory_store(sb: &Sandbox, args: &[&str]) -> Command {
    let mut c = sb.cmd();
    c.arg("--state").arg(format!("file://{}", sb.state().display())).args(args);
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace("\r\n", "\n")
}

/// Attack 8, `file://`: `list`, `report` and `logs` of a forged run on a terminal.
#[test]
fn escape_sequences_in_a_directory_store_never_reach_a_terminal_through_list_report_and_logs() {
    let sb = Sandbox::new();
    forge_in_directory(&sb.state(), forged_meta());

    let (code, out) = on_a_terminal(&in_directory_store(&sb, &["list"]));
    assert_inert("list on a terminal", &out);
    let shown = text(&out);
    assert_eq!(code, 0, "{shown}");
    // The forged name is no name (refused by its grammar, the run goes by its id); the
    // environment's text is shown, printable.
    assert!(shown.contains(RUN) && shown.contains(&format!("shop{EVIL_SHOWN}")), "{shown}");

    let (code, out) = on_a_terminal(&in_directory_store(&sb, &["report", RUN]));
    assert_inert("report on a terminal", &out);
    let shown = text(&out);
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains(&format!("why{EVIL_SHOWN}")) && shown.contains(&format!("tail two{EVIL_SHOWN}")), "{shown}");

    let (code, out) = on_a_terminal(&in_directory_store(&sb, &["logs", RUN, "web"]));
    assert_inert("logs on a terminal", &out);
    let shown = text(&out);
    assert_eq!(code, 0, "{shown}");
    // Lines and tabs are the log's own; a carriage return starts a line instead of
    // overwriting one.
    assert!(shown.contains("second\tline[title|clip|clear|link|csi8|osc8|dcs|bsX|cr\nFAKE|biditxt.exe]"), "{shown:?}");

    // Colours asked for: the summary's own escapes only (SGR), none of the store's.
    let (_, out) =
        on_a_terminal(in_directory_store(&sb, &["report", RUN]).env_remove("NO_COLOR").arg("--color=always"));
    let shown = text(&out);
    let without_sgr = regex_lite_sgr(&shown);
    assert_inert("report in colour, its own SGR removed", without_sgr.as_bytes());
}

/// `text` without SGR sequences (`ESC [ digits;… m`): the colours rehearse itself paints.
fn regex_lite_sgr(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\u{1b}[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let params = after.find(|c: char| !(c.is_ascii_digit() || c == ';')).unwrap_or(after.len());
        if after[params..].starts_with('m') {
            rest = &after[params + 1..];
        } else {
            out.push_str("\u{1b}[");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Attack 8, the same through a pipe (`| less -R`, `| tee`): sanitized too; and JSON
/// stays JSON, with the stranger's text escaped but intact.
#[test]
fn escape_sequences_in_a_directory_store_never_reach_a_pipe_and_json_keeps_them_escaped() {
    let sb = Sandbox::new();
    forge_in_directory(&sb.state(), forged_meta());
    for args in [&["list"][..], &["report", RUN], &["logs", RUN, "web"]] {
        let out = in_directory_store(&sb, args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_inert(&format!("{args:?} into a pipe"), &out.stdout);
        assert_inert(&format!("{args:?} stderr"), &out.stderr);
    }
    for args in [&["--format", "json", "list"][..], &["--format", "json", "report", RUN]] {
        let out = in_directory_store(&sb, args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_inert(&format!("{args:?}"), &out.stdout);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let found = if args.contains(&"list") { v[0]["environment"].clone() } else { v["reason"].clone() };
        let want = if args.contains(&"list") { format!("shop{EVIL}") } else { format!("why{EVIL}") };
        assert_eq!(found, serde_json::Value::String(want), "{args:?}: the raw text, escaped in the JSON");
    }
}

/// Attack 8, `logs -f`: what is appended to a followed log is printable too.
#[test]
fn logs_follow_prints_what_is_appended_without_its_escape_sequences() {
    let sb = Sandbox::new();
    forge_in_directory(&sb.state(), forged_meta());
    let log = sb.state().join("runs").join(RUN).join("logs/service.web.0.log");
    let follow = in_directory_store(&sb, &["logs", RUN, "web", "-f"]);
    let line = std::iter::once(follow.get_program())
        .chain(follow.get_args())
        .map(|a| shlex::try_quote(&a.to_string_lossy()).unwrap().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = Command::new("script");
    script.args(["-q", "-f", "-c", &line, "/dev/null"]).stdin(Stdio::null()).stdout(Stdio::piped());
    script_like(&follow, &mut script);
    script.process_group(0);
    let mut child = script.spawn().unwrap();
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut all = Vec::new();
        loop {
            let mut l = Vec::new();
            match r.read_until(b'\n', &mut l) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    all.extend_from_slice(&l);
                    if tx.send(all.clone()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    // Until `from`, then the end of EVIL after it, is on the terminal (sequences or not).
    let wait_for = |from: &str| -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(all) if text(&all).split_once(from).is_some_and(|(_, after)| after.contains("txt.exe]")) => {
                    return all
                }
                Ok(_) => {}
                Err(_) => panic!("`logs -f` never printed {from:?}"),
            }
        }
    };
    wait_for("second\tline");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "appended{EVIL}").unwrap();
    drop(f);
    let all = wait_for("appended[title");
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    assert_inert("logs -f on a terminal", &all);
    assert!(text(&all).contains("appended[title|clip|clear|link|csi8|osc8|dcs|bsX|cr\nFAKE|biditxt.exe]"));
}

/// Attack 8: a lock holder's name, host and purpose, quoted when the lock is refused.
#[test]
fn a_forged_lock_holder_is_quoted_printable() {
    let sb = Sandbox::new();
    let holder = serde_json::json!({
        "name": "staging", "owner": format!("ci{EVIL}"), "host": format!("runner{EVIL}"), "pid": 7,
        "purpose": format!("rebuild{EVIL}"), "since": Utc::now(), "lease_until": Utc::now() + chrono::Duration::hours(1),
        "token": "t",
    });
    write_private(&sb.state().join("locks/staging.json"), &serde_json::to_vec(&holder).unwrap());
    std::fs::set_permissions(sb.state(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (code, out) = on_a_terminal(&in_directory_store(&sb, &["lock", "staging", "--", "true"]));
    assert_inert("a refused lock on a terminal", &out);
    let shown = text(&out);
    assert_eq!(code, 5, "{shown}");
    assert!(shown.contains(&format!("ci{EVIL_SHOWN}@runner{EVIL_SHOWN}")), "{shown}");
}

/// The forged run written into the emulator's S3 as the shipped policy lets anyone do:
/// journal records (create-only), the report, a log.
fn forge_in_s3(rt: &tokio::runtime::Runtime, s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, meta: RunMeta) {
    let put = |key: String, body: Vec<u8>| {
        rt.block_on(s3.put_object().bucket(bucket).key(format!("{prefix}/{key}")).body(body.into()).send()).unwrap();
    };
    for (i, r) in forged_records(meta).iter().enumerate() {
        put(format!("runs/{RUN}/journal/{:010}.json", i + 1), serde_json::to_vec(r).unwrap());
    }
    put(format!("runs/{RUN}/report/report.json"), serde_json::to_vec_pretty(&forged_report()).unwrap());
    put(format!("runs/{RUN}/logs/service.web.0.log"), forged_log().into_bytes());
}

/// Attack 8 on S3: the same forgeries in the emulator's bucket, fetched by a machine
/// that never saw the run.
#[test]
fn escape_sequences_in_an_s3_store_never_reach_a_terminal() {
    let (emu, rt, s3) = with_team_store();
    forge_in_s3(&rt, &s3, "team-state", "shop", forged_meta());
    let sb = Sandbox::new();
    let on = |args: &[&str]| {
        let mut c = emu.rehearse(&sb);
        c.args(["--state", "s3://team-state/shop"]).args(args);
        c
    };
    let (code, out) = on_a_terminal(&on(&["list"]));
    assert_inert("list (S3) on a terminal", &out);
    assert!(code == 0 && text(&out).contains(&format!("shop{EVIL_SHOWN}")), "{}", text(&out));
    let (code, out) = on_a_terminal(&on(&["report", RUN]));
    assert_inert("report (S3) on a terminal", &out);
    assert!(code == 0 && text(&out).contains(&format!("why{EVIL_SHOWN}")), "{}", text(&out));
    let (code, out) = on_a_terminal(&on(&["logs", RUN, "web"]));
    assert_inert("logs (S3) on a terminal", &out);
    assert!(code == 0 && text(&out).contains("first line[title|clip"), "{}", text(&out));
}

/// Attack 9: `rehearse lock x --lease 300000y -- true` panicked (date overflow); so did
/// any lease from `$REHEARSE_LEASE` past the calendar, and `extend` by one.
#[test]
fn durations_past_the_calendar_are_refused_at_parse_time_with_exit_2() {
    let sb = Sandbox::new();
    let refused = |mut c: Command, want: &str| {
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{c:?}: {stderr}");
        assert!(stderr.contains(want), "{c:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    let mut c = sb.cmd();
    c.args(["lock", "x", "--lease", "300000y", "--", "true"]);
    refused(c, "error: --lease 300000y: out of range (a duration from 1s to 1d)");

    // The environment's lease, read by `up --name` (which takes the name's lock).
    let desc = sb.dir.path().join("tiny.yaml");
    std::fs::write(
        &desc,
        "name: tiny\nprovider: local\nowner: t@example.com\nrelease:\n  version: v1\n  artifact: ./rel\n",
    )
    .unwrap();
    let mut c = sb.cmd();
    c.env("REHEARSE_LEASE", "300000y").args(["up"]).arg(&desc).args(["--name", "tiny"]);
    refused(c, "error: REHEARSE_LEASE 300000y: out of range (a duration from 1s to 1d)");
    assert!(sb.run_ids().is_empty(), "nothing was started");

    forge_in_directory(&sb.state(), forged_meta());
    let mut c = in_directory_store(&sb, &["extend", RUN, "300000y"]);
    c.env_remove("REHEARSE_LEASE");
    refused(c, "error: extend 300000y: out of range (a duration from 1s to 90d)");
    refused(
        in_directory_store(&sb, &["sweep", "--older-than", "300000y"]),
        "error: --older-than 300000y: out of range",
    );
}

/// Attack 9: a forged journal's `max_ttl_secs` past the calendar made `extend` panic;
/// it is held to the longest `max_ttl` a description may set.
#[test]
fn a_journal_with_a_max_ttl_past_the_calendar_is_held_to_the_longest_allowed() {
    let sb = Sandbox::new();
    let mut meta = forged_meta();
    meta.max_ttl_secs = Some(9_000_000_000_000_000_000);
    forge_in_directory(&sb.state(), meta);
    let out = in_directory_store(&sb, &["extend", RUN, "1h"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let out = in_directory_store(&sb, &["extend", RUN, "90d"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("may live until") && stderr.contains("at most"), "{stderr}");
}

/// Attack 9: objects were read whole, whatever their size. A journal record past its cap
/// in S3 leaves its run out of `list` (said, with the cap) and fails `report`; a report
/// past its cap in a `file://` store is refused with the cap named.
#[test]
fn objects_past_their_cap_are_refused_with_the_cap_named() {
    let (emu, rt, s3) = with_team_store();
    forge_in_s3(&rt, &s3, "team-state", "shop", forged_meta());
    let big = format!("runs/{RUN}/journal/0000000003.json");
    let body = vec![b' '; (4 << 20) + 1];
    rt.block_on(s3.put_object().bucket("team-state").key(format!("shop/{big}")).body(body.into()).send()).unwrap();
    let sb = Sandbox::new();
    let out = emu.rehearse(&sb).args(["--state", "s3://team-state/shop", "list"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{big}: more than 4 MiB, the most rehearse reads; run {RUN} is left out")),
        "the record past its cap was not refused with the cap named; stderr: {stderr:?}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(RUN));
    let out = emu.rehearse(&sb).args(["--state", "s3://team-state/shop", "report", RUN]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("{big}: more than 4 MiB, the most rehearse reads")), "{stderr}");

    let sb = Sandbox::new();
    forge_in_directory(&sb.state(), forged_meta());
    let report = sb.state().join("runs").join(RUN).join("report/report.json");
    std::fs::File::options().write(true).open(&report).unwrap().set_len((64 << 20) + 1).unwrap();
    let out = in_directory_store(&sb, &["report", RUN]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("more than 64 MiB, the most rehearse reads"), "{stderr}");
}

/// Attack 9: the journal was read 1, 2, … until the first missing record, however many
/// a stranger had written (here a hundred thousand and one, as the policy lets anyone
/// create them, in the in-memory fake S3).
#[test]
fn a_journal_of_more_than_a_hundred_thousand_records_is_refused_with_the_cap_named() {
    use rehearse::engine::store::{records, Condition, ObjectStore};
    use rehearse::testkit::fake_s3::{FakeS3, S3Faults};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let faults = S3Faults { latency: (Duration::ZERO, Duration::ZERO), ..S3Faults::realistic() };
        let store = FakeS3::new(1, faults);
        for n in 1..=100_001u64 {
            let key = format!("runs/{RUN}/journal/{n:010}.json");
            store.put(&key, b"{}".to_vec(), Condition::Absent).await.unwrap();
        }
        let e = records::read(&store, RUN).await.expect_err("past the cap");
        assert_eq!(e.to_string(), format!("runs/{RUN}/journal: more than 100,000 records, the most rehearse reads"));
    });
}

/// A server on 127.0.0.1 that answers every request `200 OK` with a body of `len` bytes.
fn answering(len: u64) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
                let _ = s.write_all(head.as_bytes());
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    port
}

/// Attack 9: the compare load replay (rehearse's own and the example tool
/// environments/load/replay.py) read every answer whole, whatever its size: past 64 MiB
/// it is an error of its request, never held whole.
#[test]
fn a_replayed_answer_past_64_mib_is_an_error_of_its_request() {
    use rehearse::compare::load::{parse_requests, replay};
    let (fine, big) = (answering(1 << 20), answering((64 << 20) + 1));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let errors = |port: u16| {
        rt.block_on(async {
            let requests = parse_requests("GET /big\n").unwrap();
            let target = [("127.0.0.1".to_string(), port)];
            replay(&requests, &target, 1.0, Duration::from_secs(1), Duration::from_secs(30)).await.remove(0).errors
        })
    };
    assert_eq!(errors(fine)["GET /big"], vec![0.0], "a 1 MiB answer is an answer");
    assert_eq!(errors(big)["GET /big"], vec![1.0], "an answer past 64 MiB is an error");

    let dir = tempfile::tempdir().unwrap();
    let requests = dir.path().join("requests.txt");
    std::fs::write(&requests, "GET /big\n").unwrap();
    for (port, ok) in [(fine, "1"), (big, "0")] {
        let results = dir.path().join(format!("results-{port}"));
        let out = Command::new("python3")
            .arg(root().join("environments/load/replay.py"))
            .arg(&requests)
            .env("REHEARSE_URL", format!("http://127.0.0.1:{port}"))
            .env("REHEARSE_RATE", "1")
            .env("REHEARSE_DURATION", "1")
            .env("REHEARSE_RESULTS", &results)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&results).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert!(line.starts_with("GET /big,") && line.ends_with(&format!(",{ok}")), "port {port}: {text}");
    }
}
