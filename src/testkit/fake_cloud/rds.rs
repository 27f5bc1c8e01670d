//! The fake's RDS: restores from snapshots, Aurora clones, subnet groups.

use std::time::Duration;

use tokio::time::Instant;

use super::*;

impl RdsApi for FakeCloud {
    async fn describe_db_instances(&self, ids: &[String]) -> ApiResult<Vec<DbInstance>> {
        self.enter("DescribeDBInstances", &ids.join(","), false)?;
        Ok(self.live("db").into_iter().filter(|(id, _)| ids.contains(id)).map(|(id, r)| Self::db(&id, &r)).collect())
    }

    async fn db_instances_all(&self) -> ApiResult<Vec<DbInstance>> {
        self.enter("DescribeDBInstances", "", false)?;
        Ok(self.live("db").into_iter().map(|(id, r)| Self::db(&id, &r)).collect())
    }

    async fn snapshots_of(&self, instance_id: &str) -> ApiResult<Vec<Snapshot>> {
        self.enter("DescribeDBSnapshots", instance_id, false)?;
        Ok(self.snapshots().into_iter().filter(|s| s.instance_id.as_deref() == Some(instance_id)).collect())
    }

    async fn describe_db_clusters(&self, ids: &[String]) -> ApiResult<Vec<DbCluster>> {
        self.enter("DescribeDBClusters", &ids.join(","), false)?;
        Ok(self
            .live("cluster")
            .into_iter()
            .filter(|(id, _)| ids.contains(id))
            .map(|(id, r)| Self::cluster(&id, &r))
            .collect())
    }

    async fn db_clusters_all(&self) -> ApiResult<Vec<DbCluster>> {
        self.enter("DescribeDBClusters", "", false)?;
        Ok(self.live("cluster").into_iter().map(|(id, r)| Self::cluster(&id, &r)).collect())
    }

    async fn create_db_subnet_group(
        &self,
        name: &str,
        _description: &str,
        _subnets: &[String],
        tags: &[Tag],
    ) -> ApiResult<DbSubnetGroup> {
        let call = self.enter("CreateDBSubnetGroup", name, true)?;
        if self.exists("subnet-group", |id, _| id == name) {
            return Err(fail("DBSubnetGroupAlreadyExists", ErrorKind::Refused));
        }
        self.create(name, "subnet-group", tags, Duration::ZERO, Duration::ZERO);
        self.answer(&call, &[name.to_string()], DbSubnetGroup { name: name.into(), arn: None }).await
    }

    async fn db_subnet_groups_all(&self) -> ApiResult<Vec<DbSubnetGroup>> {
        self.enter("DescribeDBSubnetGroups", "", false)?;
        Ok(self.live("subnet-group").into_iter().map(|(id, _)| DbSubnetGroup { name: id, arn: None }).collect())
    }

    async fn db_subnet_group_tags(&self, name: &str) -> ApiResult<Option<Vec<Tag>>> {
        self.enter("ListTagsForResource", name, false)?;
        Ok(self.live("subnet-group").into_iter().find(|(id, _)| id == name).map(|(_, r)| r.tags))
    }

    async fn delete_db_subnet_group(&self, name: &str) -> ApiResult<()> {
        let call = self.enter("DeleteDBSubnetGroup", name, true)?;
        self.audit("DeleteDBSubnetGroup", name);
        if self.in_use(name, &["db", "cluster"]) {
            return Err(fail("InvalidDBSubnetGroupStateFault", ErrorKind::InUse));
        }
        self.delete(name, "subnet-group")?;
        // Subnet groups go at once.
        if let Some(r) = self.state.lock().expect("fake lock").res.get_mut(name) {
            r.gone_at = Some(Instant::now());
        }
        self.leave(&call, ())
    }

    async fn restore_db_instance(&self, req: &RestoreDb) -> ApiResult<DbInstance> {
        let call = self.enter("RestoreDBInstanceFromDBSnapshot", &req.instance_id, true)?;
        if self.exists("db", |id, _| id == req.instance_id) {
            return Err(fail("DBInstanceAlreadyExists", ErrorKind::Refused));
        }
        // Like some implementations: the restore ignores the asked-for flags and copies
        // production's.
        let endpoint = {
            let mut st = self.state.lock().expect("fake lock");
            st.restores.push((req.instance_id.clone(), req.source.clone(), req.restore_time));
            st.db_endpoint.clone()
        };
        let r = self.provision(&req.instance_id, ("db", "db"), &req.tags, self.faults.restore, true, |r| {
            r.protected = true;
            r.private = false;
            r.endpoint = endpoint;
        });
        self.answer(&call, std::slice::from_ref(&req.instance_id), Self::db(&req.instance_id, &r)).await
    }

    async fn clone_db_cluster(&self, req: &CloneCluster) -> ApiResult<DbCluster> {
        let call = self.enter("RestoreDBClusterToPointInTime", &req.cluster_id, true)?;
        if self.exists("cluster", |id, _| id == req.cluster_id) {
            return Err(fail("DBClusterAlreadyExistsFault", ErrorKind::Refused));
        }
        if !self.live("cluster").iter().any(|(id, _)| id == &req.source_cluster) {
            return Err(fail("DBClusterNotFoundFault", ErrorKind::NotFound));
        }
        self.state.lock().expect("fake lock").restores.push((req.cluster_id.clone(), req.source_cluster.clone(), None));
        // Copies the source's deletion protection, whatever was asked.
        let c = self.provision(&req.cluster_id, ("cluster", "cluster"), &req.tags, self.faults.clone, true, |r| {
            r.protected = true
        });
        self.answer(&call, std::slice::from_ref(&req.cluster_id), Self::cluster(&req.cluster_id, &c)).await
    }

    async fn create_cluster_instance(
        &self,
        instance_id: &str,
        cluster_id: &str,
        _class: &str,
        _engine: &str,
        tags: &[Tag],
    ) -> ApiResult<DbInstance> {
        let call = self.enter("CreateDBInstance", instance_id, true)?;
        if self.exists("db", |id, _| id == instance_id) {
            return Err(fail("DBInstanceAlreadyExists", ErrorKind::Refused));
        }
        match self.live("cluster").into_iter().find(|(id, _)| id == cluster_id) {
            None => return Err(fail("DBClusterNotFoundFault", ErrorKind::NotFound)),
            Some((_, c)) if c.ready_at > Instant::now() || c.gone_at.is_some() => {
                return Err(fail("InvalidDBClusterStateFault", ErrorKind::InUse))
            }
            Some(_) => {}
        }
        let d =
            self.provision(instance_id, ("db", "cluster-instance"), tags, self.faults.cluster_instance, false, |r| {
                r.cluster = Some(cluster_id.into())
            });
        self.answer(&call, &[instance_id.to_string()], Self::db(instance_id, &d)).await
    }

    async fn secure_db_instance(
        &self,
        id: &str,
        password: Option<&str>,
        _security_group: Option<&str>,
    ) -> ApiResult<()> {
        let call = self.enter("ModifyDBInstance", id, true)?;
        self.audit("ModifyDBInstance", id);
        {
            let mut st = self.state.lock().expect("fake lock");
            // RDS modifies no instance that is stopped, stopping or starting.
            if st.res.get(id).is_some_and(|r| matches!(Self::rds_status(r), "stopped" | "stopping" | "starting")) {
                return Err(fail("InvalidDBInstanceState", ErrorKind::InUse));
            }
            let took = Self::drawn(id, self.faults.modify);
            match st.res.get_mut(id) {
                Some(r) => {
                    r.protected = false;
                    r.private = true;
                    r.rotated |= password.is_some();
                    let start = r.ready_at.max(tokio::time::Instant::now());
                    r.modifying_until = Some(start + took);
                }
                None => return Err(fail("DBInstanceNotFound", ErrorKind::NotFound)),
            }
        }
        self.leave(&call, ())
    }

    async fn secure_db_cluster(&self, id: &str, _password: &str) -> ApiResult<()> {
        let call = self.enter("ModifyDBCluster", id, true)?;
        self.audit("ModifyDBCluster", id);
        match self.state.lock().expect("fake lock").res.get_mut(id) {
            Some(r) if r.kind == "cluster" => {
                r.protected = false;
                r.rotated = true;
            }
            _ => return Err(fail("DBClusterNotFoundFault", ErrorKind::NotFound)),
        }
        self.leave(&call, ())
    }

    async fn delete_db_instance(&self, id: &str) -> ApiResult<()> {
        let call = self.enter("DeleteDBInstance", id, true)?;
        self.audit("DeleteDBInstance", id);
        // RDS deletes no instance while it stops or starts.
        let moving = {
            let st = self.state.lock().expect("fake lock");
            st.res.get(id).is_some_and(|r| matches!(Self::rds_status(r), "stopping" | "starting"))
        };
        if moving {
            return Err(fail("InvalidDBInstanceState", ErrorKind::InUse));
        }
        self.delete(id, "db")?;
        self.leave(&call, ())
    }

    async fn stop_db_instance(&self, id: &str) -> ApiResult<()> {
        let call = self.enter("StopDBInstance", id, true)?;
        self.audit("StopDBInstance", id);
        {
            let mut st = self.state.lock().expect("fake lock");
            let took = Self::drawn(id, self.faults.stop_start);
            match st.res.get_mut(id) {
                Some(r) if r.kind == "db" && Self::rds_status(r) == "available" => {
                    r.stopped_from = Some(Instant::now() + took);
                }
                Some(r) if r.kind == "db" => return Err(fail("InvalidDBInstanceState", ErrorKind::InUse)),
                _ => return Err(fail("DBInstanceNotFound", ErrorKind::NotFound)),
            }
        }
        self.leave(&call, ())
    }

    async fn start_db_instance(&self, id: &str) -> ApiResult<()> {
        let call = self.enter("StartDBInstance", id, true)?;
        self.audit("StartDBInstance", id);
        {
            let mut st = self.state.lock().expect("fake lock");
            let took = Self::drawn(id, self.faults.stop_start);
            match st.res.get_mut(id) {
                Some(r) if r.kind == "db" && Self::rds_status(r) == "stopped" => {
                    r.stopped_from = None;
                    r.starting_until = Some(Instant::now() + took);
                }
                Some(r) if r.kind == "db" => return Err(fail("InvalidDBInstanceState", ErrorKind::InUse)),
                _ => return Err(fail("DBInstanceNotFound", ErrorKind::NotFound)),
            }
        }
        self.leave(&call, ())
    }

    /// As RDS: only an `available` instance reboots; rehearse's copies are never
    /// Multi-AZ, so a failover is refused as RDS refuses it on a single-AZ instance.
    async fn reboot_db_instance(&self, id: &str, failover: bool) -> ApiResult<()> {
        let call = self.enter("RebootDBInstance", id, true)?;
        self.audit("RebootDBInstance", id);
        {
            let mut st = self.state.lock().expect("fake lock");
            let took = Self::drawn(id, self.faults.reboot);
            match st.res.get_mut(id) {
                Some(r) if r.kind == "db" && failover => {
                    return Err(fail("InvalidParameterCombination", ErrorKind::Refused))
                }
                Some(r) if r.kind == "db" && Self::rds_status(r) == "available" => {
                    r.rebooting_until = Some(Instant::now() + took);
                }
                Some(r) if r.kind == "db" => return Err(fail("InvalidDBInstanceState", ErrorKind::InUse)),
                _ => return Err(fail("DBInstanceNotFound", ErrorKind::NotFound)),
            }
        }
        self.leave(&call, ())
    }

    /// An `available` cluster fails over (`failing-over` meanwhile); with no replica,
    /// as Aurora does, its writer restarts.
    async fn failover_db_cluster(&self, id: &str) -> ApiResult<()> {
        let call = self.enter("FailoverDBCluster", id, true)?;
        self.audit("FailoverDBCluster", id);
        {
            let mut st = self.state.lock().expect("fake lock");
            let took = Self::drawn(id, self.faults.reboot);
            match st.res.get_mut(id) {
                Some(r) if r.kind == "cluster" && Self::rds_status(r) == "available" => {
                    r.rebooting_until = Some(Instant::now() + took);
                }
                Some(r) if r.kind == "cluster" => return Err(fail("InvalidDBClusterStateFault", ErrorKind::InUse)),
                _ => return Err(fail("DBClusterNotFoundFault", ErrorKind::NotFound)),
            }
        }
        self.leave(&call, ())
    }

    async fn add_tags(&self, arn: &str, tags: &[Tag]) -> ApiResult<()> {
        let call = self.enter("AddTagsToResource", arn, true)?;
        let id = arn.rsplit(':').next().unwrap_or(arn).to_string();
        self.audit("AddTagsToResource", &id);
        self.set_tags(std::slice::from_ref(&id), tags);
        self.leave(&call, ())
    }

    async fn delete_db_cluster(&self, id: &str) -> ApiResult<()> {
        let call = self.enter("DeleteDBCluster", id, true)?;
        self.audit("DeleteDBCluster", id);
        // Not while an instance of it remains.
        let now = Instant::now();
        let members = {
            let st = self.state.lock().expect("fake lock");
            st.res.values().any(|r| r.cluster.as_deref() == Some(id) && r.gone_at.is_none_or(|g| g > now))
        };
        if members {
            return Err(fail("InvalidDBClusterStateFault", ErrorKind::InUse));
        }
        self.delete(id, "cluster")?;
        self.leave(&call, ())
    }
}

impl FakeCloud {
    /// A duration in `range` drawn from the instance's id, not the scenario's
    /// generator: the other draws of a seed stay what they were.
    pub(super) fn drawn(id: &str, (a, b): (Duration, Duration)) -> Duration {
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3));
        a + b.saturating_sub(a).mul_f64((h >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn snapshots(&self) -> Vec<Snapshot> {
        self.live("snapshot")
            .into_iter()
            .map(|(id, r)| Snapshot {
                arn: Some(format!("arn:aws:rds:fake:0:snapshot:{id}")),
                instance_id: r.snapshot_of.clone(),
                status: "available".into(),
                created: Some(r.created),
                encrypted: false,
                kms_key_id: None,
                kind: Some("manual".into()),
                tags: r.tags.clone(),
                id,
            })
            .collect()
    }
}
