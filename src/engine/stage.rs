//! A stage: one description rebuilt as generations behind stable names
//! (`rehearse rebuild`), as cattle rather than a pet that drifts.
//!
//! The stage's record (`stages/NAME/stage.json` in the state store) says which
//! generation is current, what each generation was built from and what became of it.
//! It is only ever written by compare-and-swap — `If-None-Match: *` for the first
//! version, `If-Match` on the version read for every later one — and every change
//! checks its precondition on the version it replaces: of two promotions from the same
//! current generation exactly one wins, and a generation is retired only while it is
//! not current.
//!
//! The stable names themselves (a forwarder's ports locally, Route 53 records on AWS)
//! follow the record: [`converge`] points them at the current generation and checks
//! that the record did not move meanwhile, so that two switchers racing end with the
//! names where the record says.
//!
//! The operations on a stage, each taking the store and the names and returning a
//! typed outcome (none prints): [`password`], [`promote`], [`rollback`] and the
//! stage's [`connection`]; the rebuild itself is [`super::rebuild`].

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::store::{put_checked, retrying, Condition, Etag, ObjectStore, StoreError};

mod check;
pub mod connection;
mod error;
pub mod password;
pub mod promote;
pub mod rollback;

pub use check::RecordFault;
pub use error::{ConvergeError, NamesError, Refusal, UpdateError};

/// The stage's record in the state store.
pub fn record_key(stage: &str) -> String {
    format!("stages/{stage}/stage.json")
}

/// The stage's stable database password: clients configured once keep it.
pub fn secret_key(stage: &str) -> String {
    format!("stages/{stage}/secret.json")
}

/// The lock a rebuild of the stage holds from start to retirement.
pub fn lock_name(stage: &str) -> String {
    format!("stage.{stage}")
}

/// Which stage and generation a run builds, as its journal records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRef {
    pub stage: String,
    pub generation: u64,
}

/// What a run needs to build a stage's generation.
#[derive(Clone, Debug)]
pub struct StageRun {
    pub stage: String,
    pub generation: u64,
    /// The stage's stable database password.
    pub password: String,
    /// What serves meanwhile ("generation 2 (release v1, backup …)"): a run that does
    /// not pass says so in its report.
    pub serving: Option<String>,
}

/// What became of a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fate {
    /// Being built and judged by its acceptance suites.
    Building,
    /// Its build or its acceptance failed; it never served.
    Failed,
    /// The rebuild that built it ended before it was judged (killed, interrupted).
    Interrupted,
    /// Every stable name points at it.
    Current,
    /// Replaced (or rolled back from); it serves the connections opened before the
    /// switch until `retire_at`.
    Draining,
    /// Being torn down after its drain (no rollback can choose it any more).
    Retiring,
    /// Torn down after its drain.
    Retired,
}

impl Fate {
    pub fn as_str(self) -> &'static str {
        match self {
            Fate::Building => "building",
            Fate::Failed => "failed",
            Fate::Interrupted => "interrupted",
            Fate::Current => "current",
            Fate::Draining => "draining",
            Fate::Retiring => "retiring",
            Fate::Retired => "retired",
        }
    }
}

/// The backup a generation was restored from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationBackup {
    pub database: String,
    pub backup: String,
    pub taken_at: Option<DateTime<Utc>>,
}

/// One generation: a run of the description, kept while it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub number: u64,
    pub run_id: String,
    pub release: String,
    pub started_at: DateTime<Utc>,
    pub fate: Fate,
    #[serde(default)]
    pub backups: Vec<GenerationBackup>,
    /// Where each stable name sends its clients for this generation (`host:port`).
    #[serde(default)]
    pub targets: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<DateTime<Utc>>,
    /// Why it failed, or was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Generation {
    /// A generation just registered: being built, nothing of it known yet.
    pub fn building(number: u64, run_id: &str, release: &str, started_at: DateTime<Utc>) -> Generation {
        Generation {
            number,
            run_id: run_id.to_string(),
            release: release.to_string(),
            started_at,
            fate: Fate::Building,
            backups: Vec::new(),
            targets: BTreeMap::new(),
            promoted_at: None,
            retire_at: None,
            retired_at: None,
            reason: None,
        }
    }

    /// "generation 3 (release v2, backup shop-2026-nightly.dump of 2026-11-26 02:00 UTC)".
    pub fn describe(&self) -> String {
        let backups: Vec<String> = self
            .backups
            .iter()
            .map(|b| match b.taken_at {
                Some(t) => format!("backup {} of {}", b.backup, t.format("%Y-%m-%d %H:%M UTC")),
                None => format!("backup {}", b.backup),
            })
            .collect();
        let from = if backups.is_empty() { String::new() } else { format!(", {}", backups.join(", ")) };
        format!("generation {} (release {}{from})", self.number, self.release)
    }
}

/// How clients reach a database of the stage, besides its stable name and password.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableDatabase {
    pub name: String,
    pub user: String,
    /// The port clients use at the stable name (the forwarder's locally, 5432 on AWS).
    pub port: String,
}

/// The stage as the state store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    pub environment: String,
    pub provider: String,
    /// Counts the record's versions; with `written_by`, makes every version's bytes
    /// unique (a retried write recognises its own).
    pub revision: u64,
    pub written_by: String,
    pub updated_at: DateTime<Utc>,
    /// The generation every stable name points at.
    pub current: Option<u64>,
    /// Each database's and service's stable name (`127.0.0.1:25432`, `db.staging.internal`).
    pub names: BTreeMap<String, String>,
    #[serde(default)]
    pub databases: BTreeMap<String, StableDatabase>,
    /// AWS: the Route 53 hosted zone of the names, and their TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default)]
    pub record_ttl_secs: u64,
    /// How long a replaced generation drains (the last rebuild's `--drain`).
    #[serde(default)]
    pub drain_secs: u64,
    pub generations: Vec<Generation>,
}

impl StageRecord {
    pub fn new(stage: &str, environment: &str, provider: &str, names: BTreeMap<String, String>) -> StageRecord {
        StageRecord {
            stage: stage.into(),
            environment: environment.into(),
            provider: provider.into(),
            revision: 0,
            written_by: String::new(),
            updated_at: Utc::now(),
            current: None,
            names,
            databases: BTreeMap::new(),
            zone: None,
            record_ttl_secs: 0,
            drain_secs: 0,
            generations: Vec::new(),
        }
    }

    pub fn generation(&self, number: u64) -> Option<&Generation> {
        self.generations.iter().find(|g| g.number == number)
    }

    pub fn generation_mut(&mut self, number: u64) -> Option<&mut Generation> {
        self.generations.iter_mut().find(|g| g.number == number)
    }

    pub fn current_generation(&self) -> Option<&Generation> {
        self.current.and_then(|n| self.generation(n))
    }

    /// The generation a rollback returns to: the newest draining one older than the
    /// current.
    pub fn previous(&self) -> Option<&Generation> {
        let current = self.current?;
        self.generations.iter().filter(|g| g.number < current && g.fate == Fate::Draining).max_by_key(|g| g.number)
    }

    pub fn next_number(&self) -> u64 {
        self.generations.iter().map(|g| g.number).max().unwrap_or(0) + 1
    }

    /// Whether `run_id` is the current generation (never removed by `sweep` or a TTL).
    pub fn is_current_run(&self, run_id: &str) -> bool {
        self.current_generation().is_some_and(|g| g.run_id == run_id)
    }

    /// Marks generation `n` current and the one it replaces draining until `retire_at`.
    pub fn promote(&mut self, n: u64, now: DateTime<Utc>, retire_at: DateTime<Utc>) {
        if let Some(old) = self.current.and_then(|c| self.generation_mut(c)) {
            old.fate = Fate::Draining;
            old.retire_at = Some(retire_at);
        }
        if let Some(g) = self.generation_mut(n) {
            g.fate = Fate::Current;
            g.promoted_at = Some(now);
            g.retire_at = None;
        }
        self.current = Some(n);
    }
}

/// The stage's record and its version, or `None` for a stage never built.
/// The record is checked ([`StageRecord::check`]) against `stage`, the name asked for.
pub async fn load(store: &dyn ObjectStore, stage: &str) -> Result<Option<(StageRecord, Etag)>, UpdateError> {
    let key = record_key(stage);
    let named = || format!("{}/{key}", store.url().trim_end_matches('/'));
    if let Err(source) = crate::description::decode::KeyRule::Identifier.check(stage) {
        return Err(UpdateError::NotRehearses {
            key: named(),
            why: RecordFault::NotAStageName { asked: stage.to_string(), source },
        });
    }
    match retrying(|| store.get(&key)).await? {
        None => Ok(None),
        Some(o) => {
            let r: StageRecord = serde_json::from_slice(&o.body).map_err(UpdateError::Damaged)?;
            r.check(stage).map_err(|why| UpdateError::NotRehearses { key: named(), why })?;
            Ok(Some((r, o.etag)))
        }
    }
}

/// Refuses a stage's record that disagrees with the description a rebuild was given:
/// another provider, or a stable name for a database or service the description does
/// not have (the description's names are the ones a rebuild builds names from).
pub fn agrees_with(store: &dyn ObjectStore, record: &StageRecord, fresh: &StageRecord) -> Result<(), UpdateError> {
    let named = || format!("{}/{}", store.url().trim_end_matches('/'), record_key(&fresh.stage));
    if record.provider != fresh.provider {
        return Err(UpdateError::NotRehearses {
            key: named(),
            why: RecordFault::OtherProvider { found: record.provider.clone(), described: fresh.provider.clone() },
        });
    }
    if let Some((component, stable)) = record.names.iter().find(|(c, _)| !fresh.names.contains_key(*c)) {
        return Err(UpdateError::NotRehearses {
            key: named(),
            why: RecordFault::NotDescribed {
                component: component.clone(),
                stable: stable.clone(),
                stage: fresh.stage.clone(),
            },
        });
    }
    Ok(())
}

/// When a generation replaced at `now` is retired: after `drain`, and never more than
/// [`crate::description::MAX_DRAIN`] later — the drain may come from a stage's record,
/// which anyone who may write the store can write.
pub fn retire_at(now: DateTime<Utc>, drain: std::time::Duration) -> DateTime<Utc> {
    let d = chrono::Duration::from_std(drain.min(crate::description::MAX_DRAIN)).unwrap_or_default();
    now.checked_add_signed(d).unwrap_or(now)
}

/// Reads the record, lets `change` edit it (or refuse), and writes it back only if
/// nobody wrote it meanwhile; on a lost race, reads again and asks `change` again, so
/// its precondition is always checked on the version it replaces.
pub async fn update(
    store: &dyn ObjectStore,
    stage: &str,
    mut change: impl FnMut(Option<StageRecord>) -> Result<StageRecord, Refusal>,
) -> Result<StageRecord, UpdateError> {
    const ATTEMPTS: u32 = 20;
    let key = record_key(stage);
    for _ in 0..ATTEMPTS {
        let read = load(store, stage).await?;
        let (cond, old) = match read {
            Some((r, etag)) => (Condition::Matches(etag), Some(r)),
            None => (Condition::Absent, None),
        };
        let revision = old.as_ref().map_or(0, |r| r.revision);
        let mut new = change(old).map_err(UpdateError::Refused)?;
        new.revision = revision + 1;
        new.written_by = crate::secrets::generate();
        new.updated_at = Utc::now();
        let body = serde_json::to_vec_pretty(&new).map_err(UpdateError::Damaged)?;
        match put_checked(store, &key, &body, cond).await {
            Ok(_) => return Ok(new),
            Err(StoreError::PreconditionFailed) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(UpdateError::Contended(ATTEMPTS))
}

/// A boxed future, so that stable names can be chosen at run time.
pub type NamesFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, NamesError>> + Send + 'a>>;

/// The stable names of a stage: a forwarder's ports on this machine, or Route 53
/// records.
pub trait StableNames: Send + Sync {
    /// Points every stable name at generation `number`'s `targets`, all at once, and
    /// returns once clients see the change.
    fn switch<'a>(&'a self, number: u64, targets: &'a BTreeMap<String, Vec<String>>) -> NamesFuture<'a, ()>;
    /// The generation the names point at now, if they exist.
    fn pointing_at(&self) -> NamesFuture<'_, Option<u64>>;
    /// Removes the names (and whatever serves them).
    fn remove(&self) -> NamesFuture<'_, ()>;
    /// What is wrong with who answers the names now, one line per name (empty: each is
    /// answered by what rehearse set up for it). Locally: a port another process holds
    /// (a squatter would be handed every client's connection), or one nothing answers.
    fn unanswered(&self) -> NamesFuture<'_, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// What a switch waits for before clients see it, and for how long at most (Route
    /// 53's `INSYNC`); `None` when a switch takes effect at once (a local pointer swap).
    fn switch_waits_for(&self) -> Option<(String, std::time::Duration)> {
        None
    }
}

/// [`converge`], saying what it waits for when that goes on beyond a few seconds.
pub async fn converge_told(
    store: &dyn ObjectStore,
    stage: &str,
    names: &dyn StableNames,
    reporter: &dyn super::events::Reporter,
) -> Result<Option<u64>, ConvergeError> {
    match names.switch_waits_for() {
        Some((what, bound)) => {
            let resource = format!("stage.{stage}");
            super::events::announce_wait(reporter, &resource, &what, bound, converge(store, stage, names)).await
        }
        None => converge(store, stage, names).await,
    }
}

/// Points the names where the record says, until the record holds still across a
/// switch; the generation they point at (`None`: the stage has no current generation).
pub async fn converge(
    store: &dyn ObjectStore,
    stage: &str,
    names: &dyn StableNames,
) -> Result<Option<u64>, ConvergeError> {
    for _ in 0..10 {
        let Some((record, _)) = load(store, stage).await? else {
            return Ok(None);
        };
        let Some(current) = record.current_generation() else { return Ok(None) };
        if names.pointing_at().await? != Some(current.number) {
            names.switch(current.number, &current.targets).await?;
        }
        let again = load(store, stage).await?.map(|(r, _)| r.current);
        if again == Some(record.current) {
            return Ok(record.current);
        }
    }
    Err(ConvergeError::KeptMoving)
}

/// Where each database and service of a kept run is reached (`host:port`), from its
/// connection details.
pub fn targets(connection: &super::connection::Connection) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for (name, d) in &connection.databases {
        out.insert(name.clone(), vec![format!("{}:{}", d.host, d.port)]);
    }
    for (name, s) in &connection.services {
        let hosts: Vec<String> = s
            .addresses
            .iter()
            .map(|a| if a.contains(':') || s.port.is_empty() { a.clone() } else { format!("{a}:{}", s.port) })
            .collect();
        out.insert(name.clone(), hosts);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::file::FileStore;

    fn generation(n: u64) -> Generation {
        Generation::building(n, &format!("r-20261127-00000{n}-abcdef"), "v2", Utc::now())
    }

    /// Two rebuilds that both saw generation 1 current promote at once: exactly one
    /// wins, whatever the interleaving.
    #[tokio::test]
    async fn of_two_promotions_from_the_same_generation_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FileStore::open(dir.path()).unwrap());
        update(store.as_ref(), "staging", |_| {
            let mut r = StageRecord::new("staging", "staging", "local", BTreeMap::new());
            r.generations = vec![generation(1), generation(2), generation(3)];
            r.promote(1, Utc::now(), Utc::now());
            Ok(r)
        })
        .await
        .unwrap();
        let promote = |n: u64| {
            let store = store.clone();
            tokio::spawn(async move {
                update(store.as_ref(), "staging", |r| {
                    let mut r = r.ok_or(Refusal::NoRecord)?;
                    if r.current != Some(1) {
                        return Err(Refusal::Moved(r.current));
                    }
                    r.promote(n, Utc::now(), Utc::now());
                    Ok(r)
                })
                .await
            })
        };
        let (a, b) = (promote(2), promote(3));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert!(a.is_ok() != b.is_ok(), "{a:?} / {b:?}");
        let (r, _) = load(store.as_ref(), "staging").await.unwrap().unwrap();
        let winner = if a.is_ok() { 2 } else { 3 };
        assert_eq!(r.current, Some(winner));
        assert_eq!(r.generations.iter().filter(|g| g.fate == Fate::Current).count(), 1);
        assert_eq!(r.generation(1).unwrap().fate, Fate::Draining);
    }

    /// A record as a rebuild writes it, for each provider.
    fn written(provider: &str) -> StageRecord {
        let (db, web, db_at, web_at) = if provider == "local" {
            ("127.0.0.1:25432", "127.0.0.1:28080", "127.0.0.1:41234", "127.0.0.1:41235")
        } else {
            (
                "db.staging.shop.internal",
                "web.staging.shop.internal",
                "rh-db.abc.eu-west-1.rds.example.invalid:5432",
                "10.0.1.7:8080",
            )
        };
        let names = BTreeMap::from([("db".to_string(), db.to_string()), ("web".to_string(), web.to_string())]);
        let mut r = StageRecord::new("staging", "staging", provider, names);
        if provider == "aws" {
            r.zone = Some("Z0123456789ABCDEFGHIJ".into());
        }
        r.databases
            .insert("db".into(), StableDatabase { name: "shop".into(), user: "app".into(), port: "25432".into() });
        let mut g = generation(1);
        g.targets = BTreeMap::from([
            ("db".to_string(), vec![db_at.to_string()]),
            ("web".to_string(), vec![web_at.to_string()]),
        ]);
        r.generations = vec![g, generation(2)];
        r.promote(1, Utc::now(), Utc::now());
        r
    }

    /// Every byte of a stage's record is a stranger's input: what a rebuild writes
    /// passes, and each field that builds a path, a connection or a name is refused
    /// without its grammar, or when it disagrees with the key it was read under.
    #[test]
    fn a_record_is_refused_unless_rehearse_could_have_written_it_for_that_stage() {
        for provider in ["local", "aws"] {
            assert_eq!(written(provider).check("staging"), Ok(()), "{provider}");
        }
        type Edit = fn(&mut StageRecord);
        let refused: [(&str, &str, Edit); 12] = [
            ("local", "its `stage` is \"../../victimdir\", not `staging`", |r| r.stage = "../../victimdir".into()),
            ("local", "its provider \"gcp\"", |r| r.provider = "gcp".into()),
            ("local", "not a port of 127.0.0.1", |r| {
                r.names.insert("db".into(), "0.0.0.0:25432".into());
            }),
            ("local", "is not a name", |r| {
                let v = r.names.remove("web").unwrap();
                r.names.insert("../web".into(), v);
            }),
            ("local", "sends `db` to \"203.0.113.7:5432\"", |r| {
                r.generations[0].targets.insert("db".into(), vec!["203.0.113.7:5432".into()]);
            }),
            ("local", "which is not a run id", |r| r.generations[1].run_id = "r-1/../../etc".into()),
            ("local", "is not made of names and a port", |r| {
                r.databases.get_mut("db").unwrap().name = "shop?host=evil".into()
            }),
            ("local", "is 0 or listed twice", |r| r.generations[1].number = 1),
            ("local", "its current generation 9", |r| r.current = Some(9)),
            ("aws", "not a DNS name", |r| {
                r.names.insert("db".into(), "db.staging.shop.internal:5432".into());
            }),
            ("aws", "is not a Route 53 hosted zone id", |r| r.zone = Some("../Z1".into())),
            ("aws", "a Route 53 zone", |r| {
                r.provider = "local".into();
                r.names.clear();
                r.databases.clear();
                r.generations.iter_mut().for_each(|g| g.targets.clear());
            }),
        ];
        for (provider, why, edit) in refused {
            let mut r = written(provider);
            edit(&mut r);
            let said = r.check("staging").expect_err(why).to_string();
            assert!(said.contains(why), "{said:?} does not say {why:?}");
        }
        assert!(written("local").check("other").is_err(), "a record read under another stage's key");
    }

    /// A record that disagrees with the key it is read under is refused by `load`, with
    /// the key named, and no update goes through it.
    #[tokio::test]
    async fn a_forged_record_is_refused_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut r = written("local");
        r.stage = "../../victimdir".into();
        store.put("stages/staging/stage.json", serde_json::to_vec(&r).unwrap(), Condition::Always).await.unwrap();
        let e = load(&store, "staging").await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "refusing the stage's record file://{}/stages/staging/stage.json: ",
                dir.path().display()
            )),
            "{e}"
        );
        let e = update(&store, "staging", |r| Ok(r.unwrap())).await.unwrap_err();
        assert!(matches!(e, UpdateError::NotRehearses { .. }), "{e}");
    }
}
