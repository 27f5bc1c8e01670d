//! The databases' copies on RDS: an instance restored from a backup or in an Aurora
//! clone (`database`, in named steps: find the backup, restore, wait, secure), the
//! clone itself (`cluster`), and the masking SQL run on a copy (`mask`).

use super::*;
use serde::Deserialize;

/// Where a restored instance goes: the run's security group and DB subnet group.
struct Placement {
    security_group_id: String,
    subnet_group: String,
}

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    async fn wait_db(&self, id: &str, deadline: Instant) -> Result<DbInstance, StepError> {
        self.wait_db_in(id, "available", deadline).await
    }

    /// Waits for the DB instance `id` to be in `status` (`available`; `stopped` for a
    /// pool member kept stopped).
    pub(super) async fn wait_db_in(&self, id: &str, status: &str, deadline: Instant) -> Result<DbInstance, StepError> {
        // The poller retries a failed describe at its next interval: no retry stacked on it.
        let api = &self.api.inner;
        self.databases
            .wait(
                id,
                |ids| async move { api.describe_db_instances(&ids).await },
                |d| d.id.clone(),
                |d| match d.map(|d| d.status.as_str()) {
                    Some(s) if s == status => Ok(true),
                    Some(s @ ("failed" | "incompatible-restore" | "incompatible-parameters" | "restore-error")) => {
                        Err(super::poller::Never(format!("DB instance {id} ended in state `{s}`")))
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

    /// `database.NAME`: a copy of a production database as an RDS instance (restored
    /// from a backup, or an instance in the run's Aurora clone), made private, given
    /// the run's own password, and verified.
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
        let placement = Placement {
            security_group_id: self.id_of("network.security-group")?,
            subnet_group: self.id_of("network.db-subnet-group")?,
        };
        let started = std::time::Instant::now();

        let (instance, backup) = match (&db.source, db.restore) {
            (DatabaseSource::AuroraCluster(source), RestoreMode::AuroraClone) => {
                self.instance_in_clone(res, ctx, source, &id, &class).await?
            }
            (DatabaseSource::RdsInstance(source), mode) => {
                self.restore_instance(res, ctx, source, mode, &id, class, placement).await?
            }
            (other, _) => {
                return Err(StepError::build(format!("the aws provider cannot restore from `{}`", other.key())))
            }
        };

        let _span = ctx.clock.external();
        let ready = self.wait_available(res, ctx, &instance.id, deadline).await?;
        let password = ctx.run.password.clone().unwrap_or_else(secrets::generate);
        let ready = self.secure(res, ctx, ready, &password, deadline).await?;
        let outputs = database_outputs(&ready, password, db_name);
        let backup = BackupUsed { restore_ms: started.elapsed().as_millis() as u64, ..backup };
        Ok(Output::Database { outputs, backup })
    }

    /// An instance in the run's copy-on-write clone of the production cluster.
    async fn instance_in_clone(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        source: &str,
        id: &str,
        class: &str,
    ) -> Result<(DbInstance, BackupUsed), StepError> {
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
            .create_cluster_instance(id, &cluster_id, class, &engine, &Self::tags(ctx, res))
            .await
            .map_err(|e| StepError::build(format!("cannot create an instance in cluster {cluster_id}: {e}")))?;
        self.created(res, ctx, json!({"db_instance_id": inst.id})).await?;
        ctx.step(res, "create-instance", t, true, None);
        let backup = BackupUsed {
            database: res.name.clone(),
            source_kind: "aurora_cluster".into(),
            source: source.to_string(),
            backup: format!("copy-on-write clone {cluster_id}"),
            arn: None,
            taken_at: Some(chrono::Utc::now()),
            restore: "aurora-clone".into(),
            method: "clone".into(),
            restore_ms: 0,
        };
        Ok((inst, backup))
    }

    /// An instance restored from the production instance's backup: found (or pinned)
    /// first; without one, nothing is created.
    #[allow(clippy::too_many_arguments)]
    async fn restore_instance(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        source: &str,
        mode: RestoreMode,
        id: &str,
        class: String,
        placement: Placement,
    ) -> Result<(DbInstance, BackupUsed), StepError> {
        let pitr = mode == RestoreMode::LatestRestorableTime;
        let pin = ctx.run.pins.get(res.name.as_str());
        let restore_time = match pin {
            Some(Pin::Time(t)) if pitr => Some(*t),
            _ => None,
        };
        let t = ctx.started(res, "find-backup", None);
        let found = self.find_backup(source, pin, pitr, restore_time).await;
        // No backup, no restore: nothing of this database was created.
        let (snapshot_id, arn, taken_at) = found.map_err(StepError::nothing_created)?;
        ctx.step(res, "find-backup", t, true, Some(snapshot_id.clone()));
        let used = |method: &str| BackupUsed {
            database: res.name.clone(),
            source_kind: "rds_instance".into(),
            source: source.to_string(),
            backup: snapshot_id.clone(),
            arn: arn.clone(),
            taken_at,
            restore: mode.as_str().into(),
            method: method.into(),
            restore_ms: 0,
        };
        if !pitr {
            if let Some((inst, _member)) = self.claim_from_pool(res, ctx, &snapshot_id).await? {
                return Ok((inst, used("pool")));
            }
        }
        let t = ctx.started(res, "restore", Some(snapshot_id.clone()));
        let req = RestoreDb {
            instance_id: id.to_string(),
            source: if pitr { source.to_string() } else { snapshot_id.clone() },
            point_in_time: pitr,
            restore_time,
            instance_class: class,
            subnet_group: placement.subnet_group,
            security_group_id: placement.security_group_id,
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
        Ok((inst, used("cold")))
    }

    /// Waits for RDS to make the new instance available.
    async fn wait_available(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        id: &str,
        deadline: Instant,
    ) -> Result<DbInstance, StepError> {
        let t = ctx.started(res, "wait-available", None);
        let what = format!("RDS to make DB instance {id} available");
        let bound = deadline.saturating_duration_since(Instant::now());
        let ready = ctx.waiting(res, &what, bound, ctx.unless_cancelled(self.wait_db(id, deadline))).await;
        ctx.step(res, "wait-available", t, ready.is_ok(), None);
        ready
    }

    /// Verifies what was asked for and corrects it: some implementations ignore
    /// PubliclyAccessible=false / DeletionProtection=false on restores. The new master
    /// password is set in the same call, and never printed. Refuses an instance that is
    /// still public or protected afterwards.
    async fn secure(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        ready: DbInstance,
        password: &str,
        deadline: Instant,
    ) -> Result<DbInstance, StepError> {
        let guard = Guard { run_id: ctx.run.run_id.clone() };
        guard.check("DB instance", &ready.id, &ready.tags).map_err(|e| StepError::build(e.to_string()))?;
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
                    .secure_db_cluster(cluster, password)
                    .await
                    .map_err(|e| StepError::build(format!("cannot secure cluster {cluster} (new password): {e}")))?;
                self.api
                    .secure_db_instance(&ready.id, None, None)
                    .await
                    .map_err(|e| StepError::build(format!("cannot make {} private: {e}", ready.id)))?;
            }
            None => {
                // A pool member goes into the run's group in the same change.
                let group = match self.pooled(&res.name) {
                    Some(_) => Some(self.id_of("network.security-group")?),
                    None => None,
                };
                self.api.secure_db_instance(&ready.id, Some(password), group.as_deref()).await.map_err(|e| {
                    StepError::build(format!(
                        "cannot secure {} (private, no deletion protection, new password{}): {e}",
                        ready.id,
                        if group.is_some() { ", the run's security group" } else { "" }
                    ))
                })?
            }
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
        Ok(ready)
    }

    /// `mask.NAME`: the masking SQL on a copy, once its port is open (from here, or on
    /// the runner), in one transaction; everything that uses the copy waits for it.
    pub(super) async fn mask(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let db = &ctx.loaded.desc.databases[res.name.as_str()];
        let Some(sql) = trusted_masking(ctx, db)? else { return Ok(Output::Nothing) };
        if let Some(member) = self.pooled(&res.name) {
            self.created(res, ctx, json!({})).await?;
            let t = ctx.started(res, "mask", None);
            ctx.step(res, "mask", t, true, Some(format!("masked in the pool (member {member})")));
            return Ok(Output::Nothing);
        }
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
                Some("failed") => Err(super::poller::Never(format!("cluster {id} failed"))),
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

/// The connection to a secured copy: the run's password, the database the description
/// names.
fn database_outputs(ready: &DbInstance, password: String, db_name: String) -> DatabaseOutputs {
    let host = ready.address.clone().unwrap_or_default();
    let port = ready.port.unwrap_or(5432).to_string();
    let user = ready.master_username.clone().unwrap_or_else(|| "postgres".into());
    DatabaseOutputs::new(host, port, db_name, user, password)
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
