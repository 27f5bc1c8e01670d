//! What only one provider needs: the region and network of an AWS copy, a service's
//! AMI or its local command, a database's RDS instance class.
//!
//! Each is an enum with one variant per provider, so that code building an AWS copy
//! gets a region, an AMI and an instance class by matching, never by unwrapping an
//! `Option` that "validation made sure of". The decoder builds every part of a
//! description for the one provider its `provider` key names.
//!
//! In the file (and in the serialized form) nothing changes: the description's
//! `provider` key is the tag, and each variant's keys sit flat beside the common ones.
//! The JSON Schema lists every provider's keys in each mapping; which keys a provider
//! requires or refuses is said once, at the root, by `if`/`then` on `provider`
//! ([`crate::description::schema`]).

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Serialize, Serializer};

use super::{Database, Network, ProviderKind, Service};

/// Where the copy is built, with what only that provider needs.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum Target {
    /// EC2 instances and RDS databases in an AWS account.
    Aws(AwsTarget),
    /// Processes and a throwaway PostgreSQL cluster on this machine.
    Local,
}

impl Target {
    pub fn provider(&self) -> ProviderKind {
        match self {
            Target::Aws(_) => ProviderKind::Aws,
            Target::Local => ProviderKind::Local,
        }
    }
}

/// Where an AWS copy lives.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct AwsTarget {
    /// AWS region (aws only). Example: `eu-west-1`.
    pub region: String,
    /// Where the copy lives in AWS (aws only).
    pub network: Network,
}

/// What a service runs on: an AMI on EC2, or a command on this machine.
#[derive(Clone, Debug)]
pub enum ServiceTarget {
    Aws(AwsService),
    Local(LocalService),
}

/// A service as EC2 instances.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct AwsService {
    /// AMI id (aws). Example: `ami-0abcdef1234567890`.
    pub image: String,
    /// EC2 instance type (aws). Example: `t3.small`.
    pub instance_type: String,
    /// User-data template file (aws), rendered with tera. Example:
    /// `../templates/user-data.sh.tera`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<PathBuf>,
    /// IAM instance profile the instances run with (aws), by name or ARN: what the
    /// service itself needs from AWS. Without one, an `s3://` artifact reaches the
    /// instance as a presigned HTTPS URL (`{{ release.url }}`), and the instance needs
    /// no credentials at all. Example: `shop-web`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    /// How long rehearse waits for the user-data's bootstrap marker (aws) on an
    /// instance without a health check before giving up; `0s`: an instance without a
    /// health check is ready once it runs. A bootstrap that reports a failure fails the
    /// run as soon as it is read, health check or not. Default `10m`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "super::ser_opt_duration")]
    #[schemars(with = "Option<super::DurationText>")]
    pub bootstrap_timeout: Option<std::time::Duration>,
}

/// A service as local processes.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct LocalService {
    /// Command that starts the service (local), run in the unpacked release with `PORT`
    /// set to a free port. Example: `python3 app.py`.
    pub command: String,
    /// What rehearse does when a game day's `kill` ends one of the service's
    /// processes: `no` (the default: it stays down) or `on-failure` (started again a
    /// second later, as the run started it, and healthy before the traffic reaches it
    /// again).
    #[serde(default, skip_serializing_if = "RestartPolicy::is_no")]
    pub restart: RestartPolicy,
}

/// A local service's restart policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// A process that ended stays down.
    #[default]
    No,
    /// A process a game day killed is started again.
    OnFailure,
}

impl RestartPolicy {
    pub fn is_no(&self) -> bool {
        *self == RestartPolicy::No
    }
}

/// What a database copy is restored into: an RDS instance, or the local cluster.
#[derive(Clone, Debug)]
pub enum DatabaseTarget {
    Aws(AwsDatabase),
    /// A database in the run's PostgreSQL cluster: nothing to choose.
    Local,
}

/// A database copy as an RDS instance.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct AwsDatabase {
    /// RDS instance class (aws only). Example: `db.t3.medium`.
    pub instance_class: String,
    /// A warm pool of copies restored and masked ahead of time (`rehearse pool fill`):
    /// a run that claims one skips the restore and the masking (aws only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
}

/// A database's warm pool on AWS.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// How many ready members `rehearse pool fill` keeps (1 to 20).
    pub size: u32,
    /// The members' instance class (default the database's). Example: `db.t3.medium`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_class: Option<String>,
    /// How old a member may get before it is replaced (default `24h`, 1h to 7d); one
    /// older than the newest backup is replaced too.
    #[serde(serialize_with = "super::ser_duration", default = "Pool::default_max_age")]
    #[schemars(with = "super::DurationText")]
    pub max_age: std::time::Duration,
    /// Whether ready members are kept `running` (default: a claim waits only for the
    /// run's own password and security group) or `stopped` (storage is all they cost;
    /// a claim starts its member first, which takes RDS minutes).
    #[serde(default)]
    pub keep: PoolKeep,
}

/// How a pool's ready members wait for a claim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolKeep {
    #[default]
    Running,
    Stopped,
}

impl Pool {
    pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    fn default_max_age() -> std::time::Duration {
        Self::DEFAULT_MAX_AGE
    }

    /// The most members a pool may have.
    pub const MAX_SIZE: u32 = 20;

    /// The members' instance class.
    pub fn class<'a>(&'a self, db: &'a AwsDatabase) -> &'a str {
        self.instance_class.as_deref().unwrap_or(&db.instance_class)
    }
}

impl Service {
    /// The EC2 side of the service; `None` on the local provider.
    pub fn aws(&self) -> Option<&AwsService> {
        match &self.target {
            ServiceTarget::Aws(a) => Some(a),
            ServiceTarget::Local(_) => None,
        }
    }

    /// Its restart policy (`no` on aws: an instance's own init restarts its service).
    pub fn restart(&self) -> RestartPolicy {
        match &self.target {
            ServiceTarget::Local(l) => l.restart,
            ServiceTarget::Aws(_) => RestartPolicy::No,
        }
    }

    /// The command that starts the service; `None` on aws.
    pub fn command(&self) -> Option<&str> {
        match &self.target {
            ServiceTarget::Local(l) => Some(&l.command),
            ServiceTarget::Aws(_) => None,
        }
    }

    /// The user-data template file, if an aws service has one.
    pub fn user_data(&self) -> Option<&Path> {
        self.aws().and_then(|a| a.user_data.as_deref())
    }
}

impl Database {
    /// The RDS side of the database; `None` on the local provider.
    pub fn aws(&self) -> Option<&AwsDatabase> {
        match &self.target {
            DatabaseTarget::Aws(a) => Some(a),
            DatabaseTarget::Local => None,
        }
    }

    /// The RDS instance class; `None` on the local provider.
    pub fn instance_class(&self) -> Option<&str> {
        self.aws().map(|a| a.instance_class.as_str())
    }

    /// Its warm pool, if it has one (aws).
    pub fn pool(&self) -> Option<&Pool> {
        self.aws().and_then(|a| a.pool.as_ref())
    }
}

// Flattened into a service or a database, a target is its variant's keys and nothing
// else: the provider is said once, at the top of the description.
impl Serialize for ServiceTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ServiceTarget::Aws(a) => a.serialize(s),
            ServiceTarget::Local(l) => l.serialize(s),
        }
    }
}

impl Serialize for DatabaseTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            DatabaseTarget::Aws(a) => a.serialize(s),
            DatabaseTarget::Local => s.serialize_unit(),
        }
    }
}

/// The `provider` key of a description, for its schema.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct ProviderKey {
    /// Where the copy is built: `aws` (EC2 + RDS) or `local` (processes and a
    /// throwaway PostgreSQL cluster on this machine).
    provider: ProviderKind,
}

impl JsonSchema for Target {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Target".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let keys = ProviderKind::ALL.map(|p| ProviderKeys::of(p, g).root);
        every_providers_keys(ProviderKey::json_schema(g), keys)
    }
}

impl JsonSchema for ServiceTarget {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "ServiceTarget".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let keys = ProviderKind::ALL.map(|p| ProviderKeys::of(p, g).service);
        every_providers_keys(Schema::default(), keys)
    }
}

impl JsonSchema for DatabaseTarget {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "DatabaseTarget".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let keys = ProviderKind::ALL.map(|p| ProviderKeys::of(p, g).database);
        every_providers_keys(Schema::default(), keys)
    }
}

/// The schemas of one provider's variants: the keys it uses at the root of a
/// description, in a service and in a database, and which of them it requires.
pub(crate) struct ProviderKeys {
    pub root: Schema,
    pub service: Schema,
    pub database: Schema,
}

impl ProviderKeys {
    pub(crate) fn of(provider: ProviderKind, g: &mut SchemaGenerator) -> ProviderKeys {
        let none = || schemars::json_schema!({ "type": "object", "properties": {} });
        match provider {
            ProviderKind::Aws => ProviderKeys {
                root: AwsTarget::json_schema(g),
                service: AwsService::json_schema(g),
                database: AwsDatabase::json_schema(g),
            },
            ProviderKind::Local => {
                ProviderKeys { root: none(), service: LocalService::json_schema(g), database: none() }
            }
        }
    }
}

/// `base` with the keys of every provider's variant added as optional properties.
fn every_providers_keys(mut base: Schema, variants: impl IntoIterator<Item = Schema>) -> Schema {
    let obj = base.ensure_object();
    obj.insert("type".into(), "object".into());
    let props = obj.entry("properties").or_insert_with(|| serde_json::json!({}));
    for variant in variants {
        if let (Some(props), Some(more)) =
            (props.as_object_mut(), variant.get("properties").and_then(|p| p.as_object()))
        {
            props.extend(more.clone());
        }
    }
    base
}
