//! What a copy restores from: a production instance's snapshots, its latest restorable
//! time, and the pins that fix both twins of a comparison to one backup.

use super::*;

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
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

    /// The backup a copy of `source` restores from: the pinned time or snapshot, else
    /// its latest restorable time or newest snapshot. Returns its name, ARN and time.
    pub(super) async fn find_backup(
        &self,
        source: &str,
        pin: Option<&Pin>,
        pitr: bool,
        restore_time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(String, Option<String>, Option<chrono::DateTime<chrono::Utc>>), StepError> {
        if let Some(at) = restore_time {
            Ok((format!("{source} at {}", at.format("%Y-%m-%dT%H:%M:%SZ")), None, Some(at)))
        } else if let (Some(Pin::Snapshot(id)), false) = (pin, pitr) {
            let s = self.snapshot(source, id).await?;
            Ok((s.id, s.arn, s.created))
        } else if pitr {
            let prod = self
                .api
                .describe_db_instances(&[source.to_string()])
                .await
                .map_err(|e| StepError::build(format!("cannot look up {source}: {e}")))?;
            let p = prod.into_iter().find(|p| p.id == source).ok_or_else(|| {
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
}
