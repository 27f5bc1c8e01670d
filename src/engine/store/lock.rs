//! Named locks in the state store, with leases.
//!
//! Taken with a create-if-absent (`If-None-Match: *`) of `locks/NAME.json`, which
//! holds who holds it (owner, host, pid, run id), since when and until when the lease
//! runs. The holder renews the lease with a compare-and-swap on the version it wrote
//! (`If-Match`), and releases with a delete on that same version, so a holder that lost
//! the lock can never remove its successor's. A lock whose lease ran out is taken over
//! with a compare-and-swap on the stale version — never deleted blindly — so of two
//! processes that both find it stale, exactly one wins. `rehearse unlock NAME --force`
//! is the human's way out.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{lock_key, put_checked, retrying, Condition, Etag, ObjectStore, StoreError};

/// What a lock object says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub name: String,
    pub owner: String,
    pub host: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// What it is held for (`rehearse lock`, `up --name staging`).
    pub purpose: String,
    pub since: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    /// Unique per holding: tells this holder's object from any other's.
    pub token: String,
}

impl LockInfo {
    /// A would-be holder: this process, on this host, as this user.
    pub fn for_this_process(name: &str, purpose: &str, run_id: Option<&str>) -> LockInfo {
        LockInfo {
            name: name.to_string(),
            owner: crate::sys::process::user_name(nix::unistd::geteuid().as_raw()),
            host: crate::sys::process::host_name(),
            pid: std::process::id(),
            run_id: run_id.map(str::to_string),
            purpose: purpose.to_string(),
            since: Utc::now(),
            lease_until: Utc::now(),
            token: crate::secrets::generate(),
        }
    }

    /// "`staging` is locked by run r-… (alice, ci-7) since T, lease until T2". Each
    /// part on one line, printable: a lock object is anyone's who may write the store.
    pub fn refusal(&self) -> String {
        use crate::sys::text::printable as p;
        let who = match &self.run_id {
            Some(r) => format!("run {} ({}, {})", p(r), p(&self.owner), p(&self.host)),
            None => format!("{}@{} (pid {}, {})", p(&self.owner), p(&self.host), self.pid, p(&self.purpose)),
        };
        format!(
            "`{}` is locked by {who} since {}, lease until {}",
            p(&self.name),
            self.since.format("%Y-%m-%d %H:%M:%SZ"),
            self.lease_until.format("%Y-%m-%d %H:%M:%SZ")
        )
    }
}

/// The clock leases are measured with (the wall clock; virtual time in tests).
pub type Now<'a> = &'a (dyn Fn() -> DateTime<Utc> + Send + Sync);

/// A lock this process holds: the version it wrote.
#[derive(Clone, Debug)]
pub struct Held {
    pub info: LockInfo,
    pub etag: Etag,
    /// The stale holder it was taken over from, if it was.
    pub took_over: Option<LockInfo>,
}

#[derive(Debug)]
pub enum Acquired {
    Held(Held),
    /// Someone else holds it, with a lease that still runs.
    Refused(LockInfo),
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the state store: {0}")]
    Store(#[from] StoreError),
    #[error("the lock object {key} cannot be read ({why}); `rehearse unlock {name} --force` removes it")]
    Unreadable { key: String, name: String, why: String },
    #[error("the lock `{0}` changed hands on every attempt; try again")]
    Contended(String),
}

fn parse(key: &str, name: &str, body: &[u8]) -> Result<LockInfo, LockError> {
    serde_json::from_slice(body).map_err(|e| LockError::Unreadable {
        key: key.to_string(),
        name: name.to_string(),
        why: e.to_string(),
    })
}

/// The shortest lease: one of less than a second would lapse between renewals.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
/// The longest lease (`--lease`, `$REHEARSE_LEASE`): a holder killed outright blocks its
/// lock for as long as its lease, and no lease may reach past the calendar.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

fn lease_end(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    // Leases are bounded where they are parsed; this never panics whatever it is given.
    chrono::Duration::from_std(lease.min(MAX_LEASE))
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Tries once to take `me.name`: free → held; held by someone whose lease runs →
/// refused; stale → taken over by compare-and-swap.
pub async fn acquire(
    store: &dyn ObjectStore,
    me: &LockInfo,
    lease: Duration,
    now: Now<'_>,
) -> Result<Acquired, LockError> {
    let key = lock_key(&me.name);
    for _ in 0..8 {
        let mut info = me.clone();
        info.since = now();
        info.lease_until = lease_end(info.since, lease);
        let body = serde_json::to_vec(&info).map_err(|e| StoreError::Failed(e.to_string()))?;
        match put_checked(store, &key, &body, Condition::Absent).await {
            Ok(etag) => {
                tracing::debug!("lock {key}: created, version {}", etag.0);
                return Ok(Acquired::Held(Held { info, etag, took_over: None }));
            }
            Err(StoreError::PreconditionFailed) => {}
            Err(e) => return Err(e.into()),
        }
        let Some(current) = retrying(|| store.get(&key)).await? else {
            continue; // released in between: try again
        };
        let holder = parse(&key, &me.name, &current.body)?;
        if holder.lease_until > now() {
            return Ok(Acquired::Refused(holder));
        }
        // Stale: replace exactly the version that was read; if anyone else moved
        // first, the condition fails and the lock is looked at again.
        match put_checked(store, &key, &body, Condition::Matches(current.etag)).await {
            Ok(etag) => return Ok(Acquired::Held(Held { info, etag, took_over: Some(holder) })),
            Err(StoreError::PreconditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(LockError::Contended(me.name.clone()))
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The object is no longer ours (force-unlocked, or taken over after our lease ran
    /// out): whoever holds it now, if anyone.
    #[error("the lock was lost{}", .0.as_ref().map(|i| format!(": {}", i.refusal())).unwrap_or_default())]
    Lost(Option<LockInfo>),
    #[error("the state store: {0}")]
    Store(#[from] StoreError),
}

/// Pushes the lease out by `lease` from now, on the version this holder wrote.
pub async fn renew(store: &dyn ObjectStore, held: &mut Held, lease: Duration, now: Now<'_>) -> Result<(), RenewError> {
    let key = lock_key(&held.info.name);
    if held.info.lease_until <= now() {
        // Past its lease, the lock may already be someone else's: renewing it now
        // could only succeed if no one took it, and it still counts as lost.
        let current = retrying(|| store.get(&key)).await?;
        let other = current.and_then(|o| serde_json::from_slice::<LockInfo>(&o.body).ok());
        return Err(RenewError::Lost(other.filter(|o| o.token != held.info.token)));
    }
    let mut info = held.info.clone();
    info.lease_until = lease_end(now(), lease);
    let body = serde_json::to_vec(&info).map_err(|e| StoreError::Failed(e.to_string()))?;
    match put_checked(store, &key, &body, Condition::Matches(held.etag.clone())).await {
        Ok(etag) => {
            held.etag = etag;
            held.info = info;
            Ok(())
        }
        Err(StoreError::PreconditionFailed) => {
            let current = retrying(|| store.get(&key)).await?;
            Err(RenewError::Lost(current.and_then(|o| serde_json::from_slice(&o.body).ok())))
        }
        Err(e) => Err(e.into()),
    }
}

/// Gives the lock up, if it is still this holder's (`Ok(false)`: it was not any more).
pub async fn release(store: &dyn ObjectStore, held: &Held) -> Result<bool, StoreError> {
    let key = lock_key(&held.info.name);
    match retrying(|| store.delete(&key, Some(held.etag.clone()))).await {
        Ok(()) => Ok(true),
        Err(StoreError::PreconditionFailed) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Who holds `name`, if anyone (whatever the lease says).
pub async fn holder(store: &dyn ObjectStore, name: &str) -> Result<Option<(LockInfo, Etag)>, LockError> {
    let key = lock_key(name);
    match retrying(|| store.get(&key)).await? {
        None => Ok(None),
        Some(o) => Ok(Some((parse(&key, name, &o.body)?, o.etag))),
    }
}

/// Removes `name` whoever holds it (`rehearse unlock --force`): the version read is the
/// version removed, so a lock taken in between is not. The holder removed, if any.
pub async fn force_unlock(store: &dyn ObjectStore, name: &str) -> Result<Option<LockInfo>, LockError> {
    let key = lock_key(name);
    for _ in 0..8 {
        let Some(current) = retrying(|| store.get(&key)).await? else { return Ok(None) };
        let info = serde_json::from_slice::<LockInfo>(&current.body).ok();
        match retrying(|| store.delete(&key, Some(current.etag.clone()))).await {
            Ok(()) => {
                return Ok(info.or_else(|| {
                    Some(LockInfo {
                        name: name.to_string(),
                        owner: "(unreadable lock)".into(),
                        host: String::new(),
                        pid: 0,
                        run_id: None,
                        purpose: String::new(),
                        since: Utc::now(),
                        lease_until: Utc::now(),
                        token: String::new(),
                    })
                }))
            }
            Err(StoreError::PreconditionFailed) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(LockError::Contended(name.to_string()))
}

/// A lock held for as long as this value lives: renewed every third of its lease by a
/// task; `lost` turns `Some` when a renewal finds it is no longer ours.
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    held: Arc<tokio::sync::Mutex<Held>>,
    renewer: tokio::task::JoinHandle<()>,
    pub lost: tokio::sync::watch::Receiver<Option<String>>,
}

impl Lease {
    /// Starts renewing `held` (taken with `lease`).
    pub fn keep(store: Arc<dyn ObjectStore>, held: Held, lease: Duration) -> Lease {
        let held = Arc::new(tokio::sync::Mutex::new(held));
        let (tx, lost) = tokio::sync::watch::channel(None);
        let (s, h) = (store.clone(), held.clone());
        let renewer = tokio::spawn(async move {
            let every = (lease / 3).max(Duration::from_millis(200));
            loop {
                tokio::time::sleep(every).await;
                let mut held = h.lock().await;
                match renew(s.as_ref(), &mut held, lease, &Utc::now).await {
                    Ok(()) => {}
                    Err(RenewError::Store(e)) => {
                        // The lease still runs; the next tick tries again.
                        tracing::warn!("cannot renew the lock `{}`: {e}", held.info.name);
                    }
                    Err(lost @ RenewError::Lost(_)) => {
                        #[allow(clippy::let_underscore_must_use)]
                        // The receiver may be gone: the holder is already finishing.
                        let _ = tx.send(Some(lost.to_string()));
                        return;
                    }
                }
            }
        });
        Lease { store, held, renewer, lost }
    }

    pub async fn info(&self) -> LockInfo {
        self.held.lock().await.info.clone()
    }

    /// Stops renewing and releases the lock (`Ok(false)`: it was no longer ours).
    pub async fn release(self) -> Result<bool, StoreError> {
        self.renewer.abort();
        let held = self.held.lock().await.clone();
        release(self.store.as_ref(), &held).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::file::FileStore;

    #[tokio::test]
    async fn one_holder_then_takeover_after_the_lease_and_never_a_blind_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("s")).unwrap();
        let t0 = Utc::now();
        let clock = std::sync::Mutex::new(t0);
        let now = || *clock.lock().unwrap();
        let a = LockInfo::for_this_process("staging", "test a", Some("r-1"));
        let b = LockInfo::for_this_process("staging", "test b", None);
        let lease = Duration::from_secs(30);
        let Acquired::Held(mut held_a) = acquire(&store, &a, lease, &now).await.unwrap() else { panic!("free lock") };
        let Acquired::Refused(by) = acquire(&store, &b, lease, &now).await.unwrap() else { panic!("held lock") };
        assert_eq!(by.token, a.token);
        assert!(by.refusal().starts_with("`staging` is locked by run r-1 ("), "{}", by.refusal());
        // Renewing moves the lease; b is still refused after the first lease would have run out.
        *clock.lock().unwrap() = t0 + chrono::Duration::seconds(20);
        renew(&store, &mut held_a, lease, &now).await.unwrap();
        *clock.lock().unwrap() = t0 + chrono::Duration::seconds(40);
        assert!(matches!(acquire(&store, &b, lease, &now).await.unwrap(), Acquired::Refused(_)));
        // a stops renewing: after its lease, b takes over, and a can neither renew nor release b's lock.
        *clock.lock().unwrap() = t0 + chrono::Duration::seconds(51);
        let Acquired::Held(held_b) = acquire(&store, &b, lease, &now).await.unwrap() else { panic!("stale lock") };
        assert_eq!(held_b.took_over.as_ref().map(|t| t.token.clone()), Some(a.token.clone()));
        assert!(matches!(renew(&store, &mut held_a, lease, &now).await, Err(RenewError::Lost(Some(_)))));
        assert!(!release(&store, &held_a).await.unwrap());
        assert_eq!(holder(&store, "staging").await.unwrap().unwrap().0.token, b.token);
        assert!(release(&store, &held_b).await.unwrap());
        assert!(holder(&store, "staging").await.unwrap().is_none());
    }
}
