//! A database's warm pool: copies restored from the newest backup and masked ahead of
//! time, each a *member* record in the state store (`pool/ENV/DB/MEMBER.json`), so a
//! run that claims one skips the restore and the masking.
//!
//! A member's life: `restoring` (written before its restore is asked for: the record
//! is the intent, as a journal's is), `ready` (restored, private, masked), `claimed`
//! (a run won it), and gone (the run made it its own: retagged and journaled, its
//! record deleted; or `pool drain`, or replaced as too old). A claim is a
//! compare-and-swap of the ready record (`If-Match`), **read back**: a store whose
//! conditional writes are not atomic (an emulator) can let two writers both succeed,
//! and only the one whose version stayed has the member. Two claimants never get the
//! same member. A claim not completed within [`CLAIM_LEASE`] (its run died between the
//! swap and the handover) is a dead claim: what the member's tags say decides whether
//! it goes back to the pool or is its run's to tear down ([`Dead`]).
//!
//! Everything read from the store is checked by grammar and size where it is read:
//! another runner may have written it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::events::{Event, Reporter};
use super::store::{self, Condition, Etag, ObjectStore, StoreError};
use crate::sys::state::valid_run_id;

/// How long a claim may take before it is taken for dead: the swap, the retag and
/// the journal record take seconds; a run killed in between leaves its claim.
pub const CLAIM_LEASE: Duration = Duration::from_secs(15 * 60);

/// The most members a pool may have (the description's bound).
pub const MAX_SIZE: u32 = crate::description::Pool::MAX_SIZE;

/// The tag every resource of a pool member carries at its creation: the pool's
/// `ENVIRONMENT/DATABASE`.
pub const TAG_POOL: &str = "rehearse:pool";
/// And the member's own id (its run id when made): after a run claimed it and took
/// the `rehearse:run-id` tag, this still says which member's name it bears.
pub const TAG_MEMBER: &str = "rehearse:pool-member";

/// A run that makes a pool member (`rehearse pool fill`): only the database and what
/// its masking needs, kept for `keep_for`, tagged as the pool's.
#[derive(Clone, Debug)]
pub struct MemberRun {
    pub database: String,
    pub keep_for: Duration,
}

/// Passes every event on, and calls `refill` the first time the run takes a member of
/// each database's pool ([`Event::PoolClaimed`]): the pool is one short from that
/// moment, not from the run's end. (A fill fills every pool of the description: a
/// second database's claim asks again, in case the first fill read it before.)
pub struct RefillOnClaim<'a, F> {
    inner: &'a dyn Reporter,
    refill: F,
    started: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl<'a, F: Fn() + Send + Sync> RefillOnClaim<'a, F> {
    pub fn new(inner: &'a dyn Reporter, refill: F) -> Self {
        RefillOnClaim { inner, refill, started: Default::default() }
    }
}

impl<F: Fn() + Send + Sync> Reporter for RefillOnClaim<'_, F> {
    fn event(&self, ev: Event) {
        let claimed = match &ev {
            Event::PoolClaimed { database, .. } => {
                self.started.lock().map(|mut s| s.insert(database.clone())).unwrap_or(false)
            }
            _ => false,
        };
        self.inner.event(ev);
        if claimed {
            (self.refill)();
        }
    }
}

/// One member of a pool, as its record says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its own id, shaped as a run id (`r-…`): the name of its instance derives from
    /// it as a run's copy's does from the run's, so the guard and sweep know it.
    pub member: String,
    /// The instance it is (RDS DB instance identifier).
    pub instance: String,
    /// The backup it was restored from (snapshot id), and when that was taken.
    pub snapshot: String,
    pub taken_at: Option<DateTime<Utc>>,
    /// SHA-256 (hex) of the masking SQL it was masked with; `None` without masking.
    pub masking: Option<String>,
    /// Its instance class.
    pub class: String,
    /// When its restore was asked for.
    pub made_at: DateTime<Utc>,
    /// Stopped while it waits for a claim (`keep: stopped`): a claim starts it. What
    /// its instance's status says decides; this is what `pool status` shows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    #[serde(flatten)]
    pub state: State,
}

/// Where a member is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Its restore was asked for (or is about to be); not to be handed out.
    Restoring,
    /// Restored, private and masked: a run may claim it.
    Ready { ready_at: DateTime<Utc> },
    /// A run won it and is taking it over.
    Claimed { run_id: String, at: DateTime<Utc> },
}

/// A member record and the version it was read at.
#[derive(Clone, Debug)]
pub struct Read {
    pub key: String,
    pub member: Member,
    pub etag: Etag,
}

/// Why the pool's records could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the pool's record {key} in {url}: {source}")]
    Store {
        key: String,
        url: String,
        #[source]
        source: StoreError,
    },
    #[error("the pool's record {key} in {url} is not one rehearse writes ({why}); it is left alone")]
    Forged { key: String, url: String, why: String },
}

fn store_err(store: &dyn ObjectStore, key: &str) -> impl FnOnce(StoreError) -> PoolError {
    let (key, url) = (key.to_string(), store.url());
    move |source| PoolError::Store { key, url, source }
}

/// The prefix of a database's pool in the store.
pub fn prefix(environment: &str, database: &str) -> String {
    format!("pool/{environment}/{database}/")
}

pub fn key(environment: &str, database: &str, member: &str) -> String {
    format!("{}{member}.json", prefix(environment, database))
}

/// RDS instance identifiers: a letter, then letters, digits and single hyphens, at
/// most 63, not ending in a hyphen.
pub fn valid_instance_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && !id.ends_with('-')
        && !id.contains("--")
}

fn valid_text(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

impl Member {
    /// Why a record read from the store is not one rehearse wrote, if it is not.
    fn invalid(&self, key_member: &str) -> Option<String> {
        if !valid_run_id(&self.member) || self.member != key_member {
            return Some(format!("its member id `{}` is not the one its key names", self.member.escape_debug()));
        }
        if !valid_instance_id(&self.instance) {
            return Some(format!("`{}` is not an RDS instance identifier", self.instance.escape_debug()));
        }
        if !valid_text(&self.snapshot, 255) || !valid_text(&self.class, 64) {
            return Some("its snapshot or instance class is not an AWS identifier".into());
        }
        if self.masking.as_deref().is_some_and(|m| m.len() != 64 || !m.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Some("its masking digest is not a SHA-256".into());
        }
        if let State::Claimed { run_id, .. } = &self.state {
            if !valid_run_id(run_id) {
                return Some(format!("it is claimed by `{}`, which is not a run id", run_id.escape_debug()));
            }
        }
        None
    }
}

/// The member record under `key`, checked; `None` when there is none.
pub async fn read(store: &dyn ObjectStore, key: &str) -> Result<Option<Read>, PoolError> {
    let Some(o) = store::retrying(|| store.get(key)).await.map_err(store_err(store, key))? else {
        return Ok(None);
    };
    let forged = |why: String| PoolError::Forged { key: key.to_string(), url: store.url(), why };
    let member: Member = serde_json::from_slice(&o.body).map_err(|e| forged(format!("it does not read: {e}")))?;
    let named = key.rsplit('/').next().and_then(|n| n.strip_suffix(".json")).unwrap_or_default();
    if let Some(why) = member.invalid(named) {
        return Err(forged(why));
    }
    Ok(Some(Read { key: key.to_string(), member, etag: o.etag }))
}

/// Every member of a database's pool, oldest first; forged records are skipped and
/// returned apart (said, never acted on).
pub async fn members(
    store: &dyn ObjectStore,
    environment: &str,
    database: &str,
) -> Result<(Vec<Read>, Vec<PoolError>), PoolError> {
    let p = prefix(environment, database);
    let keys = store::retrying(|| store.list(&p)).await.map_err(store_err(store, &p))?;
    let (mut out, mut forged) = (Vec::new(), Vec::new());
    for k in keys.iter().filter(|k| k.ends_with(".json") && !k.contains('/')) {
        match read(store, &format!("{p}{k}")).await {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(e @ PoolError::Forged { .. }) => forged.push(e),
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.member.made_at.cmp(&b.member.made_at).then(a.member.member.cmp(&b.member.member)));
    Ok((out, forged))
}

/// Writes a member's record: created (`If-None-Match`) when `etag` is `None`, else
/// replacing the version read.
pub async fn write(store: &dyn ObjectStore, key: &str, member: &Member, etag: Option<Etag>) -> Result<Etag, PoolError> {
    let body = serde_json::to_vec_pretty(member).map_err(|e| PoolError::Store {
        key: key.to_string(),
        url: store.url(),
        source: StoreError::Failed(e.to_string()),
    })?;
    let cond = etag.map_or(Condition::Absent, Condition::Matches);
    store::put_checked(store, key, &body, cond).await.map_err(store_err(store, key))
}

/// Removes a member's record as it was read (a write in between is not removed).
pub async fn remove(store: &dyn ObjectStore, read: &Read) -> Result<(), PoolError> {
    match store::retrying(|| store.delete(&read.key, Some(read.etag.clone()))).await {
        Ok(()) => Ok(()),
        Err(StoreError::PreconditionFailed) => {
            Err(PoolError::Store { key: read.key.clone(), url: store.url(), source: StoreError::PreconditionFailed })
        }
        Err(e) => Err(store_err(store, &read.key)(e)),
    }
}

/// What a run wants of a member: made from this backup, with this masking, young
/// enough.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub snapshot: String,
    pub masking: Option<String>,
    pub max_age: Duration,
    /// The instance class the pool's members are made with now.
    pub class: String,
}

impl Wanted {
    /// Why `m` does not fit, if it does not.
    pub fn misfit(&self, m: &Member, now: DateTime<Utc>) -> Option<String> {
        if m.snapshot != self.snapshot {
            return Some(format!("made from {}, not the newest backup {}", m.snapshot, self.snapshot));
        }
        if m.masking != self.masking {
            return Some("masked with another masking SQL".into());
        }
        if m.class != self.class {
            return Some(format!("a {}, the pool's members are now {}", m.class, self.class));
        }
        let age = (now - m.made_at).to_std().unwrap_or_default();
        if age > self.max_age {
            return Some(format!(
                "older than the pool's max_age ({})",
                crate::description::format_duration(self.max_age)
            ));
        }
        None
    }
}

/// The outcome of a claim.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per claim, moved once
pub enum Claim {
    /// This run has the member (its record now says so, read back).
    Won(Read),
    /// No member could be had: why, for the report.
    None(String),
}

/// Claims a ready member that fits `wanted` for `run_id`. Members are tried from a
/// place that depends on the run (so claimants spread out), each by compare-and-swap
/// read back; one lost to another claimant is passed over.
pub async fn claim(
    store: &dyn ObjectStore,
    environment: &str,
    database: &str,
    wanted: &Wanted,
    run_id: &str,
    now: DateTime<Utc>,
) -> Result<Claim, PoolError> {
    let (all, _forged) = members(store, environment, database).await?;
    if all.is_empty() {
        return Ok(Claim::None("the pool has no member (run `rehearse pool fill`)".into()));
    }
    let mut ready: Vec<&Read> = Vec::new();
    let (mut restoring, mut claimed, mut misfits) = (0, 0, Vec::new());
    for r in &all {
        match &r.member.state {
            State::Restoring => restoring += 1,
            State::Claimed { .. } => claimed += 1,
            State::Ready { .. } => match wanted.misfit(&r.member, now) {
                None => ready.push(r),
                Some(why) => misfits.push(format!("{}: {why}", r.member.member)),
            },
        }
    }
    let start = ready.len().checked_sub(1).map_or(0, |_| spread(run_id) % ready.len());
    for r in ready.iter().cycle().skip(start).take(ready.len()) {
        let mut mine = r.member.clone();
        mine.state = State::Claimed { run_id: run_id.to_string(), at: now };
        match write(store, &r.key, &mine, Some(r.etag.clone())).await {
            Ok(_) => {}
            Err(PoolError::Store { source: StoreError::PreconditionFailed, .. }) => continue,
            Err(e) => return Err(e),
        }
        // Read back: only the claimant whose version stayed has it.
        match read(store, &r.key).await? {
            Some(now_read) if now_read.member == mine => return Ok(Claim::Won(now_read)),
            _ => continue,
        }
    }
    let mut why = format!("no member free ({} in the pool: {restoring} restoring, {claimed} claimed", all.len());
    if !misfits.is_empty() {
        why.push_str(&format!(", {} unfit: {}", misfits.len(), misfits.join("; ")));
    }
    why.push(')');
    Ok(Claim::None(why))
}

fn spread(run_id: &str) -> usize {
    run_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) as usize
}

/// A claim that outlived [`CLAIM_LEASE`], and what its member's instance says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dead {
    /// The instance still carries its member's own run-id tag: it was never handed
    /// over (its password was not rotated to the run's): back to the pool.
    NotHandedOver,
    /// The instance carries the claiming run's tag: it is that run's, torn down with
    /// it (its journal, or its tags at expiry); the record goes.
    HandedOver,
    /// The instance is gone: the record goes.
    Gone,
}

/// Whether `r` is a claim past its lease at `now`.
pub fn dead_claim(r: &Read, now: DateTime<Utc>) -> bool {
    !retiring(r)
        && matches!(&r.member.state, State::Claimed { at, .. } if (now - *at).to_std().is_ok_and(|d| d > CLAIM_LEASE))
}

/// Claimed by the member itself: `pool fill` or `drain` is retiring it (or was, and did
/// not finish). Never back to the pool: the next fill or drain retires it again.
pub fn retiring(r: &Read) -> bool {
    matches!(&r.member.state, State::Claimed { run_id, .. } if *run_id == r.member.member)
}

/// How long a member may stay `restoring` before a fill holding the pool's lock takes
/// it for a dead fill's: longer than any restore, its masking and its stop, so that a
/// fill that lost the lock without knowing it never has a member torn down under it.
pub const RESTORING_BOUND: Duration = Duration::from_secs(3 * 3600);

/// Settles a dead claim as its instance's tags say ([`Dead`]): the record back to
/// ready, or removed.
pub async fn settle_dead(store: &dyn ObjectStore, r: &Read, dead: Dead, now: DateTime<Utc>) -> Result<(), PoolError> {
    match dead {
        Dead::NotHandedOver => {
            let mut back = r.member.clone();
            back.state = State::Ready { ready_at: now };
            write(store, &r.key, &back, Some(r.etag.clone())).await.map(|_| ())
        }
        Dead::HandedOver | Dead::Gone => remove(store, r).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::file::FileStore;

    fn member(id: &str, snapshot: &str, made_at: DateTime<Utc>) -> Member {
        Member {
            member: id.into(),
            instance: format!("rh-{}-db", id.trim_start_matches("r-").replace('-', "")),
            snapshot: snapshot.into(),
            taken_at: None,
            masking: None,
            class: "db.t3.micro".into(),
            made_at,
            stopped: false,
            state: State::Ready { ready_at: made_at },
        }
    }

    fn wanted(snapshot: &str) -> Wanted {
        let class = "db.t3.micro".into();
        Wanted { snapshot: snapshot.into(), masking: None, max_age: Duration::from_secs(24 * 3600), class }
    }

    #[test]
    fn a_member_being_retired_is_never_a_dead_claim_to_give_back() {
        let long_ago = Utc::now() - chrono::Duration::hours(2);
        let id = "r-20261207-050000-aaaaaa";
        let mut m = member(id, "snap-1", long_ago);
        let read = |m: &Member| Read { key: key("shop", "db", id), member: m.clone(), etag: Etag("1".into()) };
        // Claimed by itself (a fill retiring it) and past the lease: still retiring.
        m.state = State::Claimed { run_id: id.into(), at: long_ago };
        assert!(retiring(&read(&m)) && !dead_claim(&read(&m), Utc::now()));
        // Claimed by a run that died: a dead claim, to be settled by the instance's tags.
        m.state = State::Claimed { run_id: "r-20261207-060000-bbbbbb".into(), at: long_ago };
        assert!(!retiring(&read(&m)) && dead_claim(&read(&m), Utc::now()));
    }

    #[test]
    fn a_refill_is_asked_once_per_pool_a_run_takes_from() {
        let asked = std::sync::Mutex::new(Vec::new());
        let refill = RefillOnClaim::new(&crate::engine::events::Silent, || asked.lock().unwrap().push(()));
        let claimed = |db: &str| Event::PoolClaimed { database: db.into(), member: "r-20261207-050000-aaaaaa".into() };
        refill.event(Event::PlanWarning("nothing".into()));
        refill.event(claimed("db"));
        refill.event(claimed("db"));
        refill.event(claimed("orders"));
        assert_eq!(asked.lock().unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn twenty_claimants_of_five_members_get_five_distinct_members() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileStore::open(dir.path()).unwrap());
        let now = Utc::now();
        for i in 0..5 {
            let id = format!("r-20261207-0500{i:02}-aaaaaa");
            write(store.as_ref(), &key("shop", "db", &id), &member(&id, "snap-1", now), None).await.unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let run = format!("r-20261207-0600{i:02}-bbbbbb");
                claim(store.as_ref(), "shop", "db", &wanted("snap-1"), &run, Utc::now()).await.unwrap()
            }));
        }
        let mut won = Vec::new();
        let mut none = 0;
        for t in tasks {
            match t.await.unwrap() {
                Claim::Won(r) => won.push(r.member.member),
                Claim::None(why) => {
                    assert!(why.starts_with("no member free (5 in the pool: 0 restoring, "), "{why}");
                    none += 1
                }
            }
        }
        won.sort();
        let before = won.len();
        won.dedup();
        assert_eq!((before, won.len(), none), (5, 5, 15), "a member was claimed twice or not at all");
    }

    #[tokio::test]
    async fn unfit_members_are_passed_over_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let now = Utc::now();
        let old = "r-20261207-050000-aaaaaa";
        write(&store, &key("shop", "db", old), &member(old, "snap-0", now), None).await.unwrap();
        let aged = "r-20261207-050001-aaaaaa";
        let made = now - chrono::Duration::hours(30);
        write(&store, &key("shop", "db", aged), &member(aged, "snap-1", made), None).await.unwrap();
        let Claim::None(why) =
            claim(&store, "shop", "db", &wanted("snap-1"), "r-20261207-060000-bbbbbb", now).await.unwrap()
        else {
            panic!("an unfit member was claimed")
        };
        assert!(why.contains("made from snap-0, not the newest backup snap-1"), "{why}");
        assert!(why.contains("older than the pool's max_age"), "{why}");
    }

    #[tokio::test]
    async fn a_forged_record_is_refused_and_a_dead_claim_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let now = Utc::now();
        let id = "r-20261207-050000-aaaaaa";
        let mut m = member(id, "snap-1", now);
        m.instance = "../../etc;rm".into();
        let k = key("shop", "db", id);
        write(&store, &k, &m, None).await.unwrap();
        assert!(matches!(read(&store, &k).await, Err(PoolError::Forged { .. })));
        let (ok, forged) = members(&store, "shop", "db").await.unwrap();
        assert_eq!((ok.len(), forged.len()), (0, 1));

        let id = "r-20261207-050001-aaaaaa";
        let k = key("shop", "db", id);
        let mut m = member(id, "snap-1", now);
        m.state = State::Claimed { run_id: "r-20261207-060000-bbbbbb".into(), at: now - chrono::Duration::hours(1) };
        write(&store, &k, &m, None).await.unwrap();
        let r = read(&store, &k).await.unwrap().unwrap();
        assert!(dead_claim(&r, now));
        settle_dead(&store, &r, Dead::NotHandedOver, now).await.unwrap();
        let back = read(&store, &k).await.unwrap().unwrap();
        assert!(matches!(back.member.state, State::Ready { .. }));
        assert!(!dead_claim(&back, now));
    }
}
