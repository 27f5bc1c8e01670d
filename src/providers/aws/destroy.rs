//! Removing the run's resources: through the ownership guard, by the id the journal
//! holds or, for a resource journaled without one, by its tags and name, patiently
//! (listings are eventually consistent); then waiting until each is gone, so what it
//! depended on can go next. Failures are typed ([`DestroyError`]): in use,
//! unavailable, denied, not ours.

use super::*;

type Found = Result<Option<String>, DestroyError>;

/// An API call's failure as teardown sees it: whether another attempt can help.
pub(super) fn api_failure(e: ApiError) -> DestroyError {
    let kind = match e.kind {
        ErrorKind::InUse => DestroyErrorKind::InUse,
        ErrorKind::Throttled | ErrorKind::ServerError | ErrorKind::Unreachable | ErrorKind::NotSent => {
            DestroyErrorKind::Unavailable
        }
        ErrorKind::Denied => DestroyErrorKind::Denied,
        ErrorKind::NotFound | ErrorKind::Refused => DestroyErrorKind::Failed,
    };
    DestroyError::caused(kind, e.to_string(), e)
}

/// A wait for a resource to go that ended without seeing it go (a timeout, a describe
/// that kept failing): another attempt can still succeed.
fn not_gone(why: String) -> DestroyError {
    DestroyError::new(DestroyErrorKind::Unavailable, why)
}

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// Removes one journaled resource: by its id, or — journaled without one — by its
    /// tags, looked for patiently. Ingress rules live and die with their group.
    pub(super) async fn destroy_entry(&self, entry: &Entry, meta: &RunMeta) -> Result<(), DestroyError> {
        if entry.kind == Kind::AwsIngress {
            return Ok(());
        }
        let guard = Guard { run_id: meta.run_id.clone() };
        let id = match handle_id(entry) {
            Some(id) => Some(id),
            None => self.find_unjournaled(entry, meta).await?,
        };
        match id {
            Some(id) => self.destroy_id(entry.kind, &id, &guard).await,
            None => Ok(()),
        }
    }

    /// Several resources of one kind: instances in one batch (one describe guards them
    /// all, one call terminates them, their waits share the batched poller); anything
    /// else each on its own, all at once.
    pub(super) async fn destroy_batch(&self, entries: &[&Entry], meta: &RunMeta) -> Vec<Result<(), DestroyError>> {
        if entries.len() < 2 || entries.iter().any(|e| e.kind != Kind::AwsInstance) {
            // Each through `destroy`, which knows the local workspace (a batch of one is
            // any kind at all, the workspace included).
            return futures_util::future::join_all(entries.iter().map(|e| Provider::destroy(self, e, meta))).await;
        }
        let guard = Guard { run_id: meta.run_id.clone() };
        // Those without an id are looked for as patiently as one on its own would be,
        // all at once.
        let ids: Vec<Found> = futures_util::future::join_all(entries.iter().map(|e| async move {
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
            Err(e) => return entries.iter().map(|_| Err(api_failure(e.clone()))).collect(),
        };
        // Each id: gone already, refused by the guard, or to terminate.
        let verdict: Vec<Result<bool, DestroyError>> = ids
            .iter()
            .map(|r| match r {
                Err(e) => Err(e.clone()),
                Ok(None) => Ok(false),
                Ok(Some(id)) => match found.iter().find(|i| &i.id == id) {
                    None => Ok(false),
                    Some(i) if i.state == "terminated" => Ok(false),
                    Some(i) => guard.check("instance", id, &i.tags).map_err(DestroyError::from).map(|()| {
                        self.mark_owned(id);
                        true
                    }),
                },
            })
            .collect();
        let to_terminate: Vec<String> = ids
            .iter()
            .zip(&verdict)
            .filter(|(_, v)| matches!(v, Ok(true)))
            .filter_map(|(r, _)| r.as_ref().ok().cloned().flatten())
            .collect();
        if !to_terminate.is_empty() {
            if let Err(e) = self.api.terminate_instances(&to_terminate).await {
                return entries.iter().map(|_| Err(api_failure(e.clone()))).collect();
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

    /// Destroys instances one by one: those with an id through the single path; those
    /// without one were looked for already and are gone.
    async fn each_instance(&self, ids: &[Found], guard: &Guard) -> Vec<Result<(), DestroyError>> {
        futures_util::future::join_all(ids.iter().map(|r| async move {
            match r {
                Err(e) => Err(e.clone()),
                Ok(None) => Ok(()),
                Ok(Some(id)) => self.destroy_id(Kind::AwsInstance, id, guard).await,
            }
        }))
        .await
    }

    /// A resource the journal has only an intent for: the run died or was stopped
    /// mid-create. It is looked up by its tags (or key); one just created may not be
    /// listed yet (eventual consistency), so "not found" is believed only after it has
    /// held for [`UNJOURNALED_PATIENCE`].
    async fn find_unjournaled(&self, entry: &Entry, meta: &RunMeta) -> Found {
        // Counted from the intent: a run that died long ago is looked at once.
        let age = entry.intent_at.and_then(|at| (chrono::Utc::now() - at).to_std().ok()).unwrap_or_default();
        find_patiently(|| self.find_by_tag(entry, meta), UNJOURNALED_PATIENCE.saturating_sub(age)).await
    }

    /// Finds a resource the journal has only an intent for, by its tags.
    async fn find_by_tag(&self, entry: &Entry, meta: &RunMeta) -> Found {
        let mine = |tags: &[Tag]| {
            tag_value(tags, TAG_RUN) == Some(meta.run_id.as_str())
                && tag_value(tags, TAG_RESOURCE) == Some(entry.id.as_str())
        };
        Ok(match entry.kind {
            Kind::AwsInstance => self
                .api
                .instances_tagged(TAG_RUN)
                .await
                .map_err(api_failure)?
                .into_iter()
                .find(|i| mine(&i.tags) && i.state != "terminated")
                .map(|i| i.id),
            Kind::AwsSecurityGroup => self
                .api
                .security_groups_tagged(TAG_RUN)
                .await
                .map_err(api_failure)?
                .into_iter()
                .find(|g| mine(&g.tags))
                .map(|g| g.id),
            // RDS identifiers are the journaled key: one describe, not a listing.
            Kind::AwsDbInstance => {
                let found = match &entry.key {
                    Some(k) => one(self.api.describe_db_instances(std::slice::from_ref(k)).await, |d| &d.id == k)?
                        .into_iter()
                        .collect(),
                    None => self.api.db_instances_all().await.map_err(api_failure)?,
                };
                found.into_iter().find(|d| mine(&d.tags)).map(|d| d.id)
            }
            Kind::AwsDbCluster => {
                let found = match &entry.key {
                    Some(k) => one(self.api.describe_db_clusters(std::slice::from_ref(k)).await, |c| &c.id == k)?
                        .into_iter()
                        .collect(),
                    None => self.api.db_clusters_all().await.map_err(api_failure)?,
                };
                found.into_iter().find(|c| mine(&c.tags)).map(|c| c.id)
            }
            Kind::AwsDbSubnetGroup => {
                let name = entry.key.clone().unwrap_or_else(|| Self::group_name(&meta.run_id));
                match self.api.db_subnet_group_tags(&name).await.map_err(api_failure)? {
                    Some(tags) if tag_value(&tags, TAG_RUN) == Some(meta.run_id.as_str()) => Some(name),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// Destroys one resource by provider id, through the guard, and waits until it is
    /// gone (so what depends on it can go next). Gone already counts as done.
    pub(crate) async fn destroy_id(&self, kind: Kind, id: &str, guard: &Guard) -> Result<(), DestroyError> {
        let deadline = Instant::now() + Duration::from_secs(45 * 60);
        let api = &self.api;
        match kind {
            Kind::AwsInstance => {
                let describe = || async move { one(api.describe_instances(&[id.to_string()]).await, |i| i.id == id) };
                let Some(inst) = find_patiently(describe, LISTING_PATIENCE).await? else { return Ok(()) };
                if inst.state == "terminated" {
                    return Ok(());
                }
                guard.check("instance", id, &inst.tags)?;
                self.mark_owned(id);
                api.terminate_instances(&[id.to_string()]).await.map_err(api_failure)?;
                self.wait_terminated(id, deadline).await
            }
            Kind::AwsDbInstance => {
                let find = || async move { one(api.describe_db_instances(&[id.to_string()]).await, |d| d.id == id) };
                let Some(db) = find().await? else { return Ok(()) };
                // A pool member this run made and a run since claimed: that run's now.
                let member = tag_value(&db.tags, crate::engine::pool::TAG_MEMBER);
                let owner = tag_value(&db.tags, TAG_RUN);
                if member == Some(guard.run_id.as_str())
                    && owner.is_some_and(|o| o != guard.run_id && crate::sys::state::valid_run_id(o))
                {
                    return Ok(());
                }
                // A pool member this run journaled claiming it, but never took (it still
                // carries its own run id): the pool's, left to it.
                if member.is_some_and(|m| m != guard.run_id && crate::sys::state::valid_run_id(m)) && owner == member {
                    return Ok(());
                }
                guard.check("DB instance", id, &db.tags)?;
                self.mark_owned(id);
                if db.status != "deleting" {
                    if db.deletion_protection {
                        api.secure_db_instance(id, None, None).await.map_err(api_failure)?;
                    }
                    let deleting = || async { Ok(find().await?.is_none_or(|d| d.status == "deleting")) };
                    retry_in_use(|| api.delete_db_instance(id), deleting).await?;
                }
                let inner = &self.api.inner;
                let describe = |ids: Vec<String>| async move { inner.describe_db_instances(&ids).await };
                wait_gone(&self.databases, id, describe, |d| (d.id.clone(), d.status.clone()), deadline).await
            }
            Kind::AwsDbCluster => {
                let find = || async move { one(api.describe_db_clusters(&[id.to_string()]).await, |c| c.id == id) };
                let Some(c) = find().await? else { return Ok(()) };
                guard.check("DB cluster", id, &c.tags)?;
                self.mark_owned(id);
                if c.status != "deleting" {
                    // A clone may carry the source's deletion protection (a run killed
                    // before its secure step): lift it, with a throwaway password.
                    if c.deletion_protection {
                        api.secure_db_cluster(id, &secrets::generate()).await.map_err(api_failure)?;
                    }
                    // Its instances may still be on their way out.
                    let deleting = || async { Ok(find().await?.is_none_or(|c| c.status == "deleting")) };
                    retry_in_use(|| api.delete_db_cluster(id), deleting).await?;
                }
                let inner = &self.api.inner;
                let describe = |ids: Vec<String>| async move { inner.describe_db_clusters(&ids).await };
                wait_gone(&self.clusters, id, describe, |c| (c.id.clone(), c.status.clone()), deadline).await
            }
            Kind::AwsDbSubnetGroup => {
                let Some(tags) = api.db_subnet_group_tags(id).await.map_err(api_failure)? else { return Ok(()) };
                guard.check("DB subnet group", id, &tags)?;
                self.mark_owned(id);
                retry_in_use(|| api.delete_db_subnet_group(id), never).await
            }
            Kind::AwsSecurityGroup => {
                let describe =
                    || async move { one(api.describe_security_groups(&[id.to_string()]).await, |g| g.id == id) };
                let Some(g) = find_patiently(describe, LISTING_PATIENCE).await? else { return Ok(()) };
                guard.check("security group", id, &g.tags)?;
                self.mark_owned(id);
                retry_in_use(|| api.delete_security_group(id), never).await
            }
            _ => Ok(()),
        }
    }

    /// Waits (through the batched poller) until an instance is terminated or gone.
    pub(super) async fn wait_terminated(&self, id: &str, deadline: Instant) -> Result<(), DestroyError> {
        self.wait_instance(id, |i| Ok(i.is_none_or(|i| i.state == "terminated")), deadline)
            .await
            .map(|_| ())
            .map_err(|e| not_gone(e.to_string()))
    }

    /// Waits (the batched poller) until `done` says instance `id` is where it should be.
    pub(super) async fn wait_instance(
        &self,
        id: &str,
        done: impl Fn(Option<&Instance>) -> Result<bool, super::poller::Never>,
        deadline: Instant,
    ) -> Result<Option<Instance>, super::poller::WaitError> {
        // The poller retries a failed describe at its next interval: no retry stacked on it.
        let api = &self.api.inner;
        self.instances
            .wait(
                id,
                |ids| async move { api.describe_instances(&ids).await },
                |i| i.id.clone(),
                done,
                |i| i.map(|i| i.state.clone()).unwrap_or_else(|| "gone".into()),
                deadline,
            )
            .await
    }
}

/// How long an EC2 resource known by id must stay unlisted before teardown believes it
/// is gone: a terminated instance stays listed as `terminated`, so a real absence is
/// rare and costs this only then.
const LISTING_PATIENCE: Duration = Duration::from_secs(60);

/// What `describe` finds, looked for again with backoff (1 s doubling to 10 s) until
/// `patience` has passed: listings are eventually consistent, so right after a create
/// "not found" is not believed at once. The last look is at the deadline.
async fn find_patiently<T, F, Fut>(mut describe: F, patience: Duration) -> Result<Option<T>, DestroyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, DestroyError>>,
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

/// Waits (through the batched `poller`) until `id` is no longer listed; a describe
/// answering "not found" counts as not listed. `id_status` gives an item's id and status.
async fn wait_gone<T: Clone, F, Fut>(
    poller: &Poller<T>,
    id: &str,
    describe: F,
    id_status: impl Fn(&T) -> (String, String),
    deadline: Instant,
) -> Result<(), DestroyError>
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
        .map_err(|e| not_gone(e.to_string()))
}

/// The one element of a describe whose id is `id`; "not found" is `None`.
fn one<T>(found: ApiResult<Vec<T>>, is: impl Fn(&T) -> bool) -> Result<Option<T>, DestroyError> {
    match found {
        Ok(v) => Ok(v.into_iter().find(is)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(api_failure(e)),
    }
}

/// Retries a delete refused because something still uses the resource
/// (`DependencyViolation`: an instance still terminating; a cluster whose instances
/// are still leaving), with backoff, for up to ten minutes — unless `under_way` says
/// its deletion has begun already (an earlier attempt of this delete ran before its
/// answer was lost) or it is gone. Gone counts as deleted.
async fn retry_in_use<F, Fut, U, UFut>(mut call: F, mut under_way: U) -> Result<(), DestroyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ApiResult<()>>,
    U: FnMut() -> UFut,
    UFut: std::future::Future<Output = Result<bool, DestroyError>>,
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
                    return Err(api_failure(e));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
            Err(e) => return Err(api_failure(e)),
        }
    }
}

/// For resources whose deletion is immediate: never "under way".
async fn never() -> Result<bool, DestroyError> {
    Ok(false)
}

/// The provider id a journal handle holds.
pub(super) fn handle_id(entry: &Entry) -> Option<String> {
    let h: super::AwsHandle = entry.handle.as_ref()?.decode("AWS resource").ok()?;
    h.id().map(str::to_string)
}

/// The handle of a resource of `kind` known by its provider id `id`, shaped as its
/// create journals it (what [`handle_id`] reads back).
pub(super) fn handle_of(kind: Kind, id: &str) -> crate::engine::provider::Handle {
    let key = match kind {
        Kind::AwsInstance => "instance_id",
        Kind::AwsDbInstance => "db_instance_id",
        Kind::AwsDbCluster => "db_cluster_id",
        Kind::AwsSecurityGroup => "group_id",
        _ => "name",
    };
    crate::engine::provider::Handle::from(serde_json::json!({ key: id }))
}

/// The teardown order of the AWS provider's kinds, users before what they use:
/// instances and databases first (they use the groups), then clusters (and the
/// runner's keys, once the runner whose agent writes them is gone), then the subnet
/// group and the security group, then the run's local workspace. Teardown from a
/// journal and the listing of what is tagged both follow it.
pub(super) fn rank(kind: Kind) -> Option<u8> {
    match kind {
        // A game day's fault left journaled goes with the first rank: what it hit is
        // removed there too.
        Kind::AwsInstance | Kind::AwsDbInstance | Kind::Install | Kind::Mask | Kind::Fault => Some(0),
        Kind::AwsDbCluster | Kind::AwsS3Prefix => Some(1),
        Kind::AwsDbSubnetGroup | Kind::AwsSecurityGroup | Kind::AwsIngress | Kind::LocalRelease => Some(2),
        Kind::Workspace => Some(3),
        _ => None,
    }
}
