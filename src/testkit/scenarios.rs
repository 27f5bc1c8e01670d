//! The scenario driver: descriptions made runnable against the fake (or the emulator,
//! where no host can be reached), and many rehearsals at once against one fake cloud.

use std::time::Duration;

use tokio::time::Instant;

use super::fake_cloud::FakeCloud;
use crate::providers::aws::{self, AwsProvider};

/// environments/shop-aws.yaml (as `text`, from the repository at `root`) made runnable
/// where its hosts cannot be reached — the fake here, the emulator in the tests: the
/// user-data path made absolute, health checks and masking removed (they would
/// contact the instances and the database), the bootstrap marker not waited for (the
/// emulator's console output is fixed text), and the suites replaced by `suites` (a
/// YAML `suites:` section, or "" for none).
pub fn unreachable_hosts_variant(text: &str, root: &std::path::Path, suites: &str) -> String {
    let mut text = text
        .replace("../templates/", &format!("{}/templates/", root.display()))
        .replace("user-data.sh.tera\n", "user-data.sh.tera\n    bootstrap_timeout: 0s\n")
        .replace("    masking: ../demo/masking.sql\n", "")
        .replace("bundle: [../demo/suites]\n", "")
        .replace("    health:\n      path: /health\n      timeout: 5m\n", "");
    if let (Some(from), Some(to)) = (text.find("\nsuites:\n"), text.find("\ndestroy:")) {
        text.replace_range(from..to, &format!("\n{suites}"));
    }
    text
}

/// The same description restoring its database as an Aurora copy-on-write clone of
/// `cluster` instead of from the newest snapshot of an instance.
pub fn aurora_variant(text: &str, cluster: &str) -> String {
    text.replace("rds_instance: shop-prod-db", &format!("aurora_cluster: {cluster}"))
        .replace("restore: newest-snapshot", "restore: aurora-clone")
        .replace("instance_class: db.t3.medium", "instance_class: db.r6g.large")
}

/// `n` rehearsals of `loaded` (release v2, destroy always) at once against `cloud`, each
/// with its own provider — as `n` `rehearse run` processes would have: each polls on
/// its own — with retry jitter seeded by its index; state under `dir`, run ids from
/// `prefix`. Each run's outcome and virtual duration, and the calls the providers sent
/// again. For the tests and the benchmark.
pub async fn concurrent_runs(
    cloud: &FakeCloud,
    loaded: &crate::description::Loaded,
    n: u64,
    prefix: &str,
    dir: &std::path::Path,
) -> (Vec<(crate::engine::lifecycle::Outcome, Duration)>, u64) {
    use crate::engine::lifecycle::{self, Options};
    let providers: Vec<_> = (0..n)
        .map(|i| {
            AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).seeded(i).with_work_root(&dir.join("work"))
        })
        .collect();
    let start = Instant::now();
    let runs = providers.iter().zip(0..n).map(|(provider, i)| async move {
        // The pool's `up` of v2, run whole here, each run's state apart.
        let run_id = format!("{prefix}-{i:06x}");
        let opts = Options {
            up_only: false,
            state_root: dir.join(format!("run-{i}")),
            ..super::pool::options(&run_id, dir, crate::description::DestroyPolicy::Always, None)
        };
        let signals = crate::sys::signals::Signals::none();
        let events = crate::engine::events::Silent;
        let outcome = lifecycle::run(provider, loaded, &opts, &events, &signals).await.expect("the run starts");
        (outcome, start.elapsed())
    });
    let outcomes = futures_util::future::join_all(runs).await;
    (outcomes, providers.iter().map(AwsProvider::retried).sum())
}
