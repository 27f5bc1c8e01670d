//! Patience with a busy cloud: [`Patient`] wraps any [`Ec2Api`] + [`RdsApi`] and sends a
//! call again when the service asked to slow down (throttling) or failed on its side
//! (a 5xx), with exponential backoff and jitter, for up to ten minutes.
//!
//! The SDK already retries a few times within a second or two; that is not enough when
//! fifty rehearsals start together against an account whose `RunInstances` bucket holds
//! five tokens and refills two a second. Above the SDK, the provider must not turn such
//! an answer into a failed rehearsal.
//!
//! Sending a call again is harmless here: a throttled call was not executed; reads,
//! deletes and modifies are idempotent (a delete that finds nothing counts as done);
//! `RunInstances` carries a client token; and every other create names what it creates,
//! so a repeat of a create that did run (a 5xx after the work was done) fails with
//! "already exists". That resource is then adopted — but only when it carries this
//! run's id and the same plan id in its tags, i.e. when it can only be this call's.
//!
//! The SDK makes one attempt per call (`sdk.rs`), so every repeat is decided here. A
//! lost answer (a timeout: the call may have run) is sent again only where the repeat
//! cannot harm: reads, deletes (a second delete finds the resource gone or going),
//! `RunInstances` (its client token), ingress rules and the modifies — never another
//! create, which instead fails the step and is looked for by teardown. After a 5xx or a
//! lost answer, a later failure is reported as uncertain, never as "nothing was done".

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::api::*;
use super::{TAG_RESOURCE, TAG_RUN};

/// First pause, longest pause and total patience per call.
const FIRST: Duration = Duration::from_millis(250);
const LONGEST: Duration = Duration::from_secs(20);
const PATIENCE: Duration = Duration::from_secs(600);
/// How long a resource reported as existing may stay unlisted.
const ADOPT_PATIENCE: Duration = Duration::from_secs(60);

pub struct Patient<A> {
    pub(crate) inner: A,
    /// SplitMix64 state for the jitter: random per process, so that runs started
    /// together do not retry in lockstep; fixed by [`Patient::seeded`] in tests.
    rng: Mutex<u64>,
    retried: AtomicU64,
}

impl<A> Patient<A> {
    pub(crate) fn new(inner: A) -> Self {
        let mut seed = [0u8; 8];
        // Best effort: without system randomness the jitter is merely the same for every run.
        #[allow(clippy::let_underscore_must_use)]
        let _ = getrandom::fill(&mut seed);
        Patient { inner, rng: Mutex::new(u64::from_le_bytes(seed)), retried: AtomicU64::new(0) }
    }

    /// Jitter drawn from `seed`: the same scenario retries at the same instants.
    pub(crate) fn seeded(self, seed: u64) -> Self {
        Patient { rng: Mutex::new(seed), ..self }
    }

    /// Throttled or failed answers absorbed by sending the call again.
    pub(crate) fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }

    /// The pause before attempt `n + 1`: half of an exponential step, plus up to the
    /// other half at random ("equal jitter": never zero, never in lockstep).
    fn pause(&self, n: u32) -> Duration {
        let step = FIRST.saturating_mul(1 << n.min(16)).min(LONGEST);
        let mut st = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        *st = st.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *st;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let r = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
        step / 2 + (step / 2).mul_f64(r)
    }

    /// A read or a delete: throttling and 5xx are waited out, and a lost answer is sent
    /// again (a repeat reads again, or deletes what is already gone or going).
    async fn retrying<T, F, Fut>(&self, op: &str, call: F) -> ApiResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        self.send(op, true, call).await
    }

    /// A call whose answer was lost on the way back (a timeout: it may have run) is
    /// sent up to three more times — only for calls a repeat cannot harm: reads,
    /// deletes, `RunInstances` with its client token, ingress rules (existing ones
    /// count as added), modifies.
    async fn repeatable<T, F, Fut>(&self, op: &str, call: F) -> ApiResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        self.send(op, true, call).await
    }

    /// A call a repeat would do twice (a reboot): throttling waited out, a lost answer
    /// not sent again.
    async fn once<T, F, Fut>(&self, op: &str, call: F) -> ApiResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        self.send(op, false, call).await
    }

    async fn send<T, F, Fut>(&self, op: &str, repeat_lost: bool, mut call: F) -> ApiResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ApiResult<T>>,
    {
        let until = Instant::now() + PATIENCE;
        let mut n = 0;
        let mut lost = 0;
        // A 5xx or a lost answer may come after the call ran: then a later refusal
        // (throttled until patience ran out, say) does not mean that nothing was done.
        let mut may_have_run = false;
        loop {
            match call().await {
                Err(e) if repeat_lost && e.kind == ErrorKind::Unreachable && lost < 3 => {
                    may_have_run = true;
                    lost += 1;
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("{op}: {e}; sending it again");
                }
                Err(e) if e.is_transient() && Instant::now() < until => {
                    may_have_run |= e.kind == ErrorKind::ServerError;
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    let pause = self.pause(n).min(until.saturating_duration_since(Instant::now()));
                    tracing::debug!("{op}: {e}; sending it again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    n += 1;
                }
                Err(e)
                    if may_have_run
                        && matches!(e.kind, ErrorKind::Throttled | ErrorKind::NotSent | ErrorKind::Refused) =>
                {
                    return Err(uncertain(e))
                }
                other => return other,
            }
        }
    }

    /// A create, sent until it is answered. Told "already exists", `find` gives what
    /// exists under the asked-for name, with its tags: this call's own — an earlier
    /// attempt that ran before its 5xx — is adopted; someone else's leaves the refusal
    /// standing. Nothing listed yet (listings are eventually consistent) is looked for
    /// again for a minute; then the refusal stands as uncertain, so that teardown still
    /// looks for it.
    async fn create_or_adopt<T, C, CFut, F, FFut>(
        &self,
        op: &str,
        asked: &[Tag],
        create: C,
        mut find: F,
    ) -> ApiResult<T>
    where
        C: FnMut() -> CFut,
        CFut: Future<Output = ApiResult<T>>,
        F: FnMut() -> FFut,
        FFut: Future<Output = ApiResult<Option<(T, Vec<Tag>)>>>,
    {
        // A create is not sent again after a lost answer: what it made is found by
        // teardown (its name or tags), not adopted on the strength of a guess.
        let refusal = match self.send(op, false, create).await {
            Err(e) if already_exists(&e) => e,
            other => return other,
        };
        let until = Instant::now() + ADOPT_PATIENCE;
        let mut n = 0;
        loop {
            match find().await {
                Ok(Some((found, tags))) if same_owner(&tags, asked) => return Ok(found),
                Ok(Some(_)) => return Err(refusal),
                Ok(None) if Instant::now() < until => {
                    tokio::time::sleep(self.pause(n)).await;
                    n += 1;
                }
                Ok(None) => return Err(uncertain(refusal)),
                Err(e) => return Err(uncertain(e)),
            }
        }
    }
}

/// An error after which the call may have run: its kind says so (`ServerError`), so a
/// create is not taken as never done.
fn uncertain(e: ApiError) -> ApiError {
    ApiError {
        kind: ErrorKind::ServerError,
        message: format!("{} (an earlier attempt may have run)", e.message),
        code: e.code,
    }
}

/// Created by the same call: the same run and the same plan id.
fn same_owner(found: &[Tag], asked: &[Tag]) -> bool {
    let same = |k: &str| tag_value(found, k).is_some() && tag_value(found, k) == tag_value(asked, k);
    same(TAG_RUN) && same(TAG_RESOURCE)
}

fn already_exists(e: &ApiError) -> bool {
    e.code.as_deref().is_some_and(|c| c.contains("AlreadyExists") || c.ends_with(".Duplicate"))
}

impl<A: Ec2Api> Ec2Api for Patient<A> {
    async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        tags: &[Tag],
    ) -> ApiResult<String> {
        self.create_or_adopt(
            "CreateSecurityGroup",
            tags,
            || self.inner.create_security_group(name, description, vpc_id, tags),
            || async {
                let groups =
                    self.retrying("DescribeSecurityGroups", || self.inner.security_groups_tagged(TAG_RUN)).await?;
                Ok(groups.into_iter().find(|g| g.name == name).map(|g| (g.id, g.tags)))
            },
        )
        .await
    }

    async fn authorize_ingress(&self, group_id: &str, cidrs: &[String], ports: &[u16]) -> ApiResult<()> {
        let call = || self.inner.authorize_ingress(group_id, cidrs, ports);
        match self.repeatable("AuthorizeSecurityGroupIngress", call).await {
            // An earlier attempt added the rules: what was asked for holds.
            Err(e) if already_exists(&e) => Ok(()),
            other => other,
        }
    }

    async fn describe_security_groups(&self, ids: &[String]) -> ApiResult<Vec<SecurityGroup>> {
        self.retrying("DescribeSecurityGroups", || self.inner.describe_security_groups(ids)).await
    }

    async fn security_groups_tagged(&self, tag_key: &str) -> ApiResult<Vec<SecurityGroup>> {
        self.retrying("DescribeSecurityGroups", || self.inner.security_groups_tagged(tag_key)).await
    }

    async fn delete_security_group(&self, id: &str) -> ApiResult<()> {
        self.retrying("DeleteSecurityGroup", || self.inner.delete_security_group(id)).await
    }

    async fn run_instances(&self, req: &RunInstances) -> ApiResult<Vec<String>> {
        // The client token makes a repeat return the instances of the first call.
        self.repeatable("RunInstances", || self.inner.run_instances(req)).await
    }

    async fn describe_instances(&self, ids: &[String]) -> ApiResult<Vec<Instance>> {
        self.retrying("DescribeInstances", || self.inner.describe_instances(ids)).await
    }

    async fn instances_tagged(&self, tag_key: &str) -> ApiResult<Vec<Instance>> {
        self.retrying("DescribeInstances", || self.inner.instances_tagged(tag_key)).await
    }

    async fn terminate_instances(&self, ids: &[String]) -> ApiResult<()> {
        self.retrying("TerminateInstances", || self.inner.terminate_instances(ids)).await
    }

    // Stopping what is stopping, starting what is starting: the same; a reboot sent
    // again is another reboot, which a game day's reboot survives as the first.
    async fn instance_action(&self, ids: &[String], action: InstanceAction) -> ApiResult<()> {
        self.repeatable(action.operation(), || self.inner.instance_action(ids, action)).await
    }

    // Setting a tag twice sets it once: a repeat is harmless.
    async fn create_tags(&self, ids: &[String], tags: &[Tag]) -> ApiResult<()> {
        self.retrying("CreateTags", || self.inner.create_tags(ids, tags)).await
    }

    async fn console_output(&self, id: &str) -> ApiResult<Option<String>> {
        self.retrying("GetConsoleOutput", || self.inner.console_output(id)).await
    }
}

impl<A: S3Api> S3Api for Patient<A> {
    // Signing happens here, with no call: nothing to send again.
    async fn presign_get(&self, bucket: &str, key: &str, expires_in: std::time::Duration) -> ApiResult<String> {
        self.inner.presign_get(bucket, key, expires_in).await
    }

    // A read: a repeat writes the same bytes again (the file is removed first).
    async fn download(&self, bucket: &str, key: &str, dest: &std::path::Path) -> ApiResult<u64> {
        self.retrying("GetObject", || async {
            // Best effort: a part left by an attempt whose answer was lost.
            #[allow(clippy::let_underscore_must_use)]
            let _ = std::fs::remove_file(dest);
            self.inner.download(bucket, key, dest).await
        })
        .await
    }

    // Writing the same bytes again is harmless.
    async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> ApiResult<()> {
        self.retrying("PutObject", || self.inner.put_object(bucket, key, body.clone())).await
    }

    async fn get_object(&self, bucket: &str, key: &str) -> ApiResult<Option<Vec<u8>>> {
        self.retrying("GetObject", || self.inner.get_object(bucket, key)).await
    }

    async fn get_object_tail(&self, bucket: &str, key: &str, max: u64) -> ApiResult<Option<(Vec<u8>, bool)>> {
        self.retrying("GetObject", || self.inner.get_object_tail(bucket, key, max)).await
    }

    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> ApiResult<u64> {
        self.retrying("DeleteObject", || self.inner.delete_prefix(bucket, prefix)).await
    }
}

impl<A: RdsApi> RdsApi for Patient<A> {
    async fn describe_db_instances(&self, ids: &[String]) -> ApiResult<Vec<DbInstance>> {
        self.retrying("DescribeDBInstances", || self.inner.describe_db_instances(ids)).await
    }

    async fn db_instances_all(&self) -> ApiResult<Vec<DbInstance>> {
        self.retrying("DescribeDBInstances", || self.inner.db_instances_all()).await
    }

    async fn snapshots_of(&self, instance_id: &str) -> ApiResult<Vec<Snapshot>> {
        self.retrying("DescribeDBSnapshots", || self.inner.snapshots_of(instance_id)).await
    }

    async fn describe_db_clusters(&self, ids: &[String]) -> ApiResult<Vec<DbCluster>> {
        self.retrying("DescribeDBClusters", || self.inner.describe_db_clusters(ids)).await
    }

    async fn db_clusters_all(&self) -> ApiResult<Vec<DbCluster>> {
        self.retrying("DescribeDBClusters", || self.inner.db_clusters_all()).await
    }

    async fn create_db_subnet_group(
        &self,
        name: &str,
        description: &str,
        subnets: &[String],
        tags: &[Tag],
    ) -> ApiResult<DbSubnetGroup> {
        self.create_or_adopt(
            "CreateDBSubnetGroup",
            tags,
            || self.inner.create_db_subnet_group(name, description, subnets, tags),
            || async {
                let found = self.retrying("ListTagsForResource", || self.inner.db_subnet_group_tags(name)).await?;
                Ok(found.map(|t| (DbSubnetGroup { name: name.to_string(), arn: None }, t)))
            },
        )
        .await
    }

    async fn db_subnet_groups_all(&self) -> ApiResult<Vec<DbSubnetGroup>> {
        self.retrying("DescribeDBSubnetGroups", || self.inner.db_subnet_groups_all()).await
    }

    async fn db_subnet_group_tags(&self, name: &str) -> ApiResult<Option<Vec<Tag>>> {
        self.retrying("ListTagsForResource", || self.inner.db_subnet_group_tags(name)).await
    }

    async fn delete_db_subnet_group(&self, name: &str) -> ApiResult<()> {
        self.retrying("DeleteDBSubnetGroup", || self.inner.delete_db_subnet_group(name)).await
    }

    async fn restore_db_instance(&self, req: &RestoreDb) -> ApiResult<DbInstance> {
        let find = || self.db_instance_named(&req.instance_id);
        self.create_or_adopt("RestoreDBInstance", &req.tags, || self.inner.restore_db_instance(req), find).await
    }

    async fn clone_db_cluster(&self, req: &CloneCluster) -> ApiResult<DbCluster> {
        let find = || async {
            let ids = std::slice::from_ref(&req.cluster_id);
            let found = listed(self.retrying("DescribeDBClusters", || self.inner.describe_db_clusters(ids)).await)?;
            Ok(found.into_iter().find(|c| c.id == req.cluster_id).map(|c| (c.clone(), c.tags)))
        };
        self.create_or_adopt("RestoreDBClusterToPointInTime", &req.tags, || self.inner.clone_db_cluster(req), find)
            .await
    }

    async fn create_cluster_instance(
        &self,
        instance_id: &str,
        cluster_id: &str,
        class: &str,
        engine: &str,
        tags: &[Tag],
    ) -> ApiResult<DbInstance> {
        let create = || self.inner.create_cluster_instance(instance_id, cluster_id, class, engine, tags);
        self.create_or_adopt("CreateDBInstance", tags, create, || self.db_instance_named(instance_id)).await
    }

    async fn secure_db_instance(
        &self,
        id: &str,
        password: Option<&str>,
        security_group: Option<&str>,
    ) -> ApiResult<()> {
        self.repeatable("ModifyDBInstance", || self.inner.secure_db_instance(id, password, security_group)).await
    }

    async fn secure_db_cluster(&self, id: &str, password: &str) -> ApiResult<()> {
        self.repeatable("ModifyDBCluster", || self.inner.secure_db_cluster(id, password)).await
    }

    async fn delete_db_instance(&self, id: &str) -> ApiResult<()> {
        self.retrying("DeleteDBInstance", || self.inner.delete_db_instance(id)).await
    }

    async fn stop_db_instance(&self, id: &str) -> ApiResult<()> {
        self.repeatable("StopDBInstance", || self.inner.stop_db_instance(id)).await
    }

    async fn start_db_instance(&self, id: &str) -> ApiResult<()> {
        self.repeatable("StartDBInstance", || self.inner.start_db_instance(id)).await
    }

    async fn delete_db_cluster(&self, id: &str) -> ApiResult<()> {
        self.retrying("DeleteDBCluster", || self.inner.delete_db_cluster(id)).await
    }

    // Not sent again after a lost answer: it may have run, and a second one is refused
    // while the first goes on (the fault's report says so).
    async fn reboot_db_instance(&self, id: &str, failover: bool) -> ApiResult<()> {
        self.once("RebootDBInstance", || self.inner.reboot_db_instance(id, failover)).await
    }

    async fn failover_db_cluster(&self, id: &str) -> ApiResult<()> {
        self.once("FailoverDBCluster", || self.inner.failover_db_cluster(id)).await
    }

    async fn add_tags(&self, arn: &str, tags: &[Tag]) -> ApiResult<()> {
        self.retrying("AddTagsToResource", || self.inner.add_tags(arn, tags)).await
    }
}

impl<A: RdsApi> Patient<A> {
    /// The DB instance `id`, with its tags, if it is listed.
    async fn db_instance_named(&self, id: &str) -> ApiResult<Option<(DbInstance, Vec<Tag>)>> {
        let ids = [id.to_string()];
        let found = listed(self.retrying("DescribeDBInstances", || self.inner.describe_db_instances(&ids)).await)?;
        Ok(found.into_iter().find(|d| d.id == id).map(|d| (d.clone(), d.tags)))
    }
}

/// A describe by id: "not found" is an empty list.
fn listed<T>(found: ApiResult<Vec<T>>) -> ApiResult<Vec<T>> {
    match found {
        Err(e) if e.kind == ErrorKind::NotFound => Ok(Vec::new()),
        other => other,
    }
}

#[cfg(test)]
mod tests;
