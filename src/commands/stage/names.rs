//! Where a stage's stable names are, by its record's provider — a forwarder's ports
//! on this machine, or Route 53 records — and what this machine's libpq accepts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Opened;
use crate::cli::Global;
use crate::engine::stage::{RecordFault, StableNames, StageRecord};
use crate::exit;

/// Why a stage's stable names cannot be reached from here.
#[derive(Debug, thiserror::Error)]
pub(super) enum NamesOpenError {
    #[error("the stage `{stage}`: {source}")]
    Record {
        stage: String,
        #[source]
        source: RecordFault,
    },
    #[error("the stage's record names `{stable}` for `{name}`, which is not a local port")]
    NotAPort { name: String, stable: String },
    #[error("the stage's directory {}: {why}", .dir.display())]
    Directory { dir: PathBuf, why: String },
    #[error("the stage `{0}` names no Route 53 zone (`stage.zone`)")]
    NoZone(String),
    #[error("the stage `{stage}`: {why}")]
    OutsideZone { stage: String, why: String },
    #[error("the stage `{stage}` is on the unknown provider `{provider}`")]
    UnknownProvider { stage: String, provider: String },
}

impl NamesOpenError {
    /// Said, and its exit code.
    pub(super) fn said(&self) -> i32 {
        errln!("error: {self}");
        match self {
            NamesOpenError::NotAPort { .. } => exit::BUILD_FAILED,
            _ => exit::USAGE,
        }
    }
}

/// The stage `stage`'s stable names as its record (checked against `stage` when it
/// was loaded) or, for a rebuild, its description has them, on the record's provider.
/// The stage's directory is built from `stage`, the name given on the command line or
/// in the description.
pub(super) async fn stable_names(
    g: &Global,
    opened: &Opened,
    stage: &str,
    record: &StageRecord,
) -> Result<Box<dyn StableNames>, NamesOpenError> {
    record.check(stage).map_err(|source| NamesOpenError::Record { stage: stage.to_string(), source })?;
    match record.provider.as_str() {
        "local" => {
            let mut ports = BTreeMap::new();
            for (name, stable) in &record.names {
                let port = stable.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                let Some(p) = port else {
                    return Err(NamesOpenError::NotAPort { name: name.clone(), stable: stable.clone() });
                };
                ports.insert(name.clone(), p);
            }
            let dir = super::super::store::local_root_for(g, opened.url.as_ref()).join("stages").join(stage);
            match crate::providers::local::forward::LocalNames::new(&dir, ports) {
                Ok(n) => Ok(Box::new(n)),
                Err(why) => Err(NamesOpenError::Directory { dir, why: why.to_string() }),
            }
        }
        "aws" => {
            let zone = record.zone.clone().ok_or_else(|| NamesOpenError::NoZone(record.stage.clone()))?;
            let names = crate::providers::aws::dns::Route53Names {
                api: crate::providers::aws::sdk::route53::Route53::new().await,
                zone,
                // The description allows 1 s to an hour; the record is anyone's.
                ttl: record.record_ttl_secs.clamp(1, 3600),
                names: record.names.clone(),
                databases: record.databases.keys().cloned().collect(),
            };
            // Every name it will upsert or delete must lie inside the zone.
            match names.check_in_zone().await {
                Ok(()) => Ok(Box::new(names)),
                Err(why) => Err(NamesOpenError::OutsideZone { stage: stage.to_string(), why: why.to_string() }),
            }
        }
        other => Err(NamesOpenError::UnknownProvider { stage: record.stage.clone(), provider: other.to_string() }),
    }
}

/// Whether this machine's libpq takes `require_auth` (16 and later): asked of its
/// `psql` itself, with a connection string that cannot connect anywhere — libpq 15 says
/// "invalid connection option" before trying.
pub(super) fn libpq_takes_require_auth() -> bool {
    let psql = crate::providers::local::postgres::PgBin::find()
        .map(|b| b.dir.join("psql"))
        .unwrap_or_else(|_| std::path::PathBuf::from("psql"));
    let out = std::process::Command::new(psql)
        .args(["-X", "-w", "-d", "host=/nonexistent/rehearse-probe require_auth=scram-sha-256", "-c", ""])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null())
        .output();
    out.is_ok_and(|o| {
        let err = String::from_utf8_lossy(&o.stderr);
        !err.is_empty() && !err.contains("require_auth")
    })
}
