//! Everything rehearse tagged in a region — what `down` without a journal and `sweep`
//! work from ([`Provider::discover`]) — and the read-only lookups `plan
//! --resolve-backups` makes.

use super::*;
use crate::engine::discover::{DiscoverError, Marked};

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// Every resource in the region carrying a `rehearse:run-id` tag, in teardown order.
    pub async fn tagged(&self) -> ApiResult<Vec<Tagged>> {
        let e = |e: ApiError| e;
        let has = |t: &[Tag]| tag_value(t, TAG_RUN).is_some();
        let mut out = Vec::new();
        for i in self.api.instances_tagged(TAG_RUN).await.map_err(e)? {
            if i.state != "terminated" && has(&i.tags) {
                let name = i.client_token.clone().unwrap_or_default();
                out.push(Tagged { kind: Kind::AwsInstance, id: i.id, name, protected: false, arn: None, tags: i.tags });
            }
        }
        for d in self.api.db_instances_all().await.map_err(e)? {
            if has(&d.tags) {
                let (name, protected) = (d.id.clone(), d.deletion_protection);
                out.push(Tagged { kind: Kind::AwsDbInstance, id: d.id, name, protected, arn: d.arn, tags: d.tags });
            }
        }
        for c in self.api.db_clusters_all().await.map_err(e)? {
            if has(&c.tags) {
                let (name, protected) = (c.id.clone(), c.deletion_protection);
                out.push(Tagged { kind: Kind::AwsDbCluster, id: c.id, name, protected, arn: c.arn, tags: c.tags });
            }
        }
        for g in self.api.db_subnet_groups_all().await.map_err(e)? {
            // Only rehearse's own naming is worth a tag lookup each.
            if g.name.starts_with("rehearse-") {
                if let Some(tags) = self.api.db_subnet_group_tags(&g.name).await.map_err(e)? {
                    if has(&tags) {
                        let name = g.name.clone();
                        out.push(Tagged {
                            kind: Kind::AwsDbSubnetGroup,
                            id: g.name,
                            name,
                            protected: false,
                            arn: g.arn,
                            tags,
                        });
                    }
                }
            }
        }
        for g in self.api.security_groups_tagged(TAG_RUN).await.map_err(e)? {
            if has(&g.tags) {
                let name = g.name.clone();
                out.push(Tagged {
                    kind: Kind::AwsSecurityGroup,
                    id: g.id,
                    name,
                    protected: false,
                    arn: None,
                    tags: g.tags,
                });
            }
        }
        // In teardown order (users before what they use), the one order teardown uses.
        out.sort_by_key(|t| destroy::rank(t.kind));
        Ok(out)
    }

    /// What carries the tags of run `run_id` (or of any run), as the engine discovers
    /// it: each with the handle teardown removes it by, its tagged expiry, creation,
    /// environment and stage, and — when rehearse's names or deletion protection say
    /// it may not be rehearse's ([`Tagged::evidence`]) — why it is doubted.
    pub(super) async fn marked(&self, run_id: Option<&str>) -> Result<Vec<Marked>, DiscoverError> {
        let marks = match run_id {
            Some(run) => format!("tagged {TAG_RUN}={run}"),
            None => format!("tagged {TAG_RUN}"),
        };
        let tagged = self.tagged().await.map_err(|e| DiscoverError {
            marks,
            message: e.to_string(),
            source: Some(std::sync::Arc::new(e)),
        })?;
        Ok(tagged
            .into_iter()
            .filter(|t| run_id.is_none_or(|r| tag_value(&t.tags, TAG_RUN) == Some(r)))
            .map(|t| {
                let run = tag_value(&t.tags, TAG_RUN).unwrap_or_default().to_string();
                let stage = tag_value(&t.tags, TAG_STAGE).map(|stage| crate::engine::stage::StageRef {
                    stage: stage.to_string(),
                    generation: tag_value(&t.tags, TAG_GENERATION).and_then(|n| n.parse().ok()).unwrap_or(0),
                });
                Marked {
                    id: tag_value(&t.tags, TAG_RESOURCE)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{}:{}", t.kind, t.id)),
                    kind: t.kind,
                    handle: destroy::handle_of(t.kind, &t.id),
                    provider_id: t.id.clone(),
                    expires_at: tag_time(&t.tags, TAG_EXPIRES),
                    created_at: tag_time(&t.tags, TAG_CREATED),
                    environment: tag_value(&t.tags, TAG_ENV).map(str::to_string),
                    stage,
                    doubt: t.evidence().err().map(|d| d.to_string()),
                    run_id: run,
                }
            })
            .collect())
    }
}

/// The time in an RFC 3339 tag, if it holds one.
fn tag_time(tags: &[Tag], key: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    tag_value(tags, key)
        .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
        .map(|d| d.with_timezone(&chrono::Utc))
}

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// Fills each AWS database restore in `plan` with the backup it would use (the
    /// newest available snapshot, or the latest restorable time), by read-only calls.
    pub async fn resolve_backups(&self, loaded: &Loaded, plan: &mut crate::plan::Plan) -> Result<(), StepError> {
        for r in plan.resources.iter_mut() {
            let Some(db) = loaded.desc.databases.get(&r.name) else { continue };
            let Some(source) = r.source.as_mut() else { continue };
            match (&db.source, db.restore) {
                (DatabaseSource::RdsInstance(id), RestoreMode::NewestSnapshot) => {
                    let s = self.newest_snapshot(id).await?;
                    source.backup = Some(serde_json::json!({
                        "snapshot_id": s.id,
                        "arn": s.arn,
                        "created": s.created.map(|c| c.to_rfc3339()),
                        "type": s.kind,
                    }));
                }
                (DatabaseSource::RdsInstance(id), RestoreMode::LatestRestorableTime) => {
                    let found = self
                        .api
                        .describe_db_instances(std::slice::from_ref(id))
                        .await
                        .map_err(|e| StepError::build(e.to_string()))?;
                    let p = found
                        .into_iter()
                        .find(|p| &p.id == id)
                        .ok_or_else(|| StepError::build(format!("the production RDS instance {id} does not exist")))?;
                    source.backup = Some(
                        serde_json::json!({"latest_restorable_time": p.latest_restorable_time.map(|c| c.to_rfc3339())}),
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// Moves the `rehearse:expires-at` tag of every resource of run `run_id` that
    /// rehearse demonstrably made (see [`Tagged::evidence`]) to `expires_at`, so that
    /// `sweep --region` leaves it alone until then. Returns how many were retagged.
    pub async fn retag_expiry(&self, run_id: &str, expires_at: chrono::DateTime<chrono::Utc>) -> ApiResult<usize> {
        let mine: Vec<Tagged> =
            self.tagged().await?.into_iter().filter(|t| tag_value(&t.tags, TAG_RUN) == Some(run_id)).collect();
        let (made, _doubtful) = by_evidence(mine);
        // The run's tag goes with the new expiry: a policy can then allow tagging only
        // what already carries it (docs/iam-policy.json).
        let tags = [
            Tag { key: TAG_RUN.into(), value: run_id.into() },
            Tag { key: TAG_EXPIRES.into(), value: expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true) },
        ];
        let ec2: Vec<String> = made
            .iter()
            .filter(|t| matches!(t.kind, Kind::AwsInstance | Kind::AwsSecurityGroup))
            .map(|t| t.id.clone())
            .collect();
        if !ec2.is_empty() {
            self.api.create_tags(&ec2, &tags).await?;
        }
        for t in made.iter().filter(|t| !matches!(t.kind, Kind::AwsInstance | Kind::AwsSecurityGroup)) {
            let Some(arn) = &t.arn else {
                return Err(ApiError {
                    code: None,
                    message: format!("{} {} was listed without its ARN: its tags cannot be set", t.kind, t.id),
                    kind: ErrorKind::Refused,
                });
            };
            self.api.add_tags(arn, &tags).await?;
        }
        Ok(made.len())
    }
}
