//! A generation made current in the stage's record, by compare-and-swap: the
//! promotion lands only on the record its promoter saw (the same generation current,
//! the new one still `building`), so of two promotions from one generation exactly one
//! wins. Names follow the record afterwards ([`super::converge`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{update, Fate, GenerationBackup, Refusal, StableDatabase, StageRecord, UpdateError};
use crate::description::{StableName, Stage};
use crate::engine::connection::Connection;
use crate::engine::store::ObjectStore;

/// A generation that passed, to be made current.
pub struct Promotion<'a> {
    pub number: u64,
    /// The generation current when its rebuild began: the promotion lands only while
    /// it still is.
    pub seen_current: Option<u64>,
    /// Where each stable name sends its clients for this generation.
    pub targets: &'a BTreeMap<String, Vec<String>>,
    pub backups: &'a [GenerationBackup],
    /// How clients reach each database at its stable name.
    pub databases: &'a BTreeMap<String, StableDatabase>,
    pub now: DateTime<Utc>,
    /// When the generation it replaces is retired.
    pub retire_at: DateTime<Utc>,
}

/// Makes `p.number` the stage's current generation and the one it replaces draining;
/// refused ([`UpdateError::Refused`]) when the record moved since the rebuild began.
pub async fn promote(store: &dyn ObjectStore, stage: &str, p: &Promotion<'_>) -> Result<StageRecord, UpdateError> {
    let number = p.number;
    update(store, stage, |r| {
        let mut r = r.ok_or(Refusal::NoRecord)?;
        if r.current != p.seen_current {
            return Err(Refusal::MovedWhileBuilt { to: r.current, number });
        }
        let gen = r.generation_mut(number).ok_or(Refusal::NoGeneration(number))?;
        if gen.fate != Fate::Building {
            return Err(Refusal::Fate { number, fate: gen.fate });
        }
        gen.targets = p.targets.clone();
        gen.backups = p.backups.to_vec();
        r.databases = p.databases.clone();
        r.promote(number, p.now, p.retire_at);
        Ok(r)
    })
    .await
}

/// How clients reach each database of a generation at its stable name: its name and
/// user, and the stable name's port (the forwarder's locally; the database's own on
/// AWS, where the name is a CNAME).
pub fn stable_databases(connection: &Connection, stage: &Stage) -> BTreeMap<String, StableDatabase> {
    connection
        .databases
        .iter()
        .map(|(db, d)| {
            let port = match stage.names.get(db) {
                Some(StableName::Port(p)) => p.to_string(),
                _ => d.port.clone(),
            };
            (db.clone(), StableDatabase { name: d.name.clone(), user: d.user.clone(), port })
        })
        .collect()
}

/// Marks a generation that passed but is not current `failed`, with why: a promotion
/// of it still in flight then finds the record changed and cannot land.
pub async fn mark_not_promoted(
    store: &dyn ObjectStore,
    stage: &str,
    number: u64,
    why: &str,
) -> Result<StageRecord, UpdateError> {
    update(store, stage, |r| {
        let mut r = r.ok_or(Refusal::NoRecord)?;
        if r.current == Some(number) {
            return Err(Refusal::CurrentAfterAll(number));
        }
        let gen = r.generation_mut(number).ok_or(Refusal::NoGeneration(number))?;
        gen.fate = Fate::Failed;
        gen.reason = Some(why.to_string());
        Ok(r)
    })
    .await
}
