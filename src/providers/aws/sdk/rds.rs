//! [`RdsApi`] over the SDK's RDS client: instances, Aurora clusters, snapshots and
//! subnet groups.

use aws_sdk_rds::types as rdst;
use chrono::{DateTime, Utc};

use super::{err, Sdk};
use crate::providers::aws::api::*;

fn time(t: Option<&aws_sdk_rds::primitives::DateTime>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())
}

fn smithy_time(t: DateTime<Utc>) -> aws_sdk_rds::primitives::DateTime {
    aws_sdk_rds::primitives::DateTime::from_secs_and_nanos(t.timestamp(), t.timestamp_subsec_nanos())
}

fn rds_tags(tags: &[Tag]) -> Vec<rdst::Tag> {
    tags.iter().map(|t| rdst::Tag::builder().key(&t.key).value(&t.value).build()).collect()
}

fn from_rds_tags(tags: &[rdst::Tag]) -> Vec<Tag> {
    tags.iter()
        .map(|t| Tag { key: t.key().unwrap_or_default().into(), value: t.value().unwrap_or_default().into() })
        .collect()
}

fn db_instance(d: &rdst::DbInstance) -> DbInstance {
    DbInstance {
        id: d.db_instance_identifier().unwrap_or_default().into(),
        arn: d.db_instance_arn().map(str::to_string),
        status: d.db_instance_status().unwrap_or_default().into(),
        address: d.endpoint().and_then(|e| e.address()).map(str::to_string),
        port: d.endpoint().and_then(|e| e.port()),
        publicly_accessible: d.publicly_accessible().unwrap_or(false),
        deletion_protection: d.deletion_protection().unwrap_or(false),
        master_username: d.master_username().map(str::to_string),
        latest_restorable_time: time(d.latest_restorable_time()),
        cluster_id: d.db_cluster_identifier().map(str::to_string),
        tags: from_rds_tags(d.tag_list()),
    }
}

fn db_cluster(c: &rdst::DbCluster) -> DbCluster {
    DbCluster {
        id: c.db_cluster_identifier().unwrap_or_default().into(),
        arn: c.db_cluster_arn().map(str::to_string),
        status: c.status().unwrap_or_default().into(),
        endpoint: c.endpoint().map(str::to_string),
        port: c.port(),
        engine: c.engine().map(str::to_string),
        deletion_protection: c.deletion_protection().unwrap_or(false),
        tags: from_rds_tags(c.tag_list()),
    }
}

fn snapshot(s: &rdst::DbSnapshot) -> Snapshot {
    Snapshot {
        id: s.db_snapshot_identifier().unwrap_or_default().into(),
        arn: s.db_snapshot_arn().map(str::to_string),
        instance_id: s.db_instance_identifier().map(str::to_string),
        status: s.status().unwrap_or_default().into(),
        created: time(s.snapshot_create_time()),
        encrypted: s.encrypted().unwrap_or(false),
        kms_key_id: s.kms_key_id().map(str::to_string),
        kind: s.snapshot_type().map(str::to_string),
        tags: from_rds_tags(s.tag_list()),
    }
}

impl RdsApi for Sdk {
    async fn describe_db_instances(&self, ids: &[String]) -> ApiResult<Vec<DbInstance>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filter = rdst::Filter::builder().name("db-instance-id").set_values(Some(ids.to_vec())).build();
        let out = self.rds.describe_db_instances().filters(filter).send().await.map_err(err)?;
        Ok(out.db_instances().iter().map(db_instance).collect())
    }

    async fn db_instances_all(&self) -> ApiResult<Vec<DbInstance>> {
        Ok(all_pages!(self.rds.describe_db_instances().into_paginator().send(), |page| page
            .db_instances()
            .iter()
            .map(db_instance)))
    }

    async fn snapshots_of(&self, instance_id: &str) -> ApiResult<Vec<Snapshot>> {
        Ok(all_pages!(
            self.rds.describe_db_snapshots().db_instance_identifier(instance_id).into_paginator().send(),
            |page| page.db_snapshots().iter().map(snapshot)
        ))
    }

    async fn describe_db_clusters(&self, ids: &[String]) -> ApiResult<Vec<DbCluster>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let filter = rdst::Filter::builder().name("db-cluster-id").set_values(Some(ids.to_vec())).build();
        let out = self.rds.describe_db_clusters().filters(filter).send().await.map_err(err)?;
        Ok(out.db_clusters().iter().map(db_cluster).collect())
    }

    async fn db_clusters_all(&self) -> ApiResult<Vec<DbCluster>> {
        Ok(all_pages!(self.rds.describe_db_clusters().into_paginator().send(), |page| page
            .db_clusters()
            .iter()
            .map(db_cluster)))
    }

    async fn create_db_subnet_group(
        &self,
        name: &str,
        description: &str,
        subnets: &[String],
        tags: &[Tag],
    ) -> ApiResult<DbSubnetGroup> {
        let out = self
            .rds
            .create_db_subnet_group()
            .db_subnet_group_name(name)
            .db_subnet_group_description(description)
            .set_subnet_ids(Some(subnets.to_vec()))
            .set_tags(Some(rds_tags(tags)))
            .send()
            .await
            .map_err(err)?;
        let g = out.db_subnet_group();
        Ok(DbSubnetGroup {
            name: g.and_then(|g| g.db_subnet_group_name()).unwrap_or(name).to_string(),
            arn: g.and_then(|g| g.db_subnet_group_arn()).map(str::to_string),
        })
    }

    async fn db_subnet_groups_all(&self) -> ApiResult<Vec<DbSubnetGroup>> {
        let pages = self.rds.describe_db_subnet_groups().into_paginator().send();
        Ok(all_pages!(pages, |page| page.db_subnet_groups().iter().map(|g| DbSubnetGroup {
            name: g.db_subnet_group_name().unwrap_or_default().into(),
            arn: g.db_subnet_group_arn().map(str::to_string),
        })))
    }

    async fn db_subnet_group_tags(&self, name: &str) -> ApiResult<Option<Vec<Tag>>> {
        let out = match self.rds.describe_db_subnet_groups().db_subnet_group_name(name).send().await.map_err(err) {
            Ok(o) => o,
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(arn) = out.db_subnet_groups().first().and_then(|g| g.db_subnet_group_arn()) else {
            return Ok(None);
        };
        let tags = self.rds.list_tags_for_resource().resource_name(arn).send().await.map_err(err)?;
        Ok(Some(from_rds_tags(tags.tag_list())))
    }

    async fn delete_db_subnet_group(&self, name: &str) -> ApiResult<()> {
        self.rds.delete_db_subnet_group().db_subnet_group_name(name).send().await.map_err(err)?;
        Ok(())
    }

    async fn restore_db_instance(&self, req: &RestoreDb) -> ApiResult<DbInstance> {
        let out = if req.point_in_time {
            self.rds
                .restore_db_instance_to_point_in_time()
                .source_db_instance_identifier(&req.source)
                .target_db_instance_identifier(&req.instance_id)
                .set_use_latest_restorable_time(req.restore_time.is_none().then_some(true))
                .set_restore_time(req.restore_time.map(smithy_time))
                .db_instance_class(&req.instance_class)
                .db_subnet_group_name(&req.subnet_group)
                .vpc_security_group_ids(&req.security_group_id)
                .publicly_accessible(false)
                .deletion_protection(false)
                .copy_tags_to_snapshot(false)
                .set_tags(Some(rds_tags(&req.tags)))
                .send()
                .await
                .map_err(err)?
                .db_instance()
                .map(db_instance)
        } else {
            self.rds
                .restore_db_instance_from_db_snapshot()
                .db_instance_identifier(&req.instance_id)
                .db_snapshot_identifier(&req.source)
                .db_instance_class(&req.instance_class)
                .db_subnet_group_name(&req.subnet_group)
                .vpc_security_group_ids(&req.security_group_id)
                .publicly_accessible(false)
                .deletion_protection(false)
                .copy_tags_to_snapshot(false)
                .set_tags(Some(rds_tags(&req.tags)))
                .send()
                .await
                .map_err(err)?
                .db_instance()
                .map(db_instance)
        };
        out.ok_or_else(|| ApiError {
            code: None,
            message: "the restore returned no DB instance".into(),
            kind: ErrorKind::Refused,
        })
    }

    async fn clone_db_cluster(&self, req: &CloneCluster) -> ApiResult<DbCluster> {
        let out = self
            .rds
            .restore_db_cluster_to_point_in_time()
            .db_cluster_identifier(&req.cluster_id)
            .source_db_cluster_identifier(&req.source_cluster)
            .restore_type("copy-on-write")
            .use_latest_restorable_time(true)
            .db_subnet_group_name(&req.subnet_group)
            .vpc_security_group_ids(&req.security_group_id)
            .deletion_protection(false)
            .copy_tags_to_snapshot(false)
            .set_tags(Some(rds_tags(&req.tags)))
            .send()
            .await
            .map_err(err)?;
        out.db_cluster().map(db_cluster).ok_or_else(|| ApiError {
            code: None,
            message: "the clone returned no DB cluster".into(),
            kind: ErrorKind::Refused,
        })
    }

    async fn create_cluster_instance(
        &self,
        instance_id: &str,
        cluster_id: &str,
        class: &str,
        engine: &str,
        tags: &[Tag],
    ) -> ApiResult<DbInstance> {
        let out = self
            .rds
            .create_db_instance()
            .db_instance_identifier(instance_id)
            .db_cluster_identifier(cluster_id)
            .db_instance_class(class)
            .engine(engine)
            .publicly_accessible(false)
            .set_tags(Some(rds_tags(tags)))
            .send()
            .await
            .map_err(err)?;
        out.db_instance().map(db_instance).ok_or_else(|| ApiError {
            code: None,
            message: "no DB instance returned".into(),
            kind: ErrorKind::Refused,
        })
    }

    async fn secure_db_instance(
        &self,
        id: &str,
        password: Option<&str>,
        security_group: Option<&str>,
    ) -> ApiResult<()> {
        self.rds
            .modify_db_instance()
            .db_instance_identifier(id)
            .set_master_user_password(password.map(str::to_string))
            .set_vpc_security_group_ids(security_group.map(|g| vec![g.to_string()]))
            .publicly_accessible(false)
            .deletion_protection(false)
            .apply_immediately(true)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn secure_db_cluster(&self, id: &str, password: &str) -> ApiResult<()> {
        self.rds
            .modify_db_cluster()
            .db_cluster_identifier(id)
            .master_user_password(password)
            .deletion_protection(false)
            .apply_immediately(true)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn delete_db_instance(&self, id: &str) -> ApiResult<()> {
        self.rds
            .delete_db_instance()
            .db_instance_identifier(id)
            .skip_final_snapshot(true)
            .delete_automated_backups(true)
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn stop_db_instance(&self, id: &str) -> ApiResult<()> {
        self.rds.stop_db_instance().db_instance_identifier(id).send().await.map_err(err)?;
        Ok(())
    }

    async fn start_db_instance(&self, id: &str) -> ApiResult<()> {
        self.rds.start_db_instance().db_instance_identifier(id).send().await.map_err(err)?;
        Ok(())
    }

    async fn delete_db_cluster(&self, id: &str) -> ApiResult<()> {
        self.rds.delete_db_cluster().db_cluster_identifier(id).skip_final_snapshot(true).send().await.map_err(err)?;
        Ok(())
    }

    async fn reboot_db_instance(&self, id: &str, failover: bool) -> ApiResult<()> {
        let call = self.rds.reboot_db_instance().db_instance_identifier(id);
        // ForceFailover only when asked: RDS refuses it on an instance that is not Multi-AZ.
        let call = if failover { call.force_failover(true) } else { call };
        call.send().await.map_err(err)?;
        Ok(())
    }

    async fn failover_db_cluster(&self, id: &str) -> ApiResult<()> {
        self.rds.failover_db_cluster().db_cluster_identifier(id).send().await.map_err(err)?;
        Ok(())
    }

    async fn add_tags(&self, arn: &str, tags: &[Tag]) -> ApiResult<()> {
        self.rds.add_tags_to_resource().resource_name(arn).set_tags(Some(rds_tags(tags))).send().await.map_err(err)?;
        Ok(())
    }
}
