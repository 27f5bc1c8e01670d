//! [`super::Patient`]'s retries, waits and adoptions against scripted answers.

use super::*;
use crate::testkit::fake_cloud::{FakeCloud, Faults};

fn tags(run: &str, resource: &str) -> Vec<Tag> {
    vec![Tag { key: TAG_RUN.into(), value: run.into() }, Tag { key: TAG_RESOURCE.into(), value: resource.into() }]
}

/// Every other answer a 5xx, half of them after the call ran.
fn flaky() -> Faults {
    Faults { server_error: 1.0, ..Faults::none() }
}

#[tokio::test(start_paused = true)]
async fn creates_that_ran_before_a_5xx_are_adopted_not_duplicated() {
    let cloud = FakeCloud::new(3, flaky());
    let api = Patient::new(cloud.clone()).seeded(3);
    let t = tags("r-1", "network.security-group");
    let sg = api.create_security_group("rehearse-r-1", "d", "vpc-1", &t).await.unwrap();
    let g = api.create_db_subnet_group("rehearse-r-1", "d", &[], &tags("r-1", "network.db-subnet-group")).await;
    assert_eq!(g.unwrap().name, "rehearse-r-1");
    let req = RestoreDb {
        instance_id: "rh-r1-db".into(),
        source: "shop-prod-db-new".into(),
        point_in_time: false,
        restore_time: None,
        instance_class: "db.t3.micro".into(),
        subnet_group: "rehearse-r-1".into(),
        security_group_id: sg.clone(),
        tags: tags("r-1", "database.db"),
    };
    assert_eq!(api.restore_db_instance(&req).await.unwrap().id, "rh-r1-db");
    let mut left = cloud.leftovers();
    left.sort();
    assert_eq!(left, vec!["db rh-r1-db".to_string(), format!("sg {sg}"), "subnet-group rehearse-r-1".to_string()]);
    assert!(api.retried() > 0 && cloud.injected() > 0, "the 5xx answers were absorbed");
}

/// EC2 answering `CreateSecurityGroup` from a script, listing no group.
struct Scripted(Mutex<Vec<ApiResult<String>>>);

fn answer(kind: ErrorKind, code: &str) -> ApiResult<String> {
    Err(ApiError { code: Some(code.into()), message: code.into(), kind })
}

impl Ec2Api for Scripted {
    async fn create_security_group(&self, _: &str, _: &str, _: &str, _: &[Tag]) -> ApiResult<String> {
        let mut script = self.0.lock().unwrap();
        if script.len() > 1 {
            script.remove(0)
        } else {
            script[0].clone()
        }
    }
    async fn security_groups_tagged(&self, _: &str) -> ApiResult<Vec<SecurityGroup>> {
        Ok(Vec::new())
    }
    async fn authorize_ingress(&self, _: &str, _: &[String], _: &[u16]) -> ApiResult<()> {
        unreachable!()
    }
    async fn describe_security_groups(&self, _: &[String]) -> ApiResult<Vec<SecurityGroup>> {
        unreachable!()
    }
    async fn delete_security_group(&self, _: &str) -> ApiResult<()> {
        unreachable!()
    }
    async fn run_instances(&self, _: &RunInstances) -> ApiResult<Vec<String>> {
        unreachable!()
    }
    async fn describe_instances(&self, _: &[String]) -> ApiResult<Vec<Instance>> {
        unreachable!()
    }
    async fn instances_tagged(&self, _: &str) -> ApiResult<Vec<Instance>> {
        unreachable!()
    }
    async fn terminate_instances(&self, _: &[String]) -> ApiResult<()> {
        unreachable!()
    }
    async fn instance_action(&self, _: &[String], _: InstanceAction) -> ApiResult<()> {
        unreachable!()
    }
    async fn create_tags(&self, _: &[String], _: &[Tag]) -> ApiResult<()> {
        unreachable!()
    }
    async fn console_output(&self, _: &str) -> ApiResult<Option<String>> {
        unreachable!()
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_5xx_a_later_refusal_does_not_claim_nothing_was_created() {
    let t = tags("r-1", "network.security-group");
    // A 5xx (the call may have run), then throttled until patience runs out.
    let api = Patient::new(Scripted(Mutex::new(vec![
        answer(ErrorKind::ServerError, "InternalError"),
        answer(ErrorKind::Throttled, "RequestLimitExceeded"),
    ])));
    let e = api.create_security_group("rehearse-r-1", "d", "vpc-1", &t).await.unwrap_err();
    assert_eq!((e.kind, e.code.as_deref()), (ErrorKind::ServerError, Some("RequestLimitExceeded")));
    // "Already exists" for the run's own name, but not listed even after a minute:
    // it may be this call's, so it is not taken as never created either.
    let api = Patient::new(Scripted(Mutex::new(vec![
        answer(ErrorKind::ServerError, "InternalError"),
        answer(ErrorKind::Refused, "InvalidGroup.Duplicate"),
    ])));
    let e = api.create_security_group("rehearse-r-1", "d", "vpc-1", &t).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ServerError, "{e}");
    // Throttled only: certainly not created.
    let api = Patient::new(Scripted(Mutex::new(vec![answer(ErrorKind::Throttled, "RequestLimitExceeded")])));
    let e = api.create_security_group("rehearse-r-1", "d", "vpc-1", &t).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_sent_again_only_where_a_repeat_cannot_harm() {
    let cloud = FakeCloud::new(8, Faults { lost_response: 1.0, ..Faults::none() });
    let api = Patient::new(cloud.clone());
    let req = crate::testkit::fake_cloud::tests::one_instance("r-1-service.web.0", tags("r-1", "service.web.0"));
    // Every answer lost: sent four times in all, one instance (the client token).
    assert_eq!(api.run_instances(&req).await.unwrap_err().kind, ErrorKind::Unreachable);
    assert_eq!(cloud.calls().iter().filter(|c| c.op == "RunInstances").count(), 4);
    assert_eq!(cloud.leftovers().len(), 1, "{:?}", cloud.leftovers());
    // A create without a token is sent once: its answer says nothing more.
    let e = api.create_security_group("rehearse-r-1", "d", "vpc-1", &tags("r-1", "network.security-group")).await;
    assert_eq!(e.unwrap_err().kind, ErrorKind::Unreachable);
    assert_eq!(cloud.calls().iter().filter(|c| c.op == "CreateSecurityGroup").count(), 1);
}

/// The sequence the SDK's own retries used to hide: an attempt whose answer was
/// lost (it ran: the instance exists), then an attempt whose connection was
/// refused. Not "never sent": uncertain, so the step is not journaled as never
/// created and teardown looks for what it made.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_then_a_refused_connection_is_uncertain() {
    let cloud = FakeCloud::new(8, Faults { lost_response: 1.0, refused_after_lost: 1.0, ..Faults::none() });
    let api = Patient::new(cloud.clone());
    let req = crate::testkit::fake_cloud::tests::one_instance("r-1-service.web.0", tags("r-1", "service.web.0"));
    let e = api.run_instances(&req).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::ServerError, "{e}");
    assert!(e.message.contains("may have run"), "{e}");
    assert_eq!(cloud.leftovers().len(), 1, "the first attempt ran");
}

#[tokio::test(start_paused = true)]
async fn what_another_run_created_under_the_same_name_is_never_adopted() {
    let cloud = FakeCloud::new(4, Faults::none());
    cloud
        .create_security_group("rehearse-r-1", "d", "vpc-1", &tags("r-other", "network.security-group"))
        .await
        .unwrap();
    let api = Patient::new(cloud.clone());
    let e = api.create_security_group("rehearse-r-1", "d", "vpc-1", &tags("r-1", "network.security-group")).await;
    assert_eq!(e.unwrap_err().code.as_deref(), Some("InvalidGroup.Duplicate"));
}

#[tokio::test(start_paused = true)]
async fn throttling_is_waited_out_and_a_refusal_is_not() {
    let cloud = FakeCloud::new(5, Faults { throttle: 0.9, ..Faults::none() });
    let api = Patient::new(cloud.clone()).seeded(5);
    let started = Instant::now();
    assert_eq!(api.snapshots_of("shop-prod-db").await.unwrap().len(), 2);
    assert_eq!(cloud.calls().len() as u64, api.retried() + 1);
    assert!(api.retried() > 2, "seed 5 throttles the first calls");
    assert!(started.elapsed() < PATIENCE);
    // Throttled for good: the error surfaces once patience runs out, as throttling.
    let jammed = FakeCloud::new(5, Faults { throttle: 1.0, ..Faults::none() });
    let api = Patient::new(jammed.clone());
    let started = Instant::now();
    assert_eq!(api.snapshots_of("shop-prod-db").await.unwrap_err().kind, ErrorKind::Throttled);
    assert!(started.elapsed() >= PATIENCE && started.elapsed() < PATIENCE + LONGEST);
    // A refusal is the answer: sent once.
    let quiet = FakeCloud::new(6, Faults::none());
    let api = Patient::new(quiet.clone());
    assert!(api.delete_db_subnet_group("no-such-group").await.is_err());
    assert_eq!(quiet.calls().len(), 1);
    assert_eq!(api.retried(), 0);
}
