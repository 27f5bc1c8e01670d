//! An AWS stage's stable names: records in a private Route 53 hosted zone.
//!
//! A database's name is a CNAME to its generation's RDS endpoint, a service's an A
//! record set of its generation's private addresses, all with the stage's short TTL.
//! A switch is one change batch — every name and a TXT record saying which generation
//! they point at (`_rehearse-generation.FIRST-NAME`) — which Route 53 applies all or
//! nothing; it is waited for until `INSYNC` (every Route 53 server answers with it),
//! after which resolvers see it within the TTL.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use super::api::{ApiError, ApiResult};
use crate::engine::stage::{NamesError, NamesFuture, StableNames};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    A,
    Cname,
    Txt,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::A => "A",
            RecordKind::Cname => "CNAME",
            RecordKind::Txt => "TXT",
        }
    }
}

/// A record set as rehearse writes them: simple routing, one name, one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSet {
    pub name: String,
    pub kind: RecordKind,
    pub ttl: u64,
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Upsert,
    Delete,
}

/// The slice of Route 53 a stage uses.
pub trait DnsApi: Send + Sync {
    /// Applies every change or none (one change batch); the change's id.
    fn change(
        &self,
        zone: &str,
        changes: &[(Action, RecordSet)],
        comment: &str,
    ) -> impl Future<Output = ApiResult<String>> + Send;
    /// Whether the change has reached every Route 53 server (`INSYNC`).
    fn in_sync(&self, change_id: &str) -> impl Future<Output = ApiResult<bool>> + Send;
    /// The record set of `name` and `kind`, if there is one.
    fn record(
        &self,
        zone: &str,
        name: &str,
        kind: RecordKind,
    ) -> impl Future<Output = ApiResult<Option<RecordSet>>> + Send;
    /// The zone's own name, where its SOA record is (`None`: it has none to read).
    fn apex(&self, zone: &str) -> impl Future<Output = ApiResult<Option<String>>> + Send;
}

/// One Route 53 shared by several users (tests inspect a fake while names use it).
impl<A: DnsApi> DnsApi for std::sync::Arc<A> {
    fn change(
        &self,
        zone: &str,
        changes: &[(Action, RecordSet)],
        comment: &str,
    ) -> impl Future<Output = ApiResult<String>> + Send {
        self.as_ref().change(zone, changes, comment)
    }
    fn in_sync(&self, change_id: &str) -> impl Future<Output = ApiResult<bool>> + Send {
        self.as_ref().in_sync(change_id)
    }
    fn record(
        &self,
        zone: &str,
        name: &str,
        kind: RecordKind,
    ) -> impl Future<Output = ApiResult<Option<RecordSet>>> + Send {
        self.as_ref().record(zone, name, kind)
    }
    fn apex(&self, zone: &str) -> impl Future<Output = ApiResult<Option<String>>> + Send {
        self.as_ref().apex(zone)
    }
}

/// How long a change may take to be `INSYNC` (Route 53 says "generally within 60
/// seconds"); how often it is asked.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
pub const SYNC_POLL: Duration = Duration::from_secs(1);

/// A stage's names in a hosted zone.
pub struct Route53Names<A> {
    pub api: A,
    pub zone: String,
    pub ttl: u64,
    /// Component (database or service) → its DNS name.
    pub names: BTreeMap<String, String>,
    /// The components that are databases (a CNAME each); the rest are services.
    pub databases: Vec<String>,
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// `host:port` → `host`.
fn host(target: &str) -> &str {
    match target.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => target,
    }
}

/// Why the stable names of a stage cannot be used in its zone.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("Route 53 zone {zone}: {source}")]
    Unreachable { zone: String, source: ApiError },
    #[error("Route 53 zone {zone} has no SOA record to tell its name by")]
    NoApex { zone: String },
    #[error(
        "the stable name of `{component}`, \"{}\", is not a DNS name inside the stage's zone {zone} ({apex})",
        .name.escape_debug()
    )]
    Outside { component: String, name: String, zone: String, apex: String },
}

impl<A: DnsApi> Route53Names<A> {
    /// Refuses names that are not DNS names strictly inside the zone (by the zone's own
    /// name, read from Route 53): what a stage's record lists is a stranger's input, and
    /// these are the names that get upserted and deleted.
    pub async fn check_in_zone(&self) -> Result<(), ZoneError> {
        let zone = || self.zone.clone();
        let apex = patiently(|| self.api.apex(&self.zone))
            .await
            .map_err(|source| ZoneError::Unreachable { zone: zone(), source })?
            .ok_or_else(|| ZoneError::NoApex { zone: zone() })?;
        let apex = apex.trim_end_matches('.').to_ascii_lowercase();
        for (component, name) in &self.names {
            let n = name.trim_end_matches('.').to_ascii_lowercase();
            if !crate::description::decode::is_dns_name(&n) || !n.ends_with(&format!(".{apex}")) {
                return Err(ZoneError::Outside {
                    component: component.clone(),
                    name: name.clone(),
                    zone: zone(),
                    apex,
                });
            }
        }
        Ok(())
    }

    /// The TXT record that says which generation the names point at.
    fn marker(&self) -> Option<String> {
        self.names.values().next().map(|first| fqdn(&format!("_rehearse-generation.{}", first.trim_end_matches('.'))))
    }

    /// The record sets pointing every name at `targets`, and the marker.
    fn records(&self, number: u64, targets: &BTreeMap<String, Vec<String>>) -> Result<Vec<RecordSet>, String> {
        let mut out = Vec::new();
        for (component, name) in &self.names {
            let to: Vec<&str> = targets.get(component).map(|t| t.iter().map(|x| host(x)).collect()).unwrap_or_default();
            if to.is_empty() {
                return Err(format!("generation {number} has no address for `{component}`"));
            }
            let (kind, values) = if self.databases.contains(component) {
                (RecordKind::Cname, vec![to[0].to_string()])
            } else {
                (RecordKind::A, to.iter().map(|s| s.to_string()).collect())
            };
            out.push(RecordSet { name: fqdn(name), kind, ttl: self.ttl, values });
        }
        if let Some(marker) = self.marker() {
            out.push(RecordSet {
                name: marker,
                kind: RecordKind::Txt,
                ttl: self.ttl,
                values: vec![format!("\"generation={number}\"")],
            });
        }
        Ok(out)
    }

    async fn wait_in_sync(&self, change_id: &str) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        // Route 53 applies a change in well under a second on most calls: looked at
        // soon, then once a second.
        let mut pause = Duration::from_millis(100);
        loop {
            if patiently(|| self.api.in_sync(change_id)).await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError {
                    code: None,
                    message: format!("change {change_id} was not INSYNC after {} s", SYNC_TIMEOUT.as_secs()),
                    kind: super::api::ErrorKind::Unreachable,
                });
            }
            tokio::time::sleep(pause).await;
            pause = SYNC_POLL;
        }
    }

    /// Sends a change batch and waits for it. UPSERTs are sent again while the answer
    /// is throttled, failed or lost: applying them twice is applying them once.
    async fn apply(&self, changes: &[(Action, RecordSet)], comment: &str) -> Result<(), ApiError> {
        let id = patiently_even_if_lost(|| self.api.change(&self.zone, changes, comment)).await?;
        self.wait_in_sync(&id).await
    }

    /// Deletes the record sets of `wanted` that exist, each exactly as it is (read
    /// first); when the batch is refused because one changed or went meanwhile (or a
    /// lost answer's first try applied it), reads again.
    async fn delete_all(&self, wanted: &[(String, RecordKind)]) -> Result<(), ApiError> {
        let mut last = None;
        for _ in 0..5 {
            let mut changes = Vec::new();
            for (name, kind) in wanted {
                if let Some(set) = patiently(|| self.api.record(&self.zone, name, *kind)).await? {
                    changes.push((Action::Delete, set));
                }
            }
            if changes.is_empty() {
                return Ok(());
            }
            let sent = patiently(|| self.api.change(&self.zone, &changes, "rehearse: stage destroyed")).await;
            match sent {
                Ok(id) => return self.wait_in_sync(&id).await,
                Err(e) if matches!(e.kind, super::api::ErrorKind::Refused | super::api::ErrorKind::Unreachable) => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ApiError {
            code: None,
            message: "the stage's records kept changing".into(),
            kind: super::api::ErrorKind::Refused,
        }))
    }

    async fn read_marker(&self) -> Result<Option<u64>, ApiError> {
        let Some(marker) = self.marker() else { return Ok(None) };
        let set = patiently(|| self.api.record(&self.zone, &marker, RecordKind::Txt)).await?;
        Ok(set.and_then(|s| {
            s.values.iter().find_map(|v| v.trim_matches('"').strip_prefix("generation=")?.parse::<u64>().ok())
        }))
    }
}

impl<A: DnsApi> StableNames for Route53Names<A> {
    fn switch_waits_for(&self) -> Option<(String, Duration)> {
        Some(("Route 53 to apply the change to the stage's records (INSYNC)".into(), SYNC_TIMEOUT))
    }

    fn switch<'a>(&'a self, number: u64, targets: &'a BTreeMap<String, Vec<String>>) -> NamesFuture<'a, ()> {
        Box::pin(async move {
            let changes: Vec<(Action, RecordSet)> =
                self.records(number, targets)?.into_iter().map(|r| (Action::Upsert, r)).collect();
            self.apply(&changes, &format!("rehearse: stage names to generation {number}"))
                .await
                .map_err(|e| NamesError::failed(format!("Route 53 zone {}", self.zone), e))
        })
    }

    fn pointing_at(&self) -> NamesFuture<'_, Option<u64>> {
        Box::pin(async move {
            self.read_marker().await.map_err(|e| NamesError::failed(format!("Route 53 zone {}", self.zone), e))
        })
    }

    fn remove(&self) -> NamesFuture<'_, ()> {
        Box::pin(async move {
            let mut wanted: Vec<(String, RecordKind)> = self
                .names
                .iter()
                .map(|(c, n)| (fqdn(n), if self.databases.contains(c) { RecordKind::Cname } else { RecordKind::A }))
                .collect();
            wanted.extend(self.marker().map(|m| (m, RecordKind::Txt)));
            self.delete_all(&wanted).await.map_err(|e| NamesError::failed(format!("Route 53 zone {}", self.zone), e))
        })
    }
}

/// A call sent again while it is throttled or fails on the service's side.
async fn patiently<T, F, Fut>(call: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<T>>,
{
    again_while(call, ApiError::is_transient).await
}

/// [`patiently`], and also when the answer was lost: for calls whose repeat does
/// nothing more (UPSERTs, reads).
async fn patiently_even_if_lost<T, F, Fut>(call: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<T>>,
{
    again_while(call, |e| e.is_transient() || e.kind == super::api::ErrorKind::Unreachable).await
}

/// Sends `call` again (8 times at most, backing off from 200 ms to 6.4 s) while its
/// error is `worth_again`.
async fn again_while<T, F, Fut>(mut call: F, worth_again: impl Fn(&ApiError) -> bool) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<T>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if worth_again(&e) && attempt < 8 => {
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fake_dns::{DnsFaults, FakeDns};

    fn names(list: &[(&str, &str)]) -> Route53Names<FakeDns> {
        Route53Names {
            api: FakeDns::new(1, DnsFaults { latency: (Duration::ZERO, Duration::ZERO), ..DnsFaults::realistic() }),
            zone: "Z0123456789ABCDEFGHIJ".into(),
            ttl: 10,
            names: list.iter().map(|(c, n)| (c.to_string(), n.to_string())).collect(),
            databases: vec!["db".into()],
        }
    }

    /// The names a record lists are upserted and deleted: each must be a DNS name
    /// strictly inside the zone (the fake's is `staging.shop.internal`).
    #[tokio::test(start_paused = true)]
    async fn names_outside_the_stages_zone_are_refused() {
        let ok = names(&[("db", "db.staging.shop.internal"), ("web", "WEB.staging.shop.internal.")]);
        assert!(ok.check_in_zone().await.is_ok());
        for bad in
            ["api.prod.shop.internal", "staging.shop.internal", "xstaging.shop.internal", "db..staging.shop.internal"]
        {
            let e = names(&[("db", bad)]).check_in_zone().await.unwrap_err().to_string();
            assert!(
                e.contains("is not a DNS name inside the stage's zone Z0123456789ABCDEFGHIJ (staging.shop.internal)"),
                "{bad}: {e}"
            );
        }
    }
}
