//! A database's warm pool on the fake cloud, for the pool's tests and its benchmark:
//! `environments/shop-db-aws.yaml` made runnable, a run's options, members made as runs
//! of their own and recorded ready, and a reporter that notes when a copy was ready.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fake_cloud::{FakeCloud, Faults};
use crate::description::{self, DestroyPolicy};
use crate::engine::events::{Event, Reporter, Silent};
use crate::engine::lifecycle::{self, Options};
use crate::engine::pool::{self as members, Member, MemberRun, State};
use crate::engine::provider::{Pin, Provider};
use crate::engine::store::ObjectStore;
use crate::providers::aws::{self, AwsProvider};
use crate::sys::signals::Signals;

/// `environments/shop-db-aws.yaml` without what would reach the (unreachable) hosts.
pub fn shop_db(dir: &Path) -> description::Loaded {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/shop-db-aws.yaml")).expect("the example");
    let text = super::scenarios::unreachable_hosts_variant(&text, root, "");
    let path = dir.join("shop-db-aws.yaml");
    std::fs::write(&path, text).expect("written");
    description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()))
}

/// The fake's realistic timings, with a modification (the new password, the run's
/// group) taking 20 to 60 s as on RDS, and a stopped instance's stop or start 2 to 8
/// minutes (AWS gives no figure for either; minutes is what they take in practice).
pub fn realistic() -> Faults {
    Faults {
        modify: (Duration::from_secs(20), Duration::from_secs(60)),
        stop_start: (Duration::from_secs(120), Duration::from_secs(480)),
        ..Faults::none()
    }
}

/// An `up` of v2 (`member`: one that makes a pool member), its state in `dir`.
pub fn options(run_id: &str, dir: &Path, destroy: DestroyPolicy, member: Option<MemberRun>) -> Options {
    Options {
        run_id: run_id.to_string(),
        release: "v2".into(),
        destroy,
        cold: false,
        up_only: true,
        state_root: dir.join(format!("state-{run_id}")),
        work_root: dir.join("work"),
        run_as: None,
        exit_code: crate::commands::exit_code,
        name: None,
        shared: None,
        stage: None,
        pins: Default::default(),
        change: None,
        member,
        from: None,
        twin: None,
        deploy_twin: false,
        chaos: None,
    }
}

pub fn provider(cloud: &FakeCloud, seed: u64, dir: &Path) -> AwsProvider<FakeCloud> {
    AwsProvider::new(cloud.clone(), aws::POLL_FIRST, aws::POLL_MAX).seeded(seed).with_work_root(&dir.join("work"))
}

/// The virtual time from `start` to the copy's being ready (its `secure` step ended:
/// private, its own password).
pub struct Ready {
    pub start: tokio::time::Instant,
    pub at: Mutex<Option<Duration>>,
}

impl Ready {
    pub fn now() -> Ready {
        Ready { start: tokio::time::Instant::now(), at: Mutex::new(None) }
    }
}

impl Reporter for Ready {
    fn event(&self, ev: Event) {
        if let Event::Finished { resource, action, ok: true, .. } = ev {
            if resource == "database.db" && action == "secure" {
                if let Ok(mut at) = self.at.lock() {
                    *at = Some(self.start.elapsed());
                }
            }
        }
    }
}

/// Members `ids` of `db`'s pool, made at once as runs of their own (kept a day) and
/// recorded ready in `store`; then the fake store's listings are given time to show
/// them (a fill is long done when runs claim). The members' runs.
pub async fn fill(
    cloud: &FakeCloud,
    store: &Arc<dyn ObjectStore>,
    loaded: &description::Loaded,
    dir: &Path,
    ids: &[String],
) -> Vec<lifecycle::Outcome> {
    let Some(Pin::Snapshot(snapshot)) =
        provider(cloud, 0, dir).pin_sources(loaded).await.expect("snapshots").get("db").cloned()
    else {
        panic!("no snapshot of the production database")
    };
    let makes =
        ids.iter().map(|id| {
            let p = provider(cloud, 100, dir);
            let member = MemberRun { database: "db".into(), keep_for: Duration::from_secs(24 * 3600) };
            let opts = options(id, dir, DestroyPolicy::Never, Some(member));
            async move {
                lifecycle::run(&p, loaded, &opts, &Silent, &Signals::none()).await.expect("the member's run starts")
            }
        });
    let made = futures_util::future::join_all(makes).await;
    for (id, m) in ids.iter().zip(&made) {
        assert_eq!(m.report.verdict, crate::report::model::Verdict::Passed, "member {id}");
        let record = Member {
            member: id.clone(),
            instance: AwsProvider::<()>::rds_id(id, "db"),
            snapshot: snapshot.clone(),
            taken_at: None,
            masking: None,
            class: "db.t3.medium".into(),
            made_at: chrono::Utc::now(),
            stopped: false,
            state: State::Ready { ready_at: chrono::Utc::now() },
        };
        let key = members::key(&loaded.desc.name, "db", id);
        members::write(store.as_ref(), &key, &record, None).await.expect("recorded");
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    made
}
