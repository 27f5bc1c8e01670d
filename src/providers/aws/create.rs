//! Creating the run's resources: its security group and ingress rules, the DB subnet
//! group, restored copies (from the newest snapshot, the latest restorable time, or an
//! Aurora clone) and their masking; instances are in [`super::instances`]. Each create
//! reports its id as soon as the call returns; a failure says whether anything may have
//! been created.

use super::*;
use serde::Deserialize;

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    pub fn new(api: A, min_poll: Duration, max_poll: Duration) -> Self {
        AwsProvider {
            work_root: crate::sys::state::work_dir(),
            api: Patient::new(api),
            ids: Mutex::default(),
            instances: Poller::new(min_poll, max_poll),
            databases: Poller::new(min_poll, max_poll),
            clusters: Poller::new(min_poll, max_poll),
            runner: tokio::sync::watch::Sender::new(None),
            bundle: tokio::sync::OnceCell::new(),
            owned: Mutex::default(),
            runner_outputs: Mutex::default(),
        }
    }

    /// Journals `res` as created with `handle`; the id in it is the run's own (this
    /// process made it, tagged at creation).
    pub(super) async fn created(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        handle: serde_json::Value,
    ) -> Result<(), StepError> {
        let handle: super::AwsHandle =
            serde_json::from_value(handle).map_err(|e| StepError::build(format!("cannot journal {}: {e}", res.id)))?;
        if let Some(id) = handle.id() {
            self.mark_owned(id);
        }
        ctx.created(res, &handle).await
    }

    /// Runs whose work directories live under `work_root` (default: this machine's).
    pub fn with_work_root(self, work_root: &std::path::Path) -> Self {
        AwsProvider { work_root: work_root.to_path_buf(), ..self }
    }

    /// Retry pauses drawn from `seed` (a reproducible scenario).
    pub fn seeded(self, seed: u64) -> Self {
        AwsProvider { api: self.api.seeded(seed), ..self }
    }

    /// Calls sent again after a lost answer, a throttle or a 5xx.
    pub fn retried(&self) -> u64 {
        self.api.retried()
    }

    pub(super) fn id_of(&self, plan_id: &str) -> Result<String, StepError> {
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
    /// nothing) — the step says so, and the engine journals it at once, so teardown
    /// does not search for what cannot exist. A lost answer (a timeout) or a 5xx leaves
    /// the question open.
    pub(super) fn create_failed(e: &ApiError, message: String) -> StepError {
        let err = StepError::build(message);
        if matches!(
            e.kind,
            ErrorKind::NotSent | ErrorKind::Refused | ErrorKind::Denied | ErrorKind::NotFound | ErrorKind::Throttled
        ) {
            err.nothing_created()
        } else {
            err
        }
    }

    /// The tags every resource of the run carries, plus its plan id.
    pub(super) fn tags(ctx: &Ctx<'_>, res: &Resource) -> Vec<Tag> {
        let mut tags: BTreeMap<String, String> = ctx.plan.tags.clone();
        tags.insert(TAG_RUN.into(), ctx.run.run_id.clone());
        tags.insert(TAG_EXPIRES.into(), ctx.run.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        tags.insert(TAG_RESOURCE.into(), res.id.clone());
        tags.insert(TAG_CREATED.into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        if let Some(s) = &ctx.run.stage {
            tags.insert(TAG_STAGE.into(), s.stage.clone());
            tags.insert(TAG_GENERATION.into(), s.generation.to_string());
        }
        tags.entry("Name".into())
            .or_insert_with(|| format!("rehearse {} {} ({})", ctx.loaded.desc.name, res.id, ctx.run.run_id));
        tags.into_iter().map(|(key, value)| Tag { key, value }).collect()
    }

    /// What makes a create idempotent — the name it creates under, or the client
    /// token — journaled with the intent, so `down` can look the resource up by it.
    pub(super) fn create_key(res: &Resource, run_id: &str) -> Option<String> {
        match res.kind {
            Kind::AwsSecurityGroup | Kind::AwsDbSubnetGroup => Some(Self::group_name(run_id)),
            Kind::AwsDbInstance => Some(Self::rds_id(run_id, &res.name)),
            Kind::AwsDbCluster => Some(Self::rds_id(run_id, &format!("{}-cluster", res.name))),
            Kind::AwsInstance => Some(Self::client_token(run_id, &res.id)),
            _ => None,
        }
    }

    pub(super) async fn security_group(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
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
            .map_err(|e| Self::create_failed(&e, format!("cannot create the run's security group in {vpc}: {e}")))?;
        self.created(res, ctx, json!({"group_id": id})).await?;
        self.remember(&res.id, &id);
        // No ingress yet: the rules come per port, the copies' only once they are secured.
        ctx.step(res, "create", t, true, Some(id));
        Ok(Output::Nothing)
    }

    /// Opens the run's group: TCP to the services' ports, or to every copy's port (by
    /// then each copy is private and has the run's own password), from `allow_cidrs`
    /// and from the group itself.
    pub(super) async fn ingress(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let sg = self.id_of("network.security-group")?;
        let cidrs: Vec<String> = aws_target(ctx)?.network.allow_cidrs.clone();
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
        self.created(res, ctx, json!({"group_id": sg, "ports": ports})).await?;
        ctx.step(res, "authorize", t, true, Some(format!("tcp {shown} from {} and the group", cidrs.join(", "))));
        Ok(Output::Nothing)
    }

    pub(super) async fn subnet_group(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let subnets: Vec<String> = aws_target(ctx)?.network.subnets.clone();
        let name = Self::group_name(&ctx.run.run_id);
        let t = ctx.started(res, "create", None);
        let g = self
            .api
            .create_db_subnet_group(&name, &format!("rehearse run {}", ctx.run.run_id), &subnets, &Self::tags(ctx, res))
            .await
            .map_err(|e| Self::create_failed(&e, format!("cannot create the run's DB subnet group: {e}")))?;
        self.created(res, ctx, json!({"name": g.name})).await?;
        self.remember(&res.id, &g.name);
        ctx.step(res, "create", t, true, Some(g.name));
        Ok(Output::Nothing)
    }

    /// The snapshot `id` of a production instance, pinned by the caller: it must still
    /// be there, be `instance`'s and be available.
    async fn snapshot(&self, instance: &str, id: &str) -> Result<Snapshot, StepError> {
        self.available_snapshots(instance).await?.into_iter().find(|s| s.id == id).ok_or_else(|| {
            StepError::build(format!("the pinned snapshot {id} of {instance} is not available any more"))
        })
    }

    /// The snapshots of `instance` in state `available`.
    async fn available_snapshots(&self, instance: &str) -> Result<Vec<Snapshot>, StepError> {
        let snapshots = self
            .api
            .snapshots_of(instance)
            .await
            .map_err(|e| StepError::build(format!("cannot list the snapshots of {instance}: {e}")))?;
        Ok(snapshots
            .into_iter()
            .filter(|s| s.instance_id.as_deref() == Some(instance) && s.status == "available")
            .collect())
    }

    /// What each RDS instance's copy restores from now: its newest snapshot, or its
    /// latest restorable time. Aurora clones are not pinned (see below).
    pub async fn pins(&self, loaded: &crate::description::Loaded) -> Result<Pins, StepError> {
        let mut pins = Pins::new();
        for (name, db) in &loaded.desc.databases {
            let pin = match (&db.source, db.restore) {
                (DatabaseSource::RdsInstance(source), RestoreMode::LatestRestorableTime) => {
                    let prod = self
                        .api
                        .describe_db_instances(std::slice::from_ref(source))
                        .await
                        .map_err(|e| StepError::build(format!("cannot look up {source}: {e}")))?;
                    let at = prod.into_iter().find(|p| &p.id == source).and_then(|p| p.latest_restorable_time);
                    let at = at.ok_or_else(|| {
                        StepError::build(format!("the production RDS instance {source} has no restorable time"))
                    })?;
                    // RestoreTime must lie before the latest restorable time.
                    Pin::Time(at - chrono::Duration::seconds(1))
                }
                (DatabaseSource::RdsInstance(source), _) => Pin::Snapshot(self.newest_snapshot(source).await?.id),
                // A copy-on-write clone is of the cluster as it is: RDS takes no
                // RestoreToTime with it. Unpinned; twins clone it at the same moment.
                _ => continue,
            };
            pins.insert(name.clone(), pin);
        }
        Ok(pins)
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
        self.available_snapshots(instance)
            .await?
            .into_iter()
            .filter(|s| s.created.is_some())
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
            .map_err(|e| StepError::build(e.to_string()))?
            .ok_or_else(|| StepError::build(format!("DB instance {id} disappeared")))
    }

    pub(super) async fn database(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let d = &ctx.loaded.desc;
        let db = &d.databases[res.name.as_str()];
        // Before anything is restored: a masking SQL that cannot be trusted ends the run here.
        trusted_masking(ctx, db)?;
        let timeout = db.timeout.unwrap_or(Duration::from_secs(30 * 60));
        let deadline = Instant::now() + timeout;
        let db_name = ctx.render(&format!("databases.{}.name", res.name))?;
        let class = db
            .instance_class()
            .ok_or_else(|| StepError::build(format!("database `{}` has no instance_class for aws", res.name)))?
            .to_string();
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
                self.created(res, ctx, json!({"db_instance_id": inst.id})).await?;
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
                let pin = ctx.run.pins.get(res.name.as_str());
                let restore_time = match pin {
                    Some(Pin::Time(t)) if pitr => Some(*t),
                    _ => None,
                };
                let t = ctx.started(res, "find-backup", None);
                let found: Result<_, StepError> = async {
                    if let Some(at) = restore_time {
                        Ok((format!("{source} at {}", at.format("%Y-%m-%dT%H:%M:%SZ")), None, Some(at)))
                    } else if let (Some(Pin::Snapshot(id)), false) = (pin, pitr) {
                        let s = self.snapshot(source, id).await?;
                        Ok((s.id, s.arn, s.created))
                    } else if pitr {
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
                let (snapshot_id, arn, taken_at) = found.map_err(StepError::nothing_created)?;
                ctx.step(res, "find-backup", t, true, Some(snapshot_id.clone()));
                let t = ctx.started(res, "restore", Some(snapshot_id.clone()));
                let req = RestoreDb {
                    instance_id: id.clone(),
                    source: if pitr { source.clone() } else { snapshot_id.clone() },
                    point_in_time: pitr,
                    restore_time,
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
                    Self::create_failed(&e, format!("cannot restore {snapshot_id} into {id}: {e}{hint}"))
                })?;
                self.created(res, ctx, json!({"db_instance_id": inst.id})).await?;
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
        let what = format!("RDS to make DB instance {} available", instance.id);
        let bound = deadline.saturating_duration_since(Instant::now());
        let ready = ctx.waiting(res, &what, bound, ctx.unless_cancelled(self.wait_db(&instance.id, deadline))).await;
        ctx.step(res, "wait-available", t, ready.is_ok(), None);
        let ready = ready?;

        // Verify what was asked for and correct it: some implementations ignore
        // PubliclyAccessible=false / DeletionProtection=false on restores. The new
        // master password is set in the same call, and never printed.
        let guard = Guard { run_id: ctx.run.run_id.clone() };
        guard.check("DB instance", &ready.id, &ready.tags).map_err(|e| StepError::build(e.to_string()))?;
        let password = ctx.run.password.clone().unwrap_or_else(secrets::generate);
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
                guard.check("DB cluster", cluster, &cluster_tags).map_err(|e| StepError::build(e.to_string()))?;
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
        let what = format!("RDS to apply the changes to DB instance {}", ready.id);
        let bound = deadline.saturating_duration_since(Instant::now());
        let ready = ctx.waiting(res, &what, bound, ctx.unless_cancelled(self.wait_db(&ready.id, deadline))).await?;
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
        let backup = BackupUsed { restore_ms: started.elapsed().as_millis() as u64, ..backup };
        Ok(Output::Database { outputs, backup })
    }

    /// `mask.NAME`: the masking SQL on a copy, once its port is open (from here, or on
    /// the runner), in one transaction; everything that uses the copy waits for it.
    pub(super) async fn mask(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let db = &ctx.loaded.desc.databases[res.name.as_str()];
        let Some(sql) = trusted_masking(ctx, db)? else { return Ok(Output::Nothing) };
        let outputs = ctx
            .tctx
            .get("databases")
            .and_then(|d| d.get(res.name.as_str()))
            .and_then(|o| DatabaseOutputs::deserialize(o).ok())
            .ok_or_else(|| StepError::build(format!("database `{}` has no connection to mask through", res.name)))?;
        let timeout = db.timeout.unwrap_or(Duration::from_secs(30 * 60));
        self.created(res, ctx, json!({})).await?;
        if super::runner::configured(ctx.loaded).is_some() {
            let t = ctx.started(res, "mask", Some("on the runner".into()));
            let r = self.mask_on_runner(res, ctx, &sql, &outputs, timeout).await;
            ctx.step(res, "mask", t, r.is_ok(), None);
            r?;
            return Ok(Output::Nothing);
        }
        // The machine running rehearse must reach the VPC (README): psql from here.
        let t = ctx.started(res, "mask", None);
        let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
        // The connection (and its password) in libpq's environment, never on the
        // command line, where every user of this machine could read it.
        let mut cmd = tokio::process::Command::new("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f"])
            .arg(&sql)
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .envs(outputs.libpq_env())
            .env("PGCONNECT_TIMEOUT", "10");
        let f = crate::sys::process::run_logged(&mut cmd, &log, timeout, ctx.clock)
            .await
            .map_err(|e| StepError::build(format!("cannot run psql for masking: {e}")))?;
        ctx.step(res, "mask", t, f.success(), None);
        if !f.success() {
            return Err(StepError::build(format!(
                "masking SQL on {} failed (this machine must reach the VPC, or use `runner: ssm`)",
                outputs.endpoint
            ))
            .with_log(&log, 10));
        }
        Ok(Output::Nothing)
    }

    pub(super) async fn cluster(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let db = &ctx.loaded.desc.databases[res.name.as_str()];
        trusted_masking(ctx, db)?;
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
        self.created(res, ctx, json!({"db_cluster_id": c.id})).await?;
        self.remember(&res.id, &c.id);
        let deadline = Instant::now() + db.timeout.unwrap_or(Duration::from_secs(30 * 60));
        // The poller retries a failed describe at its next interval: no retry stacked on it.
        let api = &self.api.inner;
        let what = format!("RDS to make the cloned cluster {} available", c.id);
        let bound = deadline.saturating_duration_since(Instant::now());
        let wait = self.clusters.wait(
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
        );
        let r = ctx.waiting(res, &what, bound, wait).await;
        ctx.step(res, "clone", t, r.is_ok(), Some(c.id.clone()));
        r.map_err(|e| StepError::build(e.to_string()))?;
        Ok(Output::Nothing)
    }
}

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// The release on this machine, for the installs that run from here: an `s3://`
    /// artifact downloaded with this identity (a path on this machine as it is), then
    /// unpacked and checked as the local provider does.
    pub(super) async fn release(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let artifact = &ctx.plan.release.artifact;
        let Some((bucket, key)) = s3_location(artifact) else {
            if artifact.contains("://") {
                return Err(StepError::build(format!(
                    "an install on aws runs from this machine, which fetches the release from `s3://BUCKET/KEY` \
                     (or a path here); `{artifact}` is neither"
                ))
                .nothing_created());
            }
            return crate::providers::release::place(res, ctx, &ctx.loaded.resolve(std::path::Path::new(artifact)))
                .await;
        };
        let name = key.rsplit('/').next().unwrap_or(key);
        let dir = ctx.run.work_dir.join("artifact");
        std::fs::create_dir_all(&dir)
            .map_err(|e| StepError::build(format!("cannot create {}: {e}", dir.display())).nothing_created())?;
        let file = dir.join(name);
        let t = ctx.started(res, "download", Some(artifact.clone()));
        let got = {
            let _span = ctx.clock.external();
            self.api.download(bucket, key, &file).await
        };
        ctx.step(res, "download", t, got.is_ok(), got.as_ref().ok().map(|n| format!("{n} bytes")));
        got.map_err(|e| {
            let why = if e.kind == ErrorKind::NotFound { " (no such object: build the release first?)" } else { "" };
            StepError::build(format!("cannot download the release artifact {artifact}: {e}{why}")).nothing_created()
        })?;
        let placed = crate::providers::release::place(res, ctx, &file).await;
        // Best effort: the archive is unpacked (or refused); the run's work directory goes at teardown anyway.
        #[allow(clippy::let_underscore_must_use)]
        let _ = std::fs::remove_dir_all(&dir);
        placed
    }
}

/// The masking SQL of `db`, if it has one, checked as the local provider checks it
/// (`secure_fs::check_input`): it runs with the copy's master password — on a runner, as
/// root there — so a file every user of this machine could write, or one under such a
/// directory, is refused, with nothing created.
pub(super) fn trusted_masking(
    ctx: &Ctx<'_>,
    db: &crate::description::Database,
) -> Result<Option<std::path::PathBuf>, StepError> {
    let Some(m) = &db.masking else { return Ok(None) };
    let path = ctx.loaded.resolve(m);
    crate::sys::secure_fs::check_input(&path)
        .map_err(|e| StepError::build(format!("the masking SQL cannot be trusted: {e}")).nothing_created())?;
    Ok(Some(path))
}

/// The bucket and key of an `s3://BUCKET/KEY` artifact.
pub(crate) fn s3_location(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// The AWS side of the description: what this provider is only ever given (a
/// description for another provider is a caller's mistake, said as such).
fn aws_target<'a>(ctx: &'a Ctx<'_>) -> Result<&'a crate::description::AwsTarget, StepError> {
    ctx.loaded
        .desc
        .aws()
        .ok_or_else(|| StepError::build("the aws provider was given a description for another provider"))
}
