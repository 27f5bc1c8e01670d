//! Shared helpers for the integration tests: the real binary, isolated state and work
//! directories, and the demo's generated production backups.
#![allow(dead_code)]

pub mod fake;
pub mod http;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rehearse"))
}

/// The rehearse binary with an isolated state and work directory.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("rehearse-test-").tempdir_in("/tmp").unwrap();
        // The work directory must be reachable by the unprivileged cluster user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        std::fs::set_permissions(dir.path().join("work"), std::fs::Permissions::from_mode(0o711)).unwrap();
        Sandbox { dir }
    }

    /// A directory anyone may write (sticky, like /tmp), for markers that the run's
    /// processes leave: as root, rehearse runs the release as an unprivileged user,
    /// which cannot write into the sandbox itself.
    pub fn shared(&self) -> PathBuf {
        let d = self.dir.path().join("shared");
        if !d.exists() {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        d
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.current_dir(root())
            .env("REHEARSE_STATE_DIR", self.state())
            .env("REHEARSE_WORK_DIR", self.work())
            .env("NO_COLOR", "1")
            .env_remove("REHEARSE_LOG")
            .env_remove("REHEARSE_STATE")
            .env_remove("REHEARSE_LEASE")
            .env_remove("REHEARSE_SERVER")
            .env_remove("REHEARSE_TOKEN")
            .env_remove("REHEARSE_HOST");
        c
    }

    /// Run ids in this sandbox's state directory.
    pub fn run_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.state().join("runs"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub fn report_dir(&self, run_id: &str) -> PathBuf {
        self.state().join("runs").join(run_id).join("report")
    }

    pub fn report(&self, run_id: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.report_dir(run_id).join("report.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// A sandbox's copy-on-write generations may be mounted when a test fails half-way:
/// unmounted before its directory goes (their loop devices with them).
impl Drop for Sandbox {
    fn drop(&mut self) {
        for m in mounts_under(self.dir.path()) {
            // Best effort: the directory's removal says what is left.
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

/// Mount points under `dir` (from /proc/self/mountinfo, its octal escapes undone).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let mut out = Vec::new();
            let b = m.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 3 < b.len() {
                    if let Ok(v) = u8::from_str_radix(&m[i + 1..i + 4], 8) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            PathBuf::from(String::from_utf8_lossy(&out).into_owned())
        })
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Generates the demo's production backups once per test process, one process at a
/// time (a lock file in the target directory); not at all when the runner made them before the tests
/// (`make test` does, and sets REHEARSE_DEMO_BACKUPS_MADE): generate.sh rebuilds
/// demo/build/releases, which a run of another test process may be copying.
pub fn demo_backups() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let dir = root().join("demo/backups");
        if std::env::var_os("REHEARSE_DEMO_BACKUPS_MADE").is_some() {
            return dir;
        }
        let lock = std::fs::File::create(Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-backups.lock")).unwrap();
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).unwrap();
        for script in ["generate.sh", "generate-deploy.sh"] {
            let out = Command::new("sh").arg(root().join("demo/backup").join(script)).output().unwrap();
            assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        dir
    })
    .clone()
}

/// PIDs of every process on this machine.
fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc").unwrap().flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
}

/// Processes on this machine whose environment carries REHEARSE_RUN_ID=run_id.
pub fn tagged_processes(run_id: &str) -> Vec<i32> {
    let needle = format!("REHEARSE_RUN_ID={run_id}");
    pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")))
        .collect()
}

/// PostgreSQL servers whose data directory is under `dir`.
pub fn postgres_under(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    pids()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Asserts that nothing of a run is left on this machine.
pub fn assert_nothing_left(sb: &Sandbox, run_id: &str) {
    let procs = tagged_processes(run_id);
    assert!(procs.is_empty(), "processes of {run_id} still alive: {procs:?}");
    let pg = postgres_under(&sb.work());
    assert!(pg.is_empty(), "PostgreSQL still running under {}: {pg:?}", sb.work().display());
    let work = sb.work().join("runs").join(run_id);
    assert!(!work.exists(), "run directory {} still exists", work.display());
    // A copy-on-write generation is mounted only while a copy uses it.
    let mounted = mounts_under(&sb.work());
    assert!(mounted.is_empty(), "still mounted under {}: {mounted:?}", sb.work().display());
}

/// Writes a description into the sandbox's project (`project/environments/NAME`),
/// with `{root}` replaced by the repository's path, so it can reach the demo's releases
/// and backups, which rehearse reads itself.
///
/// The project is laid out as the repository is — `project/demo/suites` and
/// `project/environments/load` are copies of the repository's — inside a directory of
/// mode 0700, as a checkout in a home directory is: the release's user cannot enter it,
/// and the suites reach it only through rehearse's copy of their files (`bundle:`).
pub fn write_description(sb: &Sandbox, name: &str, text: &str) -> PathBuf {
    let project = sb.dir.path().join("project");
    if !project.exists() {
        std::fs::create_dir(&project).unwrap();
        std::fs::set_permissions(&project, std::fs::Permissions::from_mode(0o700)).unwrap();
        for dir in ["demo/suites", "environments/load"] {
            copy_dir(&root().join(dir), &project.join(dir));
        }
    }
    let path = project.join("environments").join(name);
    std::fs::write(&path, text.replace("{root}", &root().display().to_string())).unwrap();
    path
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A description of the repository's (`environments/*.yaml`) as the sandbox's project
/// holds it: what rehearse reads itself (backups, releases, masking) from the
/// repository, the suites (`../demo/suites`) from the project's copy.
pub fn from_repository(text: &str) -> String {
    text.replace("../demo/suites", "\u{0}").replace("../demo/", "{root}/demo/").replace('\u{0}', "../demo/suites")
}

/// A description in the sandbox built from the demo, with the given service install
/// command, service command and suites section.
pub fn custom_description(sb: &Sandbox, install: &str, command: &str, suites: &str) -> PathBuf {
    demo_backups();
    let text = format!(
        r#"name: custom
provider: local
owner: tests@example.com
release:
  version: v2
  artifact: "{{root}}/demo/build/releases/{{{{ release.version }}}}"
databases:
  db:
    name: shop
    source:
      backup_dir: "{{root}}/demo/backups"
services:
  web:
    depends_on: [db]
    install: "{install}"
    command: "{command}"
    env:
      DATABASE_URL: "{{{{ databases.db.url }}}}"
    health:
      path: /health
      timeout: 30s
suites:
{suites}
"#
    );
    write_description(sb, "custom.yaml", &text)
}

/// A release archive (`shop/PATH` for each of `files`, mode 0755), gzipped: what an
/// artifact in S3 holds in the AWS tests.
pub fn release_archive(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, text) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(text.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, format!("shop/{path}"), text.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// A small seeded generator for a test's choices (SplitMix64): a seed reproduces them.
pub struct Draw(pub u64);

impl Draw {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Up to `max` milliseconds.
    pub fn millis(&mut self, max: u64) -> std::time::Duration {
        std::time::Duration::from_millis(self.below(max))
    }
}

/// The seeds of a seeded test: `REHEARSE_SEED=N` runs that one (to reproduce a failure);
/// `make test-full` (REHEARSE_TEST_FULL=1) runs all of `full`, `make test` its first
/// quarter (at least one), so that a clean-clone run stays within its minutes. The first
/// quarter, not every fourth: a test may vary what it builds by the seed's parity.
pub fn seeds(full: std::ops::Range<u64>) -> Vec<u64> {
    if let Ok(s) = std::env::var("REHEARSE_SEED") {
        return vec![s.parse().expect("REHEARSE_SEED is a number")];
    }
    if std::env::var_os("REHEARSE_TEST_FULL").is_some() {
        return full.collect();
    }
    let quarter = ((full.end - full.start) / 4).max(1);
    (full.start..full.start + quarter).collect()
}

/// Waits (up to `secs`) until `ok`; fails naming `what`.
pub fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "{what}: never");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A secret's file in the sandbox, as an operator writes one: mode 0600.
pub fn secret_file(sb: &Sandbox, name: &str, bytes: &[u8]) -> PathBuf {
    let p = sb.dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}
