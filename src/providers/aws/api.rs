//! The narrow slice of EC2 and RDS that rehearse uses, as two traits over plain types.
//!
//! The provider only talks to these traits: the SDK implementation ([`super::sdk`])
//! speaks the real wire protocol (to AWS, or to an emulator via `AWS_ENDPOINT_URL`),
//! and a fault-injecting fake can stand in for both in tests. Reads and writes are
//! separate methods so that every write can pass the ownership guard first.

use std::future::Future;

use chrono::{DateTime, Utc};

/// A tag, as both services store them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

pub fn tag_value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
}

/// Why a call failed, as much as the caller needs to decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The service's error code (`DBInstanceNotFound`, `InvalidGroup.NotFound`, ...).
    pub code: Option<String>,
    pub message: String,
    pub kind: ErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The resource does not exist (or no longer does).
    NotFound,
    /// The resource is still in use by another (`DependencyViolation`, invalid state).
    InUse,
    /// The endpoint could not be reached or did not answer (the request may have
    /// been sent).
    Unreachable,
    /// The connection was refused or the name did not resolve: the request was never
    /// sent, so nothing was created.
    NotSent,
    /// The service asked to slow down (throttling): the call was not executed and
    /// may be sent again.
    Throttled,
    /// The service failed on its side (a 5xx): the call may or may not have run, so it
    /// is sent again only where a repeat is harmless (reads, deletes, client tokens,
    /// names that make a second create fail with "already exists").
    ServerError,
    /// This identity may not make the call (`AccessDenied`, `UnauthorizedOperation`):
    /// nothing was done, and asking again changes nothing.
    Denied,
    /// Anything else the service refused.
    Refused,
}

impl ApiError {
    /// Worth sending again after a pause.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::ServerError)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(c) => write!(f, "{c}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    pub id: String,
    /// `pending`, `running`, `shutting-down`, `terminated`, `stopping`, `stopped`.
    pub state: String,
    pub private_ip: Option<String>,
    pub image_id: Option<String>,
    pub instance_type: Option<String>,
    /// The client token it was launched with (rehearse's are derived from the run id).
    pub client_token: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub vpc_id: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug)]
pub struct RunInstances {
    pub image_id: String,
    pub instance_type: String,
    pub subnet_id: String,
    pub security_group_id: String,
    /// Base64-encoded user-data.
    pub user_data: Option<String>,
    pub count: u32,
    pub tags: Vec<Tag>,
    /// Makes a retried call idempotent on AWS.
    pub client_token: String,
    /// The IAM instance profile the instances get, by name or ARN.
    pub instance_profile: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub arn: Option<String>,
    pub instance_id: Option<String>,
    /// `available`, `creating`, ...
    pub status: String,
    pub created: Option<DateTime<Utc>>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    /// `manual`, `automated`.
    pub kind: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DbInstance {
    pub id: String,
    pub arn: Option<String>,
    /// `creating`, `available`, `modifying`, `deleting`, `failed`, ...
    pub status: String,
    pub address: Option<String>,
    pub port: Option<i32>,
    pub publicly_accessible: bool,
    pub deletion_protection: bool,
    pub master_username: Option<String>,
    pub latest_restorable_time: Option<DateTime<Utc>>,
    pub cluster_id: Option<String>,
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DbCluster {
    pub id: String,
    pub arn: Option<String>,
    pub status: String,
    pub endpoint: Option<String>,
    pub port: Option<i32>,
    pub engine: Option<String>,
    pub deletion_protection: bool,
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DbSubnetGroup {
    pub name: String,
    pub arn: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RestoreDb {
    pub instance_id: String,
    /// Snapshot id (snapshot restore) or source instance id (point in time).
    pub source: String,
    pub point_in_time: bool,
    /// The point in time restored (None: the latest restorable time).
    pub restore_time: Option<DateTime<Utc>>,
    pub instance_class: String,
    pub subnet_group: String,
    pub security_group_id: String,
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug)]
pub struct CloneCluster {
    pub cluster_id: String,
    pub source_cluster: String,
    pub subnet_group: String,
    pub security_group_id: String,
    pub tags: Vec<Tag>,
}

/// What [`Ec2Api::instance_action`] does to instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceAction {
    Stop,
    Start,
    Reboot,
}

impl InstanceAction {
    /// The API operation's name.
    pub fn operation(self) -> &'static str {
        match self {
            InstanceAction::Stop => "StopInstances",
            InstanceAction::Start => "StartInstances",
            InstanceAction::Reboot => "RebootInstances",
        }
    }
}

/// EC2, as rehearse uses it.
pub trait Ec2Api: Send + Sync {
    fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        tags: &[Tag],
    ) -> impl Future<Output = ApiResult<String>> + Send;
    /// TCP to `ports` from `cidrs` and from the group itself.
    fn authorize_ingress(
        &self,
        group_id: &str,
        cidrs: &[String],
        ports: &[u16],
    ) -> impl Future<Output = ApiResult<()>> + Send;
    fn describe_security_groups(&self, ids: &[String]) -> impl Future<Output = ApiResult<Vec<SecurityGroup>>> + Send;
    /// Groups carrying `tag_key` (any value).
    fn security_groups_tagged(&self, tag_key: &str) -> impl Future<Output = ApiResult<Vec<SecurityGroup>>> + Send;
    fn delete_security_group(&self, id: &str) -> impl Future<Output = ApiResult<()>> + Send;
    fn run_instances(&self, req: &RunInstances) -> impl Future<Output = ApiResult<Vec<String>>> + Send;
    /// One call for many instances (the batched poller's).
    fn describe_instances(&self, ids: &[String]) -> impl Future<Output = ApiResult<Vec<Instance>>> + Send;
    fn instances_tagged(&self, tag_key: &str) -> impl Future<Output = ApiResult<Vec<Instance>>> + Send;
    fn terminate_instances(&self, ids: &[String]) -> impl Future<Output = ApiResult<()>> + Send;
    /// Stops, starts or reboots instances (a game day's faults and their reverts).
    fn instance_action(&self, ids: &[String], action: InstanceAction) -> impl Future<Output = ApiResult<()>> + Send;
    /// Sets `tags` on existing instances or security groups (a key they carry is
    /// overwritten): how `extend` moves a run's expiry.
    fn create_tags(&self, ids: &[String], tags: &[Tag]) -> impl Future<Output = ApiResult<()>> + Send;
    /// The latest text of an instance's serial console (`GetConsoleOutput`, decoded);
    /// `None` while it has none yet. Needs no agent and no role on the instance.
    fn console_output(&self, id: &str) -> impl Future<Output = ApiResult<Option<String>>> + Send;
}

/// S3, as rehearse uses it for release artifacts: a link an instance can fetch one
/// object through without credentials, and the object itself for an install run here.
pub trait S3Api: Send + Sync {
    /// A presigned HTTPS GET of `s3://bucket/key`, valid for `expires_in` (SigV4 allows
    /// at most 7 days; a link signed with temporary credentials ends with them).
    fn presign_get(
        &self,
        bucket: &str,
        key: &str,
        expires_in: std::time::Duration,
    ) -> impl Future<Output = ApiResult<String>> + Send;
    /// Writes the object to `dest` (created, not overwritten); returns its size.
    fn download(&self, bucket: &str, key: &str, dest: &std::path::Path) -> impl Future<Output = ApiResult<u64>> + Send;
    /// Writes an object (the SSM runner's inputs).
    fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> impl Future<Output = ApiResult<()>> + Send;
    /// Reads an object; `None` when there is none (a command's output, as SSM wrote it).
    fn get_object(&self, bucket: &str, key: &str) -> impl Future<Output = ApiResult<Option<Vec<u8>>>> + Send;
    /// The last `max` bytes of an object, and whether its start was left out; `None`
    /// when there is no such object (a command's output that might be huge).
    fn get_object_tail(
        &self,
        bucket: &str,
        key: &str,
        max: u64,
    ) -> impl Future<Output = ApiResult<Option<(Vec<u8>, bool)>>> + Send;
    /// Deletes every object under `prefix`; how many there were.
    fn delete_prefix(&self, bucket: &str, prefix: &str) -> impl Future<Output = ApiResult<u64>> + Send;
}

/// RDS, as rehearse uses it.
pub trait RdsApi: Send + Sync {
    fn describe_db_instances(&self, ids: &[String]) -> impl Future<Output = ApiResult<Vec<DbInstance>>> + Send;
    fn db_instances_all(&self) -> impl Future<Output = ApiResult<Vec<DbInstance>>> + Send;
    /// Every snapshot of an instance, all pages, automated and manual.
    fn snapshots_of(&self, instance_id: &str) -> impl Future<Output = ApiResult<Vec<Snapshot>>> + Send;
    fn describe_db_clusters(&self, ids: &[String]) -> impl Future<Output = ApiResult<Vec<DbCluster>>> + Send;
    fn db_clusters_all(&self) -> impl Future<Output = ApiResult<Vec<DbCluster>>> + Send;
    fn create_db_subnet_group(
        &self,
        name: &str,
        description: &str,
        subnets: &[String],
        tags: &[Tag],
    ) -> impl Future<Output = ApiResult<DbSubnetGroup>> + Send;
    fn db_subnet_groups_all(&self) -> impl Future<Output = ApiResult<Vec<DbSubnetGroup>>> + Send;
    fn db_subnet_group_tags(&self, name: &str) -> impl Future<Output = ApiResult<Option<Vec<Tag>>>> + Send;
    fn delete_db_subnet_group(&self, name: &str) -> impl Future<Output = ApiResult<()>> + Send;
    fn restore_db_instance(&self, req: &RestoreDb) -> impl Future<Output = ApiResult<DbInstance>> + Send;
    fn clone_db_cluster(&self, req: &CloneCluster) -> impl Future<Output = ApiResult<DbCluster>> + Send;
    fn create_cluster_instance(
        &self,
        instance_id: &str,
        cluster_id: &str,
        class: &str,
        engine: &str,
        tags: &[Tag],
    ) -> impl Future<Output = ApiResult<DbInstance>> + Send;
    /// Makes the copy private and not deletion protected, and gives it a new password
    /// (None for an Aurora instance, whose password belongs to its cluster) and, when
    /// given, `security_group` alone (a pool member a run claimed goes into the run's):
    /// one modification, so one wait.
    fn secure_db_instance(
        &self,
        id: &str,
        password: Option<&str>,
        security_group: Option<&str>,
    ) -> impl Future<Output = ApiResult<()>> + Send;
    /// Gives an Aurora clone a new master password and no deletion protection.
    fn secure_db_cluster(&self, id: &str, password: &str) -> impl Future<Output = ApiResult<()>> + Send;
    fn delete_db_instance(&self, id: &str) -> impl Future<Output = ApiResult<()>> + Send;
    /// Stops an available DB instance (a pool member kept `stopped`): storage is all it
    /// costs until started. RDS starts it again by itself after seven days.
    fn stop_db_instance(&self, id: &str) -> impl Future<Output = ApiResult<()>> + Send;
    /// Starts a stopped DB instance (a pool member claimed).
    fn start_db_instance(&self, id: &str) -> impl Future<Output = ApiResult<()>> + Send;
    fn delete_db_cluster(&self, id: &str) -> impl Future<Output = ApiResult<()>> + Send;
    /// Reboots a DB instance, failing over to its standby with `failover` (Multi-AZ
    /// only): a game day's fault.
    fn reboot_db_instance(&self, id: &str, failover: bool) -> impl Future<Output = ApiResult<()>> + Send;
    /// Fails an Aurora cluster over to one of its replicas: a game day's fault.
    fn failover_db_cluster(&self, id: &str) -> impl Future<Output = ApiResult<()>> + Send;
    /// Sets `tags` on the RDS resource `arn` (a key it carries is overwritten).
    fn add_tags(&self, arn: &str, tags: &[Tag]) -> impl Future<Output = ApiResult<()>> + Send;
}
