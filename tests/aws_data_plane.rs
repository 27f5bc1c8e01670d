//! The AWS data plane on the fault-injecting fake cloud (virtual time), where moto
//! cannot go: its console output is fixed text. Instances whose user-data ends with
//! the bootstrap marker are watched through `GetConsoleOutput`; a bootstrap that fails
//! ends the run within one console poll, with its output's tail.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::events::{Event, Reporter};
use rehearse::engine::lifecycle::{self, Options};
use rehearse::providers::aws::{self, AwsProvider};
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_cloud::{FakeCloud, Faults};
use tokio::time::Instant;

use crate::common;
use common::release_archive;

/// environments/shop-aws.yaml on the fake, waiting for each instance's bootstrap
/// marker (no health checks: the fake's addresses are not real).
fn description(dir: &Path) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-aws.yaml")).unwrap();
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "")
        .replace("    bootstrap_timeout: 0s\n", "");
    let path = dir.join("shop-aws.yaml");
    std::fs::write(&path, text).unwrap();
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

fn options(dir: &Path, run_id: &str) -> Options {
    Options {
        up_only: false,
        state_root: dir.join("state"),
        ..rehearse::testkit::pool::options(run_id, dir, DestroyPolicy::Always, None)
    }
}

/// Every step that finished, with the virtual instant it did.
#[derive(Default)]
struct Finished(Mutex<Vec<(Instant, String, String, bool)>>);

impl Reporter for Finished {
    fn event(&self, ev: Event) {
        if let Event::Finished { resource, action, ok, .. } = ev {
            self.0.lock().unwrap().push((Instant::now(), resource, action, ok));
        }
    }
}

/// Every event on stderr with its virtual time, when REHEARSE_DEBUG is set.
struct Printed;

impl Reporter for Printed {
    fn event(&self, ev: Event) {
        if std::env::var("REHEARSE_DEBUG").is_ok() {
            eprintln!("{:?} {ev:?}", tokio::time::Instant::now());
        }
    }
}

#[test]
fn a_failing_bootstrap_ends_the_run_within_one_console_poll_with_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = description(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(14, Faults::none());
        cloud.fail_bootstrap(
            "service.worker.",
            7,
            &["starting the worker", "worker: cannot connect to the queue `orders`: connection refused"],
        );
        let provider =
            AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).with_work_root(&dir.path().join("work"));
        let seen = Arc::new(Finished::default());
        let outcome = lifecycle::run(&provider, &loaded, &options(dir.path(), "r-boot"), &*seen, &Signals::none())
            .await
            .expect("the run starts");
        let report = &outcome.report;
        assert_eq!(report.exit_code, 1, "a failed bootstrap is the release's failure: {:?}", report.failure);
        let failure = report.failure.as_ref().expect("a failure");
        assert_eq!(failure.resource.as_deref(), Some("service.worker.0"), "{failure:?}");
        assert!(failure.message.contains("exit 7") && failure.message.contains("connection refused"), "{failure:?}");
        assert!(failure.log_tail.iter().any(|l| l.contains("starting the worker")), "{failure:?}");
        assert!(failure.log_tail.iter().all(|l| !l.contains("rehearse-bootstrap")), "the marker is not output");

        // Reported within one console poll of the marker appearing.
        let worker = cloud
            .instances_by_resource()
            .into_iter()
            .find(|(res, _)| res == "service.worker.0")
            .map(|(_, id)| id)
            .expect("the worker was launched");
        let ended = cloud.bootstrap_ends_at(&worker).unwrap();
        let failed_at = seen
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, res, action, ok)| res == "service.worker.0" && action == "bootstrap" && !ok)
            .map(|(t, ..)| *t)
            .expect("the bootstrap step failed");
        let late = failed_at.duration_since(ended);
        assert!(late <= aws::CONSOLE_POLL, "reported {late:?} after the marker (poll {:?})", aws::CONSOLE_POLL);
        // The web instances bootstrapped, and were not what failed.
        assert!(seen
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, r, a, ok)| r.starts_with("service.web.") && a == "bootstrap" && *ok));
        // The user-data had no credentials, and a presigned link for the artifact.
        let (user_data, profile) = cloud.launched(&worker).unwrap();
        let user_data = user_data.unwrap();
        assert!(user_data.contains("X-Amz-Signature=") && profile.is_none(), "{user_data}");
        // Torn down: nothing left, nothing of production touched.
        assert!(cloud.leftovers().is_empty(), "left: {:?}", cloud.leftovers());
        assert!(cloud.violations().is_empty(), "{:?}", cloud.violations());
    });
}

/// Every event, with the virtual instant it came.
#[derive(Default)]
struct Everything(Mutex<Vec<(Instant, Event)>>);

impl Reporter for Everything {
    fn event(&self, ev: Event) {
        self.0.lock().unwrap().push((Instant::now(), ev));
    }
}

/// Regression: a run against an emulator (whose instances never write a console)
/// waited ten minutes for each bootstrap marker and, without a terminal, said nothing.
/// Every wait that lasts beyond a few seconds now says once what it waits for and until
/// when; the fake's bootstraps take 5 to 40 s.
#[test]
fn a_wait_of_more_than_a_few_seconds_says_once_what_it_waits_for_and_until_when() {
    use rehearse::engine::events::WAIT_NOTICE;
    let dir = tempfile::tempdir().unwrap();
    let loaded = description(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(3, Faults::none());
        let provider =
            AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).with_work_root(&dir.path().join("work"));
        let seen = Arc::new(Everything::default());
        let wall = chrono::Utc::now();
        // Built and kept (`up`: the fake's description has no suites), then torn down.
        let opts = Options { up_only: true, destroy: DestroyPolicy::Always, ..options(dir.path(), "r-waits") };
        let outcome =
            lifecycle::run(&provider, &loaded, &opts, &*seen, &Signals::none()).await.expect("the run starts");
        assert_eq!(outcome.report.exit_code, 0, "{:?}", outcome.report.reason);
        let events = seen.0.lock().unwrap();
        let mut long = 0;
        for service in ["service.web.0", "service.web.1", "service.worker.0"] {
            let when = |action: &str, finished: bool| {
                events.iter().find_map(|(t, e)| match e {
                    Event::Started { resource, action: a, .. } if !finished && resource == service && a == action => {
                        Some(*t)
                    }
                    Event::Finished { resource, action: a, .. } if finished && resource == service && a == action => {
                        Some(*t)
                    }
                    _ => None,
                })
            };
            let (start, end) = (when("bootstrap", false).unwrap(), when("bootstrap", true).unwrap());
            let said: Vec<_> = events
                .iter()
                .filter_map(|(t, e)| match e {
                    Event::Waiting { resource, what, until } if resource == service && what.contains("bootstrap") => {
                        Some((*t, what.clone(), *until))
                    }
                    _ => None,
                })
                .collect();
            if end.duration_since(start) > WAIT_NOTICE {
                long += 1;
                assert_eq!(said.len(), 1, "{service}: a bootstrap of {:?} is said once: {said:?}", end - start);
                let (t, what, until) = &said[0];
                assert_eq!(t.duration_since(start), WAIT_NOTICE, "{service}: said after {WAIT_NOTICE:?}");
                assert!(what.contains("rehearse-bootstrap: exit=N") && what.contains("bootstrap_timeout"), "{what}");
                // Until the bootstrap timeout (10 min by default) from the wait's start.
                let bound = (*until - wall).num_seconds();
                assert!((590..=610).contains(&bound), "{service}: until {until} is {bound} s after the start");
            } else {
                assert!(said.is_empty(), "{service}: a bootstrap of {:?} is not worth a line: {said:?}", end - start);
            }
        }
        assert!(long > 0, "seed 3 has a bootstrap longer than {WAIT_NOTICE:?}");
        assert!(cloud.leftovers().is_empty(), "left: {:?}", cloud.leftovers());
    });
}

/// Attack 8 of issue 23: what an instance's console says (GetConsoleOutput: the boot's
/// and the user-data's own output) reached the report and the terminal with its escape
/// sequences — a title, the clipboard (OSC 52), a screen clear.
#[test]
fn a_console_tail_with_escape_sequences_reaches_the_report_printable() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = description(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(15, Faults::none());
        cloud.fail_bootstrap(
            "service.worker.",
            7,
            &[
                "starting \u{1b}]0;pwned\u{7}the worker\u{1b}]52;c;cm0gLXJmIH4=\u{7}",
                "\u{1b}[2J\u{1b}[Hworker: \u{9b}31mcannot connect\u{9d}8;;http://x\u{9c} to the queue\rFAKE",
            ],
        );
        let provider =
            AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).with_work_root(&dir.path().join("work"));
        let outcome = lifecycle::run(&provider, &loaded, &options(dir.path(), "r-boot"), &Printed, &Signals::none())
            .await
            .expect("the run starts");
        let failure = outcome.report.failure.clone().expect("a failure");
        let inert = |s: &str| !s.chars().any(|c| c.is_control());
        assert!(inert(&failure.message), "{:?}", failure.message);
        assert!(failure.message.contains("worker: cannot connect to the queue FAKE"), "{:?}", failure.message);
        assert!(failure.log_tail.iter().all(|l| inert(l)), "{:?}", failure.log_tail);
        assert!(failure.log_tail.iter().any(|l| l.ends_with(": starting the worker")), "{:?}", failure.log_tail);
        let at = |f: &str| dir.path().join(f);
        let files = rehearse::report::ReportFiles {
            json: at("report.json"),
            junit: at("junit.xml"),
            markdown: at("summary.md"),
            html: at("report.html"),
        };
        let summary = rehearse::report::terminal_summary(&outcome.report, &files, false);
        assert!(!summary.chars().any(|c| c.is_control() && c != '\n'), "{summary:?}");
    });
}

/// A throwaway PostgreSQL server on 127.0.0.1 (trust authentication, user
/// `postgres`, database `shop`): the "RDS copy" the fake cloud's restores point at, so
/// that masking, the install and the suites, run by the fake's SSM on this machine,
/// really reach a database. As root it runs as `nobody` (PostgreSQL refuses root).
struct Postgres {
    dir: tempfile::TempDir,
    bindir: std::path::PathBuf,
    port: u16,
}

impl Postgres {
    fn start() -> Postgres {
        use std::process::Command;
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|d| d.join("initdb").is_file())
            .or_else(|| {
                let mut dirs: Vec<_> =
                    std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path().join("bin")).collect();
                dirs.sort();
                dirs.pop()
            })
            .expect("PostgreSQL's server binaries (make test-deps installs them)");
        let dir = tempfile::Builder::new().prefix("rehearse-ssm-pg.").tempdir_in("/tmp").unwrap();
        let root = nix::unistd::geteuid().is_root();
        let as_db = |cmd: &mut Command| {
            if root {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=nobody", "--regid=nogroup", "--init-groups"])
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                c
            } else {
                let mut c = Command::new(cmd.get_program());
                c.args(cmd.get_args());
                c
            }
        };
        if root {
            Command::new("chown").args(["nobody:nogroup"]).arg(dir.path()).status().unwrap();
        }
        let data = dir.path().join("data");
        let out = as_db(Command::new(bindir.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]))
        .current_dir(dir.path())
        .output()
        .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = off\n",
            dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let out = as_db(
            Command::new(bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "-t", "60", "start"]),
        )
        .current_dir(dir.path())
        .output()
        .unwrap();
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        let pg = Postgres { dir, bindir, port };
        pg.psql("CREATE DATABASE shop", "postgres");
        pg
    }

    /// Runs `sql` in `db`; its output.
    fn psql(&self, sql: &str, db: &str) -> String {
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", db])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env_remove("PGPASSWORD")
            .output()
            .unwrap();
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut c = std::process::Command::new(if nix::unistd::geteuid().is_root() { "setpriv" } else { "sh" });
        if nix::unistd::geteuid().is_root() {
            c.args(["--reuid=nobody", "--regid=nogroup", "--init-groups"]).arg(self.bindir.join("pg_ctl"));
        } else {
            c.arg("-c").arg("exec \"$0\" \"$@\"").arg(self.bindir.join("pg_ctl"));
        }
        let _ = c
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .current_dir(self.dir.path())
            .output();
    }
}

/// The shop on the fake with `runner: ssm`: masking (real SQL), an install on `web`,
/// and a suite that checks the copy and writes a JUnit file of
/// `cases` test cases; all in `dir/desc`, which the runner gets.
fn ssm_description(dir: &Path, cases: u32) -> description::Loaded {
    ssm_description_at(dir, cases, "=")
}

/// As [`ssm_description`], the suite's checks compared with `cmp` (`-ge` when several
/// runs share one server).
fn ssm_description_at(dir: &Path, cases: u32, cmp: &str) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-aws.yaml")).unwrap();
    let suites = "suites:\n  copy:\n    command: sh check.sh\n    timeout: 5m\n    uses: [web, worker]\n    results:\n      junit: copy.xml\n    env:\n      SHOP_URL: \"{{ services.web.url }}\"\n";
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, suites)
        .replace("    port: 8080\n", "    port: 8080\n    install: sh migrate.sh\n")
        .replace("    instance_class: db.t3.medium\n", "    instance_class: db.t3.medium\n    masking: masking.sql\n")
        .replace(
            "\ndestroy: always",
            "\nrunner:\n  ssm:\n    image: ami-0abcdef1234567890\n    instance_profile: rehearse-runner\n    outputs: \"s3://acme-rehearse/runner\"\n\ndestroy: always",
        );
    // The description's directory is what the runner gets (the default bundle).
    let dir = &dir.join("desc");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("masking.sql"),
        "CREATE TABLE IF NOT EXISTS masked (at timestamptz NOT NULL DEFAULT now());\nINSERT INTO masked DEFAULT VALUES;\n",
    )
    .unwrap();
    // The suite: the copy was masked and migrated; then `cases` passing cases, in a
    // JUnit file well beyond SSM's 24,000 inline characters.
    std::fs::write(
        dir.join("check.sh"),
        format!(
            "set -e\n\
             test \"$(psql -X -t -A -c 'SELECT count(*) FROM masked')\" {cmp} 1\n\
             test \"$(psql -X -t -A -c \"SELECT count(*) FROM migrated WHERE release = 'v2'\")\" {cmp} 1\n\
             echo \"checked the copy at $PGHOST:$PGPORT from $(pwd)\"\n\
             {{ echo '<testsuites><testsuite name=\"copy\" tests=\"{cases}\">'\n\
               i=0; while [ $i -lt {cases} ]; do echo \"<testcase classname=\\\"copy.rows\\\" name=\\\"case number $i of the copy checks, named at length to fill the file\\\" time=\\\"0.001\\\"/>\"; i=$((i+1)); done\n\
               echo '</testsuite></testsuites>'; }} > \"$REHEARSE_JUNIT_PATH\"\n"
        ),
    )
    .unwrap();
    let path = dir.join("shop-ssm.yaml");
    std::fs::write(&path, text).unwrap();
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

/// The release v2 in the fake's S3: its migration records itself in the copy.
async fn publish_release(cloud: &FakeCloud) {
    let migrate = "set -e\necho 'applying 0001_migrated.sql'\npsql -X -q -v ON_ERROR_STOP=1 -c \"CREATE TABLE IF NOT EXISTS migrated (release text); INSERT INTO migrated VALUES ('$REHEARSE_RELEASE')\"\n";
    cloud.put_object_now("shop-releases", "shop-v2.tar.gz", release_archive(&[("migrate.sh", migrate)])).await;
}

#[test]
fn runner_ssm_masks_installs_and_runs_suites_inside_the_vpc_with_junit_beyond_24kb() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let loaded = ssm_description(dir.path(), 300);
    if std::env::var("REHEARSE_DEBUG").is_ok() {
        for r in rehearse::plan::build(&loaded, Some("v2"), Some("r-ssm")).unwrap().resources {
            eprintln!("{} {:?} <- {:?}", r.id, r.kind, r.depends_on);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        let cloud = FakeCloud::new(41, Faults::none());
        cloud.serving_links();
        cloud.databases_at("127.0.0.1", pg.port);
        publish_release(&cloud).await;
        let provider =
            AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).with_work_root(&dir.path().join("work"));
        let outcome = lifecycle::run(&provider, &loaded, &options(dir.path(), "r-ssm"), &Printed, &Signals::none())
            .await
            .expect("the run starts");
        let report = &outcome.report;
        assert_eq!(report.exit_code, 0, "{:?}\n{:?}", report.failure, report.suites);
        let suite = report.suites.iter().find(|s| s.name == "copy").expect("the suite ran");
        assert_eq!(suite.tests, 300, "the whole JUnit file came back: {suite:?}");
        // It was far beyond what GetCommandInvocation shows inline.
        let junit = std::fs::read(dir.path().join("state/runs/r-ssm/suites/copy/copy.xml")).unwrap();
        assert!(junit.len() > 24_000, "{} bytes", junit.len());
        let log = std::fs::read_to_string(dir.path().join("state/runs/r-ssm/suites/copy/output.log")).unwrap();
        assert!(log.contains("checked the copy at 127.0.0.1"), "{log}");
        // Masking and the install ran once each, on the runner, against the copy.
        assert_eq!(pg.psql("SELECT count(*) FROM masked", "shop"), "1");
        assert_eq!(pg.psql("SELECT release FROM migrated", "shop"), "v2");
        let install_log = std::fs::read_to_string(dir.path().join("state/runs/r-ssm/logs/install.web.log")).unwrap();
        assert_eq!(install_log.matches("applying 0001_migrated.sql").count(), 1, "{install_log}");
        // Every command went to the runner the run launched, none with a secret in it.
        let sent = cloud.ssm().sent();
        let runner = cloud.instances_by_resource().into_iter().find(|(r, _)| r == "runner").map(|(_, id)| id).unwrap();
        assert!(sent.len() >= 4, "{} commands", sent.len());
        for c in &sent {
            assert_eq!(c.instance_id, runner);
            assert!(c.output_bucket.as_deref() == Some("acme-rehearse") || c.commands == ["true"], "{c:?}");
            let text = c.commands.join("\n");
            assert!(
                !text.contains("PGPASSWORD=") && !text.contains("DATABASE_URL="),
                "a secret in the command: {text}"
            );
        }
        let (_, profile) = cloud.launched(&runner).unwrap();
        assert_eq!(profile.as_deref(), Some("rehearse-runner"));
        // Nothing left: the runner is terminated, the run's keys are gone.
        assert!(cloud.leftovers().is_empty(), "left: {:?}", cloud.leftovers());
        let keys: Vec<String> = cloud.s3_keys().into_iter().filter(|k| k.starts_with("acme-rehearse/")).collect();
        assert!(keys.is_empty(), "the run's keys are left: {keys:?}");
        assert!(cloud.violations().is_empty(), "{:?}", cloud.violations());
    });
}

/// The masking SQL runs with the copy's master password (on a runner, as root there):
/// the local provider refused one that every user of this machine could write, the AWS
/// provider used it. Now both paths — psql from here, and `runner: ssm` — refuse it
/// before anything is restored, and the run ends with nothing left.
#[test]
fn a_masking_sql_anyone_could_write_is_refused_on_aws_before_any_restore() {
    use std::os::unix::fs::PermissionsExt;
    let open = |dir: &Path| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // From here: the shop with its masking in a directory every user may write.
    let here = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-aws.yaml")).unwrap();
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "").replace(
        "    instance_class: db.t3.medium\n",
        "    instance_class: db.t3.medium\n    masking: open/masking.sql\n",
    );
    std::fs::create_dir_all(here.path().join("open")).unwrap();
    std::fs::write(here.path().join("open/masking.sql"), "SELECT 1;\n").unwrap();
    open(&here.path().join("open"));
    std::fs::write(here.path().join("shop.yaml"), text).unwrap();
    let from_here =
        description::load(&here.path().join("shop.yaml"), Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()));
    // On the runner: the description's directory (the bundle, masking.sql in it) open to all.
    let runner = tempfile::tempdir().unwrap();
    let on_runner = ssm_description(runner.path(), 1);
    open(&runner.path().join("desc"));
    for (loaded, dir) in [(&from_here, here.path()), (&on_runner, runner.path())] {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let cloud = FakeCloud::new(16, Faults::none());
            publish_release(&cloud).await;
            let provider =
                AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).with_work_root(&dir.join("work"));
            let outcome = lifecycle::run(&provider, loaded, &options(dir, "r-mask"), &Printed, &Signals::none())
                .await
                .expect("the run starts");
            let failure = outcome.report.failure.clone().expect("a failure");
            assert_eq!(outcome.report.exit_code, 3, "{failure:?}");
            assert!(
                failure.message.contains("the masking SQL cannot be trusted")
                    && failure.message.contains("writable by every user of this machine"),
                "{failure:?}"
            );
            assert!(cloud.restores().is_empty(), "a copy was restored: {:?}", cloud.restores());
            assert!(cloud.ssm().sent().iter().all(|c| !c.commands.join("\n").contains("masking")), "masking was sent");
            assert!(cloud.leftovers().is_empty(), "left: {:?}", cloud.leftovers());
        });
    }
}

/// Seeded runs with `runner: ssm` under the fake's faults (40 in `make test-full`, 10 in
/// `make test`: `common::seeds`), killed while SSM commands
/// run (a random while after the k-th command was sent), then torn down from their
/// journal as `rehearse down` does: the runner, the instances, the copy and the run's
/// keys in the outputs bucket are gone, and nothing untagged was touched.
#[test]
fn seeded_kills_during_ssm_commands_leave_nothing_runner_and_keys_included() {
    use rehearse::engine::journal::Journal;
    use rehearse::engine::teardown;
    use rehearse::sys::timing::Clock;
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let loaded = ssm_description_at(dir.path(), 20, "-ge");
    let seeds = common::seeds(1..41);
    let n = seeds.len();
    let (mut killed, mut commands) = (0, 0);
    for seed in seeds {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let state = dir.path().join(format!("seed-{seed}"));
        let run_id = format!("r-20261127-000000-{seed:06x}");
        let result: Result<bool, String> = rt.block_on(async {
            let cloud =
                FakeCloud::new(seed, Faults { outage: 0.0, capacity: 0.0, failed_restore: 0.0, ..Faults::chaos() });
            cloud.serving_links();
            cloud.databases_at("127.0.0.1", pg.port);
            publish_release(&cloud).await;
            let provider = AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX)
                .seeded(seed)
                .with_work_root(&state.join("work"));
            let opts =
                Options { state_root: state.join("state"), work_root: state.join("work"), ..options(&state, &run_id) };
            // Killed after the k-th command, 0-19 s (virtual) into what follows.
            // A run sends four: the runner's probe, masking, the install, the suite.
            let k = 1 + (seed % 4) as usize;
            let after = Duration::from_secs(seed.wrapping_mul(2_654_435_761) % 20);
            let killer = async {
                while cloud.ssm().sent().len() < k {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::time::sleep(after).await;
            };
            let signals = Signals::none();
            let run = lifecycle::run(&provider, &loaded, &opts, &Printed, &signals);
            let finished = tokio::select! {
                biased;
                o = run => Some(o),
                _ = killer => None,
            };
            drop(provider);
            if let Some(o) = &finished {
                let o = o.as_ref().map_err(|e| format!("the run did not start: {e}"))?;
                // A run may fail on a fault the fake injected (a restore whose answer
                // was lost is not sent again); on nothing else.
                let injected = o.report.failure.as_ref().is_some_and(|f| f.message.contains("injected"));
                if o.report.exit_code != 0 && !injected {
                    return Err(format!("seed {seed}: the run failed: {:?}", o.report.failure));
                }
            }
            // `rehearse down RUN_ID` from the journal, again while it reports leftovers;
            // the runner's bucket from the description, as `down` reads it again (the
            // journal keeps only the run's part of the prefix).
            let journal = Journal::open(&opts.state_root.join("runs").join(&run_id).join("journal.jsonl"))
                .map_err(|e| format!("no journal: {e}"))?;
            let down = AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX)
                .seeded(!seed)
                .with_work_root(&state.join("work"))
                .with_runner_outputs_of(&loaded);
            let mut complete = false;
            for _ in 0..6 {
                let out = teardown::run(&down, &journal, &Printed, &Signals::none(), 1, &Clock::new()).await;
                if out.complete() {
                    complete = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            let left = cloud.leftovers();
            let keys: Vec<String> = cloud
                .s3_keys()
                .into_iter()
                .filter(|k| k.starts_with(&format!("acme-rehearse/runner/{run_id}")))
                .collect();
            if !complete || !left.is_empty() || !keys.is_empty() {
                return Err(format!("seed {seed}: left {left:?} and keys {keys:?} (down complete: {complete})"));
            }
            if !cloud.violations().is_empty() {
                return Err(format!("seed {seed}: {:?}", cloud.violations()));
            }
            commands += cloud.ssm().sent().len();
            Ok(finished.is_none())
        });
        match result {
            Ok(k) => killed += usize::from(k),
            Err(e) => panic!("{e} (rerun with REHEARSE_SEED=N REHEARSE_DEBUG=1)"),
        }
    }
    eprintln!("{killed} runs killed during SSM commands, {commands} commands sent");
    assert!(
        killed * 10 >= n * 7 || std::env::var("REHEARSE_SEED").is_ok(),
        "only {killed} of {n} runs were killed mid-SSM"
    );
}

/// `compare` on AWS: both twins restore the one snapshot (or point in time) pinned
/// before either starts, though a newer snapshot lands while they build. Aurora
/// clones cannot be pinned (RDS takes no RestoreToTime with copy-on-write): both
/// clone the live cluster. Nothing is left.
#[test]
fn twins_restore_the_pinned_snapshot_or_point_in_time_whatever_lands_meanwhile() {
    use rehearse::engine::provider::{Pin, Provider};
    let dir = tempfile::tempdir().unwrap();
    let loaded = description(dir.path());
    let variant = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
    };
    let base = std::fs::read_to_string(dir.path().join("shop-aws.yaml")).unwrap();
    let pitr = variant("pitr.yaml", base.replace("restore: newest-snapshot", "restore: latest-restorable-time"));
    let aurora = variant("aurora.yaml", rehearse::testkit::scenarios::aurora_variant(&base, "shop-prod-aurora"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    rt.block_on(async {
        for (loaded, what) in [(&loaded, "snapshot"), (&pitr, "pitr"), (&aurora, "clone")] {
            let cloud = FakeCloud::new(15, Faults::none());
            // A provider a run, as `compare` has it (a provider remembers its run's ids).
            let provider = || {
                AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).with_work_root(&dir.path().join("work"))
            };
            let (one, two) = (provider(), provider());
            let pins = one.pin_sources(loaded).await.expect("pinned");
            match (pins.get("db"), what) {
                (Some(Pin::Snapshot(id)), "snapshot") => assert_eq!(id, "shop-prod-db-new"),
                (Some(Pin::Time(_)), "pitr") | (None, "clone") => {}
                other => panic!("{what}: {other:?}"),
            }
            // A newer backup lands, and time passes, before the twins restore.
            cloud.take_snapshot("shop-prod-db-newest", "shop-prod-db");
            tokio::time::sleep(Duration::from_secs(90)).await;
            let twin = |id: &str| Options { pins: pins.clone(), ..options(dir.path(), id) };
            let (a, b) = (twin(&format!("r-{what}-a")), twin(&format!("r-{what}-b")));
            let signals = Signals::none();
            let (ra, rb) = tokio::join!(
                lifecycle::run(&one, loaded, &a, &Printed, &signals),
                lifecycle::run(&two, loaded, &b, &Printed, &signals),
            );
            for r in [ra, rb] {
                // Built whole (the variant has no suites, so nothing judged it).
                let r = r.expect("the run starts").report;
                assert!(r.failure.is_none(), "{what}: {:?}", r.failure);
                if let Some(Pin::Snapshot(id)) = pins.get("db") {
                    assert_eq!(&r.backups[0].backup, id, "the report names the pinned snapshot");
                }
            }
            let restores: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> =
                cloud.restores().into_iter().map(|(_, source, at)| (source, at)).collect();
            let expected = match pins.get("db") {
                Some(Pin::Snapshot(id)) => (id.clone(), None),
                Some(Pin::Time(t)) => ("shop-prod-db".to_string(), Some(*t)),
                _ => ("shop-prod-aurora".to_string(), None),
            };
            assert_eq!(restores, vec![expected.clone(), expected], "{what}");
            assert!(cloud.leftovers().is_empty(), "{what}: left {:?}", cloud.leftovers());
            assert!(cloud.violations().is_empty(), "{:?}", cloud.violations());
        }
    });
}
