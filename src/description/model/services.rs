//! `services:`: the release's services, their config templates and health checks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::*;

/// A service running the release: EC2 instances (aws) or local processes.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// How many instances or processes. Default 1, at most 20.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 20))]
    pub count: u32,
    /// Databases and services this one needs first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What only the description's provider needs (aws: `image`, `instance_type`,
    /// `user_data`; local: `command`).
    #[serde(flatten)]
    pub target: ServiceTarget,
    /// Install / migration command run once in the unpacked release against the copy
    /// before the service starts. Example: `sh migrate.sh`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    /// Config templates rendered into the unpacked release before install.
    #[serde(default)]
    pub templates: Vec<ConfigTemplate>,
    /// Environment of the service (values are templates). Example:
    /// `{DATABASE_URL: "{{ databases.db.url }}"}`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ScalarText>")]
    pub env: BTreeMap<String, String>,
    /// Port the service listens on (aws; local services get a free port in `PORT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// HTTP health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

fn one() -> u32 {
    1
}

/// A config file rendered from a tera template into the unpacked release.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigTemplate {
    /// Template file, relative to the description. Example: `shop.conf.tera`.
    pub source: PathBuf,
    /// Destination, relative to the unpacked release. Example: `config/shop.conf`.
    pub dest: PathBuf,
}

/// An HTTP health check: GET `path` until it answers 2xx, within `timeout`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Path to GET. Example: `/health`.
    pub path: String,
    /// How long to wait at most. Default `60s`.
    #[serde(default = "default_health_timeout", serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub timeout: Duration,
}

/// The timeout of a health check that does not set one.
pub fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}
