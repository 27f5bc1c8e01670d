//! Creating the run's resources: the provider itself and its bookkeeping (the ids it
//! made, tags, idempotency keys), the run's security group and ingress rules, the DB
//! subnet group, and the release for the installs run from here. The databases' copies
//! are in [`super::databases`], the backups they restore from in [`super::backups`],
//! instances in [`super::instances`]. Each create reports its id as soon as the call
//! returns; a failure says whether anything may have been created.

use super::*;

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
            pool_store: None,
            pooled: Mutex::default(),
        }
    }

    /// Runs claim pool members recorded in `store` (see [`super::pool`]).
    pub fn with_pool_store(self, store: std::sync::Arc<dyn crate::engine::store::ObjectStore>) -> Self {
        AwsProvider { pool_store: Some(store), ..self }
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

    pub(super) fn remember(&self, plan_id: &str, id: &str) {
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
