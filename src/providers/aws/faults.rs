//! A game day's faults on the run's own cloud resources ([`crate::engine::chaos`]): an
//! instance stopped and started again, rebooted or terminated; a DB instance rebooted
//! (failing over to its standby where asked); an Aurora cluster failed over. Each call
//! passes [`Guard`] first, on what a describe says of the resource now: a journal's
//! word that an id is the run's is not enough.

use std::time::Duration;

use tokio::time::Instant;

use super::destroy::handle_id;
use super::poller::Never;
use super::*;
use crate::engine::provider::{Handle, Injected, RunInfo};

/// How long a fault's action waits for its resource to settle (a stop, a start, a
/// reboot, a failover): RDS takes minutes.
const SETTLE: Duration = Duration::from_secs(30 * 60);
/// How long a reboot or failover may take to show (RDS says `available` for a moment
/// after the call): then the wait for `available` begins anyway.
const SHOWS_WITHIN: Duration = Duration::from_secs(120);

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// Injects `what` into the run's resource `entry`, or says why not.
    pub(super) async fn inject_fault(
        &self,
        entry: &Entry,
        what: Injected,
        info: &RunInfo,
    ) -> Result<Option<Handle>, String> {
        let guard = Guard { run_id: info.run_id.clone() };
        let id = handle_id(entry).ok_or_else(|| format!("the journal has no id for `{}`", entry.id))?;
        let deadline = Instant::now() + SETTLE;
        match (what, entry.kind) {
            (Injected::StopInstance | Injected::StartInstance | Injected::RebootInstance, Kind::AwsInstance)
            | (Injected::TerminateInstance, Kind::AwsInstance) => {
                self.instance_fault(&id, what, &guard, deadline).await.map(|()| None)
            }
            (Injected::RebootDatabase { failover }, Kind::AwsDbInstance) => {
                let found =
                    self.api.describe_db_instances(std::slice::from_ref(&id)).await.map_err(|e| e.to_string())?;
                let db = found.into_iter().find(|d| d.id == id).ok_or_else(|| format!("DB instance {id} is gone"))?;
                guard.check("DB instance", &id, &db.tags).map_err(|e| e.to_string())?;
                self.mark_owned(&id);
                self.api.reboot_db_instance(&id, failover).await.map_err(|e| format!("RebootDBInstance {id}: {e}"))?;
                self.back_available(&id, false, deadline).await.map(|()| None)
            }
            (Injected::FailoverCluster, Kind::AwsDbCluster) => {
                let found =
                    self.api.describe_db_clusters(std::slice::from_ref(&id)).await.map_err(|e| e.to_string())?;
                let c = found.into_iter().find(|c| c.id == id).ok_or_else(|| format!("cluster {id} is gone"))?;
                guard.check("DB cluster", &id, &c.tags).map_err(|e| e.to_string())?;
                self.mark_owned(&id);
                self.api.failover_db_cluster(&id).await.map_err(|e| format!("FailoverDBCluster {id}: {e}"))?;
                self.back_available(&id, true, deadline).await.map(|()| None)
            }
            (what, kind) => Err(format!("the aws provider does not {what:?} a `{}`", kind.as_str())),
        }
    }

    /// An instance of the run stopped (until `stopped`), started (until `running`),
    /// rebooted or terminated (until `terminated`).
    async fn instance_fault(&self, id: &str, what: Injected, guard: &Guard, deadline: Instant) -> Result<(), String> {
        let ids = [id.to_string()];
        let found = self.api.describe_instances(&ids).await.map_err(|e| e.to_string())?;
        let inst = found.into_iter().find(|i| i.id == id).ok_or_else(|| format!("instance {id} is gone"))?;
        guard.check("instance", id, &inst.tags).map_err(|e| e.to_string())?;
        self.mark_owned(id);
        let (call, until) = match what {
            Injected::StopInstance => (Some(InstanceAction::Stop), "stopped"),
            Injected::StartInstance => (Some(InstanceAction::Start), "running"),
            Injected::RebootInstance => (Some(InstanceAction::Reboot), ""),
            _ => (None, "terminated"),
        };
        match call {
            Some(action) => {
                self.api.instance_action(&ids, action).await.map_err(|e| format!("{} {id}: {e}", action.operation()))?
            }
            None => self.api.terminate_instances(&ids).await.map_err(|e| format!("TerminateInstances {id}: {e}"))?,
        }
        match until {
            // A reboot: EC2 keeps saying `running` throughout.
            "" => return Ok(()),
            "terminated" => return self.wait_terminated(id, deadline).await.map_err(|e| e.to_string()),
            _ => {}
        }
        let settled = |i: Option<&Instance>| match i.map(|i| i.state.as_str()) {
            Some(s) if s == until => Ok(true),
            Some(s @ ("terminated" | "shutting-down")) => Err(Never(format!("instance {id} is `{s}`"))),
            None => Err(Never(format!("instance {id} is gone"))),
            _ => Ok(false),
        };
        self.wait_instance(id, settled, deadline).await.map(drop).map_err(|e| e.to_string())
    }

    /// A DB instance (or, `cluster`, a cluster) seen leaving `available` (or not within
    /// a while), then back in it.
    async fn back_available(&self, id: &str, cluster: bool, deadline: Instant) -> Result<(), String> {
        let status = || async move {
            if cluster {
                let c = self.api.describe_db_clusters(&[id.to_string()]).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(c.into_iter().find(|c| c.id == id).map(|c| c.status))
            } else {
                let d = self.api.describe_db_instances(&[id.to_string()]).await.map_err(|e| e.to_string())?;
                Ok(d.into_iter().find(|d| d.id == id).map(|d| d.status))
            }
        };
        let shows = Instant::now() + SHOWS_WITHIN;
        let mut left = false;
        let mut pause = Duration::from_secs(2);
        loop {
            match status().await?.as_deref() {
                None => return Err(format!("{id} is gone")),
                Some("available") if left || Instant::now() >= shows => return Ok(()),
                Some("available") => {}
                Some(s @ ("failed" | "deleting" | "stopped")) => return Err(format!("{id} is `{s}`")),
                Some(_) => left = true,
            }
            if Instant::now() >= deadline {
                return Err(format!("{id} was not `available` again within {} minutes", SETTLE.as_secs() / 60));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(15));
        }
    }
}
