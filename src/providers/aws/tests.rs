use super::*;
use crate::testkit::fake_cloud::{self as fake, FakeCloud};

type P = AwsProvider<FakeCloud>;
const RUN: &str = "r-20261125-193606-4d81b4";

fn valid_rds_id(id: &str) -> bool {
    id.len() <= 63
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.contains("--")
        && !id.ends_with('-')
}

#[test]
fn rds_identifiers_are_valid_and_never_shared_by_two_names() {
    assert_eq!(P::rds_id(RUN, "db"), "rh-202611251936064d81b4-db");
    let long = "a".repeat(32);
    let names = ["orders_db", "orders-db", "a__b", "a-b", &long, &format!("{long}-cluster")];
    let ids: Vec<String> = names.iter().map(|n| P::rds_id(RUN, n)).collect();
    for (n, id) in names.iter().zip(&ids) {
        assert!(valid_rds_id(id), "{n} → {id}");
    }
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

fn meta(run_id: &str) -> RunMeta {
    RunMeta::sample(run_id, "aws", None)
}

fn instance_entry(id: &str, handle: Option<&str>) -> Entry {
    Entry {
        id: id.into(),
        kind: Kind::AwsInstance,
        handle: handle.map(|h| json!({ "instance_id": h }).into()),
        key: None,
        deleted: false,
        intent_at: None,
    }
}

/// A run stopped while `RunInstances` calls were in flight: the journal has their
/// intents, but no ids. Teardown's batch path looks for them as patiently as the
/// single path: an instance that becomes visible only seconds later is found and
/// terminated, not journaled as never created.
#[tokio::test(start_paused = true)]
async fn the_batch_teardown_waits_for_instances_without_an_id_to_become_visible() {
    let cloud = fake::FakeCloud::new(9, fake::Faults { invisible_for: Duration::from_secs(8), ..fake::Faults::none() });
    let tags = |res: &str| {
        vec![Tag { key: TAG_RUN.into(), value: RUN.into() }, Tag { key: TAG_RESOURCE.into(), value: res.into() }]
    };
    let known = cloud.run_instances(&fake::tests::one_instance("t0", tags("service.web.0"))).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Just launched: invisible to describes for a while.
    cloud.run_instances(&fake::tests::one_instance("t1", tags("service.web.1"))).await.unwrap();
    let provider = P::new(cloud.clone(), POLL_FIRST, POLL_MAX);
    let entries = [instance_entry("service.web.0", Some(&known)), instance_entry("service.web.1", None)];
    let results = provider.destroy_many(&entries.iter().collect::<Vec<_>>(), &meta(RUN)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert!(cloud.leftovers().is_empty(), "left running: {:?}", cloud.leftovers());
}

#[test]
fn sweep_wants_rehearses_own_names_not_just_its_tags() {
    let tags = |res: &str| {
        vec![Tag { key: TAG_RUN.into(), value: RUN.into() }, Tag { key: TAG_RESOURCE.into(), value: res.into() }]
    };
    let t = |kind: Kind, name: String, res: &str, protected: bool| Tagged {
        kind,
        id: "x".into(),
        name,
        protected,
        arn: None,
        tags: tags(res),
    };
    let db = P::rds_id(RUN, "db");
    assert!(t(Kind::AwsDbInstance, db.clone(), "database.db", false).evidence().is_ok());
    assert!(t(Kind::AwsDbInstance, db.clone(), "database.db", true).evidence().is_err(), "protected");
    assert!(t(Kind::AwsDbInstance, "shop-prod-db".into(), "database.db", false).evidence().is_err());
    let cluster = P::rds_id(RUN, "db-cluster");
    assert!(t(Kind::AwsDbCluster, cluster, "database.db.cluster", false).evidence().is_ok());
    let token = P::client_token(RUN, "service.web.0");
    assert!(t(Kind::AwsInstance, token, "service.web.0", false).evidence().is_ok());
    assert!(t(Kind::AwsInstance, String::new(), "service.web.0", false).evidence().is_err(), "no token");
    let group = P::group_name(RUN);
    assert!(t(Kind::AwsSecurityGroup, group.clone(), "network.security-group", false).evidence().is_ok());
    assert!(t(Kind::AwsSecurityGroup, "prod-web".into(), "network.security-group", false).evidence().is_err());
    // A run id that is not rehearse's shape is no evidence either.
    let mut odd = t(Kind::AwsSecurityGroup, group, "network.security-group", false);
    odd.tags[0].value = "prod".into();
    assert!(odd.evidence().is_err());
}

#[test]
fn client_tokens_fit_and_tell_instances_apart() {
    let long = "payments-reconciliation-worker01";
    let (a, b) =
        (P::client_token(RUN, &format!("service.{long}.0")), P::client_token(RUN, &format!("service.{long}.1")));
    assert!(a.len() <= 64 && b.len() <= 64 && a != b, "{a} {b}");
    assert_eq!(P::client_token(RUN, "service.web.0"), format!("{RUN}-service.web.0"));
}

/// The run's workspace reaches teardown in a batch of its own: it is removed from this
/// machine at once, not looked for by its tags in the cloud (a 20 s wait) and left.
#[tokio::test(start_paused = true)]
async fn the_workspace_is_removed_locally_in_a_batch_without_a_cloud_lookup() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("runs").join(RUN).join("workspace");
    std::fs::create_dir_all(dir.join("suite")).unwrap();
    let cloud = fake::FakeCloud::new(3, fake::Faults::none());
    let provider = P::new(cloud, POLL_FIRST, POLL_MAX).with_work_root(root.path());
    let entry = Entry {
        id: "workspace".into(),
        kind: Kind::Workspace,
        handle: Some(json!({ "dir": dir.to_str().unwrap() }).into()),
        key: None,
        deleted: false,
        intent_at: None,
    };
    let started = Instant::now();
    let results = provider.destroy_many(&[&entry], &meta(RUN)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert!(!dir.exists(), "the workspace was left at {}", dir.display());
}
