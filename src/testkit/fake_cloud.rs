//! A fault-injecting fake of EC2 and RDS behind [`Ec2Api`] and [`RdsApi`], for what the
//! emulator cannot do: slow provisioning on tokio's (pausable) clock, eventual
//! consistency, throttling, 5xx, lost responses, capacity errors, dependency
//! violations and failed restores — each by seeded random choice, so a failing
//! scenario is reproducible from its seed — and, on demand, the account's request rate
//! limits (token buckets, as EC2 and RDS document them), shared by every caller. It
//! records every call, and flags any mutating call on a resource that does not carry a
//! `rehearse:run-id` tag.
//!
//! The services' calls are in [`ec2`] and [`rds`]; this file is the one state and fault
//! model they share (about 780 lines with its tests: the faults, the resource table,
//! the clock's view of each resource, the audit), kept whole because every fault is
//! drawn from one seeded sequence and every call passes the same `enter`/`leave`:
//! split, the parts would share one private state through a wider interface than the
//! one the services see.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::providers::aws::api::*;

/// Probabilities (0..1) of each fault per call, and provisioning times.
#[derive(Clone, Debug)]
pub struct Faults {
    /// A call refused with a throttling error (a burst from elsewhere in the account).
    pub throttle: f64,
    /// A 5xx, half of them before the call did anything, half after it ran.
    pub server_error: f64,
    /// The account's request rate limits: EC2 per action (`RunInstances` 5 tokens,
    /// refilled 2 a second; `TerminateInstances` 100 / 5; other changes 200 / 5;
    /// describes 100 / 20), RDS for the whole service (300 / 12).
    pub rate_limits: bool,
    /// The call was executed but its answer was lost (a timeout).
    pub lost_response: f64,
    /// RunInstances refused with InsufficientInstanceCapacity.
    pub capacity: f64,
    /// The chance that the scenario has one outage: every call throttled for 15–25
    /// minutes (longer than the provider's patience), starting within the first 30.
    pub outage: f64,
    /// A restore that ends in state `failed`.
    pub failed_restore: f64,
    /// A create whose answer comes late (`answer_delay`): the resource exists from the
    /// moment the call arrived, but the caller hears of it only then — an interrupt in
    /// between finds the call in flight.
    pub slow_answer: f64,
    pub answer_delay: (Duration, Duration),
    /// After a lost answer, the next attempt of the same call is refused before it is
    /// sent (connection refused): an attempt that may have run, followed by one that
    /// certainly did not — which must not be taken to mean that nothing was done.
    pub refused_after_lost: f64,
    /// How long a new instance stays invisible to describes.
    pub invisible_for: Duration,
    pub boot: (Duration, Duration),
    pub restore: (Duration, Duration),
    /// An Aurora copy-on-write clone, and an instance in it.
    pub clone: (Duration, Duration),
    pub cluster_instance: (Duration, Duration),
    pub delete: (Duration, Duration),
    /// A DB instance's modification (private, new password, security group): status
    /// `modifying` meanwhile (on RDS, about a minute).
    pub modify: (Duration, Duration),
    /// A DB instance's stop, and its start again: `stopping` / `starting` meanwhile
    /// (on RDS, minutes each).
    pub stop_start: (Duration, Duration),
    /// A game day's reboot of a DB instance or failover of a cluster (`rebooting`,
    /// `failing-over` meanwhile), and an EC2 instance's stop (`stopping`; its start
    /// takes `boot`).
    pub reboot: (Duration, Duration),
}

impl Faults {
    /// Realistic timings and no faults (for the critical-path benchmark).
    pub fn none() -> Faults {
        Faults {
            throttle: 0.0,
            server_error: 0.0,
            rate_limits: false,
            lost_response: 0.0,
            capacity: 0.0,
            outage: 0.0,
            failed_restore: 0.0,
            slow_answer: 0.0,
            answer_delay: (Duration::from_secs(5), Duration::from_secs(60)),
            refused_after_lost: 0.0,
            invisible_for: Duration::from_secs(2),
            boot: (Duration::from_secs(30), Duration::from_secs(90)),
            restore: (Duration::from_secs(600), Duration::from_secs(1500)),
            clone: (Duration::from_secs(240), Duration::from_secs(360)),
            cluster_instance: (Duration::from_secs(300), Duration::from_secs(600)),
            delete: (Duration::from_secs(30), Duration::from_secs(90)),
            // At once here (the scenarios' seeds were drawn so); the pool's tests draw
            // AWS's minute.
            modify: (Duration::ZERO, Duration::ZERO),
            stop_start: (Duration::ZERO, Duration::ZERO),
            reboot: (Duration::from_secs(30), Duration::from_secs(120)),
        }
    }

    /// Every fault with a small probability.
    pub fn chaos() -> Faults {
        Faults {
            throttle: 0.03,
            server_error: 0.03,
            lost_response: 0.03,
            capacity: 0.1,
            outage: 0.2,
            failed_restore: 0.1,
            slow_answer: 0.1,
            refused_after_lost: 0.5,
            ..Faults::none()
        }
    }
}

/// A recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub op: &'static str,
    pub target: String,
    pub mutating: bool,
}

#[derive(Clone, Debug)]
struct Res {
    kind: &'static str,
    tags: Vec<Tag>,
    /// Visible to describes from then on.
    visible_at: Instant,
    /// Ready (running / available) from then on.
    ready_at: Instant,
    /// Being deleted: gone from then on.
    gone_at: Option<Instant>,
    failed: bool,
    private: bool,
    protected: bool,
    snapshot_of: Option<String>,
    created: chrono::DateTime<chrono::Utc>,
    /// A security group's name (unique while it exists).
    name: String,
    /// A DB instance's Aurora cluster.
    cluster: Option<String>,
    /// A database's (or Aurora cluster's) master password was replaced by the run's.
    rotated: bool,
    /// A security group's ingress rules: the TCP ports opened.
    authorized: std::collections::BTreeSet<u16>,
    /// An instance's user-data (decoded) and instance profile.
    user_data: Option<String>,
    profile: Option<String>,
    /// Where a restored database answers (a real server in a test), if not nowhere.
    endpoint: Option<(String, u16)>,
    /// A DB instance is being modified until then.
    modifying_until: Option<Instant>,
    /// A DB instance is stopping until then, stopped after.
    stopped_from: Option<Instant>,
    /// A DB instance (or an EC2 instance) is starting (again) until then.
    starting_until: Option<Instant>,
    /// A DB instance is rebooting, a cluster failing over, an instance rebooting
    /// (still `running` to EC2) until then.
    rebooting_until: Option<Instant>,
}

struct State {
    rng: u64,
    next: u64,
    res: BTreeMap<String, Res>,
    tokens: BTreeMap<String, Vec<String>>,
    calls: Vec<Call>,
    violations: Vec<String>,
    injected: u64,
    /// Calls refused by the rate limits.
    throttled: u64,
    /// The outage window, if the scenario has one.
    outage: Option<(Instant, Instant)>,
    /// Calls (operation, target) whose next attempt is refused before it is sent.
    refuse_next: std::collections::BTreeSet<(&'static str, String)>,
    /// Creates whose answer has not reached their caller yet.
    creates_in_flight: u64,
    /// Token buckets: tokens left and when they were counted, per bucket.
    buckets: BTreeMap<&'static str, (f64, Instant)>,
    /// Every provisioning or deletion time drawn: (kind, "create" | "delete", time).
    drawn: Vec<(&'static str, &'static str, Duration)>,
    /// Instances whose bootstrap fails: (plan id prefix, exit status, last lines).
    failing_boots: Vec<(String, i32, Vec<String>)>,
    /// Where restored databases answer from now on.
    db_endpoint: Option<(String, u16)>,
    /// Every restore and clone asked for: (new id, snapshot or source, point in time).
    restores: Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>)>,
}

/// The fake cloud. Cheap to clone (shared state), so a run and a later `down` see the
/// same world.
#[derive(Clone)]
pub struct FakeCloud {
    faults: Faults,
    state: Arc<Mutex<State>>,
    /// The account's S3 (objects as `BUCKET/KEY`): release artifacts, the SSM runner's
    /// inputs and its commands' output.
    s3: Arc<super::fake_s3::FakeS3>,
    /// SSM Run Command, executing the commands on this machine.
    ssm: Arc<super::fake_ssm::FakeSsm>,
    /// Where presigned links are served over HTTP on 127.0.0.1, once asked for.
    links: Arc<std::sync::OnceLock<String>>,
}

const PROD_TAG: &str = "env";

impl FakeCloud {
    /// A world with production: an instance, its security group, the RDS instance
    /// `shop-prod-db` with two snapshots, and the Aurora cluster `shop-prod-aurora`
    /// with its instance.
    pub fn new(seed: u64, faults: Faults) -> FakeCloud {
        let now = Instant::now();
        let prod = vec![Tag { key: PROD_TAG.into(), value: "production".into() }];
        let mut res = BTreeMap::new();
        let base = Res {
            kind: "",
            tags: prod.clone(),
            visible_at: now,
            ready_at: now,
            gone_at: None,
            failed: false,
            private: true,
            protected: true,
            snapshot_of: None,
            created: chrono::Utc::now() - chrono::Duration::days(2),
            name: String::new(),
            cluster: None,
            rotated: false,
            authorized: [5432].into(),
            user_data: None,
            profile: None,
            endpoint: None,
            modifying_until: None,
            stopped_from: None,
            starting_until: None,
            rebooting_until: None,
        };
        res.insert("i-prod".into(), Res { kind: "instance", ..base.clone() });
        res.insert("sg-prod".into(), Res { kind: "sg", name: "shop-prod".into(), ..base.clone() });
        res.insert("shop-prod-db".into(), Res { kind: "db", ..base.clone() });
        res.insert("shop-prod-aurora".into(), Res { kind: "cluster", ..base.clone() });
        res.insert(
            "shop-prod-aurora-1".into(),
            Res { kind: "db", cluster: Some("shop-prod-aurora".into()), ..base.clone() },
        );
        res.insert(
            "shop-prod-db-old".into(),
            Res { kind: "snapshot", snapshot_of: Some("shop-prod-db".into()), ..base.clone() },
        );
        res.insert(
            "shop-prod-db-new".into(),
            Res {
                kind: "snapshot",
                snapshot_of: Some("shop-prod-db".into()),
                created: chrono::Utc::now() - chrono::Duration::hours(3),
                ..base.clone()
            },
        );
        let mut state = State {
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1),
            next: 1,
            res,
            tokens: BTreeMap::new(),
            calls: Vec::new(),
            violations: Vec::new(),
            injected: 0,
            throttled: 0,
            buckets: BTreeMap::new(),
            outage: None,
            refuse_next: std::collections::BTreeSet::new(),
            creates_in_flight: 0,
            drawn: Vec::new(),
            failing_boots: Vec::new(),
            db_endpoint: None,
            restores: Vec::new(),
        };
        if faults.outage > 0.0 && rand(&mut state) < faults.outage {
            let start = now + Duration::from_secs(1800).mul_f64(rand(&mut state));
            let len = between(&mut state, (Duration::from_secs(900), Duration::from_secs(1500)));
            state.outage = Some((start, start + len));
        }
        let s3 = Arc::new(super::fake_s3::FakeS3::new(seed, super::fake_s3::S3Faults::realistic()));
        let ssm = super::fake_ssm::FakeSsm::new(seed, super::fake_ssm::SsmFaults::realistic()).with_s3(s3.clone());
        FakeCloud { faults, state: Arc::new(Mutex::new(state)), s3, ssm: Arc::new(ssm), links: Arc::default() }
    }
}

fn rand(st: &mut State) -> f64 {
    // SplitMix64: small, seeded, reproducible.
    st.rng = st.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = st.rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

fn between(st: &mut State, (a, b): (Duration, Duration)) -> Duration {
    a + (b.saturating_sub(a)).mul_f64(rand(st))
}

/// One token from the call's bucket, refilled for the time since it was last counted.
fn take_token(st: &mut State, op: &'static str, rds: bool) -> bool {
    let (key, capacity, per_second) = match op {
        _ if rds => ("rds", 300.0, 12.0),
        "RunInstances" => (op, 5.0, 2.0),
        "TerminateInstances" => (op, 100.0, 5.0),
        _ if op.starts_with("Describe") => (op, 100.0, 20.0),
        _ => (op, 200.0, 5.0),
    };
    let now = Instant::now();
    let (tokens, at) = st.buckets.entry(key).or_insert((capacity, now));
    *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(capacity);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

fn fail(code: &str, kind: ErrorKind) -> ApiError {
    ApiError { code: Some(code.into()), message: format!("injected {code}"), kind }
}

impl FakeCloud {
    /// Records a call and draws the faults that happen before it runs.
    fn enter(&self, op: &'static str, target: &str, mutating: bool) -> Result<Call, ApiError> {
        let mut st = self.state.lock().expect("fake lock");
        let now = Instant::now();
        if st.refuse_next.remove(&(op, target.to_string())) {
            // Never sent: not recorded as a call.
            st.injected += 1;
            return Err(ApiError {
                code: None,
                message: "injected: connection refused (the call was not sent)".into(),
                kind: ErrorKind::NotSent,
            });
        }
        st.calls.push(Call { op, target: target.into(), mutating });
        let rds = op.contains("DB") || op == "ListTagsForResource";
        let throttled = fail(if rds { "Throttling" } else { "RequestLimitExceeded" }, ErrorKind::Throttled);
        if st.outage.is_some_and(|(from, to)| from <= now && now < to) {
            st.injected += 1;
            return Err(throttled);
        }
        if self.faults.rate_limits && !take_token(&mut st, op, rds) {
            st.throttled += 1;
            return Err(throttled);
        }
        if rand(&mut st) < self.faults.throttle {
            st.injected += 1;
            return Err(throttled);
        }
        if rand(&mut st) < self.faults.server_error / 2.0 {
            st.injected += 1;
            return Err(fail("InternalError", ErrorKind::ServerError));
        }
        Ok(Call { op, target: target.into(), mutating })
    }

    /// After a mutating call ran: maybe a 5xx comes back anyway, or the answer is lost.
    fn leave<T>(&self, call: &Call, value: T) -> ApiResult<T> {
        let mut st = self.state.lock().expect("fake lock");
        if rand(&mut st) < self.faults.server_error / 2.0 {
            st.injected += 1;
            return Err(fail("InternalError", ErrorKind::ServerError));
        }
        if rand(&mut st) < self.faults.lost_response {
            st.injected += 1;
            if rand(&mut st) < self.faults.refused_after_lost {
                st.refuse_next.insert((call.op, call.target.clone()));
            }
            return Err(ApiError {
                code: None,
                message: "injected timeout (the call ran)".into(),
                kind: ErrorKind::Unreachable,
            });
        }
        Ok(value)
    }

    /// The answer to a create of `ids`: maybe late (the resources exist, invisible to
    /// describes, while the answer is on its way; the call counts as in flight), then
    /// as [`FakeCloud::leave`] has it.
    async fn answer<T>(&self, call: &Call, ids: &[String], value: T) -> ApiResult<T> {
        let delay = {
            let mut st = self.state.lock().expect("fake lock");
            if rand(&mut st) < self.faults.slow_answer {
                st.injected += 1;
                let d = between(&mut st, self.faults.answer_delay);
                let now = Instant::now();
                for id in ids {
                    if let Some(r) = st.res.get_mut(id) {
                        r.visible_at = r.visible_at.max(now + d);
                    }
                }
                Some(d)
            } else {
                None
            }
        };
        if let Some(d) = delay {
            struct InFlight<'a>(&'a FakeCloud);
            impl Drop for InFlight<'_> {
                fn drop(&mut self) {
                    self.0.state.lock().expect("fake lock").creates_in_flight -= 1;
                }
            }
            self.state.lock().expect("fake lock").creates_in_flight += 1;
            let _in_flight = InFlight(self);
            tokio::time::sleep(d).await;
        }
        self.leave(call, value)
    }

    /// The guard's contract, audited: a mutation on an untagged resource is a violation.
    /// Sets `tags` on the resources `ids` (a key they carry is overwritten).
    fn set_tags(&self, ids: &[String], tags: &[Tag]) {
        let mut st = self.state.lock().expect("fake lock");
        for id in ids {
            if let Some(r) = st.res.get_mut(id) {
                for t in tags {
                    r.tags.retain(|x| x.key != t.key);
                    r.tags.push(t.clone());
                }
            }
        }
    }

    fn audit(&self, op: &str, id: &str) {
        let mut st = self.state.lock().expect("fake lock");
        let tagged = st.res.get(id).is_none_or(|r| tag_value(&r.tags, "rehearse:run-id").is_some());
        if !tagged {
            st.violations.push(format!("{op} on untagged {id}"));
        }
    }

    /// Opening the copies' port (5432, as the fake's databases listen) of the run's
    /// group while one of its copies still has production's master password (not yet
    /// rotated) is a violation: anyone allowed in could log in.
    fn audit_ingress(&self, group_id: &str, ports: &[u16]) {
        if !ports.contains(&5432) {
            return;
        }
        let now = Instant::now();
        let mut st = self.state.lock().expect("fake lock");
        let Some(run) = st.res.get(group_id).and_then(|g| tag_value(&g.tags, "rehearse:run-id")).map(str::to_string)
        else {
            return;
        };
        let exposed: Vec<String> = st
            .res
            .iter()
            .filter(|(_, r)| r.kind == "db" && tag_value(&r.tags, "rehearse:run-id") == Some(run.as_str()))
            .filter(|(_, r)| r.gone_at.is_none_or(|g| g > now))
            .filter(|(_, r)| {
                let owner = r.cluster.as_ref().and_then(|c| st.res.get(c));
                !owner.unwrap_or(r).rotated
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in exposed {
            st.violations
                .push(format!("AuthorizeSecurityGroupIngress on {group_id} while {id} has production's password"));
        }
    }

    fn new_id(&self, prefix: &str) -> String {
        let mut st = self.state.lock().expect("fake lock");
        st.next += 1;
        format!("{prefix}-{:017x}", st.next)
    }

    fn create(&self, id: &str, kind: &'static str, tags: &[Tag], ready_in: Duration, invisible: Duration) {
        self.create_named(id, "", kind, tags, ready_in, invisible)
    }

    fn create_named(
        &self,
        id: &str,
        name: &str,
        kind: &'static str,
        tags: &[Tag],
        ready_in: Duration,
        invisible: Duration,
    ) {
        let now = Instant::now();
        let mut st = self.state.lock().expect("fake lock");
        st.res.insert(
            id.into(),
            Res {
                kind,
                tags: tags.to_vec(),
                visible_at: now + invisible,
                ready_at: now + ready_in,
                gone_at: None,
                failed: false,
                private: true,
                protected: false,
                snapshot_of: None,
                created: chrono::Utc::now(),
                name: name.into(),
                cluster: None,
                rotated: false,
                authorized: std::collections::BTreeSet::new(),
                user_data: None,
                profile: None,
                endpoint: None,
                modifying_until: None,
                stopped_from: None,
                starting_until: None,
                rebooting_until: None,
            },
        );
    }

    /// Whether a resource of `kind` matching `is` exists (listed yet or not): what makes
    /// a second create with the same name fail.
    fn exists(&self, kind: &str, is: impl Fn(&str, &Res) -> bool) -> bool {
        let now = Instant::now();
        let st = self.state.lock().expect("fake lock");
        st.res.iter().any(|(id, r)| r.kind == kind && r.gone_at.is_none_or(|g| g > now) && is(id, r))
    }

    /// Starts provisioning `id` of `kind`: draws how long it takes (recorded under
    /// `drawn_as` for the critical path) and, when it `may_fail`, whether it ends
    /// `failed`; `set` adjusts the new resource. The resource as created.
    fn provision(
        &self,
        id: &str,
        (kind, drawn_as): (&'static str, &'static str),
        tags: &[Tag],
        takes: (Duration, Duration),
        may_fail: bool,
        set: impl FnOnce(&mut Res),
    ) -> Res {
        let (took, failed) = {
            let mut st = self.state.lock().expect("fake lock");
            let took = between(&mut st, takes);
            st.drawn.push((drawn_as, "create", took));
            (took, may_fail && rand(&mut st) < self.faults.failed_restore)
        };
        self.create(id, kind, tags, took, Duration::ZERO);
        let mut st = self.state.lock().expect("fake lock");
        let r = st.res.get_mut(id).expect("just created");
        r.failed = failed;
        set(r);
        r.clone()
    }

    fn live(&self, kind: &str) -> Vec<(String, Res)> {
        let now = Instant::now();
        let st = self.state.lock().expect("fake lock");
        st.res
            .iter()
            .filter(|(_, r)| r.kind == kind && r.visible_at <= now && r.gone_at.is_none_or(|g| g > now))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect()
    }

    fn delete(&self, id: &str, kind: &str) -> ApiResult<()> {
        let now = Instant::now();
        let mut st = self.state.lock().expect("fake lock");
        let took = between(&mut st, self.faults.delete);
        if let Some(kind) = st.res.get(id).map(|r| r.kind) {
            st.drawn.push((kind, "delete", took));
        }
        match st.res.get_mut(id) {
            Some(r) if r.kind == kind && r.gone_at.is_none() => {
                if r.protected {
                    return Err(fail("InvalidParameterCombination", ErrorKind::Refused));
                }
                r.gone_at = Some(now + took);
                Ok(())
            }
            // Already being deleted: RDS refuses a second delete by the state.
            Some(r) if r.kind == kind && r.gone_at.is_some_and(|g| g > now) => {
                let code = match kind {
                    "cluster" => "InvalidDBClusterStateFault",
                    "snapshot" => "InvalidDBSnapshotState",
                    _ => "InvalidDBInstanceState",
                };
                Err(fail(code, ErrorKind::InUse))
            }
            _ => Err(fail("NotFound", ErrorKind::NotFound)),
        }
    }

    fn instance(id: &str, r: &Res) -> Instance {
        let now = Instant::now();
        let state = match r.gone_at {
            Some(g) if g <= now => "terminated",
            Some(_) => "shutting-down",
            None if r.stopped_from.is_some_and(|s| s > now) => "stopping",
            None if r.stopped_from.is_some() => "stopped",
            None if r.starting_until.is_some_and(|s| s > now) => "pending",
            None if r.ready_at <= now => "running",
            None => "pending",
        };
        Instance {
            id: id.into(),
            state: state.into(),
            // An address of TEST-NET-1 per instance (its id's hash): generations differ.
            private_ip: Some(format!(
                "192.0.2.{}",
                1 + id.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into())) % 254
            )),
            image_id: None,
            instance_type: None,
            client_token: (!r.name.is_empty()).then(|| r.name.clone()),
            tags: r.tags.clone(),
        }
    }

    /// An RDS instance's or cluster's status.
    fn rds_status(r: &Res) -> &'static str {
        let now = Instant::now();
        match r.gone_at {
            Some(_) => "deleting",
            None if r.failed && r.ready_at <= now => "failed",
            None if r.stopped_from.is_some_and(|s| s > now) => "stopping",
            None if r.stopped_from.is_some() => "stopped",
            None if r.starting_until.is_some_and(|s| s > now) => "starting",
            None if r.kind == "cluster" && r.rebooting_until.is_some_and(|s| s > now) => "failing-over",
            None if r.rebooting_until.is_some_and(|s| s > now) => "rebooting",
            None if r.ready_at <= now && r.modifying_until.is_some_and(|m| m > now) => "modifying",
            None if r.ready_at <= now => "available",
            None => "creating",
        }
    }

    fn db(id: &str, r: &Res) -> DbInstance {
        DbInstance {
            id: id.into(),
            arn: Some(format!("arn:aws:rds:fake:0:db:{id}")),
            status: Self::rds_status(r).into(),
            address: Some(r.endpoint.as_ref().map_or_else(|| format!("{id}.fake.invalid"), |e| e.0.clone())),
            port: Some(r.endpoint.as_ref().map_or(5432, |e| i32::from(e.1))),
            publicly_accessible: !r.private,
            deletion_protection: r.protected,
            master_username: Some("postgres".into()),
            // Production keeps five minutes of log to restore from, like RDS.
            latest_restorable_time: Some(chrono::Utc::now() - chrono::Duration::minutes(5)),
            cluster_id: r.cluster.clone(),
            tags: r.tags.clone(),
        }
    }

    fn cluster(id: &str, r: &Res) -> DbCluster {
        DbCluster {
            id: id.into(),
            arn: Some(format!("arn:aws:rds:fake:0:cluster:{id}")),
            status: Self::rds_status(r).into(),
            endpoint: Some(format!("{id}.cluster.fake.invalid")),
            port: Some(5432),
            engine: Some("aurora-postgresql".into()),
            deletion_protection: r.protected,
            tags: r.tags.clone(),
        }
    }

    /// A resource of `kinds` of the same run as the group `group` that is not gone:
    /// what keeps the group in use.
    fn in_use(&self, group: &str, kinds: &[&str]) -> bool {
        let now = Instant::now();
        let st = self.state.lock().expect("fake lock");
        let Some(run) = st.res.get(group).and_then(|g| tag_value(&g.tags, "rehearse:run-id")) else {
            return false;
        };
        st.res.values().any(|r| {
            kinds.contains(&r.kind)
                && tag_value(&r.tags, "rehearse:run-id") == Some(run)
                && r.gone_at.is_none_or(|g| g > now)
        })
    }
}

mod boot;
mod ec2;
mod inspect;
mod rds;

#[cfg(test)]
pub(crate) mod tests {
    //! The fake's own checks, and a request helper for the provider's unit tests.
    use super::*;

    /// A request for one t3.small with client token `token`.
    pub(crate) fn one_instance(token: &str, tags: Vec<Tag>) -> RunInstances {
        RunInstances {
            image_id: "ami-1".into(),
            instance_type: "t3.small".into(),
            subnet_id: "subnet-1".into(),
            security_group_id: "sg-1".into(),
            user_data: None,
            count: 1,
            tags,
            client_token: token.into(),
            instance_profile: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_audit_flags_a_mutation_on_production() {
        let cloud = FakeCloud::new(1, Faults::none());
        cloud.terminate_instances(&["i-prod".to_string()]).await.unwrap();
        assert_eq!(cloud.violations(), vec!["TerminateInstances on untagged i-prod".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn new_instances_are_invisible_then_boot_on_the_virtual_clock() {
        let cloud = FakeCloud::new(2, Faults::none());
        let req = one_instance("tok", vec![Tag { key: "rehearse:run-id".into(), value: "r-1".into() }]);
        let ids = cloud.run_instances(&req).await.unwrap();
        assert_eq!(cloud.run_instances(&req).await.unwrap(), ids, "the client token makes a retry idempotent");
        assert_eq!(cloud.describe_instances(&ids).await.unwrap_err().kind, ErrorKind::NotFound);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(cloud.describe_instances(&ids).await.unwrap()[0].state, "pending");
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(cloud.describe_instances(&ids).await.unwrap()[0].state, "running");
    }
}
