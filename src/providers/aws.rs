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
pub mod fake;
pub mod patient;
pub mod poller;
pub mod sdk;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tokio::time::Instant;

use super::{Ctx, Output, Provider, StepError};
use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::description::{DatabaseSource, RestoreMode};
use crate::engine::journal::{Entry, RunMeta};
use crate::plan::{Kind, Resource};
use crate::report::model::BackupUsed;
use crate::secrets;
use api::*;
use patient::Patient;
use poller::Poller;

pub const TAG_RUN: &str = "rehearse:run-id";
pub const TAG_ENV: &str = "rehearse:environment";
pub const TAG_OWNER: &str = "rehearse:owner";
pub const TAG_EXPIRES: &str = "rehearse:expires-at";
pub const TAG_RESOURCE: &str = "rehearse:resource";
pub const TAG_CREATED: &str = "rehearse:created-at";

/// The pollers look 100 ms after a change, then back off to at most 10 s: a long
/// operation is noticed at most 10 s late (BENCHMARKS.md: about 1 % of a rehearsal's
/// critical path), at one Describe call per kind of resource per interval.
pub const POLL_FIRST: Duration = Duration::from_millis(100);
pub const POLL_MAX: Duration = Duration::from_secs(10);
/// How long a resource with an intent but no id in the journal must stay unlisted
/// before teardown believes it was never created.
pub const UNJOURNALED_PATIENCE: Duration = Duration::from_secs(20);

/// The single gate every mutating call passes: the resource must carry this run's id.
#[derive(Clone, Debug)]
pub struct Guard {
    pub run_id: String,
}

impl Guard {
    pub fn check(&self, what: &str, id: &str, tags: &[Tag]) -> Result<(), String> {
        match tag_value(tags, TAG_RUN) {
            Some(v) if v == self.run_id => Ok(()),
            Some(v) => {
                Err(format!("refusing to change {what} {id}: it belongs to rehearse run {v}, not {}", self.run_id))
            }
            None => Err(format!(
                "refusing to change {what} {id}: it does not carry the tag {TAG_RUN}={} (production is never changed)",
                self.run_id
            )),
        }
    }
}

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
}

/// The names rehearse creates things under, derived from the run id: what `sweep`
/// checks a tagged resource against.
impl<A> AwsProvider<A> {
    /// An RDS identifier for a run's resource: a letter first, then lowercase letters,
    /// digits and single hyphens, ≤ 63 characters, unique per run and name. A name that
    /// had to be changed to fit (`a_b` and `a-b` would both become `a-b`; a long one is
    /// cut) gets a hash of the original, so two names never share an identifier.
    pub(crate) fn rds_id(run_id: &str, name: &str) -> String {
        let suffix = run_id.trim_start_matches("r-").replace('-', "");
        let raw = format!("rh-{suffix}-{name}");
        let mut id = String::new();
        for c in raw.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }) {
            if !(c == '-' && id.ends_with('-')) {
                id.push(c);
            }
        }
        let mut id = id.trim_end_matches('-').to_string();
        if id != raw || id.len() > 63 {
            id.truncate(54);
            id = format!("{}-{:08x}", id.trim_end_matches('-'), fnv1a(&raw) as u32);
        }
        id
    }

    /// The name of the run's security group and DB subnet group.
    pub(crate) fn group_name(run_id: &str) -> String {
        format!("rehearse-{run_id}")
    }

    /// `RunInstances`' client token for a run's instance: ≤ 64 ASCII characters, unique
    /// per run and instance (a long one is cut and given a hash of the whole, so that
    /// `service.<long name>.0` and `.1` never share a token).
    pub(crate) fn client_token(run_id: &str, res_id: &str) -> String {
        let full = format!("{run_id}-{res_id}");
        if full.len() <= 64 {
            return full;
        }
        format!("{}-{:016x}", &full[..47], fnv1a(&full))
    }
}

impl<A: Ec2Api + RdsApi> AwsProvider<A> {
    pub fn new(api: A, min_poll: Duration, max_poll: Duration) -> Self {
        AwsProvider {
            work_root: crate::engine::state::work_dir(),
            api: Patient::new(api),
            ids: Mutex::default(),
            instances: Poller::new(min_poll, max_poll),
            databases: Poller::new(min_poll, max_poll),
            clusters: Poller::new(min_poll, max_poll),
        }
    }

    /// Runs whose work directories live under `work_root` (default: this machine's).
    pub fn with_work_root(self, work_root: &std::path::Path) -> Self {
        AwsProvider { work_root: work_root.to_path_buf(), ..self }
    }

    /// Retry pauses drawn from `seed` (a reproducible scenario).
    pub fn seeded(self, seed: u64) -> Self {
        AwsProvider { api: self.api.seeded(seed), ..self }
    }

    /// Describe calls made by the pollers (instances, databases, clusters).
    pub fn poll_calls(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        self.instances.calls.load(Relaxed) + self.databases.calls.load(Relaxed) + self.clusters.calls.load(Relaxed)
    }

    fn id_of(&self, plan_id: &str) -> Result<String, StepError> {
        self.ids
            .lock()
            .ok()
            .and_then(|m| m.get(plan_id).cloned())
            .ok_or_else(|| StepError::build(format!("{plan_id} was not created")))
    }

    fn remember(&self, plan_id: &str, id: &str) {
        if let Ok(mut m) = self.ids.lock() {
            m.insert(plan_id.to_string(), id.to_string());
        }
    }

    /// A create call failed. When nothing can have been created — the request never
    /// left this machine, or the service refused it (a refusal or throttling creates
    /// nothing) — the journal says so at once, so teardown does not search for what
    /// cannot exist. A lost answer (a timeout) or a 5xx leaves the question open.
    fn create_failed(ctx: &Ctx<'_>, res: &Resource, e: &ApiError, message: String) -> StepError {
        if matches!(e.kind, ErrorKind::NotSent | ErrorKind::Refused | ErrorKind::NotFound | ErrorKind::Throttled) {
            let _ = ctx.journal.deleted(&res.id);
        }
        StepError::build(message)
    }

    /// The tags every resource of the run carries, plus its plan id.
    fn tags(ctx: &Ctx<'_>, res: &Resource) -> Vec<Tag> {
        let mut tags: BTreeMap<String, String> = ctx.plan.tags.clone();
        tags.insert(TAG_RUN.into(), ctx.run.run_id.clone());
        tags.insert(TAG_EXPIRES.into(), ctx.run.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        tags.insert(TAG_RESOURCE.into(), res.id.clone());
        tags.insert(TAG_CREATED.into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        tags.entry("Name".into())
            .or_insert_with(|| format!("rehearse {} {} ({})", ctx.loaded.desc.name, res.id, ctx.run.run_id));
        tags.into_iter().map(|(key, value)| Tag { key, value }).collect()
    }

    /// What makes a create idempotent — the name it creates under, or the client
    /// token — journaled with the intent, so `down` can look the resource up by it.
    fn create_key(res: &Resource, run_id: &str) -> Option<String> {
        match res.kind {
            Kind::AwsSecurityGroup | Kind::AwsDbSubnetGroup => Some(Self::group_name(run_id)),
            Kind::AwsDbInstance => Some(Self::rds_id(run_id, &res.name)),
            Kind::AwsDbCluster => Some(Self::rds_id(run_id, &format!("{}-cluster", res.name))),
            Kind::AwsInstance => Some(Self::client_token(run_id, &res.id)),
            _ => None,
        }
    }

    async fn security_group(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let vpc = res.attributes.get("vpc_id").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let name = Self::group_name(&ctx.run.run_id);
        let t = ctx.started(res, "create", None);
        let id = self
            .api
            .create_security_group(
                &name,
                &format!("rehearse run {} of {}", ctx.run.run_id, ctx.loaded.desc.name),
                &vpc,
                &Self::tags(ctx, res),
            )
            .await
            .map_err(|e| {
                Self::create_failed(ctx, res, &e, format!("cannot create the run's security group in {vpc}: {e}"))
            })?;
        ctx.record(res, json!({"group_id": id}))?;
        self.remember(&res.id, &id);
        // No ingress yet: the rules come per port, the copies' only once they are secured.
        ctx.step(res, "create", t, true, Some(id));
        Ok(Output::Nothing)
    }

    /// Opens the run's group: TCP to the services' ports, or to every copy's port (by
    /// then each copy is private and has the run's own password), from `allow_cidrs`
    /// and from the group itself.
    async fn ingress(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let sg = self.id_of("network.security-group")?;
        let cidrs: Vec<String> = ctx.loaded.desc.network().map(|n| n.allow_cidrs.clone()).unwrap_or_default();
        let mut ports: Vec<u16> = if res.id == crate::plan::DB_INGRESS {
            ctx.tctx
                .get("databases")
                .and_then(|d| d.as_object())
                .into_iter()
                .flat_map(|dbs| dbs.values())
                .filter_map(|d| d.get("port")?.as_str()?.parse().ok())
                .collect()
        } else {
            res.attributes.get("ports").and_then(|p| serde_json::from_value(p.clone()).ok()).unwrap_or_default()
        };
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() {
            return Err(StepError::build(format!("{}: no port to open", res.id)));
        }
        let shown = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let t = ctx.started(res, "authorize", Some(format!("tcp {shown}")));
        self.api.authorize_ingress(&sg, &cidrs, &ports).await.map_err(|e| {
            StepError::build(format!("cannot open tcp {shown} of security group {sg} to {cidrs:?} and itself: {e}"))
        })?;
        ctx.record(res, json!({"group_id": sg, "ports": ports}))?;
        ctx.step(res, "authorize", t, true, Some(format!("tcp {shown} from {} and the group", cidrs.join(", "))));
        Ok(Output::Nothing)
    }

    async fn subnet_group(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let subnets: Vec<String> = ctx.loaded.desc.network().map(|n| n.subnets.clone()).unwrap_or_default();
        let name = Self::group_name(&ctx.run.run_id);
        let t = ctx.started(res, "create", None);
        let g = self
            .api
            .create_db_subnet_group(&name, &format!("rehearse run {}", ctx.run.run_id), &subnets, &Self::tags(ctx, res))
            .await
            .map_err(|e| Self::create_failed(ctx, res, &e, format!("cannot create the run's DB subnet group: {e}")))?;
        ctx.record(res, json!({"name": g.name}))?;
        self.remember(&res.id, &g.name);
        ctx.step(res, "create", t, true, Some(g.name));
        Ok(Output::Nothing)
    }

    /// The newest available snapshot of a production instance.
    pub async fn newest_snapshot(&self, instance: &str) -> Result<Snapshot, StepError> {
        let prod = self
            .api
            .describe_db_instances(&[instance.to_string()])
            .await
            .map_err(|e| StepError::build(format!("cannot look up the production RDS instance {instance}: {e}")))?;
        if prod.iter().all(|d| d.id != instance) {
            return Err(StepError::build(format!(
                "the production RDS instance {instance} does not exist in this account and region"
            )));
        }
        let snapshots = self
            .api
            .snapshots_of(instance)
            .await
            .map_err(|e| StepError::build(format!("cannot list the snapshots of {instance}: {e}")))?;
        snapshots
            .into_iter()
            .filter(|s| s.instance_id.as_deref() == Some(instance) && s.status == "available" && s.created.is_some())
            .max_by_key(|s| s.created)
            .ok_or_else(|| {
                StepError::build(format!("production RDS instance {instance} has no snapshot in state `available`"))
            })
    }

    async fn wait_db(&self, id: &str, deadline: Instant) -> Result<DbInstance, StepError> {
        // The poller retries a failed describe at its next interval: no retry stacked on it.
        let api = &self.api.inner;
        self.databases
            .wait(
                id,
                |ids| async move { api.describe_db_instances(&ids).await },
                |d| d.id.clone(),
                |d| match d.map(|d| d.status.as_str()) {
                    Some("available") => Ok(true),
                    Some(s @ ("failed" | "incompatible-restore" | "incompatible-parameters" | "restore-error")) => {
                        Err(format!("DB instance {id} ended in state `{s}`"))
                    }
                    _ => Ok(false),
                },
                |d| d.map(|d| d.status.clone()).unwrap_or_else(|| "not visible yet".into()),
                deadline,
            )
            .await
            .map_err(StepError::build)?
            .ok_or_else(|| StepError::build(format!("DB instance {id} disappeared")))
    }

    async fn database(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let d = &ctx.loaded.desc;
        let db = &d.databases[res.name.as_str()];
        let timeout = db.timeout.unwrap_or(Duration::from_secs(30 * 60));
        let deadline = Instant::now() + timeout;
        let db_name = ctx.render(&format!("databases.{}.name", res.name))?;
        let class = db.instance_class().unwrap_or_default().to_string();
        let id = Self::rds_id(&ctx.run.run_id, &res.name);
        let sg = self.id_of("network.security-group")?;
        let subnet_group = self.id_of("network.db-subnet-group")?;
        let started = std::time::Instant::now();

        let (instance, backup) = match (&db.source, db.restore) {
            (DatabaseSource::AuroraCluster(source), RestoreMode::AuroraClone) => {
                let cluster_id = self.id_of(&format!("database.{}.cluster", res.name))?;
                let t = ctx.started(res, "create-instance", Some(cluster_id.clone()));
                let engine = self
                    .api
                    .describe_db_clusters(std::slice::from_ref(&cluster_id))
                    .await
                    .ok()
                    .and_then(|c| c.first().and_then(|c| c.engine.clone()))
                    .unwrap_or_else(|| "aurora-postgresql".into());
                let inst = self
                    .api
                    .create_cluster_instance(&id, &cluster_id, &class, &engine, &Self::tags(ctx, res))
                    .await
                    .map_err(|e| StepError::build(format!("cannot create an instance in cluster {cluster_id}: {e}")))?;
                ctx.record(res, json!({"db_instance_id": inst.id}))?;
                ctx.step(res, "create-instance", t, true, None);
                let backup = BackupUsed {
                    database: res.name.clone(),
                    source_kind: "aurora_cluster".into(),
                    source: source.clone(),
                    backup: format!("copy-on-write clone {cluster_id}"),
                    arn: None,
                    taken_at: Some(chrono::Utc::now()),
                    restore: "aurora-clone".into(),
                    method: "clone".into(),
                    restore_ms: 0,
                };
                (inst, backup)
            }
            (DatabaseSource::RdsInstance(source), mode) => {
                let pitr = mode == RestoreMode::LatestRestorableTime;
                let t = ctx.started(res, "find-backup", None);
                let found: Result<_, StepError> = async {
                    if pitr {
                        let prod = self
                            .api
                            .describe_db_instances(std::slice::from_ref(source))
                            .await
                            .map_err(|e| StepError::build(format!("cannot look up {source}: {e}")))?;
                        let p = prod.into_iter().find(|p| &p.id == source).ok_or_else(|| {
                            StepError::build(format!(
                                "the production RDS instance {source} does not exist in this account and region"
                            ))
                        })?;
                        Ok((format!("{source} at its latest restorable time"), None, p.latest_restorable_time))
                    } else {
                        let s = self.newest_snapshot(source).await?;
                        Ok((s.id, s.arn, s.created))
                    }
                }
                .await;
                // No backup, no restore: nothing of this database was created.
                let (snapshot_id, arn, taken_at) = found.inspect_err(|_| {
                    let _ = ctx.journal.deleted(&res.id);
                })?;
                ctx.step(res, "find-backup", t, true, Some(snapshot_id.clone()));
                let t = ctx.started(res, "restore", Some(snapshot_id.clone()));
                let req = RestoreDb {
                    instance_id: id.clone(),
                    source: if pitr { source.clone() } else { snapshot_id.clone() },
                    point_in_time: pitr,
                    instance_class: class.clone(),
                    subnet_group,
                    security_group_id: sg,
                    tags: Self::tags(ctx, res),
                };
                let inst = self.api.restore_db_instance(&req).await.map_err(|e| {
                    let hint = if e.code.as_deref().is_some_and(|c| c.contains("KMS")) {
                        " (the snapshot is encrypted with a KMS key this identity cannot use)"
                    } else {
                        ""
                    };
                    Self::create_failed(ctx, res, &e, format!("cannot restore {snapshot_id} into {id}: {e}{hint}"))
                })?;
                ctx.record(res, json!({"db_instance_id": inst.id}))?;
                ctx.step(res, "restore", t, true, Some(format!("{snapshot_id} → {id}")));
                let backup = BackupUsed {
                    database: res.name.clone(),
                    source_kind: "rds_instance".into(),
                    source: source.clone(),
                    backup: snapshot_id,
                    arn,
                    taken_at,
                    restore: mode.as_str().into(),
                    method: "cold".into(),
                    restore_ms: 0,
                };
                (inst, backup)
            }
            (other, _) => {
                return Err(StepError::build(format!("the aws provider cannot restore from `{}`", other.key())))
            }
        };

        let t = ctx.started(res, "wait-available", None);
        let _span = ctx.clock.external();
        let ready = ctx.unless_cancelled(self.wait_db(&instance.id, deadline)).await;
        ctx.step(res, "wait-available", t, ready.is_ok(), None);
        let ready = ready?;

        // Verify what was asked for and correct it: some implementations ignore
        // PubliclyAccessible=false / DeletionProtection=false on restores. The new
        // master password is set in the same call, and never printed.
        let guard = Guard { run_id: ctx.run.run_id.clone() };
        guard.check("DB instance", &ready.id, &ready.tags).map_err(StepError::build)?;
        let password = secrets::generate();
        let t = ctx.started(res, "secure", None);
        match &ready.cluster_id {
            // Aurora: the password (and deletion protection) belong to the cluster.
            Some(cluster) => {
                let cluster_tags = self
                    .api
                    .describe_db_clusters(std::slice::from_ref(cluster))
                    .await
                    .map_err(|e| StepError::build(format!("cannot look up cluster {cluster}: {e}")))?
                    .into_iter()
                    .find(|c| &c.id == cluster)
                    .map(|c| c.tags)
                    .unwrap_or_default();
                guard.check("DB cluster", cluster, &cluster_tags).map_err(StepError::build)?;
                self.api
                    .secure_db_cluster(cluster, &password)
                    .await
                    .map_err(|e| StepError::build(format!("cannot secure cluster {cluster} (new password): {e}")))?;
                self.api
                    .secure_db_instance(&ready.id, None)
                    .await
                    .map_err(|e| StepError::build(format!("cannot make {} private: {e}", ready.id)))?;
            }
            None => self.api.secure_db_instance(&ready.id, Some(&password)).await.map_err(|e| {
                StepError::build(format!(
                    "cannot secure {} (private, no deletion protection, new password): {e}",
                    ready.id
                ))
            })?,
        }
        let ready = ctx.unless_cancelled(self.wait_db(&ready.id, deadline)).await?;
        if ready.publicly_accessible || ready.deletion_protection {
            return Err(StepError::build(format!(
                "{} is still publicly accessible ({}) or deletion protected ({}) after ModifyDBInstance; refusing to use it",
                ready.id, ready.publicly_accessible, ready.deletion_protection
            )));
        }
        ctx.step(res, "secure", t, true, Some("private, no deletion protection, password rotated".into()));

        let host = ready.address.clone().unwrap_or_default();
        let port = ready.port.unwrap_or(5432).to_string();
        let user = ready.master_username.clone().unwrap_or_else(|| "postgres".into());
        let outputs = DatabaseOutputs {
            url: format!("postgres://{user}:{password}@{host}:{port}/{db_name}"),
            endpoint: format!("{host}:{port}"),
            host,
            port,
            name: db_name,
            user,
            password,
        };
        if let Some(m) = &db.masking {
            // The runner must reach the VPC (README): masking runs from here with psql.
            let t = ctx.started(res, "mask", None);
            let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
            // The connection (and its password) in libpq's environment, never on the
            // command line, where every user of this machine could read it.
            let mut cmd = tokio::process::Command::new("psql");
            cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f"])
                .arg(ctx.loaded.resolve(m))
                .env_remove("PGSERVICE")
                .env_remove("PGOPTIONS")
                .envs(outputs.libpq_env())
                .env("PGCONNECT_TIMEOUT", "10");
            let f = crate::engine::process::run_logged(&mut cmd, &log, timeout, ctx.clock)
                .await
                .map_err(|e| StepError::build(format!("cannot run psql for masking: {e}")))?;
            ctx.step(res, "mask", t, f.success(), None);
            if !f.success() {
                return Err(StepError::build(format!(
                    "masking SQL on {} failed (the runner must reach the VPC)",
                    outputs.endpoint
                ))
                .with_log(&log, 10));
            }
        }
        let backup = BackupUsed { restore_ms: started.elapsed().as_millis() as u64, ..backup };
        Ok(Output::Database { outputs, backup })
    }

    async fn cluster(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let db = &ctx.loaded.desc.databases[res.name.as_str()];
        let DatabaseSource::AuroraCluster(source) = &db.source else {
            return Err(StepError::build("a cluster clone needs an `aurora_cluster` source"));
        };
        let id = Self::rds_id(&ctx.run.run_id, &format!("{}-cluster", res.name));
        let t = ctx.started(res, "clone", Some(source.clone()));
        let req = CloneCluster {
            cluster_id: id.clone(),
            source_cluster: source.clone(),
            subnet_group: self.id_of("network.db-subnet-group")?,
            security_group_id: self.id_of("network.security-group")?,
            tags: Self::tags(ctx, res),
        };
        let c = self
            .api
            .clone_db_cluster(&req)
            .await
            .map_err(|e| StepError::build(format!("cannot clone Aurora cluster {source}: {e}")))?;
        ctx.record(res, json!({"db_cluster_id": c.id}))?;
        self.remember(&res.id, &c.id);
        let deadline = Instant::now() + db.timeout.unwrap_or(Duration::from_secs(30 * 60));
        // The poller retries a failed describe at its next interval: no retry stacked on it.
        let api = &self.api.inner;
        let r = self
            .clusters
            .wait(
                &c.id,
                |ids| async move { api.describe_db_clusters(&ids).await },
                |c| c.id.clone(),
                |c| match c.map(|c| c.status.as_str()) {
                    Some("available") => Ok(true),
                    Some("failed") => Err(format!("cluster {id} failed")),
                    _ => Ok(false),
                },
                |c| c.map(|c| c.status.clone()).unwrap_or_else(|| "not visible yet".into()),
                deadline,
            )
            .await;
        ctx.step(res, "clone", t, r.is_ok(), Some(c.id.clone()));
        r.map_err(StepError::build)?;
        Ok(Output::Nothing)
    }

    async fn instance(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let index: u32 = res.id.rsplit('.').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let user_data = match s.user_data() {
            Some(_) => Some(
                base64::engine::general_purpose::STANDARD
                    .encode(ctx.render(&format!("services.{}.user_data", res.name))?),
            ),
            None => None,
        };
        let attr = |k: &str| res.attributes.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let req = RunInstances {
            image_id: attr("image_id"),
            instance_type: attr("instance_type"),
            subnet_id: attr("subnet_id"),
            security_group_id: self.id_of("network.security-group")?,
            user_data,
            count: 1,
            tags: Self::tags(ctx, res),
            client_token: Self::client_token(&ctx.run.run_id, &res.id),
        };
        let t = ctx.started(res, "run-instance", None);
        // A lost answer is sent again (`Patient`): the client token makes the repeat
        // return the same instances, and a later refusal comes back as uncertain.
        let ids = self.api.run_instances(&req).await.map_err(|e| {
            let msg =
                format!("cannot start {} ({} {} in {}): {e}", res.id, req.instance_type, req.image_id, req.subnet_id);
            Self::create_failed(ctx, res, &e, msg)
        })?;
        let id = ids.first().cloned().ok_or_else(|| StepError::build("RunInstances returned no instance"))?;
        ctx.record(res, json!({"instance_id": id}))?;
        ctx.step(res, "run-instance", t, true, Some(id.clone()));
        let t = ctx.started(res, "wait-running", None);
        // The poller retries a failed describe at its next interval: no retry stacked on it.
        let api = &self.api.inner;
        let cancelled = async {
            let mut rx = ctx.cancel.clone();
            let _ = rx.wait_for(|c| *c).await;
        };
        let deadline = Instant::now() + s.health.as_ref().map(|h| h.timeout).unwrap_or(Duration::from_secs(600));
        let _span = ctx.clock.external();
        let wait = self.instances.wait(
            &id,
            |ids| async move { api.describe_instances(&ids).await },
            |i| i.id.clone(),
            |i| match i.map(|i| i.state.as_str()) {
                Some("running") => Ok(true),
                Some(s @ ("terminated" | "shutting-down" | "stopped")) => Err(format!("instance {id} is `{s}`")),
                // Right after RunInstances an instance may not be visible yet.
                _ => Ok(false),
            },
            |i| i.map(|i| i.state.clone()).unwrap_or_else(|| "not visible yet".into()),
            deadline,
        );
        let r = tokio::select! {
            r = wait => r,
            _ = cancelled => Err("cancelled: another step failed".to_string()),
        };
        ctx.step(res, "wait-running", t, r.is_ok(), None);
        let inst = r.map_err(StepError::build)?.ok_or_else(|| StepError::build(format!("{id} disappeared")))?;
        let address = inst.private_ip.clone().unwrap_or_default();
        let port = s.port.map(|p| p.to_string()).unwrap_or_default();
        let url = if port.is_empty() { format!("http://{address}") } else { format!("http://{address}:{port}") };
        if let (Some(h), Some(p)) = (&s.health, s.port) {
            let t = ctx.started(res, "health", Some(h.path.clone()));
            let r = super::local::health::wait_healthy_at(
                &address,
                p,
                &h.path,
                std::time::Instant::now() + h.timeout,
                || Ok(()),
            )
            .await;
            ctx.step(res, "health", t, r.is_ok(), None);
            r.map_err(|e| StepError::release(format!("service `{}` (instance {index}, {id}) {e}", res.name)))?;
        }
        Ok(Output::Service {
            name: res.name.clone(),
            index,
            outputs: ServiceOutputs {
                address: address.clone(),
                port,
                url: url.clone(),
                addresses: vec![address],
                urls: vec![url],
            },
        })
    }

    /// Destroys instances one by one: those with an id through the single path; those
    /// without one were looked for already and are gone.
    async fn each_instance(&self, ids: &[Result<Option<String>, String>], guard: &Guard) -> Vec<Result<(), String>> {
        futures_util::future::join_all(ids.iter().map(|r| async move {
            match r {
                Err(e) => Err(e.clone()),
                Ok(None) => Ok(()),
                Ok(Some(id)) => self.destroy_id("aws.ec2.instance", id, guard).await,
            }
        }))
        .await
    }

    /// A resource the journal has only an intent for: the run died or was stopped
    /// mid-create. It is looked up by its tags (or key); one just created may not be
    /// listed yet (eventual consistency), so "not found" is believed only after it has
    /// held for [`UNJOURNALED_PATIENCE`].
    async fn find_unjournaled(&self, entry: &Entry, meta: &RunMeta) -> Result<Option<String>, String> {
        find_patiently(|| self.find_by_tag(entry, meta), UNJOURNALED_PATIENCE).await
    }

    /// Finds a resource the journal has only an intent for, by its tags.
    async fn find_by_tag(&self, entry: &Entry, meta: &RunMeta) -> Result<Option<String>, String> {
        let mine = |tags: &[Tag]| {
            tag_value(tags, TAG_RUN) == Some(meta.run_id.as_str())
                && tag_value(tags, TAG_RESOURCE) == Some(entry.id.as_str())
        };
        Ok(match entry.kind.as_str() {
            "aws.ec2.instance" => self
                .api
                .instances_tagged(TAG_RUN)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|i| mine(&i.tags) && i.state != "terminated")
                .map(|i| i.id),
            "aws.ec2.security-group" => self
                .api
                .security_groups_tagged(TAG_RUN)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|g| mine(&g.tags))
                .map(|g| g.id),
            // RDS identifiers are the journaled key: one describe, not a listing.
            "aws.rds.db-instance" => {
                let found = match &entry.key {
                    Some(k) => one(self.api.describe_db_instances(std::slice::from_ref(k)).await, |d| &d.id == k)?
                        .into_iter()
                        .collect(),
                    None => self.api.db_instances_all().await.map_err(|e| e.to_string())?,
                };
                found.into_iter().find(|d| mine(&d.tags)).map(|d| d.id)
            }
            "aws.rds.db-cluster" => {
                let found = match &entry.key {
                    Some(k) => one(self.api.describe_db_clusters(std::slice::from_ref(k)).await, |c| &c.id == k)?
                        .into_iter()
                        .collect(),
                    None => self.api.db_clusters_all().await.map_err(|e| e.to_string())?,
                };
                found.into_iter().find(|c| mine(&c.tags)).map(|c| c.id)
            }
            "aws.rds.db-subnet-group" => {
                let name = entry.key.clone().unwrap_or_else(|| Self::group_name(&meta.run_id));
                match self.api.db_subnet_group_tags(&name).await.map_err(|e| e.to_string())? {
                    Some(tags) if tag_value(&tags, TAG_RUN) == Some(meta.run_id.as_str()) => Some(name),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Destroys one resource by provider id, through the guard, and waits until it is
    /// gone (so what depends on it can go next). Gone already counts as done.
    pub async fn destroy_id(&self, kind: &str, id: &str, guard: &Guard) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(45 * 60);
        let api = &self.api;
        match kind {
            "aws.ec2.instance" => {
                let describe = || async move { one(api.describe_instances(&[id.to_string()]).await, |i| i.id == id) };
                let Some(inst) = find_patiently(describe, LISTING_PATIENCE).await? else { return Ok(()) };
                if inst.state == "terminated" {
                    return Ok(());
                }
                guard.check("instance", id, &inst.tags)?;
                api.terminate_instances(&[id.to_string()]).await.map_err(|e| e.to_string())?;
                self.wait_terminated(id, deadline).await
            }
            "aws.rds.db-instance" => {
                let find = || async move { one(api.describe_db_instances(&[id.to_string()]).await, |d| d.id == id) };
                let Some(db) = find().await? else { return Ok(()) };
                guard.check("DB instance", id, &db.tags)?;
                if db.status != "deleting" {
                    if db.deletion_protection {
                        api.secure_db_instance(id, None).await.map_err(|e| e.to_string())?;
                    }
                    let deleting = || async { Ok(find().await?.is_none_or(|d| d.status == "deleting")) };
                    retry_in_use(|| api.delete_db_instance(id), deleting).await?;
                }
                let inner = &self.api.inner;
                let describe = |ids: Vec<String>| async move { inner.describe_db_instances(&ids).await };
                wait_gone(&self.databases, id, describe, |d| (d.id.clone(), d.status.clone()), deadline).await
            }
            "aws.rds.db-cluster" => {
                let find = || async move { one(api.describe_db_clusters(&[id.to_string()]).await, |c| c.id == id) };
                let Some(c) = find().await? else { return Ok(()) };
                guard.check("DB cluster", id, &c.tags)?;
                if c.status != "deleting" {
                    // A clone may carry the source's deletion protection (a run killed
                    // before its secure step): lift it, with a throwaway password.
                    if c.deletion_protection {
                        api.secure_db_cluster(id, &secrets::generate()).await.map_err(|e| e.to_string())?;
                    }
                    // Its instances may still be on their way out.
                    let deleting = || async { Ok(find().await?.is_none_or(|c| c.status == "deleting")) };
                    retry_in_use(|| api.delete_db_cluster(id), deleting).await?;
                }
                let inner = &self.api.inner;
                let describe = |ids: Vec<String>| async move { inner.describe_db_clusters(&ids).await };
                wait_gone(&self.clusters, id, describe, |c| (c.id.clone(), c.status.clone()), deadline).await
            }
            "aws.rds.db-subnet-group" => {
                let Some(tags) = api.db_subnet_group_tags(id).await.map_err(|e| e.to_string())? else { return Ok(()) };
                guard.check("DB subnet group", id, &tags)?;
                retry_in_use(|| api.delete_db_subnet_group(id), never).await
            }
            "aws.ec2.security-group" => {
                let describe =
                    || async move { one(api.describe_security_groups(&[id.to_string()]).await, |g| g.id == id) };
                let Some(g) = find_patiently(describe, LISTING_PATIENCE).await? else { return Ok(()) };
                guard.check("security group", id, &g.tags)?;
                retry_in_use(|| api.delete_security_group(id), never).await
            }
            _ => Ok(()),
        }
    }
}

/// A resource found by its rehearse tags (for `down` without a journal, and `sweep`).
#[derive(Clone, Debug)]
pub struct Tagged {
    /// Plan kind (`aws.ec2.instance`, ...), which decides the teardown order.
    pub kind: &'static str,
    pub id: String,
    /// The name it was created under: a group's name, an RDS identifier, an
    /// instance's client token (empty when it has none).
    pub name: String,
    /// Deletion protection is on (RDS).
    pub protected: bool,
    pub tags: Vec<Tag>,
}

impl Tagged {
    /// Evidence that rehearse made this, beyond tags anyone with tagging rights could
    /// set: the run id in the tags has rehearse's shape, and the resource's name is the
    /// one rehearse derives from that run id and the tagged plan id (its security group
    /// and subnet group name, its RDS identifier, its instances' client token). And
    /// deletion protection is off: rehearse never leaves a copy protected.
    pub fn evidence(&self) -> Result<(), String> {
        let run = tag_value(&self.tags, TAG_RUN).unwrap_or_default();
        let res = tag_value(&self.tags, TAG_RESOURCE).unwrap_or_default();
        if !crate::engine::state::valid_run_id(run) || res.is_empty() {
            return Err(format!("its tags {TAG_RUN}={run:?} / {TAG_RESOURCE}={res:?} are not rehearse's"));
        }
        if self.protected {
            return Err("deletion protection is on (rehearse never leaves a copy protected)".into());
        }
        type P = AwsProvider<()>;
        let expected = match self.kind {
            "aws.ec2.instance" => P::client_token(run, res),
            "aws.rds.db-instance" => P::rds_id(run, res.strip_prefix("database.").unwrap_or(res)),
            "aws.rds.db-cluster" => {
                let name = res.strip_prefix("database.").and_then(|r| r.strip_suffix(".cluster")).unwrap_or(res);
                P::rds_id(run, &format!("{name}-cluster"))
            }
            "aws.rds.db-subnet-group" | "aws.ec2.security-group" => P::group_name(run),
            other => return Err(format!("rehearse does not make a {other}")),
        };
        if self.name == expected {
            Ok(())
        } else {
            Err(format!("its name {:?} is not the one rehearse gives it ({expected:?})", self.name))
        }
    }
}

/// The order tagged resources are removed in: users before what they use.
pub const TEARDOWN_ORDER: [&str; 5] = [
    "aws.ec2.instance",
    "aws.rds.db-instance",
    "aws.rds.db-cluster",
    "aws.rds.db-subnet-group",
    "aws.ec2.security-group",
];

impl<A: Ec2Api + RdsApi> AwsProvider<A> {
    /// Every resource in the region carrying a `rehearse:run-id` tag, in teardown order.
    pub async fn tagged(&self) -> Result<Vec<Tagged>, String> {
        let e = |e: ApiError| e.to_string();
        let has = |t: &[Tag]| tag_value(t, TAG_RUN).is_some();
        let mut out = Vec::new();
        for i in self.api.instances_tagged(TAG_RUN).await.map_err(e)? {
            if i.state != "terminated" && has(&i.tags) {
                let name = i.client_token.clone().unwrap_or_default();
                out.push(Tagged { kind: "aws.ec2.instance", id: i.id, name, protected: false, tags: i.tags });
            }
        }
        for d in self.api.db_instances_all().await.map_err(e)? {
            if has(&d.tags) {
                let (name, protected) = (d.id.clone(), d.deletion_protection);
                out.push(Tagged { kind: "aws.rds.db-instance", id: d.id, name, protected, tags: d.tags });
            }
        }
        for c in self.api.db_clusters_all().await.map_err(e)? {
            if has(&c.tags) {
                let (name, protected) = (c.id.clone(), c.deletion_protection);
                out.push(Tagged { kind: "aws.rds.db-cluster", id: c.id, name, protected, tags: c.tags });
            }
        }
        for g in self.api.db_subnet_groups_all().await.map_err(e)? {
            // Only rehearse's own naming is worth a tag lookup each.
            if g.name.starts_with("rehearse-") {
                if let Some(tags) = self.api.db_subnet_group_tags(&g.name).await.map_err(e)? {
                    if has(&tags) {
                        let name = g.name.clone();
                        out.push(Tagged { kind: "aws.rds.db-subnet-group", id: g.name, name, protected: false, tags });
                    }
                }
            }
        }
        for g in self.api.security_groups_tagged(TAG_RUN).await.map_err(e)? {
            if has(&g.tags) {
                let name = g.name.clone();
                out.push(Tagged { kind: "aws.ec2.security-group", id: g.id, name, protected: false, tags: g.tags });
            }
        }
        out.sort_by_key(|t| TEARDOWN_ORDER.iter().position(|k| *k == t.kind));
        Ok(out)
    }
}

impl<A: Ec2Api + RdsApi> AwsProvider<A> {
    /// Waits (through the batched poller) until an instance is terminated or gone.
    async fn wait_terminated(&self, id: &str, deadline: Instant) -> Result<(), String> {
        // The poller retries a failed describe at its next interval: no retry stacked on it.
        let api = &self.api.inner;
        self.instances
            .wait(
                id,
                |ids| async move { api.describe_instances(&ids).await },
                |i| i.id.clone(),
                |i| Ok(i.is_none_or(|i| i.state == "terminated")),
                |i| i.map(|i| i.state.clone()).unwrap_or_else(|| "gone".into()),
                deadline,
            )
            .await
            .map(|_| ())
    }
}

/// How long an EC2 resource known by id must stay unlisted before teardown believes it
/// is gone: a terminated instance stays listed as `terminated`, so a real absence is
/// rare and costs this only then.
const LISTING_PATIENCE: Duration = Duration::from_secs(60);

/// What `describe` finds, looked for again with backoff (1 s doubling to 10 s) until
/// `patience` has passed: listings are eventually consistent, so right after a create
/// "not found" is not believed at once. The last look is at the deadline.
async fn find_patiently<T, F, Fut>(mut describe: F, patience: Duration) -> Result<Option<T>, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let until = Instant::now() + patience;
    let mut delay = Duration::from_secs(1);
    loop {
        if let Some(found) = describe().await? {
            return Ok(Some(found));
        }
        let now = Instant::now();
        if now >= until {
            return Ok(None);
        }
        tokio::time::sleep(delay.min(until - now)).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// FNV-1a: a short, stable hash for names (stable across builds and Rust versions,
/// unlike `std`'s `DefaultHasher`; eight lines do not justify a crate).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Waits (through the batched `poller`) until `id` is no longer listed; a describe
/// answering "not found" counts as not listed. `id_status` gives an item's id and status.
async fn wait_gone<T: Clone, F, Fut>(
    poller: &Poller<T>,
    id: &str,
    describe: F,
    id_status: impl Fn(&T) -> (String, String),
    deadline: Instant,
) -> Result<(), String>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = ApiResult<Vec<T>>>,
{
    poller
        .wait(
            id,
            |ids| {
                let found = describe(ids);
                async move {
                    match found.await {
                        Err(e) if e.kind == ErrorKind::NotFound => Ok(Vec::new()),
                        other => other,
                    }
                }
            },
            |t| id_status(t).0,
            |t| Ok(t.is_none()),
            |t| t.map(|t| id_status(t).1).unwrap_or_else(|| "gone".into()),
            deadline,
        )
        .await
        .map(|_| ())
}

/// The one element of a describe whose id is `id`; "not found" is `None`.
fn one<T>(found: ApiResult<Vec<T>>, is: impl Fn(&T) -> bool) -> Result<Option<T>, String> {
    match found {
        Ok(v) => Ok(v.into_iter().find(is)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Retries a delete refused because something still uses the resource
/// (`DependencyViolation`: an instance still terminating; a cluster whose instances
/// are still leaving), with backoff, for up to ten minutes — unless `under_way` says
/// its deletion has begun already (an earlier attempt of this delete ran before its
/// answer was lost) or it is gone. Gone counts as deleted.
async fn retry_in_use<F, Fut, U, UFut>(mut call: F, mut under_way: U) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ApiResult<()>>,
    U: FnMut() -> UFut,
    UFut: std::future::Future<Output = Result<bool, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut delay = Duration::from_millis(500);
    loop {
        match call().await {
            Ok(()) => return Ok(()),
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind == ErrorKind::InUse => {
                if under_way().await? {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(e.to_string());
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// For resources whose deletion is immediate: never "under way".
async fn never() -> Result<bool, String> {
    Ok(false)
}

fn handle_id(entry: &Entry) -> Option<String> {
    let h = entry.handle.as_ref()?;
    ["instance_id", "db_instance_id", "db_cluster_id", "group_id", "name"]
        .iter()
        .find_map(|k| h.get(*k).and_then(|v| v.as_str()).map(str::to_string))
}

impl<A: Ec2Api + RdsApi> Provider for AwsProvider<A> {
    async fn create(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        match res.kind {
            Kind::AwsSecurityGroup => self.security_group(res, ctx).await,
            Kind::AwsDbSubnetGroup => self.subnet_group(res, ctx).await,
            Kind::AwsDbCluster => self.cluster(res, ctx).await,
            Kind::AwsDbInstance => self.database(res, ctx).await,
            Kind::AwsInstance => self.instance(res, ctx).await,
            Kind::AwsIngress => self.ingress(res, ctx).await,
            other => Err(StepError::build(format!("the aws provider cannot create `{}`", other.as_str()))),
        }
    }

    async fn destroy(&self, entry: &Entry, meta: &RunMeta) -> Result<(), String> {
        if entry.kind == "local.workspace" {
            // The run's corner of this machine: its suites' scratch directories.
            let dir = entry.handle.as_ref().and_then(|h| h.get("dir")?.as_str().map(std::path::PathBuf::from));
            return match dir {
                Some(d) => {
                    use crate::engine::state;
                    state::remove_tree(&state::confined_to_run(&d, meta, &self.work_root)?)
                }
                None => Ok(()),
            };
        }
        if entry.kind == "aws.ec2.ingress" {
            // Rules live and die with their group.
            return Ok(());
        }
        let guard = Guard { run_id: meta.run_id.clone() };
        let id = match handle_id(entry) {
            Some(id) => Some(id),
            None => self.find_unjournaled(entry, meta).await?,
        };
        match id {
            Some(id) => self.destroy_id(&entry.kind, &id, &guard).await,
            None => Ok(()),
        }
    }

    fn idempotency_key(&self, res: &Resource, run_id: &str) -> Option<String> {
        Self::create_key(res, run_id)
    }

    /// Instances and databases first (they use the groups), then clusters, then the
    /// subnet group and the security group, then the run's local workspace.
    fn teardown_rank(&self, kind: &str) -> Option<u8> {
        match kind {
            "aws.ec2.instance" | "aws.rds.db-instance" => Some(0),
            "aws.rds.db-cluster" => Some(1),
            "aws.rds.db-subnet-group" | "aws.ec2.security-group" | "aws.ec2.ingress" => Some(2),
            "local.workspace" => Some(3),
            _ => None,
        }
    }

    /// Instances go in one batch: one describe guards them all, one call terminates
    /// them, and their waits share the batched poller.
    async fn destroy_many(&self, entries: &[&Entry], meta: &RunMeta) -> Vec<Result<(), String>> {
        if entries.len() < 2 || entries.iter().any(|e| e.kind != "aws.ec2.instance") {
            return futures_util::future::join_all(entries.iter().map(|e| self.destroy(e, meta))).await;
        }
        let guard = Guard { run_id: meta.run_id.clone() };
        // Those without an id are looked for as patiently as one on its own would be,
        // all at once.
        let ids: Vec<Result<Option<String>, String>> =
            futures_util::future::join_all(entries.iter().map(|e| async move {
                match handle_id(e) {
                    Some(id) => Ok(Some(id)),
                    None => self.find_unjournaled(e, meta).await,
                }
            }))
            .await;
        let known: Vec<String> = ids.iter().filter_map(|r| r.as_ref().ok().cloned().flatten()).collect();
        // (No ids: nothing to describe — and a describe without ids lists everything.)
        let described = if known.is_empty() { Ok(Vec::new()) } else { self.api.describe_instances(&known).await };
        let found = match described {
            Ok(v) if v.len() == known.len() => v,
            // Some id unknown — maybe not visible yet (eventual consistency): each
            // instance on its own, patiently (those without an id were looked for).
            Ok(_) => return self.each_instance(&ids, &guard).await,
            Err(e) if e.kind == ErrorKind::NotFound => return self.each_instance(&ids, &guard).await,
            Err(e) => return entries.iter().map(|_| Err(e.to_string())).collect(),
        };
        // Each id: gone already, refused by the guard, or to terminate.
        let mut verdict: Vec<Result<bool, String>> = Vec::new();
        for r in &ids {
            verdict.push(match r {
                Err(e) => Err(e.clone()),
                Ok(None) => Ok(false),
                Ok(Some(id)) => match found.iter().find(|i| &i.id == id) {
                    None => Ok(false),
                    Some(i) if i.state == "terminated" => Ok(false),
                    Some(i) => guard.check("instance", id, &i.tags).map(|_| true),
                },
            });
        }
        let to_terminate: Vec<String> = ids
            .iter()
            .zip(&verdict)
            .filter(|(_, v)| matches!(v, Ok(true)))
            .filter_map(|(r, _)| r.as_ref().ok().cloned().flatten())
            .collect();
        if !to_terminate.is_empty() {
            if let Err(e) = self.api.terminate_instances(&to_terminate).await {
                return entries.iter().map(|_| Err(e.to_string())).collect();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(45 * 60);
        let waits = ids.iter().zip(verdict).map(|(r, v)| async move {
            match (r, v) {
                (_, Err(e)) => Err(e),
                (Ok(Some(id)), Ok(true)) => self.wait_terminated(id, deadline).await,
                _ => Ok(()),
            }
        });
        futures_util::future::join_all(waits).await
    }

    /// An API call in flight answers within its operation timeout; waiting that long
    /// means the journal learns the id of whatever it created.
    fn cancel_grace(&self) -> Duration {
        Duration::from_secs(90)
    }

    fn removal_command(&self, entry: &Entry, meta: &RunMeta) -> String {
        let region = meta.region.clone().unwrap_or_default();
        let id = handle_id(entry).unwrap_or_else(|| "<id: see `rehearse down`>".into());
        match entry.kind.as_str() {
            "aws.ec2.instance" => format!("aws ec2 terminate-instances --region {region} --instance-ids {id}"),
            "aws.ec2.security-group" => format!("aws ec2 delete-security-group --region {region} --group-id {id}"),
            "aws.rds.db-instance" => format!(
                "aws rds delete-db-instance --region {region} --db-instance-identifier {id} --skip-final-snapshot --delete-automated-backups"
            ),
            "aws.rds.db-cluster" => {
                format!("aws rds delete-db-cluster --region {region} --db-cluster-identifier {id} --skip-final-snapshot")
            }
            "aws.rds.db-subnet-group" => format!("aws rds delete-db-subnet-group --region {region} --db-subnet-group-name {id}"),
            _ => format!("rehearse down {}", meta.run_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeCloud;
    use super::*;

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
            kind: "aws.ec2.instance".into(),
            handle: handle.map(|h| json!({ "instance_id": h })),
            key: None,
            deleted: false,
        }
    }

    /// A run stopped while `RunInstances` calls were in flight: the journal has their
    /// intents, but no ids. Teardown's batch path looks for them as patiently as the
    /// single path: an instance that becomes visible only seconds later is found and
    /// terminated, not journaled as never created.
    #[tokio::test(start_paused = true)]
    async fn the_batch_teardown_waits_for_instances_without_an_id_to_become_visible() {
        let cloud =
            fake::FakeCloud::new(9, fake::Faults { invisible_for: Duration::from_secs(8), ..fake::Faults::none() });
        let tags = |res: &str| {
            vec![Tag { key: TAG_RUN.into(), value: RUN.into() }, Tag { key: TAG_RESOURCE.into(), value: res.into() }]
        };
        let known =
            cloud.run_instances(&fake::tests::one_instance("t0", tags("service.web.0"))).await.unwrap().remove(0);
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
        let t = |kind: &'static str, name: String, res: &str, protected: bool| Tagged {
            kind,
            id: "x".into(),
            name,
            protected,
            tags: tags(res),
        };
        let db = P::rds_id(RUN, "db");
        assert!(t("aws.rds.db-instance", db.clone(), "database.db", false).evidence().is_ok());
        assert!(t("aws.rds.db-instance", db.clone(), "database.db", true).evidence().is_err(), "protected");
        assert!(t("aws.rds.db-instance", "shop-prod-db".into(), "database.db", false).evidence().is_err());
        let cluster = P::rds_id(RUN, "db-cluster");
        assert!(t("aws.rds.db-cluster", cluster, "database.db.cluster", false).evidence().is_ok());
        let token = P::client_token(RUN, "service.web.0");
        assert!(t("aws.ec2.instance", token, "service.web.0", false).evidence().is_ok());
        assert!(t("aws.ec2.instance", String::new(), "service.web.0", false).evidence().is_err(), "no token");
        let group = P::group_name(RUN);
        assert!(t("aws.ec2.security-group", group.clone(), "network.security-group", false).evidence().is_ok());
        assert!(t("aws.ec2.security-group", "prod-web".into(), "network.security-group", false).evidence().is_err());
        // A run id that is not rehearse's shape is no evidence either.
        let mut odd = t("aws.ec2.security-group", group, "network.security-group", false);
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
}
