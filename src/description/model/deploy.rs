//! `deploy:` — the deploy itself rehearsed (`rehearse run FILE --release NEW --from
//! OLD`): the old release serves the load, the new one's migration runs under it, the
//! services are switched, and explicit limits judge what the traffic suffered.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::{ser_duration, ser_opt_duration, DurationText, Load};

/// `deploy:` — how a deploy is rehearsed and what it may cost the traffic.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Deploy {
    /// The traffic during the deploy: a request file replayed by rehearse (`requests`,
    /// `target`, `rate`, `timeout`; `duration` is not used: the load runs from the
    /// steady window to the end of the settling). Default: `compare.load`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// How long the load runs on the old release before the migration starts: the
    /// "before" window. Default `5s`.
    #[serde(default = "default_steady", serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub steady: Duration,
    /// How long the load goes on once every service runs the new release: the "after"
    /// window. Default `10s`.
    #[serde(default = "default_settle", serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub settle: Duration,
    /// How the services move to the new release: `rolling` (each new instance started
    /// and healthy before an old one stops, the load moved to it) or `restart` (the old
    /// instances stopped, then the new ones started). Default `rolling`.
    #[serde(default)]
    pub switch: Switch,
    /// The new release's migration files, relative to its directory, as `DIR/*.EXT`:
    /// what a statement seen running is traced to. Default `migrations/*.sql`.
    #[serde(default = "default_migrations")]
    pub migrations: String,
    /// The longest a request of the traffic may wait on a lock the migration holds.
    /// Example: `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_duration")]
    #[schemars(with = "Option<DurationText>")]
    pub max_lock_wait: Option<Duration>,
    /// The largest share of the requests sent during the migration that may fail, in
    /// percent. Example: `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Per endpoint (`METHOD PATH`), the most its p99 latency may be during the
    /// migration. Example: `{"GET /products": 800ms}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", serialize_with = "ser_durations")]
    #[schemars(with = "BTreeMap<String, DurationText>")]
    pub latency: BTreeMap<String, Duration>,
}

pub(super) fn ser_durations<S: serde::Serializer>(m: &BTreeMap<String, Duration>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, d) in m {
        map.serialize_entry(k, &crate::description::format_duration(*d))?;
    }
    map.end()
}

/// How the services move to the new release.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Switch {
    /// Each new instance started and healthy before an old one stops.
    #[default]
    Rolling,
    /// The old instances stopped, then the new ones started: the traffic sees the gap.
    Restart,
}

impl Switch {
    pub fn as_str(self) -> &'static str {
        match self {
            Switch::Rolling => "rolling",
            Switch::Restart => "restart",
        }
    }
}

pub fn default_steady() -> Duration {
    Duration::from_secs(5)
}

pub fn default_settle() -> Duration {
    Duration::from_secs(10)
}

pub fn default_migrations() -> String {
    "migrations/*.sql".to_string()
}
