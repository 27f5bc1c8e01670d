//! `databases:`: each copy of a production database, where its backups are and how it is
//! restored.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::*;

/// A database restored from production's latest backup.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Database engine. Only `postgres` today.
    #[serde(default)]
    pub engine: Engine,
    /// Database name inside the server (a template). Example: `shop`.
    pub name: String,
    /// Where production's backups are.
    pub source: DatabaseSource,
    /// Which backup to restore: `newest-snapshot` (default; newest available snapshot or
    /// newest local archive), `latest-restorable-time` (RDS point-in-time) or
    /// `aurora-clone` (copy-on-write clone of an Aurora cluster).
    #[serde(default)]
    pub restore: RestoreMode,
    /// What only the description's provider needs (aws: `instance_class`).
    #[serde(flatten)]
    pub target: DatabaseTarget,
    /// SQL file run on the copy before anything else touches it (relative to the
    /// description). Example: `masking.sql`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masking: Option<PathBuf>,
    /// How long to wait for the copy to be available. Default `30m` on aws, `10m` local.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_duration")]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Postgres,
}

/// Where production's backups are: exactly one of the keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseSource {
    /// RDS instance identifier of production (aws). Example: `shop-prod-db`.
    RdsInstance(String),
    /// Aurora cluster identifier of production (aws, with `restore: aurora-clone`).
    AuroraCluster(String),
    /// Directory of `pg_dump` custom-format archives (local); the newest by the time
    /// recorded in the archive is restored. Example: `../backups`.
    BackupDir(PathBuf),
    /// A `postgres://` URL to dump from (local, read-only use).
    Url(String),
}

impl DatabaseSource {
    /// The provider a source belongs to: RDS and Aurora on aws, archives and live
    /// dumps locally.
    pub fn provider(&self) -> ProviderKind {
        match self {
            DatabaseSource::RdsInstance(_) | DatabaseSource::AuroraCluster(_) => ProviderKind::Aws,
            DatabaseSource::BackupDir(_) | DatabaseSource::Url(_) => ProviderKind::Local,
        }
    }

    /// The keys naming a provider's sources in a description.
    pub fn keys_of(provider: ProviderKind) -> &'static [&'static str] {
        match provider {
            ProviderKind::Aws => &["rds_instance", "aurora_cluster"],
            ProviderKind::Local => &["backup_dir", "url"],
        }
    }

    pub fn key(&self) -> &'static str {
        match self {
            DatabaseSource::RdsInstance(_) => "rds_instance",
            DatabaseSource::AuroraCluster(_) => "aurora_cluster",
            DatabaseSource::BackupDir(_) => "backup_dir",
            DatabaseSource::Url(_) => "url",
        }
    }

    /// A one-line description of the production source, for plans and reports. URLs
    /// are shown without their password.
    pub fn describe(&self) -> String {
        match self {
            DatabaseSource::RdsInstance(id) => format!("RDS instance {id}"),
            DatabaseSource::AuroraCluster(id) => format!("Aurora cluster {id}"),
            DatabaseSource::BackupDir(dir) => format!("pg_dump archives in {}", dir.display()),
            DatabaseSource::Url(url) => format!("live dump of {}", redact_url(url)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    #[default]
    NewestSnapshot,
    LatestRestorableTime,
    AuroraClone,
}

impl RestoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMode::NewestSnapshot => "newest-snapshot",
            RestoreMode::LatestRestorableTime => "latest-restorable-time",
            RestoreMode::AuroraClone => "aurora-clone",
        }
    }
}
