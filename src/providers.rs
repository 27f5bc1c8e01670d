//! Providers turn plan resources into real things and remove them again: `aws` (EC2 and
//! RDS through the SDK) and `local` (a throwaway PostgreSQL cluster and processes on this
//! machine). Each implements [`crate::engine::provider::Provider`]; the engine drives the
//! lifecycle and keeps the journal.
//!
//! Both install the release the same way, from this machine: [`release`] unpacks and
//! checks the artifact, [`install`] runs the service's install (migrations) against the
//! copy once, before any of its instances or processes start.

pub mod aws;
pub(crate) mod install;
pub mod local;
pub(crate) mod release;

/// Why the twins of a comparison could not be given one point of production.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TwinsError(pub String);

/// What both twins of a comparison restore: every database's source pinned now (a
/// backup landing in between changes neither), by `loaded`'s provider. Locally, unless
/// `cold`, the golden copy is then made from the pinned backup where it is not already:
/// one restore, which both twins copy. Returns the pins and what was done to the golden
/// copies.
pub async fn pin_twins(
    loaded: &crate::description::Loaded,
    cold: bool,
    work_root: &std::path::Path,
    reporter: &dyn crate::engine::events::Reporter,
    signals: &crate::sys::signals::Signals,
) -> Result<(crate::engine::provider::Pins, Vec<String>), TwinsError> {
    use crate::engine::provider::Provider;
    match &loaded.desc.target {
        crate::description::Target::Local => {
            let pins =
                local::LocalProvider::new(work_root).pin_sources(loaded).await.map_err(|e| TwinsError(e.message))?;
            // Nothing restored from a backup (no database, or live `url:` sources): no golden copy.
            if cold || pins.is_empty() {
                return Ok((pins, Vec::new()));
            }
            use local::golden::{refresh_all, Method, Refresh};
            let lines = refresh_all(loaded, work_root, Refresh::Stale(&pins), Method::Auto, reporter, signals)
                .await
                .map_err(TwinsError)?;
            Ok((pins, lines))
        }
        crate::description::Target::Aws(aws) => {
            let provider = aws::AwsProvider::new(aws::sdk::Sdk::new(&aws.region).await, aws::POLL_FIRST, aws::POLL_MAX);
            Ok((provider.pin_sources(loaded).await.map_err(|e| TwinsError(e.message))?, Vec::new()))
        }
    }
}

/// PostgreSQL's own psql when this machine has its server binaries; else the PATH's.
pub fn psql() -> crate::compare::database::Psql {
    crate::compare::database::Psql(
        local::postgres::PgBin::find().map(|b| b.dir.join("psql")).unwrap_or_else(|_| "psql".into()),
    )
}
