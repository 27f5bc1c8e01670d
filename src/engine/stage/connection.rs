//! How to reach a stage through its stable names, its password included (`rehearse
//! stage env`), and who answers those names (`rehearse stage status`). The connection
//! is built from the stage's record — checked when it was loaded — and handed out only
//! while every name is answered by what rehearse set up for it.

use std::collections::BTreeMap;

use super::password::{password, PasswordError};
use super::{NamesError, StableNames, StageRecord};
use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::engine::connection::Connection;
use crate::engine::store::ObjectStore;

/// Why a stage's connection is not handed out.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("stage `{0}` has no current generation yet")]
    NoCurrent(String),
    /// A name is answered by something else than rehearse's (or by nothing): a client
    /// would hand that the stage's password.
    #[error("stage `{stage}`: {}", .why.join("; "))]
    Unanswered { stage: String, why: Vec<String> },
    #[error("cannot read the stage's password: {0}")]
    Password(#[source] PasswordError),
}

/// A stage's connection, and the variables a client sets beside it.
#[derive(Debug)]
pub struct StageEnv {
    pub connection: Connection,
    /// libpq's `PGREQUIREAUTH` where the stage has databases: libpq 16 and later then
    /// refuse any authentication but SCRAM (libpq 15 ignores it).
    pub extra: Vec<(&'static str, &'static str)>,
}

/// How the stable names stand: the generation they point at, and what is wrong with
/// who answers them (one line per name; empty: each is answered by rehearse's).
#[derive(Debug, Default)]
pub struct NamesSeen {
    pub pointing_at: Option<u64>,
    pub unanswered: Vec<String>,
}

/// What the names say now; a failure to ask is one more thing wrong.
pub async fn seen(names: &dyn StableNames) -> NamesSeen {
    NamesSeen { pointing_at: names.pointing_at().await.ok().flatten(), unanswered: unanswered(names).await }
}

async fn unanswered(names: &dyn StableNames) -> Vec<String> {
    names.unanswered().await.unwrap_or_else(|e: NamesError| vec![format!("cannot tell who answers them: {e}")])
}

/// The current generation's connection through the stable names, or why not. Checks,
/// in order: a current generation, every name answered by rehearse's, the password.
/// `require_auth`: this machine's libpq takes `require_auth` in a URL (16 and later).
pub async fn env(
    store: &dyn ObjectStore,
    names: &dyn StableNames,
    record: &StageRecord,
    require_auth: bool,
) -> Result<StageEnv, EnvError> {
    let stage = record.stage.as_str();
    let cur = serving(record)?;
    let why = unanswered(names).await;
    if !why.is_empty() {
        return Err(EnvError::Unanswered { stage: stage.to_string(), why });
    }
    let password = password(store, stage).await.map_err(EnvError::Password)?;
    let connection = through_names(record, &cur.run_id, &password, require_auth);
    // libpq 15 ignores PGREQUIREAUTH; 16 and later refuse any authentication but SCRAM.
    let extra = if connection.databases.is_empty() { vec![] } else { vec![("PGREQUIREAUTH", "scram-sha-256")] };
    Ok(StageEnv { connection, extra })
}

/// The generation `env` hands out, or [`EnvError::NoCurrent`].
pub fn serving(record: &StageRecord) -> Result<&super::Generation, EnvError> {
    record.current_generation().ok_or_else(|| EnvError::NoCurrent(record.stage.clone()))
}

/// The stage's databases and services at their stable names, with the stage's
/// password. The stage's databases ask for SCRAM (`--auth-host=scram-sha-256`): with
/// `require_auth`, a client that insists on it never sends the password to whatever
/// else might answer a name (libpq 16 and later honour it; 15 refuses a URL with it).
pub fn through_names(record: &StageRecord, run_id: &str, password: &str, require_auth: bool) -> Connection {
    let host_port = |stable: &str, default_port: &str| match stable.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.to_string()),
        _ => (stable.to_string(), default_port.to_string()),
    };
    let require_auth = if require_auth { "?require_auth=scram-sha-256" } else { "" };
    let mut databases = BTreeMap::new();
    let mut services = BTreeMap::new();
    for (component, stable) in &record.names {
        if let Some(db) = record.databases.get(component) {
            let (host, port) = host_port(stable, &db.port);
            let url = format!("postgres://{}:{password}@{host}:{port}/{}{require_auth}", db.user, db.name);
            databases.insert(
                component.clone(),
                DatabaseOutputs {
                    host: host.clone(),
                    port: port.clone(),
                    name: db.name.clone(),
                    user: db.user.clone(),
                    password: password.to_string(),
                    url,
                    endpoint: format!("{host}:{port}"),
                },
            );
        } else {
            let (host, port) = host_port(stable, "");
            let url = if port.is_empty() { format!("http://{host}") } else { format!("http://{host}:{port}") };
            services.insert(
                component.clone(),
                ServiceOutputs {
                    address: host.clone(),
                    port,
                    url: url.clone(),
                    addresses: vec![host],
                    urls: vec![url],
                },
            );
        }
    }
    Connection { run_id: run_id.to_string(), databases, services }
}
