//! A run's copy from a database's warm pool ([`crate::engine::pool`]): a ready member
//! of the newest snapshot and the current masking is claimed by compare-and-swap in
//! the state store, checked to be what its record says (the pool's, its own, not yet
//! handed over, available), journaled as the run's, retagged to the run (`run-id`,
//! `expires-at`: the two tags a policy lets rehearse move), its record removed, and put
//! in the run's security group with its new password (one modification): the member is the run's now, and its masking is
//! not run again. The member's own run keeps its group and subnet group until it
//! expires (the instance, handed over, is not its to remove).
//!
//! Anything that does not fit is said and the run restores as it would without a pool.

use super::databases::trusted_masking;
use super::*;
use crate::engine::pool::{self as members, Claim, TAG_MEMBER, TAG_POOL};
use sha2::Digest;

/// How long a member's stop (or start) may take: RDS takes minutes.
const STOP_START_BOUND: std::time::Duration = std::time::Duration::from_secs(30 * 60);

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// The copy of `res` from its pool, if one could be had; `None` (said in the
    /// `pool` step) when the run restores instead.
    pub(super) async fn claim_from_pool(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        snapshot: &str,
    ) -> Result<Option<(DbInstance, String)>, StepError> {
        let db = &ctx.loaded.desc.databases[res.name.as_str()];
        let (Some(pool), Some(store)) = (db.pool(), self.pool_store.as_ref()) else { return Ok(None) };
        // A member being made restores; it never takes another member.
        if ctx.plan.tags.contains_key(TAG_MEMBER) {
            return Ok(None);
        }
        let t = ctx.started(res, "pool", None);
        let said = |why: String| {
            ctx.step(res, "pool", t, true, Some(format!("restoring: {why}")));
            Ok(None)
        };
        if ctx.run.cold {
            return said("--cold".into());
        }
        let masking = match trusted_masking(ctx, db)? {
            Some(path) => {
                let bytes = std::fs::read(&path)
                    .map_err(|e| StepError::build(format!("cannot read {}: {e}", path.display())))?;
                Some(sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
            }
            None => None,
        };
        let class = db.aws().map(|a| pool.class(a).to_string()).unwrap_or_default();
        let wanted = members::Wanted { snapshot: snapshot.to_string(), masking, max_age: pool.max_age, class };
        let env = ctx.loaded.desc.name.to_string();
        let now = chrono::Utc::now();
        let won = match members::claim(store.as_ref(), &env, &res.name, &wanted, &ctx.run.run_id, now).await {
            Ok(Claim::Won(r)) => r,
            Ok(Claim::None(why)) => return said(why),
            Err(e) => return said(format!("the pool could not be read: {e}")),
        };
        let member = won.member.member.clone();
        let id = won.member.instance.clone();
        // What the record says, checked on the instance itself.
        let found = self
            .api
            .describe_db_instances(std::slice::from_ref(&id))
            .await
            .map_err(|e| StepError::build(format!("cannot look up pool member {id}: {e}")))?
            .into_iter()
            .find(|d| d.id == id);
        let pool_tag = format!("{env}/{}", res.name);
        let ours = |d: &DbInstance| {
            tag_value(&d.tags, TAG_POOL) == Some(pool_tag.as_str())
                && tag_value(&d.tags, TAG_MEMBER) == Some(member.as_str())
                && tag_value(&d.tags, TAG_RUN) == Some(member.as_str())
        };
        let passing = |s: &str| matches!(s, "stopping" | "starting" | "modifying" | "rebooting" | "backing-up");
        if let Some(d) = found.as_ref().filter(|d| ours(d) && passing(&d.status)) {
            // The pool's member, passing between states (stopping or starting: a fill that
            // gave up waiting for its stop, or RDS starting it by itself after seven days):
            // back to the pool, not taken now. (Deleting, failed: out of it, below.)
            let mut back = won.member.clone();
            back.state = members::State::Ready { ready_at: now };
            // Best effort: a record left claimed is settled by the next `pool fill`.
            #[allow(clippy::let_underscore_must_use)]
            let _ = members::write(store.as_ref(), &won.key, &back, Some(won.etag.clone())).await;
            return said(format!("member {member}'s instance {id} is {}; left in the pool", d.status));
        }
        let fits = found.as_ref().is_some_and(|d| ours(d) && (d.status == "available" || d.status == "stopped"));
        let Some(inst) = found.filter(|_| fits) else {
            // Not the member its record says (gone, or someone else's): out of the pool.
            // Best effort: a record left is settled by the next `pool fill`.
            #[allow(clippy::let_underscore_must_use)]
            let _ = members::remove(store.as_ref(), &won).await;
            // One short as well: its record is gone.
            let claimed =
                crate::engine::events::Event::PoolClaimed { database: res.name.clone(), member: member.clone() };
            ctx.reporter.event(claimed);
            return said(format!("member {member}'s instance {id} is gone or not the pool's"));
        };
        // Journaled first: from here a teardown of this run removes it.
        self.created(res, ctx, json!({"db_instance_id": id})).await?;
        let tags = [
            Tag { key: TAG_RUN.into(), value: ctx.run.run_id.clone() },
            Tag {
                key: TAG_EXPIRES.into(),
                value: ctx.run.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        ];
        let tagged = match inst.arn.clone() {
            Some(arn) => self.api.add_tags(&arn, &tags).await.map_err(|e| e.to_string()),
            None => Err("it was listed without its ARN".to_string()),
        };
        if let Err(e) = tagged {
            // Not taken: the member goes back to the pool (the run's teardown leaves an
            // instance that still carries its member's own run id).
            let mut back = won.member.clone();
            back.state = members::State::Ready { ready_at: now };
            // Best effort: a record left claimed is settled by the next `pool fill`.
            #[allow(clippy::let_underscore_must_use)]
            let _ = members::write(store.as_ref(), &won.key, &back, Some(won.etag.clone())).await;
            return Err(StepError::build(format!("cannot take pool member {id} for the run: {e}")));
        }
        self.mark_owned(&id);
        if let Err(e) = members::remove(store.as_ref(), &won).await {
            tracing::warn!("pool member {member} stays recorded as claimed: {e}");
        }
        // The pool is one short from here, whatever happens to the run.
        ctx.reporter
            .event(crate::engine::events::Event::PoolClaimed { database: res.name.clone(), member: member.clone() });
        if let Ok(mut p) = self.pooled.lock() {
            p.insert(res.name.clone(), member.clone());
        }
        let age = crate::description::format_duration((now - won.member.made_at).to_std().unwrap_or_default());
        let mut detail = format!("member {member} ({id}, made {age} ago)");
        if inst.status == "stopped" {
            // Kept stopped: started now (the run waits for it to be available next).
            // Journaled and retagged already: a failure here tears it down with the run.
            self.start_member(&id)
                .await
                .map_err(|e| StepError::build(format!("cannot start pool member {id}: {e}")))?;
            detail.push_str(", kept stopped: started");
        }
        ctx.step(res, "pool", t, true, Some(detail));
        Ok(Some((inst, member)))
    }

    /// Stops the member `member` of `pool` (`keep: stopped`) and waits until it is
    /// stopped: only an instance that is verifiably that member (its pool, its name,
    /// still its own run id) and available. A stop whose answer was lost is taken by
    /// what the instance's status then says.
    pub async fn stop_member(&self, pool: &str, member: &str, id: &str) -> Result<(), String> {
        let ids = [id.to_string()];
        let found = self.api.describe_db_instances(&ids).await.map_err(|e| e.to_string())?;
        let Some(d) = found.into_iter().find(|d| d.id == id) else { return Err(format!("{id} is gone")) };
        if tag_value(&d.tags, TAG_POOL) != Some(pool)
            || tag_value(&d.tags, TAG_MEMBER) != Some(member)
            || tag_value(&d.tags, TAG_RUN) != Some(member)
        {
            return Err(format!("{id} is not pool {pool}'s member {member}"));
        }
        if d.status != "stopped" {
            if let Err(e) = self.api.stop_db_instance(id).await {
                let now = self.status_of(id).await;
                if !matches!(now.as_deref(), Some("stopping" | "stopped")) {
                    return Err(format!("cannot stop {id}: {e}"));
                }
            }
        }
        let deadline = Instant::now() + STOP_START_BOUND;
        self.wait_db_in(id, "stopped", deadline).await.map(|_| ()).map_err(|e| e.message)
    }

    /// Starts a claimed member kept stopped. A start whose answer was lost is taken by
    /// what the instance's status then says.
    async fn start_member(&self, id: &str) -> Result<(), String> {
        if let Err(e) = self.api.start_db_instance(id).await {
            let now = self.status_of(id).await;
            if !matches!(now.as_deref(), Some("starting" | "available")) {
                return Err(e.to_string());
            }
        }
        Ok(())
    }

    async fn status_of(&self, id: &str) -> Option<String> {
        let ids = [id.to_string()];
        let found = self.api.describe_db_instances(&ids).await.ok()?;
        found.into_iter().find(|d| d.id == id).map(|d| d.status)
    }

    /// The members as they are: a claim past its lease settled by what its instance's tags
    /// say ([`members::Dead`]), and a record whose instance is gone (swept at its expiry,
    /// or removed by hand) removed; the rest returned.
    pub async fn settle_pool(
        &self,
        store: &dyn crate::engine::store::ObjectStore,
        all: Vec<members::Read>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<members::Read>, members::PoolError> {
        let ids: Vec<String> = all.iter().map(|r| r.member.instance.clone()).collect();
        let Ok(found) = self.api.describe_db_instances(&ids).await else {
            // Nothing is settled on a guess: the records stay as they are.
            return Ok(all);
        };
        let mut live = Vec::new();
        for r in all {
            let inst = found.iter().find(|d| d.id == r.member.instance);
            let tag = |k: &str| inst.and_then(|d| d.tags.iter().find(|t| t.key == k).map(|t| t.value.clone()));
            if members::dead_claim(&r, now) {
                let dead = match tag(TAG_RUN) {
                    None => members::Dead::Gone,
                    Some(run) if run == r.member.member => members::Dead::NotHandedOver,
                    Some(_) => members::Dead::HandedOver,
                };
                tracing::info!("{}: a claim past its lease ({dead:?}): settled", r.member.member);
                members::settle_dead(store, &r, dead, now).await?;
                if dead == members::Dead::NotHandedOver {
                    if let Some(back) = members::read(store, &r.key).await? {
                        live.push(back);
                    }
                }
                continue;
            }
            let restoring = matches!(r.member.state, members::State::Restoring);
            if inst.is_none() && !restoring {
                tracing::info!("{}: its instance {} is gone: out of the pool", r.member.member, r.member.instance);
                members::remove(store, &r).await?;
                continue;
            }
            live.push(r);
        }
        Ok(live)
    }

    /// The members among `records` whose instance is what its record says: the pool's
    /// (`pool`, `ENV/DB`), named for its member and still carrying its member's own run
    /// id. Only those are torn down by `pool fill` or `pool drain`: a forged record never
    /// turns into the teardown of another run.
    /// An error when the instances cannot be listed: nothing is retired on a guess.
    pub async fn verified_members(
        &self,
        pool: &str,
        records: &[members::Read],
    ) -> Result<std::collections::BTreeSet<String>, ApiError> {
        let ids: Vec<String> = records.iter().map(|r| r.member.instance.clone()).collect();
        let found = if ids.is_empty() { Vec::new() } else { self.api.describe_db_instances(&ids).await? };
        Ok(records
            .iter()
            .filter(|r| {
                let m = r.member.member.as_str();
                r.member.instance == Self::rds_id(m, r.key.rsplit('/').nth(1).unwrap_or_default())
                    && found.iter().any(|d| {
                        d.id == r.member.instance
                            && tag_value(&d.tags, TAG_POOL) == Some(pool)
                            && tag_value(&d.tags, TAG_MEMBER) == Some(m)
                            && tag_value(&d.tags, TAG_RUN) == Some(m)
                    })
            })
            .map(|r| r.member.member.clone())
            .collect())
    }

    /// The pool member the copy of `name` is, when it came from a pool (masked already).
    pub(super) fn pooled(&self, name: &str) -> Option<String> {
        self.pooled.lock().ok().and_then(|p| p.get(name).cloned())
    }
}
