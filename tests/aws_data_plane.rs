//! The AWS data plane on the fault-injecting fake cloud (virtual time), where moto
//! cannot go: its console output is fixed text. Instances whose user-data ends with
//! the bootstrap marker are watched through `GetConsoleOutput`; a bootstrap that fails
//! ends the run within one console poll, with its output's tail.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rehearse::description::{self, DestroyPolicy};
use rehearse::engine::events::{Event, Reporter};
use rehearse::engine::lifecycle::{self, Options};
use rehearse::providers::aws::{self, AwsProvider};
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_cloud::{FakeCloud, Faults};
use tokio::time::Instant;

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
        run_id: run_id.into(),
        release: "v2".into(),
        destroy: DestroyPolicy::Always,
        cold: false,
        up_only: false,
        state_root: dir.join("state"),
        work_root: dir.join("work"),
        run_as: None,
        exit_code: rehearse::commands::exit_code,
        name: None,
        shared: None,
        stage: None,
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
