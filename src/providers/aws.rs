//! The AWS provider: an isolated copy of production in EC2 and RDS.
//!
//! Every resource is tagged at creation with the run's id, environment, owner, expiry
//! and its plan id. Production is only read: the newest available snapshot of the
//! production instance is found (sorted by `SnapshotCreateTime`, all pages), and every
//! mutating call first passes [`Guard`], which refuses any resource that does not carry
//! this run's `rehearse:run-id` tag. Restores are verified and corrected after the fact
//! (private, not deletion protected, new master password), since implementations exist
//! that ignore those parameters.

pub mod api;
mod backups;
mod create;
mod databases;
mod destroy;
pub mod dns;
mod faults;
mod guard;
mod instances;
mod naming;
pub mod patient;
pub mod poller;
mod pool;
mod runner;
pub mod sdk;
pub mod ssm;
mod sweep;

use destroy::handle_id;
pub use guard::{by_evidence, Doubt, Guard, Refused, Tagged};

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tokio::time::Instant;

use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::description::{DatabaseSource, Loaded, RestoreMode};
use crate::engine::journal::{Entry, RunMeta};
use crate::engine::provider::{Ctx, DestroyError, DestroyErrorKind, Output, Pin, Pins, Provider, StepError};
use crate::plan::{Kind, Resource};
use crate::report::model::BackupUsed;
use crate::secrets;
use crate::sys::state;
use api::*;
use patient::Patient;
use poller::Poller;
use ssm::SsmApi;

/// What the journal keeps of an AWS resource: the one id that finds it (by kind: an
/// instance, a DB instance or cluster, a security group, a subnet group's name), an
/// ingress rule's ports, the runner's keys. Serialized with only the fields it has, as
/// journals have always had them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AwsHandle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An ingress rule's ports (it lives and dies with its group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<u16>>,
    /// The runner's keys: the run's part of the outputs prefix (`RUN_ID/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// The runner's keys as journals before `suffix` named them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl AwsHandle {
    /// The handle of a resource found by its tags (`down` without a journal): its id
    /// under the field its kind is journaled with.
    pub fn found(kind: Kind, id: &str) -> AwsHandle {
        let id = Some(id.to_string());
        match kind {
            Kind::AwsInstance => AwsHandle { instance_id: id, ..AwsHandle::default() },
            Kind::AwsDbInstance => AwsHandle { db_instance_id: id, ..AwsHandle::default() },
            Kind::AwsDbCluster => AwsHandle { db_cluster_id: id, ..AwsHandle::default() },
            Kind::AwsSecurityGroup => AwsHandle { group_id: id, ..AwsHandle::default() },
            _ => AwsHandle { name: id, ..AwsHandle::default() },
        }
    }

    /// The provider id it holds, if any.
    pub fn id(&self) -> Option<&str> {
        [&self.instance_id, &self.db_instance_id, &self.db_cluster_id, &self.group_id, &self.name]
            .into_iter()
            .find_map(|v| v.as_deref())
    }
}

pub const TAG_RUN: &str = "rehearse:run-id";
pub const TAG_ENV: &str = "rehearse:environment";
pub const TAG_OWNER: &str = "rehearse:owner";
pub const TAG_EXPIRES: &str = "rehearse:expires-at";
pub const TAG_RESOURCE: &str = "rehearse:resource";
pub const TAG_CREATED: &str = "rehearse:created-at";
/// A stage's generation: the stage's name and the generation's number. No TTL removes
/// the stage's current generation (`sweep` asks the stage's record).
pub const TAG_STAGE: &str = "rehearse:stage";
pub const TAG_GENERATION: &str = "rehearse:generation";

/// The pollers look 100 ms after a change, then back off to at most 10 s: a long
/// operation is noticed at most 10 s late (BENCHMARKS.md: about 1 % of a rehearsal's
/// critical path), at one Describe call per kind of resource per interval.
pub const POLL_FIRST: Duration = Duration::from_millis(100);
pub const POLL_MAX: Duration = Duration::from_secs(10);
/// How long after its intent a resource with no id in the journal must stay unlisted
/// before teardown believes it was never created: a create in flight when its run died
/// is answered (or cut by the client) within its attempt timeout (30 s) and listed
/// within seconds after; 75 s covers that with room (the fake cloud answers creates up
/// to 60 s late). It is shorter than the 90 s an interrupted run waits for its own
/// creates in flight ([`Provider::cancel_grace`]), which it knows and can wait out. A
/// `down` long after the run died does not wait at all.
pub const UNJOURNALED_PATIENCE: Duration = Duration::from_secs(75);

/// What user-data writes last (templates/user-data.sh.tera), followed by its exit
/// status: read from the instance's console, it says how the bootstrap ended.
pub const BOOTSTRAP_MARKER: &str = "rehearse-bootstrap: exit=";
/// How often an instance's console is read while its bootstrap runs.
pub const CONSOLE_POLL: Duration = Duration::from_secs(5);
/// How long an instance without a health check may take to bootstrap by default.
pub const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest a presigned link can be valid (SigV4).
pub const PRESIGN_MAX: Duration = Duration::from_secs(7 * 86400);

/// The AWS provider over any [`Ec2Api`] + [`RdsApi`] (the SDK, or a fake), which it
/// calls through [`Patient`]: throttling and 5xx answers are waited out, not reported.
pub struct AwsProvider<A> {
    pub api: Patient<A>,
    /// Provider ids of created resources, by plan id (the security group's id, ...).
    ids: Mutex<BTreeMap<String, String>>,
    instances: Poller<Instance>,
    databases: Poller<DbInstance>,
    clusters: Poller<DbCluster>,
    /// This machine's work directory: a run's local workspace (its suites' scratch
    /// directories) is removed only from `WORK/runs/RUN_ID`.
    work_root: std::path::PathBuf,
    /// The SSM runner's instance, once it takes commands (`runner: ssm`).
    runner: tokio::sync::watch::Sender<Option<String>>,
    /// The suites' files for the runner, packed once per run.
    bundle: tokio::sync::OnceCell<Result<(std::path::PathBuf, Vec<u8>), String>>,
    /// Provider ids established as the run's: created by this process (tagged at
    /// creation), or found carrying the run's tag by the guard. Only these get a
    /// removal command a person can paste; a journal's word is not enough.
    owned: Mutex<std::collections::BTreeSet<String>>,
    /// Where the runner's outputs go (bucket, and the prefix the run's id is added
    /// to): from the description — the run's, or the one `down` reads again — never
    /// from a journal, which anyone with the store's policy can write.
    runner_outputs: Mutex<Option<(String, String)>>,
    /// Where the databases' warm pools are recorded (the state store), when runs may
    /// claim from them ([`pool`]).
    pool_store: Option<std::sync::Arc<dyn crate::engine::store::ObjectStore>>,
    /// The databases whose copy came from a pool: already masked.
    pooled: Mutex<std::collections::BTreeMap<String, String>>,
}

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> Provider for AwsProvider<A> {
    async fn pin_sources(&self, loaded: &Loaded) -> Result<Pins, StepError> {
        self.pins(loaded).await
    }

    async fn create(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        match res.kind {
            Kind::AwsSecurityGroup => self.security_group(res, ctx).await,
            Kind::AwsDbSubnetGroup => self.subnet_group(res, ctx).await,
            Kind::AwsDbCluster => self.cluster(res, ctx).await,
            Kind::AwsDbInstance => self.database(res, ctx).await,
            Kind::AwsInstance if res.id == crate::plan::RUNNER => self.launch_runner(res, ctx).await,
            Kind::AwsInstance => self.instance(res, ctx).await,
            Kind::AwsS3Prefix => self.runner_data(res, ctx).await,
            Kind::Mask => self.mask(res, ctx).await,
            Kind::AwsIngress => self.ingress(res, ctx).await,
            Kind::LocalRelease => self.release(res, ctx).await,
            Kind::Install if runner::configured(ctx.loaded).is_some() => self.install_on_runner(res, ctx).await,
            Kind::Install => crate::providers::install::install(res, ctx, ctx.release_dir()).await,
            other => Err(StepError::build(format!("the aws provider cannot create `{}`", other.as_str()))),
        }
    }

    async fn destroy(&self, entry: &Entry, meta: &RunMeta) -> Result<(), DestroyError> {
        if matches!(entry.kind, Kind::Install | Kind::Mask | Kind::Fault) {
            // An install, a masking or a game day's fault leaves nothing of its own
            // behind (a fault's resource is torn down as the run's).
            return Ok(());
        }
        if entry.kind == Kind::AwsS3Prefix {
            return self.remove_runner_data(entry, meta).await;
        }
        if matches!(entry.kind, Kind::Workspace | Kind::LocalRelease) {
            // The run's corner of this machine (its suites' scratch directories), and
            // the release unpacked there for the installs.
            let dir = entry
                .handle
                .as_ref()
                .map(|h| h.decode::<crate::providers::release::ReleaseHandle>("directory"))
                .transpose()
                .map_err(|e| DestroyError::caused(DestroyErrorKind::Failed, e.to_string(), e))?;
            if let Some(crate::providers::release::ReleaseHandle { dir: d }) = dir {
                let run_id = &meta.run_id;
                state::remove_tree(&state::confined_to_run(&d, run_id, meta.work_dir.as_deref(), &self.work_root)?)?;
            }
            return Ok(());
        }
        self.destroy_entry(entry, meta).await
    }

    fn idempotency_key(&self, res: &Resource, run_id: &str) -> Option<String> {
        Self::create_key(res, run_id)
    }

    /// See [`faults`]: a game day's fault on one of the run's instances or databases.
    async fn inject(
        &self,
        entry: &Entry,
        what: crate::engine::provider::Injected,
        info: &crate::engine::provider::RunInfo,
        _clock: &crate::sys::timing::Clock,
    ) -> Result<Option<crate::engine::provider::Handle>, String> {
        self.inject_fault(entry, what, info).await
    }

    /// See [`destroy::rank`]: the one order, for the journal and for what is tagged.
    fn teardown_rank(&self, kind: Kind) -> Option<u8> {
        destroy::rank(kind)
    }

    /// What carries the run's tags (see [`AwsProvider::marked`]).
    async fn discover(
        &self,
        run_id: Option<&str>,
    ) -> Result<Vec<crate::engine::discover::Marked>, crate::engine::discover::DiscoverError> {
        self.marked(run_id).await
    }

    /// The `rehearse:expires-at` tags (see [`AwsProvider::retag_expiry`]).
    async fn move_expiry(
        &self,
        run_id: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.retag_expiry(run_id, expires_at).await?)
    }

    /// Instances go in one batch: one describe guards them all, one call terminates
    /// them, and their waits share the batched poller.
    async fn destroy_many(&self, entries: &[&Entry], meta: &RunMeta) -> Vec<Result<(), DestroyError>> {
        self.destroy_batch(entries, meta).await
    }

    /// An API call in flight answers within its operation timeout; waiting that long
    /// means the journal learns the id of whatever it created.
    fn cancel_grace(&self) -> Duration {
        Duration::from_secs(90)
    }

    fn runs_suites_elsewhere(&self, loaded: &crate::description::Loaded) -> bool {
        runner::configured(loaded).is_some()
    }

    /// With `runner: ssm`, suites run on the runner inside the VPC.
    async fn run_suite(
        &self,
        job: &crate::engine::provider::SuiteJob<'_>,
    ) -> Option<Result<crate::engine::provider::SuiteDone, crate::engine::provider::SuiteRunError>> {
        runner::configured(job.loaded)?;
        Some(self.suite_on_runner(job).await)
    }

    /// An instance's, a database's or a group's id; the directory of the run's workspace.
    fn provider_id(&self, entry: &Entry) -> Option<String> {
        let h = entry.handle.as_ref()?;
        match entry.kind {
            Kind::Workspace | Kind::LocalRelease => h
                .decode::<crate::providers::release::ReleaseHandle>("directory")
                .ok()
                .map(|h| h.dir.display().to_string()),
            _ => handle_id(entry),
        }
    }

    /// The AWS CLI command for a resource established as the run's (see `owned`);
    /// anything else is left to `rehearse down`, which goes through the guard.
    fn removal_command(&self, entry: &Entry, meta: &RunMeta) -> String {
        let region = meta.region.clone().unwrap_or_default();
        let down = format!("rehearse down {}", meta.run_id);
        let id = match handle_id(entry) {
            Some(id) if self.is_owned(&id) => id,
            Some(_) => return down,
            None => "<id: see `rehearse down`>".into(),
        };
        match entry.kind {
            Kind::AwsInstance => format!("aws ec2 terminate-instances --region {region} --instance-ids {id}"),
            Kind::AwsSecurityGroup => format!("aws ec2 delete-security-group --region {region} --group-id {id}"),
            Kind::AwsDbInstance => format!(
                "aws rds delete-db-instance --region {region} --db-instance-identifier {id} --skip-final-snapshot --delete-automated-backups"
            ),
            Kind::AwsDbCluster => {
                format!("aws rds delete-db-cluster --region {region} --db-cluster-identifier {id} --skip-final-snapshot")
            }
            Kind::AwsDbSubnetGroup => format!("aws rds delete-db-subnet-group --region {region} --db-subnet-group-name {id}"),
            Kind::AwsS3Prefix => match self.runner_location(&meta.run_id) {
                Some((b, p)) => format!("aws s3 rm --recursive s3://{b}/{p}"),
                None => down,
            },
            _ => down,
        }
    }
}

impl<A> AwsProvider<A> {
    /// Takes `id` as established to be the run's (created by it, or its tag checked).
    pub(crate) fn mark_owned(&self, id: &str) {
        if let Ok(mut o) = self.owned.lock() {
            o.insert(id.to_string());
        }
    }

    fn is_owned(&self, id: &str) -> bool {
        self.owned.lock().is_ok_and(|o| o.contains(id))
    }

    /// The runner's outputs as the description names them (`runner.ssm.outputs`): what
    /// `down` must know to remove the run's keys there (the journal keeps only the
    /// run's part of the prefix). `loaded` without a runner names none.
    pub fn with_runner_outputs_of(self, loaded: &Loaded) -> Self {
        let location = runner::configured(loaded).and_then(|r| runner::outputs_location(r).ok());
        if let Ok(mut l) = self.runner_outputs.lock() {
            *l = location;
        }
        self
    }

    /// The run's keys: the outputs bucket and `PREFIX/RUN_ID/`, when a description named them.
    pub(crate) fn runner_location(&self, run_id: &str) -> Option<(String, String)> {
        let (bucket, prefix) = self.runner_outputs.lock().ok()?.clone()?;
        Some((bucket, runner::under(&prefix, run_id)))
    }
}

#[cfg(test)]
mod tests;
