//! `stage:`: a description rebuilt as generations behind stable names.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::*;

/// A stage: the description rebuilt night after night as generations, each verified by
/// the suites before every stable name moves to it at once.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The stage's name, unique in the state store. Example: `staging`.
    #[schemars(regex(pattern = r"^[a-z]([a-z0-9_-]{0,30}[a-z0-9])?$"))]
    pub name: String,
    /// How long the previous generation keeps serving the connections opened before
    /// the switch, before it is retired. Example: `10m`. Default `5m`.
    #[schemars(with = "DurationText")]
    #[serde(default = "default_drain", serialize_with = "ser_duration")]
    pub drain: Duration,
    /// AWS: the id of the private Route 53 hosted zone that holds the stable names.
    /// Example: `Z0123456789ABCDEFGHIJ`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// AWS: the TTL of the stable records; a switch is seen by resolvers within it.
    /// Example: `30s`. Default `10s`.
    #[schemars(with = "DurationText")]
    #[serde(default = "default_record_ttl", serialize_with = "ser_duration")]
    pub record_ttl: Duration,
    /// One stable name per database and service: a port on 127.0.0.1 (local) or a DNS
    /// name in `zone` (aws). Example: `{db: 25432, web: 28080}`.
    pub names: BTreeMap<String, StableName>,
}

/// Where clients reach a database or service of the stage, whatever its generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StableName {
    /// Local: a TCP port on 127.0.0.1 that rehearse's forwarder listens on.
    Port(#[schemars(range(min = 1024, max = 65535))] u16),
    /// AWS: a DNS name in the stage's zone (a CNAME to the database, an A record to
    /// the service's instances).
    Record(String),
}

impl std::fmt::Display for StableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StableName::Port(p) => write!(f, "127.0.0.1:{p}"),
            StableName::Record(r) => f.write_str(r),
        }
    }
}

/// How long a stage's previous generation drains when `drain` is not set.
pub fn default_drain() -> Duration {
    Duration::from_secs(300)
}

/// The TTL of a stage's records when `record_ttl` is not set.
pub fn default_record_ttl() -> Duration {
    Duration::from_secs(10)
}

/// The longest a stage's previous generation may drain (`stage.drain`, `rebuild --drain`).
pub const MAX_DRAIN: Duration = Duration::from_secs(24 * 3600);
