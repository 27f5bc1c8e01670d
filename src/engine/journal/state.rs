//! The journal read back: its records folded into what the run is and holds
//! ([`State`]), each record checked as a stranger's (a shared store's records may come
//! from any writer), and what was refused named ([`RefusedRecord`]).

use super::*;

/// A resource as the journal knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: String,
    pub kind: Kind,
    /// None: intent recorded, creation not confirmed (it may or may not exist).
    pub handle: Option<Handle>,
    /// The create's idempotency key, from the intent.
    pub key: Option<String>,
    pub deleted: bool,
    /// When its (latest) intent was journaled.
    pub intent_at: Option<DateTime<Utc>>,
}

/// A record the fold did not believe, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct RefusedRecord {
    /// Its place in the journal, from 1 (the number of its object in a store).
    pub seq: usize,
    pub why: Refusal,
}

/// Why the fold did not believe a record.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("a run record for `{}`, which is not a run id", .0.escape_debug())]
    NotARunId(String),
    #[error("its name `{}` is not a name (`up --name` takes only {rule}); the run goes by its id", .name.escape_debug())]
    BadName { name: String, rule: String },
    #[error(
        "a second run record (provider `{}`, started {}): the first one, provider `{}`, is the run's",
        .later.as_str(), .started.format(TIME), .first.as_str()
    )]
    SecondRun { later: ProviderKind, started: DateTime<Utc>, first: ProviderKind },
    #[error("it is not a journal record ({0})")]
    Unreadable(String),
    #[error("it comes before the run record")]
    BeforeRun,
    #[error("`{}` is a {kind}, which a run of the {} provider never makes", .id.escape_debug(), .provider.as_str())]
    Foreign { id: String, kind: Kind, provider: ProviderKind },
    #[error("a second `finished` record (verdict {}): the run ended {}", .verdict.as_str(), .first.as_str())]
    SecondFinished { verdict: Verdict, first: Verdict },
    #[error(
        "an extension to {}, outside [{}, {}] (the run's expiry and its `max_ttl` from its start)",
        .to.format(TIME), .current.format(TIME), .latest.format(TIME)
    )]
    Extension { to: DateTime<Utc>, current: DateTime<Utc>, latest: DateTime<Utc> },
}

/// How a refusal writes a time.
const TIME: &str = "%Y-%m-%d %H:%M:%SZ";

impl RefusedRecord {
    /// One line for a person: the record, its key in a store, and why it was refused.
    pub fn describe(&self, run_id: &str) -> String {
        let key = crate::engine::store::record_key(run_id, self.seq as u64);
        format!("record {} of the journal of {run_id} ({key} in a shared store) is refused: {}", self.seq, self.why)
    }
}

/// Whether a resource of `kind` can be in a run of `provider`: each provider journals
/// only its own kinds (and the engine's workspace, installs, suites and unpacked
/// release, which either has).
pub fn kind_belongs(kind: Kind, provider: ProviderKind) -> bool {
    match kind {
        Kind::AwsSecurityGroup
        | Kind::AwsDbSubnetGroup
        | Kind::AwsDbInstance
        | Kind::AwsDbCluster
        | Kind::AwsInstance
        | Kind::AwsIngress
        | Kind::AwsS3Prefix
        | Kind::Mask => provider == ProviderKind::Aws,
        Kind::LocalPostgres | Kind::LocalProcess => provider == ProviderKind::Local,
        Kind::LocalRelease | Kind::Install | Kind::Suite | Kind::Workspace | Kind::Fault => true,
    }
}

/// The journal folded into the state of a run.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub meta: Option<RunMeta>,
    /// In order of first intent (creation order).
    pub entries: Vec<Entry>,
    /// The verdict, exit code and whether the environment was kept.
    pub finished: Option<(Verdict, i32, bool)>,
    pub torn_down: Option<bool>,
    /// The expiry set by the latest `rehearse extend`, if any.
    pub extended_to: Option<DateTime<Utc>>,
    /// Records that were not believed (see the module doc), in journal order.
    pub refused: Vec<RefusedRecord>,
}

impl State {
    /// Folds `records` (in journal order) into the run's state, refusing what cannot
    /// be the run's: a `run` record after the first, a run record whose id, provider or
    /// name is not one rehearse writes, anything before the run record, a resource of
    /// a kind the run's provider never makes, a second `finished`, and an extension
    /// that shortens the run or goes past its `max_ttl`.
    pub fn from_records(records: &[Record]) -> State {
        let mut s = State::default();
        for (i, r) in records.iter().enumerate() {
            if let Err(why) = s.fold(r) {
                s.refused.push(RefusedRecord { seq: i + 1, why });
            }
        }
        s
    }

    fn fold(&mut self, r: &Record) -> Result<(), Refusal> {
        let meta = match (r, &self.meta) {
            (Record::Run(m), None) => {
                let mut m = m.clone();
                if !crate::sys::state::valid_run_id(&m.run_id) {
                    return Err(Refusal::NotARunId(m.run_id));
                }
                let bad_name = m.name.as_deref().and_then(|n| {
                    crate::description::decode::KeyRule::Identifier.check(n).err().map(|e| (n.to_string(), e))
                });
                self.meta = Some(m.clone());
                if let Some((n, e)) = bad_name {
                    // The run stands; only the name it claims is not believed.
                    m.name = None;
                    self.meta = Some(m);
                    return Err(Refusal::BadName { name: n, rule: e.to_string() });
                }
                return Ok(());
            }
            (Record::Run(later), Some(first)) => {
                return Err(Refusal::SecondRun {
                    later: later.provider,
                    started: later.started_at,
                    first: first.provider,
                })
            }
            (Record::Unreadable { why }, None) => return Err(Refusal::Unreadable(why.clone())),
            (_, None) => return Err(Refusal::BeforeRun),
            (_, Some(m)) => m,
        };
        let provider = meta.provider;
        let (current, latest) = (self.extended_to.unwrap_or(meta.expires_at), meta.latest_expiry());
        let foreign = |id: &str, kind: Kind| Refusal::Foreign { id: id.to_string(), kind, provider };
        match r {
            Record::Run(_) => unreachable!("run records are folded above"),
            Record::Unreadable { why } => return Err(Refusal::Unreadable(why.clone())),
            Record::Intent { id, kind, key, at } => {
                if !kind_belongs(*kind, provider) {
                    return Err(foreign(id, *kind));
                }
                if let Some(e) = self.entries.iter_mut().find(|e| &e.id == id) {
                    if e.deleted {
                        // Made again after it was gone: the old handle names nothing.
                        e.handle = None;
                    }
                    e.deleted = false;
                    e.key = key.clone().or(e.key.take());
                    e.intent_at = Some(*at);
                } else {
                    self.entries.push(Entry {
                        id: id.clone(),
                        kind: *kind,
                        handle: None,
                        key: key.clone(),
                        deleted: false,
                        intent_at: Some(*at),
                    });
                }
            }
            Record::Created { id, kind, handle, .. } => {
                if !kind_belongs(*kind, provider) {
                    return Err(foreign(id, *kind));
                }
                match self.entries.iter_mut().find(|e| &e.id == id) {
                    Some(e) => {
                        e.handle = Some(handle.clone());
                        e.deleted = false;
                    }
                    None => self.entries.push(Entry {
                        id: id.clone(),
                        kind: *kind,
                        handle: Some(handle.clone()),
                        key: None,
                        intent_at: None,
                        deleted: false,
                    }),
                }
            }
            Record::Deleted { id, .. } => {
                if let Some(e) = self.entries.iter_mut().find(|e| &e.id == id) {
                    e.deleted = true;
                }
            }
            Record::Finished { verdict, exit_code, kept, .. } => {
                if let Some((first, _, _)) = &self.finished {
                    return Err(Refusal::SecondFinished { verdict: *verdict, first: *first });
                }
                self.finished = Some((*verdict, *exit_code, *kept))
            }
            Record::TornDown { complete, .. } => self.torn_down = Some(*complete),
            Record::Extended { expires_at, .. } => {
                if *expires_at < current || *expires_at > latest {
                    return Err(Refusal::Extension { to: *expires_at, current, latest });
                }
                self.extended_to = Some(*expires_at)
            }
        }
        Ok(())
    }

    /// When the run expires: its extension, else what it started with.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.extended_to.or(self.meta.as_ref().map(|m| m.expires_at))
    }

    /// Resources that may still exist, newest first (teardown order).
    pub fn remaining(&self) -> Vec<&Entry> {
        self.entries.iter().rev().filter(|e| !e.deleted).collect()
    }
}
