//! [`Ec2Api`] and [`RdsApi`] over the official AWS SDK for Rust.
//!
//! One shared configuration from the standard chain (environment, profile, SSO, IMDS),
//! with `AWS_ENDPOINT_URL` honoured (how the tests reach the emulator), and
//! connect/attempt timeouts so an unreachable endpoint fails in seconds instead of
//! hanging.
//!
//! The SDK makes exactly one attempt per call: sending again is [`super::patient`]'s
//! decision, made with what it knows about the call (a read, a delete, a create with a
//! client token). Retries in both layers would multiply, and an error that is the last
//! of several attempts describes only that attempt: an attempt that timed out (it may
//! have run) followed by one whose connection was refused came back as "never sent".

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types as ec2t;
use aws_sdk_rds::types as rdst;
use chrono::{DateTime, Utc};

use super::api::*;

#[derive(Clone)]
pub struct Sdk {
    pub(crate) ec2: aws_sdk_ec2::Client,
    pub(crate) rds: aws_sdk_rds::Client,
}

/// How long one attempt of a call may take before it counts as lost.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

impl Sdk {
    /// Clients for `region`, from the standard credential chain.
    pub(crate) async fn new(region: &str) -> Sdk {
        Sdk::from_config(&Sdk::loader(region, ATTEMPT_TIMEOUT).load().await)
    }

    /// The configuration rehearse uses: one attempt per call, bounded connect and
    /// attempt times (a test shortens `attempt_timeout` and sets an endpoint).
    pub(crate) fn loader(region: &str, attempt_timeout: Duration) -> aws_config::ConfigLoader {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(attempt_timeout)
                    .operation_timeout(attempt_timeout + Duration::from_secs(5))
                    .build(),
            )
    }

    pub(crate) fn from_config(config: &aws_config::SdkConfig) -> Sdk {
        Sdk { ec2: aws_sdk_ec2::Client::new(config), rds: aws_sdk_rds::Client::new(config) }
    }
}

/// Whether a failed call certainly never reached the service: the request could not be
/// built, or the connection was refused (an `io::Error` of that kind in the cause
/// chain). Anything else during dispatch — a timeout, a reset, a name that did not
/// resolve — may have happened after the request was sent.
fn never_sent<E, R>(e: &SdkError<E, R>) -> bool
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e {
        SdkError::ConstructionFailure(_) => true,
        SdkError::DispatchFailure(d) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> =
                d.as_connector_error().map(|c| c as &(dyn std::error::Error + 'static));
            while let Some(c) = cause {
                if c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                {
                    return true;
                }
                cause = c.source();
            }
            false
        }
        _ => false,
    }
}

/// Throttling codes of EC2 and RDS (the SDK's own list, less the quota errors).
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestResourceCountExceeded",
    "RequestThrottled",
    "BandwidthLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// "Does not exist" codes that follow neither naming convention below.
const NOT_FOUND: &[&str] = &["DBInstanceNotFound", "DBClusterNotFound", "DBSnapshotNotFound"];

/// A "does not exist" code by the services' documented conventions: EC2's
/// `Invalid<Resource>.NotFound`, RDS's `<Resource>NotFoundFault`.
fn is_not_found(code: &str) -> bool {
    code.ends_with(".NotFound") || code.ends_with("NotFoundFault") || NOT_FOUND.contains(&code)
}

/// "Still in use" codes: a dependency not yet gone, or a state that does not allow it.
const IN_USE: &[&str] = &[
    "DependencyViolation",
    "InvalidDBInstanceState",
    "InvalidDBInstanceStateFault",
    "InvalidDBClusterStateFault",
    "InvalidDBSubnetGroupStateFault",
    "InvalidDBSnapshotState",
    "InvalidDBSnapshotStateFault",
];

/// "Not allowed" codes: this identity may not make the call.
const DENIED: &[&str] = &["AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthFailure"];

/// No capacity for this type in this zone now. EC2 answers these with a 500, but they
/// are an answer: waiting ten minutes on them helps nobody.
const NO_CAPACITY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientDBInstanceCapacity",
    "InsufficientDBInstanceCapacityFault",
    "InsufficientDBClusterCapacityFault",
];

/// An error by its code — the service's machine-readable name for it, compared
/// exactly, never its message — and, for a code rehearse does not know, whether the
/// answer was a 5xx.
fn classify(code: Option<&str>, server_error: bool) -> ErrorKind {
    match code {
        Some(c) if is_not_found(c) => ErrorKind::NotFound,
        Some(c) if IN_USE.contains(&c) => ErrorKind::InUse,
        Some(c) if DENIED.contains(&c) => ErrorKind::Denied,
        Some(c) if NO_CAPACITY.contains(&c) => ErrorKind::Refused,
        Some(c) if THROTTLING.contains(&c) => ErrorKind::Throttled,
        Some(c) if SERVER.contains(&c) => ErrorKind::ServerError,
        _ if server_error => ErrorKind::ServerError,
        _ => ErrorKind::Refused,
    }
}

/// Failures on the service's side.
const SERVER: &[&str] =
    &["InternalError", "InternalFailure", "InternalServerError", "ServiceUnavailable", "Unavailable", "RequestTimeout"];

fn err<E>(e: SdkError<E, aws_sdk_ec2::config::http::HttpResponse>) -> ApiError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let unreachable =
        matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ConstructionFailure(_));
    if unreachable {
        // The innermost cause says what happened ("Connection refused (os error 111)").
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let cause = cause.to_string();
        let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "the AWS API".into());
        let what = if matches!(e, SdkError::TimeoutError(_)) { "did not answer in time".to_string() } else { cause };
        return ApiError {
            code: None,
            message: format!("cannot reach {endpoint}: {what}"),
            kind: if never_sent(&e) { ErrorKind::NotSent } else { ErrorKind::Unreachable },
        };
    }
    let code = e.code().map(str::to_string);
    let message =
        e.message().map(str::to_string).unwrap_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string());
    let server_error = e.raw_response().is_some_and(|r| r.status().is_server_error());
    let kind = classify(code.as_deref(), server_error);
    ApiError { code, message, kind }
}

/// Collects every page of a paginated call, mapping each page to items.
macro_rules! all_pages {
    ($pages:expr, |$page:ident| $items:expr) => {{
        let mut pages = $pages;
        let mut out = Vec::new();
        while let Some($page) = pages.next().await {
            let $page = $page.map_err(err)?;
            out.extend($items);
        }
        out
    }};
}

fn time(t: Option<&aws_sdk_rds::primitives::DateTime>) -> Option<DateTime<Utc>> {
    let t = t?;
    DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())
}

fn ec2_tags(tags: &[Tag]) -> Vec<ec2t::Tag> {
    tags.iter().map(|t| ec2t::Tag::builder().key(&t.key).value(&t.value).build()).collect()
}

fn from_ec2_tags(tags: &[ec2t::Tag]) -> Vec<Tag> {
    tags.iter()
        .map(|t| Tag { key: t.key().unwrap_or_default().into(), value: t.value().unwrap_or_default().into() })
        .collect()
}

fn rds_tags(tags: &[Tag]) -> Vec<rdst::Tag> {
    tags.iter().map(|t| rdst::Tag::builder().key(&t.key).value(&t.value).build()).collect()
}

fn from_rds_tags(tags: &[rdst::Tag]) -> Vec<Tag> {
    tags.iter()
        .map(|t| Tag { key: t.key().unwrap_or_default().into(), value: t.value().unwrap_or_default().into() })
        .collect()
}

fn spec(kind: ec2t::ResourceType, tags: &[Tag]) -> ec2t::TagSpecification {
    ec2t::TagSpecification::builder().resource_type(kind).set_tags(Some(ec2_tags(tags))).build()
}

fn instance(i: &ec2t::Instance) -> Instance {
    Instance {
        id: i.instance_id().unwrap_or_default().into(),
        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
        private_ip: i.private_ip_address().map(str::to_string),
        image_id: i.image_id().map(str::to_string),
        instance_type: i.instance_type().map(|t| t.as_str().to_string()),
        client_token: i.client_token().filter(|t| !t.is_empty()).map(str::to_string),
        tags: from_ec2_tags(i.tags()),
    }
}

fn group(g: &ec2t::SecurityGroup) -> SecurityGroup {
    SecurityGroup {
        id: g.group_id().unwrap_or_default().into(),
        name: g.group_name().unwrap_or_default().into(),
        vpc_id: g.vpc_id().map(str::to_string),
        tags: from_ec2_tags(g.tags()),
    }
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

impl Ec2Api for Sdk {
    async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        tags: &[Tag],
    ) -> ApiResult<String> {
        let out = self
            .ec2
            .create_security_group()
            .group_name(name)
            .description(description)
            .vpc_id(vpc_id)
            .tag_specifications(spec(ec2t::ResourceType::SecurityGroup, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(out.group_id().unwrap_or_default().to_string())
    }

    async fn authorize_ingress(&self, group_id: &str, cidrs: &[String], ports: &[u16]) -> ApiResult<()> {
        let perms: Vec<ec2t::IpPermission> = ports
            .iter()
            .map(|p| {
                let mut perm = ec2t::IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(i32::from(*p))
                    .to_port(i32::from(*p))
                    .user_id_group_pairs(ec2t::UserIdGroupPair::builder().group_id(group_id).build());
                for c in cidrs {
                    perm =
                        perm.ip_ranges(ec2t::IpRange::builder().cidr_ip(c).description("rehearse: allowed in").build());
                }
                perm.build()
            })
            .collect();
        self.ec2
            .authorize_security_group_ingress()
            .group_id(group_id)
            .set_ip_permissions(Some(perms))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn describe_security_groups(&self, ids: &[String]) -> ApiResult<Vec<SecurityGroup>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.ec2.describe_security_groups().set_group_ids(Some(ids.to_vec())).send().await.map_err(err)?;
        Ok(out.security_groups().iter().map(group).collect())
    }

    async fn security_groups_tagged(&self, tag_key: &str) -> ApiResult<Vec<SecurityGroup>> {
        let filter = ec2t::Filter::builder().name("tag-key").values(tag_key).build();
        let pages = self.ec2.describe_security_groups().filters(filter).into_paginator().send();
        Ok(all_pages!(pages, |page| page.security_groups().iter().map(group)))
    }

    async fn delete_security_group(&self, id: &str) -> ApiResult<()> {
        self.ec2.delete_security_group().group_id(id).send().await.map_err(err)?;
        Ok(())
    }

    async fn run_instances(&self, req: &RunInstances) -> ApiResult<Vec<String>> {
        let out = self
            .ec2
            .run_instances()
            .image_id(&req.image_id)
            .instance_type(ec2t::InstanceType::from(req.instance_type.as_str()))
            .min_count(req.count as i32)
            .max_count(req.count as i32)
            .subnet_id(&req.subnet_id)
            .security_group_ids(&req.security_group_id)
            .set_user_data(req.user_data.clone())
            .client_token(&req.client_token)
            .tag_specifications(spec(ec2t::ResourceType::Instance, &req.tags))
            .tag_specifications(spec(ec2t::ResourceType::Volume, &req.tags))
            .send()
            .await
            .map_err(err)?;
        Ok(out.instances().iter().filter_map(|i| i.instance_id().map(str::to_string)).collect())
    }

    async fn describe_instances(&self, ids: &[String]) -> ApiResult<Vec<Instance>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(all_pages!(
            self.ec2.describe_instances().set_instance_ids(Some(ids.to_vec())).into_paginator().send(),
            |page| page.reservations().iter().flat_map(|r| r.instances()).map(instance).collect::<Vec<_>>()
        ))
    }

    async fn instances_tagged(&self, tag_key: &str) -> ApiResult<Vec<Instance>> {
        let filter = ec2t::Filter::builder().name("tag-key").values(tag_key).build();
        let pages = self.ec2.describe_instances().filters(filter).into_paginator().send();
        Ok(all_pages!(pages, |page| page
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(instance)
            .collect::<Vec<_>>()))
    }

    async fn terminate_instances(&self, ids: &[String]) -> ApiResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ec2.terminate_instances().set_instance_ids(Some(ids.to_vec())).send().await.map_err(err)?;
        Ok(())
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
                .use_latest_restorable_time(true)
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

    async fn secure_db_instance(&self, id: &str, password: Option<&str>) -> ApiResult<()> {
        self.rds
            .modify_db_instance()
            .db_instance_identifier(id)
            .set_master_user_password(password.map(str::to_string))
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

    async fn delete_db_cluster(&self, id: &str) -> ApiResult<()> {
        self.rds.delete_db_cluster().db_cluster_identifier(id).skip_final_snapshot(true).send().await.map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_rds::operation::describe_db_instances::DescribeDBInstancesError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answer(status: u16, code: &str) -> ApiError {
        let e = DescribeDBInstancesError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let raw = Response::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        err(SdkError::service_error(e, raw))
    }

    #[test]
    fn throttling_and_server_failures_are_told_apart_from_refusals() {
        assert_eq!(answer(400, "Throttling").kind, ErrorKind::Throttled);
        assert_eq!(answer(503, "RequestLimitExceeded").kind, ErrorKind::Throttled);
        assert_eq!(answer(500, "InternalFailure").kind, ErrorKind::ServerError);
        assert_eq!(answer(502, "SomethingNew").kind, ErrorKind::ServerError);
        assert_eq!(answer(400, "InvalidParameterValue").kind, ErrorKind::Refused);
        assert_eq!(answer(500, "InsufficientInstanceCapacity").kind, ErrorKind::Refused);
        assert_eq!(answer(400, "InstanceLimitExceeded").kind, ErrorKind::Refused);
        assert_eq!(answer(404, "DBInstanceNotFound").kind, ErrorKind::NotFound);
        assert_eq!(answer(400, "DependencyViolation").kind, ErrorKind::InUse);
        assert_eq!(answer(403, "AccessDenied").kind, ErrorKind::Denied);
        assert_eq!(answer(403, "UnauthorizedOperation").kind, ErrorKind::Denied);
        assert_eq!(answer(400, "InvalidInstanceID.NotFound").kind, ErrorKind::NotFound);
        // A code is compared whole: one that merely mentions "NotFound" is not one.
        assert_eq!(answer(400, "InvalidParameterValue.NotFoundIsNotACode").kind, ErrorKind::Refused);
        assert!(answer(400, "Throttling").is_transient() && !answer(400, "QuotaExceeded").is_transient());
    }

    /// An endpoint that takes the first connection and never answers, then goes away
    /// (later connections are refused): the call's one attempt timed out — it may have
    /// run — so the create is uncertain, never "not sent". (With the SDK's own retries,
    /// the refused second attempt used to make it "not sent", and the resource was
    /// journaled as never created.)
    #[tokio::test]
    async fn a_timed_out_attempt_is_never_taken_for_one_that_was_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            drop(listener);
            std::thread::sleep(Duration::from_secs(4));
            drop(conn);
        });
        let config = Sdk::loader("eu-west-1", Duration::from_secs(1))
            .endpoint_url(format!("http://127.0.0.1:{port}"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "test"))
            .load()
            .await;
        let sdk = Sdk::from_config(&config);
        let e = sdk.create_security_group("rehearse-r-1", "d", "vpc-1", &[]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
        server.join().unwrap();
        // Now the port is closed: that attempt certainly did not leave this machine.
        let e = sdk.create_security_group("rehearse-r-1", "d", "vpc-1", &[]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotSent, "{e}");
    }
}
