//! A stage's record checked as a stranger's input: whoever can write the state store
//! can write it, so it is used only if rehearse could have written it for the stage
//! asked for.

use std::collections::BTreeSet;

use super::StageRecord;
use crate::description::decode::{is_dns_name, is_zone_id, FormatError, KeyRule};

/// Why a stage's record is not one rehearse could have written for the stage asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    #[error("its `stage` is \"{}\", not `{asked}`", .found.escape_debug())]
    OtherStage { found: String, asked: String },
    #[error("{what} {:?} is not a name: {source}", .value.escape_debug())]
    NotAName {
        what: &'static str,
        value: String,
        #[source]
        source: FormatError,
    },
    #[error("its provider \"{}\" is neither `local` nor `aws`", .0.escape_debug())]
    UnknownProvider(String),
    #[error("it names a Route 53 zone \"{}\" for a local stage", .0.escape_debug())]
    ZoneOfLocalStage(String),
    #[error("its zone \"{}\" is not a Route 53 hosted zone id", .0.escape_debug())]
    NotAZoneId(String),
    #[error(
        "the stable name of `{component}` is \"{}\", not {}",
        .stable.escape_debug(),
        stable_kind(.local)
    )]
    BadStableName { component: String, stable: String, local: bool },
    #[error("the stable name \"{}\" is listed twice", .0.escape_debug())]
    StableNameTwice(String),
    #[error("it lists the database `{0}`, which has no stable name")]
    DatabaseWithoutName(String),
    #[error(
        "the connection of `{database}` (database \"{}\", user \"{}\", port \"{}\") is not made of names and a port",
        .name.escape_debug(),
        .user.escape_debug(),
        .port.escape_debug()
    )]
    BadConnection { database: String, name: String, user: String, port: String },
    #[error("its generation number {0} is 0 or listed twice")]
    BadNumber(u64),
    #[error(
        "generation {number} names the run \"{}\", which is not a run id or is another generation's",
        .run_id.escape_debug()
    )]
    BadRunId { number: u64, run_id: String },
    #[error(
        "generation {number} sends `{component}` to \"{}\", not {}",
        .target.escape_debug(),
        target_kind(.local)
    )]
    BadTarget { number: u64, component: String, target: String, local: bool },
    #[error("generation {number} lists a backup of \"{}\"", .database.escape_debug())]
    BadBackup { number: u64, database: String },
    #[error("its current generation {0} is not one of its generations")]
    UnknownCurrent(u64),
    /// Read under a key that is no stage's name.
    #[error("`{}` is not a stage name: {source}", .asked.escape_debug())]
    NotAStageName {
        asked: String,
        #[source]
        source: FormatError,
    },
    /// It disagrees with the description a rebuild was given.
    #[error("it is a stage of the {found} provider, and the description's is {described}")]
    OtherProvider { found: String, described: String },
    #[error(
        "it has a stable name for `{component}` ({stable}), which the description does not (if `{component}` was \
         removed from the description on purpose, `rehearse stage destroy {stage}` first)"
    )]
    NotDescribed { component: String, stable: String, stage: String },
}

impl StageRecord {
    /// Refuses a record that rehearse could not have written for the stage `asked` (the
    /// name its key was read under): every byte of it is a stranger's input. Its
    /// `stage` must be `asked`; names, generation numbers, run ids and database names
    /// must have their grammar; a local stage's names and targets must be ports of
    /// 127.0.0.1, an AWS stage's DNS names (`host[:port]`), in a hosted zone with an id's
    /// grammar. What a name builds — a path, a DNS name, a connection — then comes from
    /// `asked` or from values checked here.
    pub fn check(&self, asked: &str) -> Result<(), RecordFault> {
        if self.stage != asked {
            return Err(RecordFault::OtherStage { found: self.stage.clone(), asked: asked.to_string() });
        }
        ident("the stage", asked)?;
        let local = match self.provider.as_str() {
            "local" => true,
            "aws" => false,
            other => return Err(RecordFault::UnknownProvider(other.to_string())),
        };
        match (&self.zone, local) {
            (Some(z), true) => return Err(RecordFault::ZoneOfLocalStage(z.clone())),
            (Some(z), false) if !is_zone_id(z) => return Err(RecordFault::NotAZoneId(z.clone())),
            _ => {}
        }
        self.check_names(local)?;
        self.check_generations(local)?;
        if let Some(c) = self.current.filter(|c| self.generation(*c).is_none()) {
            return Err(RecordFault::UnknownCurrent(c));
        }
        Ok(())
    }

    /// The stable names and the databases' connections.
    fn check_names(&self, local: bool) -> Result<(), RecordFault> {
        let mut stables = BTreeSet::new();
        for (component, stable) in &self.names {
            ident("the component", component)?;
            if !address(local, stable, false) || (!local && stable.contains(':')) {
                return Err(RecordFault::BadStableName { component: component.clone(), stable: stable.clone(), local });
            }
            if !stables.insert(stable.trim_end_matches('.').to_ascii_lowercase()) {
                return Err(RecordFault::StableNameTwice(stable.clone()));
            }
        }
        // What reaches a connection string: PostgreSQL's plain identifiers.
        let pg_word = |s: &str| {
            s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'))
        };
        for (db, d) in &self.databases {
            ident("the database", db)?;
            if !self.names.contains_key(db) {
                return Err(RecordFault::DatabaseWithoutName(db.clone()));
            }
            if !pg_word(&d.name) || !pg_word(&d.user) || !(d.port.is_empty() || d.port.parse::<u16>().is_ok()) {
                return Err(RecordFault::BadConnection {
                    database: db.clone(),
                    name: d.name.clone(),
                    user: d.user.clone(),
                    port: d.port.clone(),
                });
            }
        }
        Ok(())
    }

    /// Generation numbers, run ids, targets and backups.
    fn check_generations(&self, local: bool) -> Result<(), RecordFault> {
        let mut numbers = BTreeSet::new();
        let mut runs = BTreeSet::new();
        for g in &self.generations {
            if g.number == 0 || !numbers.insert(g.number) {
                return Err(RecordFault::BadNumber(g.number));
            }
            if !crate::sys::state::valid_run_id(&g.run_id) || !runs.insert(g.run_id.as_str()) {
                return Err(RecordFault::BadRunId { number: g.number, run_id: g.run_id.clone() });
            }
            // A run's every database and service has a target; only those with a stable
            // name are ever pointed at.
            for (component, to) in &g.targets {
                ident("the component", component)?;
                if let Some(bad) = to.iter().find(|t| !address(local, t, local)) {
                    return Err(RecordFault::BadTarget {
                        number: g.number,
                        component: component.clone(),
                        target: bad.clone(),
                        local,
                    });
                }
            }
            if let Some(b) = g.backups.iter().find(|b| KeyRule::Identifier.check(&b.database).is_err()) {
                return Err(RecordFault::BadBackup { number: g.number, database: b.database.clone() });
            }
        }
        Ok(())
    }
}

fn stable_kind(local: &bool) -> &'static str {
    if *local {
        "a port of 127.0.0.1 (127.0.0.1:PORT)"
    } else {
        "a DNS name"
    }
}

fn target_kind(local: &bool) -> &'static str {
    if *local {
        "a port of 127.0.0.1"
    } else {
        "a DNS name or address"
    }
}

fn ident(what: &'static str, s: &str) -> Result<(), RecordFault> {
    KeyRule::Identifier.check(s).map_err(|source| RecordFault::NotAName { what, value: s.to_string(), source })
}

/// `127.0.0.1:PORT` locally; `HOST` or `HOST:PORT` with a DNS name (or IPv4) on AWS.
fn address(local: bool, s: &str, port_needed: bool) -> bool {
    match s.rsplit_once(':') {
        Some((h, p)) if local => h == "127.0.0.1" && p.parse::<u16>().is_ok_and(|p| p > 0),
        _ if local => false,
        Some((h, p)) => is_dns_name(h) && p.parse::<u16>().is_ok_and(|p| p > 0),
        None => !port_needed && is_dns_name(s),
    }
}
