//! Another local user really attacks a rehearsal that runs as root.
//!
//! rehearse runs as root in CI, next to users it must not trust. Every test here runs
//! the real binary as root against real PostgreSQL and acts as a second, unprivileged
//! user (`nobody`, through `setpriv`) who tries to steer or read the run:
//!
//! - the work directory planted, or redirected with symbolic links, by the attacker;
//! - files, directories, the copy's socket and its TCP port during and after a run;
//! - who the release, the suites and the server run as, what the release's role may
//!   do, and a foreign PID written into `postmaster.pid` by the cluster's user;
//! - a state directory the attacker controls, and journals naming paths outside the
//!   run's work directory;
//! - after a `make demo`-style run: modes of everything left, and the generated
//!   password in no file and in no command line sampled during the run.
//!
//! Each assertion says what was attempted. A failing assertion here is a finding about
//! rehearse, not a test to be relaxed. Not root: every test says why and returns.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The attacker: an ordinary unprivileged account rehearse never uses.
const ATTACKER: &str = "nobody";
const ATTACKER_GROUP: &str = "nogroup";
/// The users rehearse runs the copy and the release as, when it runs as root.
const CLUSTER_USER: &str = "rehearse-db";
const RELEASE_USER: &str = "rehearse";

// ---------------------------------------------------------------------------------
// Who is who
// ---------------------------------------------------------------------------------

/// The real, effective, saved and filesystem uids of a process.
fn proc_uids(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    Some(line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect())
}

/// Whether this test can run: it needs root (as in CI). Otherwise it says why.
fn root_or_skip(test: &str) -> bool {
    let euid = proc_uids(std::process::id()).and_then(|u| u.get(1).copied());
    if euid == Some(0) {
        return true;
    }
    eprintln!(
        "{test}: SKIPPED: it needs root (effective uid {euid:?}): it runs rehearse as root and acts as the \
         unprivileged user {ATTACKER} through setpriv; CI runs the tests as root"
    );
    false
}

/// `id -u NAME` / `id -g NAME`.
fn id_of(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg(name).output().unwrap();
    assert!(out.status.success(), "the user {name} must exist (scripts/install-deps.sh creates rehearse's users)");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `sh -c SCRIPT sh ARGS...` as `user`:`group` with no supplementary groups and an
/// empty environment (no PGPASSWORD, nothing inherited from root), from `/`.
fn as_user(user: &str, group: &str, script: &str, args: &[&OsStr]) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={user}"))
        .arg(format!("--regid={group}"))
        .arg("--clear-groups")
        .arg("--")
        .args(["env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/nonexistent", "LC_ALL=C", "sh", "-c"])
        .arg(script)
        .arg("sh")
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null());
    c
}

fn attacker(script: &str, args: &[&OsStr]) -> Command {
    as_user(ATTACKER, ATTACKER_GROUP, script, args)
}

/// Runs a command: (exit code, stdout, stderr).
fn output(mut c: Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The attacker really is unprivileged (or every "denied" below would prove nothing).
fn attacker_is_unprivileged() {
    let (code, out, err) = output(attacker("id -u; id -G", &[]));
    assert_eq!(code, 0, "setpriv must be able to switch to {ATTACKER}: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first().copied(), Some(id_of("-u", ATTACKER).to_string().as_str()), "{out}");
    assert!(!lines.get(1).unwrap_or(&"").split_whitespace().any(|g| g == "0"), "the attacker is in group 0: {out}");
}

fn os<P: AsRef<OsStr> + ?Sized>(p: &P) -> &OsStr {
    p.as_ref()
}

// ---------------------------------------------------------------------------------
// Runs, journals, processes
// ---------------------------------------------------------------------------------

/// Tears a kept run down when dropped (also when an assertion failed), after putting
/// back the journal a test edited.
struct Kept<'a> {
    sb: &'a Sandbox,
    id: String,
    journal_backup: Option<Vec<u8>>,
}

impl Kept<'_> {
    fn journal(&self) -> PathBuf {
        self.sb.state().join("runs").join(&self.id).join("journal.jsonl")
    }

    fn restore_journal(&mut self) {
        if let Some(b) = self.journal_backup.take() {
            std::fs::write(self.journal(), b).unwrap();
        }
    }
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        self.restore_journal();
        let _ = self.sb.cmd().args(["down", &self.id]).output();
    }
}

/// `rehearse up environments/demo.yaml` as root: a kept copy of the demo.
fn up_demo(sb: &Sandbox) -> Kept<'_> {
    keep_demo(sb, &["up", "environments/demo.yaml"])
}

/// A kept demo run made by `rehearse ARGS` as root (`up ...`, `run ... --keep`).
fn keep_demo<'a>(sb: &'a Sandbox, args: &[&str]) -> Kept<'a> {
    demo_backups();
    let (code, _, err) = output({
        let mut c = sb.cmd();
        c.args(args);
        c
    });
    assert_eq!(code, 0, "rehearse {} as root failed:\n{err}", args.join(" "));
    let id = sb.run_ids().pop().expect("a run id");
    Kept { sb, id, journal_backup: None }
}

fn journal_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn write_journal(path: &Path, records: &[serde_json::Value]) {
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The copy's directory (socket, data/) and port, from the journal.
fn cluster_of(journal: &Path) -> (PathBuf, u16) {
    let c = journal_records(journal)
        .into_iter()
        .rev()
        .find(|r| r["type"] == "created" && r["kind"] == "local.postgres")
        .expect("the journal records the cluster")["handle"]["cluster"]
        .clone();
    (PathBuf::from(c["base"].as_str().unwrap()), c["port"].as_u64().unwrap() as u16)
}

/// Start time of a process (clock ticks since boot), as rehearse pins processes.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// A root process leading its own process group: bait that rehearse must never signal.
fn bait() -> Child {
    Command::new("sleep").arg("600").process_group(0).stdin(Stdio::null()).spawn().unwrap()
}

fn alive(c: &mut Child) -> bool {
    c.try_wait().unwrap().is_none()
}

fn kill_bait(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// A PID no process has any more, and its (now meaningless) start time.
fn dead_pid() -> (u32, u64) {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    let st = start_time(pid);
    c.wait().unwrap();
    (pid, st)
}

/// A journal record of a run that crashed long ago (expired, its process gone).
fn planted_run_record(run_id: &str, work_dir: &Path) -> serde_json::Value {
    let (pid, pid_start) = dead_pid();
    serde_json::json!({
        "type": "run", "run_id": run_id, "environment": "demo", "provider": "local",
        "description": "environments/demo.yaml", "release": "v2", "owner": "demo@example.com",
        "started_at": "2000-01-01T00:00:00Z", "expires_at": "2000-01-01T02:00:00Z", "destroy": "always",
        "work_dir": work_dir.display().to_string(), "region": null, "pid": pid, "pid_start": pid_start
    })
}

fn created(id: &str, kind: &str, handle: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"type": "created", "id": id, "kind": kind, "handle": handle, "at": "2000-01-01T00:00:01Z"})
}

/// Processes whose environment carries REHEARSE_RUN_ID=run_id, with their command line.
fn tagged_with_cmdline(run_id: &str) -> Vec<(i32, String)> {
    tagged_processes(run_id)
        .into_iter()
        .map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            (p, String::from_utf8_lossy(&c).replace('\0', " "))
        })
        .collect()
}

/// A description built from the demo with the given service install command, service
/// command and suites section.
fn custom(sb: &Sandbox, install: &str, command: &str, suites: &str) -> PathBuf {
    custom_description(sb, install, command, suites)
}

/// A script in the sandbox the release's user can read and run.
fn script(sb: &Sandbox, name: &str, text: &str) -> PathBuf {
    let p = sb.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

// ---------------------------------------------------------------------------------
// Trees: what is there, and what the attacker can do to it
// ---------------------------------------------------------------------------------

/// Every path under `root` (itself included), never following a symbolic link.
fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else { continue };
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
        out.push((p, m));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What a tree looks like: path, type, owner, group, mode, size, symlink target.
fn snapshot(root: &Path) -> Vec<String> {
    walk(root)
        .into_iter()
        .map(|(p, m)| {
            let target = std::fs::read_link(&p).map(|t| t.display().to_string()).unwrap_or_default();
            format!(
                "{} {:?} {}:{} {:o} {} {}",
                p.display(),
                m.file_type(),
                m.uid(),
                m.gid(),
                m.mode() & 0o7777,
                if m.is_file() { m.len() } else { 0 },
                target
            )
        })
        .collect()
}

/// As the attacker, tries to list every directory, to create a file in it, and to
/// read every other path (files, sockets) of `paths`; returns what was not refused
/// with "Permission denied". (Paths that vanished meanwhile are ignored.)
fn attacker_probe(paths: &[(PathBuf, std::fs::Metadata)]) -> Vec<String> {
    const PROBE: &str = r#"
tab=$(printf '\t')
while IFS="$tab" read -r kind p; do
  if [ "$kind" = d ]; then
    if err=$(ls -a -- "$p" 2>&1 >/dev/null); then printf 'OPEN\tls\t%s\t\n' "$p"; else printf 'DENIED\tls\t%s\t%s\n' "$p" "$err"; fi
    if err=$(touch -- "$p/.attacker-was-here" 2>&1); then printf 'OPEN\ttouch\t%s/.attacker-was-here\t\n' "$p"; else printf 'DENIED\ttouch\t%s\t%s\n' "$p" "$err"; fi
  else
    if err=$(head -c 1 -- "$p" 2>&1 >/dev/null); then printf 'OPEN\tcat\t%s\t\n' "$p"; else printf 'DENIED\tcat\t%s\t%s\n' "$p" "$err"; fi
  fi
done
"#;
    let mut child = attacker(PROBE, &[]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    // Fed from a thread: the probe's answers must be read while it is fed.
    let input: String =
        paths.iter().map(|(p, m)| format!("{}\t{}\n", if m.is_dir() { "d" } else { "f" }, p.display())).collect();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut failures = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        let (result, verb, path, err) = (f[0], f[1], f[2], f.get(3).copied().unwrap_or(""));
        if result == "OPEN" {
            if verb == "touch" {
                let _ = std::fs::remove_file(path);
                failures
                    .push(format!("the attacker created a file in {}", path.trim_end_matches("/.attacker-was-here")));
            } else {
                failures.push(format!("the attacker could `{verb}` {path}"));
            }
        } else if !err.contains("Permission denied") {
            if err.contains("No such file") && std::fs::symlink_metadata(path).is_err() {
                continue;
            }
            failures.push(format!("`{verb} {path}` as the attacker failed, but not for lack of permission: {err}"));
        }
    }
    assert_eq!(
        text.lines().count(),
        paths.len() + paths.iter().filter(|(_, m)| m.is_dir()).count(),
        "the attacker's probe did not try every path: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    failures
}

/// Paths that give "others" any permission, except the search bit on rehearse's
/// traversable work directories (0711: `WORK`, `WORK/runs`, `WORK/runs/RUN_ID`, its
/// `suites/`, and golden copies' directories — reachable by its users, never
/// listable). Sockets are judged by whether the attacker can reach them
/// ([`attacker_probe`]): PostgreSQL makes its socket 0777 inside its private 0700
/// directory.
fn others_bits(work: &Path, paths: &[(PathBuf, std::fs::Metadata)]) -> Vec<String> {
    let traversable = |p: &Path| {
        let Ok(rel) = p.strip_prefix(work) else { return false };
        let parts: Vec<&OsStr> = rel.iter().collect();
        match parts.as_slice() {
            [] => true,
            [golden, ..] if *golden == "golden" => true,
            [runs] | [runs, _] => *runs == "runs",
            [runs, _, suites] => *runs == "runs" && *suites == "suites",
            _ => false,
        }
    };
    paths
        .iter()
        .filter(|(_, m)| !m.file_type().is_socket() && !m.file_type().is_symlink())
        .filter(|(p, m)| {
            let allowed = if m.is_dir() && traversable(p) { 0o001 } else { 0 };
            m.mode() & 0o007 & !allowed != 0
        })
        .map(|(p, m)| {
            format!("{} is {:o} (owner uid {}): others may {}", p.display(), m.mode() & 0o7777, m.uid(), {
                let o = m.mode() & 0o007;
                [(0o4, "read"), (0o2, "write"), (0o1, "execute/search")]
                    .iter()
                    .filter(|(b, _)| o & b != 0)
                    .map(|(_, w)| *w)
                    .collect::<Vec<_>>()
                    .join("+")
            })
        })
        .collect()
}

/// Files under `roots` whose bytes contain any of `secrets`.
fn files_containing(roots: &[PathBuf], secrets: &BTreeSet<String>) -> Vec<String> {
    let mut hits = Vec::new();
    for root in roots {
        for (p, m) in walk(root) {
            if !m.is_file() {
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else { continue };
            for s in secrets {
                if bytes.windows(s.len()).any(|w| w == s.as_bytes()) {
                    hits.push(format!("{} (mode {:o}, uid {})", p.display(), m.mode() & 0o7777, m.uid()));
                }
            }
        }
    }
    hits
}

fn report_failures(what: &str, failures: &[String]) {
    assert!(failures.is_empty(), "{what}:\n  {}", failures.join("\n  "));
}

// ---------------------------------------------------------------------------------
// The sampler: every command line on the machine during a run, and the run's secrets
// ---------------------------------------------------------------------------------

struct Sampled {
    /// Every distinct command line seen (NUL-separated argv).
    cmdlines: HashSet<Vec<u8>>,
    /// PGPASSWORD (and DATABASE_URL passwords) of processes carrying REHEARSE_RUN_ID,
    /// by run id (other tests' runs may be going on meanwhile); after [`run_sampled`],
    /// only the sandbox's own runs.
    passwords: BTreeMap<String, BTreeSet<String>>,
    rounds: u64,
}

struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Sampled>,
}

impl Sampler {
    /// Reads every /proc/*/cmdline over and over (and, as root, the environment of
    /// every new process of a run) until stopped.
    fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut s = Sampled { cmdlines: HashSet::new(), passwords: BTreeMap::new(), rounds: 0 };
            let mut env_seen: HashSet<(u32, Vec<u8>)> = HashSet::new();
            loop {
                let last = flag.load(Ordering::SeqCst);
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
                    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
                    if cmdline.is_empty() {
                        continue;
                    }
                    if env_seen.insert((pid, cmdline.clone())) {
                        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
                            let vars: Vec<String> =
                                env.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
                            if let Some(run) = vars.iter().find_map(|v| v.strip_prefix("REHEARSE_RUN_ID=")) {
                                let found = s.passwords.entry(run.to_string()).or_default();
                                for v in &vars {
                                    if let Some(p) = v.strip_prefix("PGPASSWORD=") {
                                        found.insert(p.to_string());
                                    }
                                    if let Some(u) = v.strip_prefix("DATABASE_URL=") {
                                        if let Some(p) = u.split_once("://app:").and_then(|(_, r)| r.split_once('@')) {
                                            found.insert(p.0.to_string());
                                        }
                                    }
                                }
                            }
                        }
                    }
                    s.cmdlines.insert(cmdline);
                }
                s.rounds += 1;
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            for found in s.passwords.values_mut() {
                found.retain(|p| p.len() >= 16);
            }
            s
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> Sampled {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// Runs `rehearse ARGS` as root while sampling: (exit code, stdout+stderr, samples).
fn run_sampled(sb: &Sandbox, args: &[&OsStr]) -> (i32, String, Sampled) {
    let sampler = Sampler::start();
    std::thread::sleep(Duration::from_millis(20));
    let out = sb.cmd().args(args).output().unwrap();
    let mut sampled = sampler.finish();
    let mine = sb.run_ids();
    sampled.passwords.retain(|run, found| mine.contains(run) && !found.is_empty());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text, sampled)
}

/// The secrecy checks of a finished run: the password was seen (or the check proves
/// nothing), it is in no sampled command line, not on the terminal, in no file under
/// the state or work directory; and nothing there is open to others.
fn assert_run_kept_its_secrets(sb: &Sandbox, what: &str, terminal: &str, sampled: &Sampled) {
    let passwords: BTreeSet<String> = sampled.passwords.values().flatten().cloned().collect();
    assert!(
        !passwords.is_empty(),
        "{what}: the sampler never saw PGPASSWORD in the environment of the run's processes \
         ({} rounds, {} command lines): the secrecy checks would prove nothing",
        sampled.rounds,
        sampled.cmdlines.len()
    );
    assert!(
        sampled.cmdlines.iter().any(|c| String::from_utf8_lossy(c).contains("psql")),
        "{what}: the sampler saw no psql command line at all ({} rounds): it did not watch the run",
        sampled.rounds
    );
    let mut failures = Vec::new();
    for c in &sampled.cmdlines {
        let line = String::from_utf8_lossy(c).replace('\0', " ");
        for p in &passwords {
            if line.contains(p.as_str()) {
                failures.push(format!(
                    "the generated password is in the argv of a process (any local user reads /proc/PID/cmdline): {}",
                    line.replace(p.as_str(), "<PASSWORD>")
                ));
            }
        }
    }
    for p in &passwords {
        if terminal.contains(p.as_str()) {
            failures.push("the generated password is on rehearse's terminal output".to_string());
        }
    }
    for hit in files_containing(&[sb.state(), sb.work()], &passwords) {
        failures.push(format!("the generated password is written in {hit}"));
    }
    let mut paths = walk(&sb.state());
    paths.extend(walk(&sb.work()));
    failures.extend(others_bits(&sb.work(), &paths));
    report_failures(&format!("{what}: secrets or modes"), &failures);
}

// =================================================================================
// 6. The work directory
// =================================================================================

/// The attacker plants the work directory (or `runs/` in it) before a run as root:
/// as their own directory, as a symbolic link to one they control, or to a root-owned
/// directory. Each `run` (and `warm`) must refuse with an error naming the path, and
/// nothing may land in (or be chowned in) what the attacker prepared; no release code
/// may run from it — not even the attacker's migrate.sh swapped in while the run goes.
#[test]
fn a_work_directory_planted_by_another_user_is_refused() {
    if !root_or_skip("a_work_directory_planted_by_another_user_is_refused") {
        return;
    }
    attacker_is_unprivileged();
    demo_backups();
    struct Case {
        name: &'static str,
        /// Prepares the planted directory under the sandbox's sticky shared directory
        /// (like /var/tmp); returns (REHEARSE_WORK_DIR, the path the refusal must
        /// name, the trees whose state must not change).
        plant: fn(&Sandbox) -> (PathBuf, PathBuf, Vec<PathBuf>),
    }
    fn attacker_mkdir(args: &[&Path], script: &str) {
        let args: Vec<&OsStr> = args.iter().map(|p| p.as_os_str()).collect();
        let (code, _, err) = output(attacker(script, &args));
        assert_eq!(code, 0, "the attacker could not prepare the plant: {err}");
    }
    let cases = [
        Case {
            name: "the work directory is the attacker's (0755) with a world-writable runs/ in it",
            plant: |sb| {
                let w = sb.shared().join("work");
                attacker_mkdir(&[&w], "mkdir -m 755 \"$1\" && mkdir -m 777 \"$1/runs\" && echo x > \"$1/planted\"");
                (w.clone(), w.clone(), vec![w])
            },
        },
        Case {
            name: "the work directory is the attacker's, with rehearse's own mode 0711",
            plant: |sb| {
                let w = sb.shared().join("work");
                attacker_mkdir(&[&w], "mkdir -m 711 \"$1\"");
                (w.clone(), w.clone(), vec![w])
            },
        },
        Case {
            name: "the work directory is the attacker's symbolic link to the attacker's directory",
            plant: |sb| {
                let w = sb.shared().join("work");
                let a = sb.shared().join("attacker-dir");
                attacker_mkdir(&[&w, &a], "mkdir -m 711 \"$2\" && ln -s \"$2\" \"$1\"");
                (w.clone(), w.clone(), vec![a])
            },
        },
        Case {
            name: "the work directory is the attacker's symbolic link to a root-owned directory",
            plant: |sb| {
                let r = sb.dir.path().join("root-owned");
                std::fs::create_dir(&r).unwrap();
                std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o700)).unwrap();
                std::fs::write(r.join("keep"), "root's").unwrap();
                let w = sb.shared().join("work");
                attacker_mkdir(&[&w, &r], "ln -s \"$2\" \"$1\"");
                (w.clone(), w.clone(), vec![r])
            },
        },
        Case {
            name: "the work directory is root's but runs/ in it belongs to the attacker",
            plant: |sb| {
                let w = sb.dir.path().join("rootwork");
                std::fs::create_dir(&w).unwrap();
                std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o711)).unwrap();
                let runs = w.join("runs");
                std::fs::create_dir(&runs).unwrap();
                std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o777)).unwrap();
                std::os::unix::fs::chown(&runs, Some(id_of("-u", ATTACKER)), Some(id_of("-g", ATTACKER))).unwrap();
                (w, runs.clone(), vec![runs])
            },
        },
        Case {
            name: "the work directory is root's but runs/ in it is the attacker's symbolic link to their directory",
            plant: |sb| {
                let a = sb.shared().join("attacker-runs");
                attacker_mkdir(&[&a], "mkdir -m 777 \"$1\"");
                let w = sb.dir.path().join("rootwork");
                std::fs::create_dir(&w).unwrap();
                std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o711)).unwrap();
                std::os::unix::fs::symlink(&a, w.join("runs")).unwrap();
                std::os::unix::fs::lchown(w.join("runs"), Some(id_of("-u", ATTACKER)), Some(id_of("-g", ATTACKER)))
                    .unwrap();
                (w.clone(), w.join("runs"), vec![a])
            },
        },
        Case {
            name: "the work directory is root's but writable by everyone (0777)",
            plant: |sb| {
                let w = sb.dir.path().join("rootwork");
                std::fs::create_dir(&w).unwrap();
                std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o777)).unwrap();
                (w.clone(), w.clone(), vec![w])
            },
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let sb = Sandbox::new();
        let (work, named, watched) = (case.plant)(&sb);
        let before: Vec<Vec<String>> = watched.iter().map(|w| snapshot(w)).collect();
        // While the run goes, the attacker swaps any run directory that appears in a
        // runs/ they can write for their own, with a migrate.sh that reports to them.
        let pwned = sb.shared().join("pwned");
        let evil = sb.shared().join("evil-migrate.sh");
        std::fs::write(&evil, format!("#!/bin/sh\nid > {}\nenv >> {}\nexit 0\n", pwned.display(), pwned.display()))
            .unwrap();
        std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
        let stop = sb.shared().join("stop-injector");
        let injector = attacker(
            r#"while [ ! -e "$3" ]; do
  for d in "$1"/runs/r-*; do
    case "$d" in *.orig) continue;; esac
    [ -d "$d" ] && [ ! -O "$d" ] || continue
    mv "$d" "$d.orig" 2>/dev/null && mkdir -m 777 "$d" "$d/release" && cp "$2" "$d/release/migrate.sh" && cp "$2" "$d/release/app.py"
  done
  sleep 0.005
done"#,
            &[os(&work), os(&evil), os(&stop)],
        )
        .spawn()
        .unwrap();
        let (code, out, err) = output({
            let mut c = sb.cmd();
            c.env("REHEARSE_WORK_DIR", &work).args(["run", "environments/demo.yaml", "--release", "v2"]);
            c
        });
        std::fs::write(&stop, "").unwrap();
        let mut injector = injector;
        let _ = injector.wait();
        let text = format!("{out}{err}");
        if code == 0 || !text.contains("refusing to use") || !text.contains(&named.display().to_string()) {
            failures.push(format!(
                "{}: `rehearse run` as root with REHEARSE_WORK_DIR={} exited {code}; expected a non-zero exit \
                 and \"refusing to use {}\":\n{text}",
                case.name,
                work.display(),
                named.display()
            ));
        }
        // `rehearse warm` keeps its golden copies in the same work directory (in
        // `golden/`, not `runs/`: a planted `runs/` is no concern of it).
        let (code, out, err) = output({
            let mut c = sb.cmd();
            c.env("REHEARSE_WORK_DIR", &work).args(["warm", "environments/demo.yaml"]);
            c
        });
        if named == work && (code == 0 || !format!("{out}{err}").contains("refusing to use")) {
            failures.push(format!(
                "{}: `rehearse warm` as root with REHEARSE_WORK_DIR={} exited {code} without \"refusing to use\":\n{out}{err}",
                case.name,
                work.display()
            ));
        }
        if pwned.exists() {
            failures.push(format!(
                "{}: the attacker's migrate.sh ran, as: {}",
                case.name,
                std::fs::read_to_string(&pwned).unwrap_or_default().lines().next().unwrap_or("")
            ));
        }
        for (w, b) in watched.iter().zip(&before) {
            let after = snapshot(w);
            if &after != b {
                failures.push(format!(
                    "{}: what the attacker prepared ({}) changed during the run:\n    before: {b:?}\n    after:  {after:?}",
                    case.name,
                    w.display()
                ));
            }
        }
        // Nothing of a run may be running when the run was refused.
        for id in sb.run_ids() {
            let procs = tagged_with_cmdline(&id);
            if !procs.is_empty() {
                failures.push(format!("{}: processes of the refused run {id} are running: {procs:?}", case.name));
            }
        }
    }
    report_failures("a work directory another user planted was used", &failures);
}

/// A symbolic link owned by the attacker *above* the work directory
/// (`REHEARSE_WORK_DIR=/tmp/ci/work` with `/tmp/ci` the attacker's link to a root-owned
/// directory): every ancestor resolves to root's, so the path looks private — but the
/// attacker can point the link elsewhere at any moment. Here they do, while the run
/// restores: to a copy of the release whose migrate.sh reports its environment (the
/// copy's password) to them. The run must refuse the path, and no code of the
/// attacker may run.
#[test]
fn a_symlink_the_attacker_owns_above_the_work_directory_is_refused() {
    if !root_or_skip("a_symlink_the_attacker_owns_above_the_work_directory_is_refused") {
        return;
    }
    attacker_is_unprivileged();
    demo_backups();
    let sb = Sandbox::new();
    let shared = sb.shared();
    let root_owned = sb.dir.path().join("root-owned");
    std::fs::create_dir(&root_owned).unwrap();
    std::fs::set_permissions(&root_owned, std::fs::Permissions::from_mode(0o711)).unwrap();
    let link = shared.join("ci");
    let (code, _, err) = output(attacker("ln -s \"$1\" \"$2\"", &[os(&root_owned), os(&link)]));
    assert_eq!(code, 0, "{err}");
    let work = link.join("work");
    let stolen = shared.join("stolen-environment");
    let stop = shared.join("stop-attacker");
    let attack = script(
        &sb,
        "attacker.py",
        r#"import os, re, shutil, sys, time
link, root_owned, shared, stolen, stop = sys.argv[1:6]
mine = os.path.join(shared, "attacker-tree")
pat = re.compile(re.escape(link) + r"/work/runs/(r-[0-9a-z-]+)/")
run_id = None
while run_id is None:
    if os.path.exists(stop):
        sys.exit(0)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        m = pat.search(cmd)
        if m:
            run_id = m.group(1)
            break
    else:
        time.sleep(0.002)
run_real = os.path.join(root_owned, "work", "runs", run_id)
real = os.path.join(run_real, "release")
while not os.path.exists(os.path.join(real, "migrate.sh")):
    if os.path.exists(stop):
        sys.exit(0)
    time.sleep(0.002)
time.sleep(0.05)
# The attacker's tree mirrors the run's: the cluster's directory and the rest are
# links to the real ones (so the copy keeps working); the release is theirs.
run_fake = os.path.join(mine, "work", "runs", run_id)
os.makedirs(run_fake)
for d in [mine, os.path.join(mine, "work"), os.path.join(mine, "work", "runs"), run_fake]:
    os.chmod(d, 0o711)
for name in ["db-db", "home", "suites"]:
    os.symlink(os.path.join(run_real, name), os.path.join(run_fake, name))
fake = os.path.join(run_fake, "release")
# The release's files are readable by anyone: copy them, replace its migration script.
shutil.copytree(real, fake, symlinks=True)
os.chmod(fake, 0o755)
os.remove(os.path.join(fake, "migrate.sh"))
with open(os.path.join(fake, "migrate.sh"), "w") as f:
    f.write(f"umask 022\nid > {stolen}\nenv >> {stolen}\nexec sh {real}/migrate.sh\n")
tmp = link + ".new"
os.symlink(mine, tmp)
os.rename(tmp, link)
print("swapped", run_id, flush=True)
"#,
    );
    let attacker_proc = attacker(
        "exec python3 \"$@\"",
        &[os(&attack), os(&link), os(&root_owned), os(&shared), os(&stolen), os(&stop)],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (code, out, err) = output({
        let mut c = sb.cmd();
        c.env("REHEARSE_WORK_DIR", &work).args(["run", "environments/demo.yaml", "--release", "v2"]);
        c
    });
    std::fs::write(&stop, "").unwrap();
    // The attacker gives up once told to stop (or is stopped: it is our child).
    let mut attacker_proc = attacker_proc;
    let deadline = Instant::now() + Duration::from_secs(10);
    while attacker_proc.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = attacker_proc.kill();
    let attacker_out = attacker_proc.wait_with_output().unwrap();
    let id = sb.run_ids().pop();
    // Whatever the run left: the copy's directory in the root-owned tree (a copy of
    // production data), and servers still running from it.
    let mut leftover_servers = postgres_under(&root_owned);
    leftover_servers.extend(postgres_under(&link));
    for pid in &leftover_servers {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
    }
    let leftover_dirs: Vec<String> = id
        .as_ref()
        .map(|id| walk(&root_owned.join("work/runs").join(id)))
        .unwrap_or_default()
        .into_iter()
        .map(|(p, _)| p.display().to_string())
        .take(5)
        .collect();
    let stolen_text = std::fs::read_to_string(&stolen).unwrap_or_default();
    let mut failures = Vec::new();
    if !stolen_text.is_empty() {
        let who = stolen_text.lines().next().unwrap_or("");
        let has_password = stolen_text.lines().any(|l| l.starts_with("PGPASSWORD=") && l.len() > 20);
        failures.push(format!(
            "the attacker swapped the release under the run by re-pointing their link {}: their migrate.sh ran as \
             `{who}`{} ({})",
            link.display(),
            if has_password { " and handed them PGPASSWORD, the copy's password" } else { "" },
            String::from_utf8_lossy(&attacker_out.stdout).trim()
        ));
    }
    let text = format!("{out}{err}");
    if code == 0 || !text.contains("refusing to use") {
        failures.push(format!(
            "`rehearse run` as root with REHEARSE_WORK_DIR={} (through the attacker's symbolic link {} -> {}) \
             exited {code}; expected a refusal (\"refusing to use ...\"):\n{}",
            work.display(),
            link.display(),
            root_owned.display(),
            text.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    if !leftover_servers.is_empty() || !leftover_dirs.is_empty() {
        failures.push(format!(
            "after the run, the copy was left behind in the root-owned directory: servers {leftover_servers:?}, \
             files {leftover_dirs:?}"
        ));
    }
    report_failures("a run through a symbolic link the attacker owns", &failures);
}

/// A crashed run's journal names `WORK/runs/RUN_ID/release` — a path inside the
/// configured work directory, as it should. Meanwhile that work directory was removed
/// (a tmp cleaner, an operator) and the attacker re-created it as theirs, with
/// `runs/RUN_ID` a symbolic link to a root-owned directory holding a `release/`.
/// `down` and `sweep --yes` as root must refuse the work directory, and not delete
/// through the link.
#[test]
fn down_and_sweep_refuse_a_work_directory_the_attacker_recreated() {
    if !root_or_skip("down_and_sweep_refuse_a_work_directory_the_attacker_recreated") {
        return;
    }
    attacker_is_unprivileged();
    let mut failures = Vec::new();
    for command in [&["down", "r-20000101-000000-a1b2c3"][..], &["sweep", "--yes"][..]] {
        let sb = Sandbox::new();
        let run_id = "r-20000101-000000-a1b2c3";
        let work = sb.shared().join("work");
        let run_work = work.join("runs").join(run_id);
        // Root's own state directory and a journal rehearse itself would have written.
        let runs = sb.state().join("runs").join(run_id);
        std::fs::create_dir_all(&runs).unwrap();
        for d in [sb.state(), sb.state().join("runs"), runs.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        rehearse::engine::journal::mark_here(&runs, run_id).unwrap();
        write_journal(
            &runs.join("journal.jsonl"),
            &[
                planted_run_record(run_id, &run_work),
                created("workspace", "local.workspace", serde_json::json!({"dir": run_work})),
                created("release", "local.release", serde_json::json!({"dir": run_work.join("release")})),
                created(
                    "database.db",
                    "local.postgres",
                    serde_json::json!({"cluster": {"base": run_work.join("db-db"), "port": 0, "run_as": null, "postmaster": null}}),
                ),
            ],
        );
        // The victim: root's, with the names a run directory holds.
        let victim = sb.dir.path().join("victim");
        for d in ["release", "db-db"] {
            std::fs::create_dir_all(victim.join(d)).unwrap();
            std::fs::write(victim.join(d).join("canary"), "root's data").unwrap();
        }
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (code, _, err) = output(attacker(
            "mkdir -m 755 \"$1\" \"$1/runs\" && ln -s \"$3\" \"$1/runs/$2\"",
            &[os(&work), os(run_id), os(&victim)],
        ));
        assert_eq!(code, 0, "{err}");
        let (code, out, err) = output({
            let mut c = sb.cmd();
            c.env("REHEARSE_WORK_DIR", &work).args(command);
            c
        });
        let text = format!("{out}{err}");
        let gone: Vec<String> = ["release", "db-db"]
            .iter()
            .map(|d| victim.join(d).join("canary"))
            .filter(|c| !c.exists())
            .map(|c| c.display().to_string())
            .collect();
        if !gone.is_empty() {
            failures.push(format!(
                "`rehearse {}` as root, with the work directory {} re-created by the attacker and runs/{run_id} \
                 their link to {}, deleted root's {gone:?} (exit {code}):\n{text}",
                command.join(" "),
                work.display(),
                victim.display()
            ));
        }
        if code == 0 || !text.contains("refusing to use") {
            failures.push(format!(
                "`rehearse {}` as root with the work directory {} owned by the attacker exited {code} without \
                 \"refusing to use\":\n{text}",
                command.join(" "),
                work.display()
            ));
        }
    }
    report_failures("down/sweep trusted a work directory the attacker owns", &failures);
}

// =================================================================================
// 7. Modes: a kept run, and the copy itself
// =================================================================================

/// During a kept run and after `down`, the attacker tries to list every directory,
/// plant a file in it and read every file under the state and work directories; to
/// connect to the copy over TCP without a password; to use its socket directory; and
/// to read the service's environment. Every attempt must be refused.
#[test]
fn another_user_cannot_read_a_kept_run_or_connect_to_its_copy() {
    if !root_or_skip("another_user_cannot_read_a_kept_run_or_connect_to_its_copy") {
        return;
    }
    attacker_is_unprivileged();
    let sb = Sandbox::new();
    // `run --keep`: the copy, the release, the service, and what the suites left.
    let kept = keep_demo(&sb, &["run", "environments/demo.yaml", "--release", "v2", "--keep"]);
    let (base, port) = cluster_of(&kept.journal());
    let mut failures = Vec::new();

    // Every path under the state and work directories, as root sees them.
    let mut paths = walk(&sb.state());
    paths.extend(walk(&sb.work()));
    assert!(paths.len() > 50, "the kept run should have files: {}", paths.len());
    assert!(paths.iter().any(|(p, _)| p.ends_with("journal.jsonl")), "no journal found");
    assert!(paths.iter().any(|(p, _)| p.starts_with(&base)), "no cluster files found");
    for f in attacker_probe(&paths) {
        failures.push(format!("during the kept run: {f}"));
    }
    for f in others_bits(&sb.work(), &paths) {
        failures.push(format!("during the kept run: {f}"));
    }

    // The copy over TCP, without its password: as the release's role and as the
    // bootstrap superuser.
    for (user, db) in [("app", "shop"), ("rehearse", "postgres"), ("postgres", "postgres")] {
        let (code, out, err) = output(attacker(
            "psql -X -w -h 127.0.0.1 -p \"$1\" -U \"$2\" -d \"$3\" -c 'select current_user'",
            &[os(&port.to_string()), os(user), os(db)],
        ));
        if code == 0 {
            failures.push(format!(
                "the attacker connected to the copy on 127.0.0.1:{port} as {user} without a password: {out}"
            ));
        } else if !(err.contains("password") || err.contains("authentication")) {
            failures.push(format!(
                "`psql -h 127.0.0.1 -p {port} -U {user}` as the attacker failed, but not at authentication \
                 (is the copy listening?): {err}"
            ));
        }
    }
    // The private socket (the superuser needs no password there).
    let (code, out, err) = output(attacker(
        "psql -X -w -h \"$1\" -p \"$2\" -U rehearse -d postgres -c 'select current_user'",
        &[os(&base), os(&port.to_string())],
    ));
    if code == 0 || !err.contains("Permission denied") {
        failures.push(format!(
            "the attacker's psql over the socket directory {} was not refused for lack of permission \
             (exit {code}): {out}{err}",
            base.display()
        ));
    }
    // The service's environment holds PGPASSWORD.
    let procs = tagged_with_cmdline(&kept.id);
    let service = procs.iter().find(|(_, c)| c.contains("app.py")).map(|(p, _)| *p);
    let service = service.expect("the kept service runs");
    let (code, _, err) = output(attacker("head -c 1 /proc/$1/environ", &[os(&service.to_string())]));
    if code == 0 || !err.contains("Permission denied") {
        failures.push(format!("the attacker could read /proc/{service}/environ of the service (PGPASSWORD): {err}"));
    }

    // After down: what is left (the state directory) is still closed.
    let (code, _, err) = output({
        let mut c = sb.cmd();
        c.args(["down", &kept.id]);
        c
    });
    assert_eq!(code, 0, "down of the kept run failed: {err}");
    assert_nothing_left(&sb, &kept.id);
    let mut after = walk(&sb.state());
    after.extend(walk(&sb.work()));
    for f in attacker_probe(&after) {
        failures.push(format!("after down: {f}"));
    }
    for f in others_bits(&sb.work(), &after) {
        failures.push(format!("after down: {f}"));
    }
    report_failures("another user could read or reach a kept run", &failures);
}

/// The same for a copy-on-write copy: the generation's image, its frozen cluster and
/// the copy inside its mounted file system are closed to another user too, and the
/// copy's socket refuses them.
#[test]
fn another_user_cannot_read_a_copy_on_write_generation_or_its_copy() {
    if !root_or_skip("another_user_cannot_read_a_copy_on_write_generation_or_its_copy") {
        return;
    }
    attacker_is_unprivileged();
    let sb = Sandbox::new();
    demo_backups();
    let (code, out, err) = output({
        let mut c = sb.cmd();
        c.args(["warm", "environments/demo.yaml", "--method", "copy-on-write"]);
        c
    });
    assert_eq!(code, 0, "warm: {out}{err}");
    let kept = keep_demo(&sb, &["up", "environments/demo.yaml", "--release", "v2"]);
    let (base, port) = cluster_of(&kept.journal());
    assert!(base.starts_with(sb.work().join("golden/demo/db.cow")), "not a copy-on-write copy: {}", base.display());
    let paths = walk(&sb.work());
    let frozen =
        paths.iter().filter(|(p, _)| p.components().any(|c| c.as_os_str() == "golden") && p.ends_with("PG_VERSION"));
    assert!(frozen.count() >= 2, "the walk should see the frozen cluster and the copy");
    assert!(paths.iter().any(|(p, _)| p.extension().is_some_and(|e| e == "img")), "no image found");
    let mut failures = attacker_probe(&paths);
    failures.extend(others_bits(&sb.work(), &paths));
    let (code, out, err) = output(attacker(
        "psql -X -w -h \"$1\" -p \"$2\" -U rehearse -d postgres -c 'select current_user'",
        &[os(&base), os(&port.to_string())],
    ));
    if code == 0 || !err.contains("Permission denied") {
        failures.push(format!("the attacker's psql over the copy's socket was not refused (exit {code}): {out}{err}"));
    }
    let (code, _, err) = output({
        let mut c = sb.cmd();
        c.args(["down", &kept.id]);
        c
    });
    assert_eq!(code, 0, "down: {err}");
    assert_nothing_left(&sb, &kept.id);
    report_failures("another user could read or reach a copy-on-write copy", &failures);
}

// =================================================================================
// 9. Privileges
// =================================================================================

/// The release's install, its service and the suites run as `rehearse`, the server as
/// `rehearse-db`, nothing of the run as root; the role the release gets is no
/// superuser: `COPY ... TO PROGRAM`, reading server files, making itself or another
/// role a superuser, and the superuser's socket all fail.
#[test]
fn the_release_runs_unprivileged_and_its_role_is_no_superuser() {
    if !root_or_skip("the_release_runs_unprivileged_and_its_role_is_no_superuser") {
        return;
    }
    let sb = Sandbox::new();
    let out = sb.shared();
    let probe = script(
        &sb,
        "probe.sh",
        &format!(
            r#"#!/bin/sh
# $1: install | suite. Records what the release's user and role can do, in {out}.
o="{out}/$1"
id -u > "$o.uid"
psql -X -A -t -w -c "select rolsuper from pg_roles where rolname = current_user" > "$o.rolsuper" 2>&1
psql -X -w -c "COPY (select 1) TO PROGRAM 'id > {out}/$1.copy-program-ran'" > "$o.copy-program" 2>&1; echo $? >> "$o.copy-program"
psql -X -w -c "select pg_read_file('/etc/hostname')" > "$o.read-file" 2>&1; echo $? >> "$o.read-file"
psql -X -w -c "alter role current_user superuser" > "$o.alter-superuser" 2>&1; echo $? >> "$o.alter-superuser"
psql -X -w -c "create role evil login superuser password 'evil-password'" > "$o.create-superuser" 2>&1; echo $? >> "$o.create-superuser"
psql -X -w -h "{work}/runs/$REHEARSE_RUN_ID/db-db" -U rehearse -d postgres -c 'select 1' > "$o.socket" 2>&1; echo $? >> "$o.socket"
exit 0
"#,
            out = out.display(),
            work = sb.work().display()
        ),
    );
    let install = format!("sh migrate.sh && sh {} install", probe.display());
    let suites =
        format!("  probe:\n    command: sh {} suite\n    timeout: 60s\n    results: exit-code\n", probe.display());
    let file = custom(&sb, &install, "python3 app.py", &suites);
    let (code, _, err) = output({
        let mut c = sb.cmd();
        c.arg("run").arg(&file).arg("--keep");
        c
    });
    assert_eq!(code, 0, "the probing run failed:\n{err}");
    let id = sb.run_ids().pop().unwrap();
    let _kept = Kept { sb: &sb, id: id.clone(), journal_backup: None };
    let (release_uid, cluster_uid) = (id_of("-u", RELEASE_USER), id_of("-u", CLUSTER_USER));
    let mut failures = Vec::new();

    // The kept processes: the service as rehearse, the server as rehearse-db.
    let procs = tagged_with_cmdline(&id);
    let service = procs.iter().find(|(_, c)| c.contains("app.py"));
    match service {
        Some((pid, c)) => {
            let uids = proc_uids(*pid as u32).unwrap_or_default();
            if uids.iter().any(|u| *u != release_uid) {
                failures.push(format!(
                    "the service ({c}, pid {pid}) runs with uids {uids:?}, not {RELEASE_USER}'s {release_uid}"
                ));
            }
        }
        None => failures.push(format!("no service process carries REHEARSE_RUN_ID={id}: {procs:?}")),
    }
    let servers = postgres_under(&sb.work());
    if servers.is_empty() {
        failures.push("no PostgreSQL server of the kept run was found".into());
    }
    for pid in servers {
        let uids = proc_uids(pid as u32).unwrap_or_default();
        if uids.iter().any(|u| *u != cluster_uid) {
            failures.push(format!(
                "the PostgreSQL process {pid} runs with uids {uids:?}, not {CLUSTER_USER}'s {cluster_uid}"
            ));
        }
    }
    for (pid, c) in &procs {
        if proc_uids(*pid as u32).unwrap_or_default().contains(&0) {
            failures.push(format!("a process of the run runs as root: {pid} {c}"));
        }
    }

    // What the install and the suite could do, as they recorded it.
    for stage in ["install", "suite"] {
        let read = |what: &str| std::fs::read_to_string(out.join(format!("{stage}.{what}"))).unwrap_or_default();
        let uid = read("uid");
        if uid.trim() != release_uid.to_string() {
            failures.push(format!("the {stage} ran as uid {:?}, not {RELEASE_USER} ({release_uid})", uid.trim()));
        }
        let rolsuper = read("rolsuper");
        if rolsuper.trim() != "f" {
            failures.push(format!(
                "the {stage}: `select rolsuper from pg_roles where rolname = current_user` gave {:?}, not f",
                rolsuper.trim()
            ));
        }
        // Refused for lack of privilege: psql failed with a server ERROR saying so
        // ("permission denied ..." or, in PostgreSQL's words, "must be superuser ...").
        let refused = |what: &str, attempt: &str, needle: &str, failures: &mut Vec<String>| {
            let text = read(what);
            let rc = text.lines().last().unwrap_or("").trim().to_string();
            let lower = text.to_lowercase();
            let denied = lower.contains(needle) || lower.contains("error:  must be superuser");
            if rc == "0" || rc.is_empty() || !denied {
                failures
                    .push(format!("the {stage}'s {attempt} was not refused for lack of privilege (exit {rc}): {text}"));
            }
        };
        refused(
            "copy-program",
            "`COPY (select 1) TO PROGRAM 'id'` as the release's role",
            "permission denied",
            &mut failures,
        );
        if out.join(format!("{stage}.copy-program-ran")).exists() {
            failures.push(format!("the {stage}'s COPY ... TO PROGRAM ran a program as the cluster's user"));
        }
        refused("read-file", "`select pg_read_file('/etc/hostname')`", "permission denied", &mut failures);
        refused("alter-superuser", "`alter role current_user superuser`", "permission denied", &mut failures);
        refused("create-superuser", "`create role evil superuser`", "permission denied", &mut failures);
        refused(
            "socket",
            "psql as the superuser over the cluster's private socket",
            "permission denied",
            &mut failures,
        );
    }
    report_failures("the release had privileges it must not have", &failures);
}

/// Something running as the cluster's user writes the PID of a root process into
/// `postmaster.pid` before teardown — in a kept run before `down`, and in a run while
/// its suite runs, before the run's own teardown. Root must not kill that process, and
/// the real server must still be stopped.
#[test]
fn a_foreign_pid_in_postmaster_pid_is_never_signalled() {
    if !root_or_skip("a_foreign_pid_in_postmaster_pid_is_never_signalled") {
        return;
    }
    let cluster_group = CLUSTER_USER;
    let plant = |base: &Path, pid: u32| {
        let (code, out, err) = output(as_user(
            CLUSTER_USER,
            cluster_group,
            r#"set -e; f="$1/data/postmaster.pid"; { echo "$2"; tail -n +2 "$f"; } > "$f.new"; mv "$f.new" "$f"; head -n 1 "$f""#,
            &[os(base), os(&pid.to_string())],
        ));
        assert_eq!(code, 0, "the cluster user could not rewrite postmaster.pid: {err}");
        assert_eq!(out.trim(), pid.to_string());
    };
    let mut failures = Vec::new();

    // A kept run, then `down`.
    {
        let sb = Sandbox::new();
        let kept = up_demo(&sb);
        let (base, _) = cluster_of(&kept.journal());
        let mut victim = bait();
        plant(&base, victim.id());
        let (code, _, err) = output({
            let mut c = sb.cmd();
            c.args(["down", &kept.id]);
            c
        });
        if !alive(&mut victim) {
            failures.push(format!(
                "`rehearse down` as root killed the root process {} whose PID the cluster user wrote into {}/data/postmaster.pid",
                victim.id(),
                base.display()
            ));
        }
        kill_bait(victim);
        if code != 0 {
            failures.push(format!("down after the postmaster.pid was rewritten exited {code}: {err}"));
        }
        let left = postgres_under(&sb.work());
        if !left.is_empty() {
            failures.push(format!("the real server still runs after down: {left:?}"));
        }
    }

    // A run: rewritten while its suite runs; the run's own teardown follows.
    {
        let sb = Sandbox::new();
        let started = sb.shared().join("suite-started");
        let go = sb.shared().join("go");
        let suite = format!(
            "  wait:\n    command: \"touch {} && while [ ! -e {} ]; do sleep 0.05; done\"\n    timeout: 60s\n    results: exit-code\n",
            started.display(),
            go.display()
        );
        let file = custom(&sb, "sh migrate.sh", "python3 app.py", &suite);
        let run = sb.cmd().arg("run").arg(&file).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !started.exists() {
            assert!(Instant::now() < deadline, "the suite never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let id = sb.run_ids().pop().unwrap();
        let (base, _) = cluster_of(&sb.state().join("runs").join(&id).join("journal.jsonl"));
        let mut victim = bait();
        plant(&base, victim.id());
        std::fs::write(&go, "").unwrap();
        let out = run.wait_with_output().unwrap();
        if !alive(&mut victim) {
            failures.push(format!(
                "the run's teardown as root killed the root process {} whose PID the cluster user wrote into postmaster.pid",
                victim.id()
            ));
        }
        kill_bait(victim);
        if out.status.code() != Some(0) {
            failures.push(format!("the run exited {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr)));
        }
        let left = postgres_under(&sb.work());
        if !left.is_empty() {
            failures.push(format!("the real server still runs after the run's teardown: {left:?}"));
            let _ = sb.cmd().args(["down", &id]).output();
        }
    }
    report_failures("a PID planted in postmaster.pid was trusted", &failures);
}

// =================================================================================
// 10. State directories and journals
// =================================================================================

/// `--state-dir` at a directory the attacker owns or can write (or reaches through
/// their symbolic link), holding a journal they planted: it names a root process
/// (by its true PID and start time) and a root directory inside the work directory.
/// `list`, `down`, `sweep --yes`, `up` as root must all refuse ("refusing to use"),
/// and neither the process nor the directory may be touched.
#[test]
fn a_state_directory_another_user_controls_is_refused() {
    if !root_or_skip("a_state_directory_another_user_controls_is_refused") {
        return;
    }
    attacker_is_unprivileged();
    demo_backups();
    let run_id = "r-20000101-000000-d00d00";
    type Plant = fn(&Sandbox) -> PathBuf;
    let cases: [(&str, Plant); 6] = [
        ("the state directory is the attacker's (0700)", |sb| {
            let s = sb.shared().join("state");
            attacker_sh_ok("mkdir -m 700 \"$1\"", &[&s]);
            s
        }),
        ("the state directory is root's but writable by everyone (0777)", |sb| {
            let s = sb.dir.path().join("open-state");
            std::fs::create_dir(&s).unwrap();
            std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o777)).unwrap();
            s
        }),
        ("the state directory is root's but writable by the attacker's group (0770, group nogroup)", |sb| {
            let s = sb.dir.path().join("group-state");
            std::fs::create_dir(&s).unwrap();
            std::os::unix::fs::chown(&s, None, Some(id_of("-g", ATTACKER))).unwrap();
            std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o770)).unwrap();
            s
        }),
        ("the state directory is root's but runs/ in it is the attacker's", |sb| {
            let s = sb.dir.path().join("root-state");
            std::fs::create_dir(&s).unwrap();
            std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::create_dir(s.join("runs")).unwrap();
            std::fs::set_permissions(s.join("runs"), std::fs::Permissions::from_mode(0o777)).unwrap();
            std::os::unix::fs::chown(s.join("runs"), Some(id_of("-u", ATTACKER)), Some(id_of("-g", ATTACKER))).unwrap();
            // The test stands in for the attacker's earlier access to the path.
            std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o711)).unwrap();
            s
        }),
        ("the state directory is the attacker's symbolic link to their directory", |sb| {
            let s = sb.shared().join("state");
            let a = sb.shared().join("attacker-state");
            attacker_sh_ok("mkdir -m 700 \"$2\" && ln -s \"$2\" \"$1\"", &[&s, &a]);
            s
        }),
        ("the state directory lies below the attacker's symbolic link to a root-owned directory", |sb| {
            // Root's directory, with a root-owned state directory in it; the path to
            // it goes through the attacker's link, which they can re-point at will.
            let r = sb.dir.path().join("root-owned");
            std::fs::create_dir_all(r.join("state")).unwrap();
            std::fs::set_permissions(&r, std::fs::Permissions::from_mode(0o711)).unwrap();
            std::fs::set_permissions(r.join("state"), std::fs::Permissions::from_mode(0o700)).unwrap();
            let l = sb.shared().join("ci");
            attacker_sh_ok("ln -s \"$2\" \"$1\"", &[&l, &r]);
            l.join("state")
        }),
    ];
    let mut failures = Vec::new();
    for (name, plant) in cases {
        let sb = Sandbox::new();
        let state = plant(&sb);
        // The bait: a root process, named in the journal by its true PID and start
        // time, and a root directory at a place a run's release would be.
        let mut victim = bait();
        let work_run = sb.work().join("runs").join(run_id);
        let records = [
            planted_run_record(run_id, &work_run),
            created("workspace", "local.workspace", serde_json::json!({"dir": work_run})),
            created("release", "local.release", serde_json::json!({"dir": work_run.join("release")})),
            created(
                "service.web.0",
                "local.process",
                serde_json::json!({"process": {"pid": victim.id(), "pgid": victim.id(), "start_time": start_time(victim.id())}, "port": 1}),
            ),
        ];
        let text: String = records.iter().map(|r| format!("{r}\n")).collect();
        let journal_src = sb.shared().join("planted-journal");
        std::fs::write(&journal_src, text).unwrap();
        std::fs::set_permissions(&journal_src, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The journal goes in as the attacker, where they can write. (Below their link
        // to a root-owned directory they cannot: there the refusal alone is checked,
        // since they could re-point the link between rehearse's check and its reads.)
        let (code, _, _) = output(attacker(
            "mkdir -p \"$1/runs/$2\" && cp \"$3\" \"$1/runs/$2/journal.jsonl\"",
            &[os(&state), os(run_id), os(&journal_src)],
        ));
        let planted = code == 0;
        assert!(!planted || state.join("runs").join(run_id).join("journal.jsonl").is_file(), "{name}: planting failed");
        if planted {
            std::fs::create_dir_all(work_run.join("release")).unwrap();
            std::fs::write(work_run.join("release/canary"), "root's").unwrap();
        }
        let attempts: [&[&str]; 5] = [
            &["list"],
            &["list", "--all", "--format", "json"],
            &["down", run_id],
            &["sweep", "--yes"],
            &["up", "environments/demo.yaml"],
        ];
        for args in attempts {
            let (code, out, err) = output({
                let mut c = sb.cmd();
                c.arg("--state-dir").arg(&state).args(args);
                c
            });
            if code == 0 || !err.contains("refusing to use") {
                failures.push(format!(
                    "{name}: `rehearse --state-dir {} {}` as root exited {code} without \"refusing to use\":\n{out}{err}",
                    state.display(),
                    args.join(" ")
                ));
                if args[0] == "up" && code == 0 {
                    if let Some(id) = out.lines().chain(err.lines()).find_map(|l| {
                        l.split_whitespace()
                            .find(|w| w.starts_with("r-") && w.len() > 20)
                            .map(|w| w.trim_end_matches([')', ':']).to_string())
                    }) {
                        let _ = sb.cmd().arg("--state-dir").arg(&state).args(["down", &id]).output();
                    }
                }
            }
        }
        if !alive(&mut victim) {
            failures.push(format!(
                "{name}: rehearse as root killed the root process {} named in the attacker's journal",
                victim.id()
            ));
        }
        kill_bait(victim);
        if planted && !work_run.join("release/canary").exists() {
            failures.push(format!(
                "{name}: rehearse as root removed {} as the attacker's journal asked",
                work_run.join("release").display()
            ));
        }
    }
    report_failures("a state directory another user controls was used", &failures);
}

fn attacker_sh_ok(script: &str, args: &[&Path]) {
    let args: Vec<&OsStr> = args.iter().map(|p| p.as_os_str()).collect();
    let (code, _, err) = output(attacker(script, &args));
    assert_eq!(code, 0, "the attacker could not prepare the plant ({script}): {err}");
}

/// A real kept run whose journal (in root's own state directory) is edited to name
/// directories outside `WORK/runs/RUN_ID` — absolute paths elsewhere, and `..` escapes
/// — for its release, its cluster and its workspace. `down` and `sweep --yes` must not
/// delete them (each holds a canary) and must say they refused.
#[test]
fn journal_paths_outside_the_run_are_never_removed() {
    if !root_or_skip("journal_paths_outside_the_run_are_never_removed") {
        return;
    }
    let mut failures = Vec::new();
    for (command, escape) in [("down", false), ("sweep", true), ("down", true), ("sweep", false)] {
        let sb = Sandbox::new();
        let mut kept = up_demo(&sb);
        let id = kept.id.clone();
        let journal = kept.journal();
        kept.journal_backup = Some(std::fs::read(&journal).unwrap());
        let run_work = sb.work().join("runs").join(&id);
        // Victims, each with a canary, and a `data/` to look like a cluster.
        let mut victims = Vec::new();
        for name in ["release", "cluster", "workspace"] {
            let v = sb.dir.path().join(format!("victim-{name}"));
            std::fs::create_dir_all(v.join("data")).unwrap();
            std::fs::write(v.join("canary"), "must survive").unwrap();
            let named = if escape {
                // Literally below the run's directory, but `..` climbs out of it.
                run_work.join("..").join("..").join("..").join(format!("victim-{name}"))
            } else {
                v.clone()
            };
            victims.push((name, v, named));
        }
        let named = |n: &str| victims.iter().find(|v| v.0 == n).unwrap().2.clone();
        let mut records = journal_records(&journal);
        for r in records.iter_mut() {
            match (r["type"].as_str(), r["kind"].as_str()) {
                (Some("run"), _) => {
                    r["work_dir"] = serde_json::json!(named("workspace"));
                    if command == "sweep" {
                        r["expires_at"] = serde_json::json!("2000-01-01T00:00:00Z");
                    }
                }
                (Some("created"), Some("local.release")) => r["handle"]["dir"] = serde_json::json!(named("release")),
                (Some("created"), Some("local.workspace")) => {
                    r["handle"]["dir"] = serde_json::json!(named("workspace"))
                }
                (Some("created"), Some("local.postgres")) => {
                    r["handle"]["cluster"]["base"] = serde_json::json!(named("cluster"))
                }
                _ => {}
            }
        }
        write_journal(&journal, &records);
        let args: Vec<&str> = if command == "down" { vec!["down", &id] } else { vec!["sweep", "--yes"] };
        let (code, out, err) = output({
            let mut c = sb.cmd();
            c.args(&args);
            c
        });
        let text = format!("{out}{err}");
        let what = format!(
            "`rehearse {}` as root with a journal naming {} outside {}",
            args.join(" "),
            if escape { "`..` escapes" } else { "directories" },
            run_work.display()
        );
        for (name, v, n) in &victims {
            if !v.join("canary").exists() {
                failures.push(format!("{what}: removed the {name} directory it named, {}", n.display()));
            }
        }
        if code == 0 || !text.contains("refusing to remove") {
            failures.push(format!("{what}: exited {code} without reporting \"refusing to remove\":\n{text}"));
        }
        // Put the journal back: the real run is then removed completely.
        kept.restore_journal();
        let (code, _, err) = output({
            let mut c = sb.cmd();
            c.args(["down", &id]);
            c
        });
        assert_eq!(code, 0, "down with the restored journal failed: {err}");
        assert_nothing_left(&sb, &id);
    }
    report_failures("a journal's paths outside the run were removed", &failures);
}

// =================================================================================
// The demo's secrets and modes
// =================================================================================

/// `rehearse run environments/demo.yaml --release v2` (as `make demo` does) while a
/// sampler reads every process's command line every millisecond and, as root, the
/// environment of the run's processes (to learn the generated password). The
/// password must be in no command line, not on the terminal, in no file under the
/// state or work directory; nothing there may be open to others.
#[test]
fn a_demo_run_leaks_its_password_nowhere_and_leaves_nothing_readable() {
    if !root_or_skip("a_demo_run_leaks_its_password_nowhere_and_leaves_nothing_readable") {
        return;
    }
    demo_backups();
    let sb = Sandbox::new();
    let (code, text, sampled) = run_sampled(&sb, &[os("run"), os("environments/demo.yaml"), os("--release"), os("v2")]);
    assert_eq!(code, 0, "the demo run failed:\n{text}");
    eprintln!(
        "sampled {} rounds, {} distinct command lines, {} password(s)",
        sampled.rounds,
        sampled.cmdlines.len(),
        sampled.passwords.values().map(BTreeSet::len).sum::<usize>()
    );
    assert_run_kept_its_secrets(&sb, "make demo-style run", &text, &sampled);
    let id = sb.run_ids().pop().unwrap();
    assert_nothing_left(&sb, &id);
    // And the attacker can open nothing that is left.
    let mut paths = walk(&sb.state());
    paths.extend(walk(&sb.work()));
    report_failures("after the demo run, the attacker could open", &attacker_probe(&paths));
}

/// A release that prints its secrets — an install echoing `$PGPASSWORD`, a service
/// printing `$DATABASE_URL` on start, a suite printing the password and putting it in
/// its JUnit failure message — must still leave the password in no file under the
/// state or work directory, and not on the terminal: rehearse says it redacts the
/// copy's password from every log and report.
#[test]
fn secrets_the_release_prints_are_redacted_from_every_file() {
    if !root_or_skip("secrets_the_release_prints_are_redacted_from_every_file") {
        return;
    }
    let sb = Sandbox::new();
    let leaky = script(
        &sb,
        "leaky-suite.sh",
        r#"#!/bin/sh
echo "suite sees $PGPASSWORD"
echo "suite stderr $DATABASE_URL $REHEARSE_DB_DB_URL" >&2
cat > "$REHEARSE_JUNIT_PATH" <<EOF
<testsuites><testsuite name="leaky" tests="2" failures="1">
<testcase name="prints the password $PGPASSWORD"/>
<testcase name="fails"><failure message="could not log in with $PGPASSWORD">password was $PGPASSWORD</failure></testcase>
</testsuite></testsuites>
EOF
exit 1
"#,
    );
    let suites = format!(
        "  leaky:\n    command: sh {}\n    timeout: 60s\n    results:\n      junit: leaky.xml\n",
        leaky.display()
    );
    let file = custom(
        &sb,
        "echo install sees $PGPASSWORD && echo install stderr $DATABASE_URL >&2 && sh migrate.sh",
        "echo service starts with $DATABASE_URL; exec python3 app.py",
        &suites,
    );
    let (code, text, sampled) = run_sampled(&sb, &[os("run"), file.as_os_str()]);
    assert_eq!(code, 1, "the leaky suite fails, so the run should exit 1:\n{text}");
    assert_run_kept_its_secrets(&sb, "a run whose release prints its secrets", &text, &sampled);
    // The release really printed them (redacted): else this test proved nothing.
    let masked = walk(&sb.state())
        .into_iter()
        .filter(|(_, m)| m.is_file())
        .any(|(p, _)| std::fs::read_to_string(p).is_ok_and(|t| t.contains("install sees ***")));
    assert!(
        masked,
        "no log under the state directory shows the install's printed password masked (`install sees ***`)"
    );
}

// =================================================================================
// A stage's stable ports (issue 23, part 2, item 7)
// =================================================================================

/// What the attacker runs to squat a port: a PostgreSQL server in appearance, which
/// asks every client for its password in clear text and writes what it gets to
/// `DIR/captured`. Arguments: address, port, DIR.
const SQUATTER: &str = r#"
import socket, struct, sys
host, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
s.bind((host, port))
s.listen(8)
open(out + '/listening', 'w').close()
def packet(c):
    n = struct.unpack('!I', c.recv(4))[0]
    return c.recv(n - 4)
while True:
    c, _ = s.accept()
    try:
        body = packet(c)
        while struct.unpack('!I', body[:4])[0] in (80877103, 80877104):  # SSL, GSS: no
            c.sendall(b'N')
            body = packet(c)
        c.sendall(b'R' + struct.pack('!II', 8, 3))  # AuthenticationCleartextPassword
        if c.recv(1) == b'p':
            open(out + '/captured', 'wb').write(packet(c))
    except Exception:
        pass
    c.close()
"#;

/// The export lines of `rehearse stage env` as (name, value).
fn exported(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// A local stage as a rebuild leaves it — its record and password in the store, the
/// forwarder's ports and targets in its directory — with its forwarder down (the
/// generation is long gone: the test is about the names). Its stable database port, its
/// password and the stage's directory.
fn stage_with_its_forwarder_down(sb: &Sandbox) -> (u16, &'static str, PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = sb.state().join("stages").join("staging");
    std::fs::create_dir_all(&dir).unwrap();
    for d in [sb.state(), sb.state().join("stages"), dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let password = "Stage-password-that-no-squatter-may-see-4f1c";
    let record = serde_json::json!({
        "stage": "staging", "environment": "staging", "provider": "local", "revision": 3,
        "written_by": "x", "updated_at": "2026-11-27T02:00:00Z", "current": 1,
        "names": {"db": format!("127.0.0.1:{port}")},
        "databases": {"db": {"name": "shop", "user": "app", "port": port.to_string()}},
        "generations": [{"number": 1, "run_id": "r-20261127-020000-abcdef", "release": "v1",
            "started_at": "2026-11-27T02:00:00Z", "fate": "current", "targets": {"db": ["127.0.0.1:1"]}}]
    });
    std::fs::write(dir.join("stage.json"), serde_json::to_vec(&record).unwrap()).unwrap();
    std::fs::write(dir.join("secret.json"), serde_json::json!({ "password": password }).to_string()).unwrap();
    std::fs::write(dir.join("listen.json"), serde_json::json!({ "db": port }).to_string()).unwrap();
    std::fs::write(dir.join("targets.json"), r#"{"generation": 1, "targets": {"db": ["127.0.0.1:1"]}}"#).unwrap();
    (port, password, dir)
}

/// The attacker's squatter on `host`:`port`, once it listens; `Err`: why it could not.
fn squat(sb: &Sandbox, host: &str, port: u16) -> Result<Child, String> {
    let shared = sb.shared();
    let _ = std::fs::remove_file(shared.join("listening"));
    let mut child = attacker(
        "exec python3 -c \"$1\" \"$2\" \"$3\" \"$4\"",
        &[os(SQUATTER), os(host), os(&port.to_string()), os(&shared)],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shared.join("listening").exists() {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}

/// `rehearse stage ARGS` as root: (exit code, stdout, stderr).
fn stage_cmd(sb: &Sandbox, args: &[&str]) -> (i32, String, String) {
    output({
        let mut c = sb.cmd();
        c.arg("stage").args(args);
        c
    })
}

/// A local stage whose forwarder is down (after a reboot): another local user binds
/// its stable database port and answers as PostgreSQL would, asking for the password
/// in clear text. `stage status` said the names point at nothing, `stage env` handed
/// out the connection anyway, and psql sent the stage's password to the squatter. Now
/// `stage env` refuses while anything but the forwarder answers a stable name, says
/// who does and what to do, and `stage status` fails saying the same.
#[test]
fn a_squatter_on_a_stage_port_is_handed_no_connection_and_no_password() {
    if !root_or_skip("a_squatter_on_a_stage_port_is_handed_no_connection_and_no_password") {
        return;
    }
    attacker_is_unprivileged();
    let sb = Sandbox::new();
    let (port, password, _) = stage_with_its_forwarder_down(&sb);
    let mut squatter = squat(&sb, "127.0.0.1", port).expect("the attacker could not bind the stage's free port");
    let (code, out, err) = stage_cmd(&sb, &["env", "staging"]);
    if code == 0 {
        // What a client does with it: psql, as the README shows.
        let _ = Command::new("psql")
            .args(["-X", "-w", "-c", "select 1"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .envs(exported(&out))
            .env("PGCONNECT_TIMEOUT", "5")
            .output();
    }
    let captured = std::fs::read(sb.shared().join("captured")).unwrap_or_default();
    let (s_code, s_out, s_err) = stage_cmd(&sb, &["status", "staging"]);
    let _ = squatter.kill();
    let _ = squatter.wait();
    assert!(
        !String::from_utf8_lossy(&captured).contains(password),
        "psql sent the stage's password to the user {ATTACKER} squatting its stable port, with what `stage env` \
         handed out:\n{out}{err}"
    );
    assert_eq!(code, 3, "`stage env` handed out the connection while {ATTACKER} held the stable port:\n{out}{err}");
    assert!(!out.contains(password), "{out}");
    let who = format!(
        "port {port} of `db` is answered by pid {} (user {ATTACKER}), not by the stage's forwarder",
        squatter.id()
    );
    assert!(err.contains(&who) && err.contains("not handing out the stage's connection"), "{err}");
    assert!(err.contains("rehearse stage forward staging"), "the refusal says what to do: {err}");
    assert_eq!(s_code, 3, "`stage status` with a squatter on its port:\n{s_out}{s_err}");
    assert!(s_out.contains(&who), "{s_out}");
}

/// The stage's forwarder (as its systemd unit starts it after a reboot) listened on
/// 127.0.0.1 only: another user could bind [::1] on the same port, and a client that
/// resolves `localhost` to ::1 reached them. It holds both loopback addresses now;
/// `stage env` then hands out the connection, asking libpq for SCRAM.
#[test]
fn the_stage_forwarder_leaves_no_loopback_address_of_its_ports_to_another_user() {
    if !root_or_skip("the_stage_forwarder_leaves_no_loopback_address_of_its_ports_to_another_user") {
        return;
    }
    attacker_is_unprivileged();
    let sb = Sandbox::new();
    let (port, password, dir) = stage_with_its_forwarder_down(&sb);
    let mut forwarder = sb
        .cmd()
        .args(["stage", "forward"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("forwarder.json").exists() {
        assert!(forwarder.try_wait().unwrap().is_none(), "the forwarder exited");
        assert!(Instant::now() < deadline, "the forwarder did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let squatted = squat(&sb, "::1", port);
    let (code, out, err) = stage_cmd(&sb, &["env", "staging"]);
    let (s_code, s_out, s_err) = stage_cmd(&sb, &["status", "staging"]);
    let squatted = squatted.map(|mut s| {
        let _ = s.kill();
        let _ = s.wait();
    });
    let _ =
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(forwarder.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = forwarder.wait();
    assert!(
        squatted.is_err(),
        "the user {ATTACKER} bound [::1]:{port} while the stage's forwarder served 127.0.0.1:{port} (`stage env` \
         exited {code}):\n{out}{err}"
    );
    assert_eq!(code, 0, "{err}");
    let vars: BTreeMap<String, String> = exported(&out).into_iter().collect();
    assert_eq!(vars.get("PGREQUIREAUTH").map(String::as_str), Some("scram-sha-256"), "{out}");
    assert_eq!(vars.get("PGPASSWORD").map(String::as_str), Some(password), "{out}");
    assert_eq!(s_code, 0, "{s_out}{s_err}");
}
