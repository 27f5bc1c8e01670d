//! One rebuild of a stage, whatever builds its generations: tidy what earlier rebuilds
//! left, register generation N+1, build and judge it, promote it by compare-and-swap
//! only when it passed, point every stable name at it, drain and retire the one it
//! replaced.
//!
//! The order is what keeps the names safe when a rebuild dies at any instant:
//! - a generation is registered (`building`) before anything of it exists, so the next
//!   rebuild finds and tears down whatever a dead one was building;
//! - the promotion is the commit point: the record says the new generation is current
//!   before any name moves, and names only ever move to what the record says is
//!   current ([`super::stage::converge`]) — a generation that did not pass is never
//!   current, so no name can point at it;
//! - a generation is marked `retired` before it is torn down, so a rollback can no
//!   longer choose it; the current one is never torn down here.
//!
//! The caller holds the stage's lock ([`super::stage::lock_name`]) throughout.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::connection::Connection;
use super::events::{Event, Reporter, StageEvent};
use super::stage::promote::{self, Promotion};
use super::stage::{
    self as st, ConvergeError, Fate, Generation, GenerationBackup, NamesError, Refusal, StableDatabase, StableNames,
    StageRecord,
};
use super::store::lock::Now;
use super::store::ObjectStore;
use crate::description::Stage;
use crate::report::model::Verdict;
use crate::sys::signals::Signals;

/// What building and judging a generation came to.
pub struct Built {
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub backups: Vec<GenerationBackup>,
    /// How to reach it: a generation that passed has it (without, it counts as failed).
    pub connection: Option<Connection>,
    /// A generation that did not pass was kept for debugging (`--keep-failed`); else
    /// its run tore it down, and the rebuild makes sure of it.
    pub kept: bool,
}

pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// How a stage's generations come and go: a run of the description (with the stage's
/// password) and its teardown from the journal.
pub trait Generations {
    fn build<'a>(&'a self, spec: &'a Spec) -> LocalFuture<'a, Built>;
    /// Tears down generation `number`, the run `run_id` (which must be that
    /// generation's: the record saying so is not enough).
    fn tear_down<'a>(&'a self, run_id: &'a str, number: u64) -> LocalFuture<'a, Result<(), TearDownError>>;
}

/// Why a generation was not torn down (completely).
#[derive(Debug, thiserror::Error)]
pub enum TearDownError {
    /// Teardown ran and left these behind.
    #[error("left: {}", .0.join(", "))]
    Left(Vec<String>),
    /// The run is not one to tear down as that generation (its journal says another
    /// stage's or generation's, it is still running elsewhere, ...): left alone.
    #[error("{0}")]
    Refused(String),
    /// `down` did not tear it down: it refused the run or could not reach what would
    /// tell (its own words say which).
    #[error("{0}")]
    Down(#[source] super::down::DownError),
    /// It could not be tried (the journal cannot be read, the provider answers no more).
    #[error("{0}")]
    Failed(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<String> for TearDownError {
    fn from(why: String) -> TearDownError {
        TearDownError::Failed(why.into())
    }
}

/// When a generation's teardown failed: what the rebuild (or destroy) was doing.
#[derive(Debug)]
pub enum TearingDown {
    /// A generation an ended rebuild left `building`.
    LeftMidBuild,
    /// A generation that did not pass.
    NotPassed,
    /// A generation that passed but could not be promoted.
    NotPromoted(NotPromoted),
    /// A generation retired after its drain.
    Retiring,
    /// A generation of a stage being destroyed.
    Destroying { stage: String },
}

/// "generation 3 was not torn down completely (…); remove what is left with `rehearse down RUN`".
fn tear_down_text(number: &u64, run_id: &str, when: &TearingDown, why: &TearDownError) -> String {
    match when {
        TearingDown::LeftMidBuild => format!(
            "generation {number} was left mid-build and could not be torn down ({why}); remove it with `rehearse down \
             {run_id}`"
        ),
        TearingDown::NotPassed => format!(
            "generation {number} did not pass and was not torn down completely ({why}); remove what is left with \
             `rehearse down {run_id}`"
        ),
        TearingDown::NotPromoted(not) => format!("{not}; tearing it down failed ({why}): `rehearse down {run_id}`"),
        TearingDown::Retiring => format!(
            "generation {number} was not torn down completely ({why}); remove what is left with `rehearse down {run_id}`"
        ),
        TearingDown::Destroying { stage } => format!(
            "generation {number} was not removed ({why}); the stage's names and record are kept: run `rehearse stage \
             destroy {stage}` again"
        ),
    }
}

/// What a rebuild works with: the state store (the stage's record), the stage's
/// names, its generations, where its notes go, and the clock (virtual in tests).
pub struct Stagehand<'a> {
    pub store: &'a dyn ObjectStore,
    pub names: &'a dyn StableNames,
    pub gens: &'a dyn Generations,
    pub reporter: &'a dyn Reporter,
    pub now: Now<'a>,
}

/// The generation to build.
pub struct Spec {
    pub number: u64,
    pub run_id: String,
    /// The stage's stable database password.
    pub password: String,
    /// What serves meanwhile ("generation 2 (release v1, backup …)"), for the report
    /// of a generation that does not pass.
    pub serving: Option<String>,
}

impl Spec {
    /// What the run of this generation needs to know.
    pub fn run(&self, stage: &str) -> st::StageRun {
        st::StageRun {
            stage: stage.to_string(),
            generation: self.number,
            password: self.password.clone(),
            serving: self.serving.clone(),
        }
    }
}

/// What a rebuild is asked to do.
pub struct Plan<'a> {
    pub stage: &'a Stage,
    /// The stage's record as the description has it (names, zone, TTL, drain).
    pub fresh: StageRecord,
    pub release: String,
    pub run_id: String,
    pub drain: Duration,
}

/// How a rebuild ended.
#[derive(Debug)]
pub enum Outcome {
    /// The generation passed and serves; the one it replaced was retired (or, when the
    /// rebuild was interrupted while it drained, is retired by the next rebuild).
    /// `switched_in`: from the acceptance passed to every stable name switched (the
    /// promotion written, the names' change applied and, on AWS, `INSYNC`).
    Promoted { current: Generation, switched_in: Duration, retired: Option<u64>, interrupted: bool },
    /// The generation failed (or was interrupted); the stage is as it was.
    NotPromoted { number: u64, verdict: Verdict, still_on: Option<Generation> },
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("the stage's record: {0}")]
    Record(#[from] st::UpdateError),
    #[error("the stage's names: {0}")]
    Names(#[source] ConvergeError),
    /// The generation is current in the record; the names still point elsewhere.
    #[error(
        "the stage's names: generation {number} is the stage's current generation, but its stable names could not \
         be switched: {source}; the next rebuild points them again"
    )]
    NotSwitched {
        number: u64,
        #[source]
        source: ConvergeError,
    },
    /// A generation was not torn down (completely): what is left is said, with the
    /// command that removes it.
    #[error("{}", tear_down_text(.number, .run_id, .when, .source))]
    TearDown {
        number: u64,
        run_id: String,
        when: TearingDown,
        #[source]
        source: TearDownError,
    },
    /// The generation passed, was not promoted, and was torn down.
    #[error("{0}; it was torn down")]
    NotPromoted(#[source] NotPromoted),
    /// The generation passed and was not promoted; it could not even be marked so.
    #[error("{why}; it is left for the next rebuild to settle ({source})")]
    NotPromotedLeft {
        why: NotPromoted,
        #[source]
        source: st::UpdateError,
    },
    /// The promotion's answer was lost, and the record cannot be read to tell.
    #[error(
        "generation {number} passed, but whether it was promoted is unknown ({source}); the next rebuild settles it"
    )]
    PromotionUnknown {
        number: u64,
        #[source]
        source: st::UpdateError,
    },
}

/// Why a generation that passed is not current.
#[derive(Debug, thiserror::Error)]
pub enum NotPromoted {
    /// The record moved while it was built.
    #[error("generation {number} passed but was not promoted: {source}")]
    Refused {
        number: u64,
        #[source]
        source: Refusal,
    },
    #[error("generation {number} passed but the promotion failed ({source})")]
    Failed {
        number: u64,
        #[source]
        source: st::UpdateError,
    },
}

impl NotPromoted {
    pub fn number(&self) -> u64 {
        match self {
            NotPromoted::Refused { number, .. } | NotPromoted::Failed { number, .. } => *number,
        }
    }
}

impl RebuildError {
    fn tear_down(number: u64, run_id: &str, when: TearingDown) -> impl FnOnce(TearDownError) -> RebuildError {
        let run_id = run_id.to_string();
        move |source| RebuildError::TearDown { number, run_id, when, source }
    }
}

fn note(reporter: &dyn Reporter, what: StageEvent) {
    reporter.event(Event::Stage(what));
}

/// Retires generation `n`: marked `retiring` first (a rollback can no longer choose
/// it), torn down, then marked `retired`; a rebuild that dies in between leaves it
/// `retiring`, and the next one tears it down again. A generation that became current
/// again (rolled back to) is left.
pub async fn retire(hand: &Stagehand<'_>, stage: &str, n: u64) -> Result<(), RebuildError> {
    let Stagehand { store, gens, reporter, .. } = *hand;
    let mut run_id = String::new();
    let marked = st::update(store, stage, |r| {
        let mut r = r.ok_or(Refusal::NoRecord)?;
        if r.current == Some(n) {
            return Err(Refusal::CurrentAgain(n));
        }
        let gen = r.generation_mut(n).ok_or(Refusal::NoGeneration(n))?;
        if gen.fate == Fate::Retired {
            return Err(Refusal::RetiredAlready(n));
        }
        gen.fate = Fate::Retiring;
        run_id = gen.run_id.clone();
        Ok(r)
    })
    .await;
    match marked {
        Ok(_) => {}
        Err(st::UpdateError::Refused(why)) => {
            note(reporter, StageEvent::NotRetiring { generation: n, why: why.to_string() });
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    note(reporter, StageEvent::Retiring { generation: n, run_id: run_id.clone() });
    gens.tear_down(&run_id, n).await.map_err(RebuildError::tear_down(n, &run_id, TearingDown::Retiring))?;
    set_fate(hand, stage, n, &[Fate::Retiring], Fate::Retired, None).await
}

/// Moves generation `n` from one of `from` to `to` (with a reason); from any other
/// fate it is left as it is.
async fn set_fate(
    hand: &Stagehand<'_>,
    stage: &str,
    n: u64,
    from: &[Fate],
    to: Fate,
    reason: Option<String>,
) -> Result<(), RebuildError> {
    let changed = st::update(hand.store, stage, |r| {
        let mut r = r.ok_or(Refusal::NoRecord)?;
        let gen = r.generation_mut(n).ok_or(Refusal::NoGeneration(n))?;
        if !from.contains(&gen.fate) {
            return Err(Refusal::Fate { number: n, fate: gen.fate });
        }
        gen.fate = to;
        if to == Fate::Retired {
            gen.retired_at = Some((hand.now)());
        }
        if reason.is_some() {
            gen.reason = reason.clone();
        }
        Ok(r)
    })
    .await;
    match changed {
        Ok(_) | Err(st::UpdateError::Refused(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What earlier rebuilds left: a generation still `building` belongs to a rebuild that
/// died (the caller holds the lock now) and is torn down; a drained generation is
/// retired; the names are pointed where the record says.
pub async fn tidy(hand: &Stagehand<'_>, stage: &str) -> Result<(), RebuildError> {
    let Stagehand { store, names, gens, reporter, .. } = *hand;
    let Some((record, _)) = st::load(store, stage).await? else { return Ok(()) };
    // Names first: a rebuild that died between its promotion and its switch left them
    // behind the record.
    if record.current.is_some() {
        st::converge_told(store, stage, names, reporter).await.map_err(RebuildError::Names)?;
    }
    for gen in record.generations.iter().filter(|g| g.fate == Fate::Building) {
        note(reporter, StageEvent::LeftMidBuild { generation: gen.number, run_id: gen.run_id.clone() });
        gens.tear_down(&gen.run_id, gen.number).await.map_err(RebuildError::tear_down(
            gen.number,
            &gen.run_id,
            TearingDown::LeftMidBuild,
        ))?;
        let why = "its rebuild ended before the acceptance suites judged it".to_string();
        set_fate(hand, stage, gen.number, &[Fate::Building], Fate::Interrupted, Some(why)).await?;
    }
    retire_drained(hand, stage).await
}

/// One rebuild (the caller holds the stage's lock).
pub async fn rebuild(
    hand: &Stagehand<'_>,
    plan: Plan<'_>,
    password: &str,
    signals: &Signals,
) -> Result<Outcome, RebuildError> {
    let Stagehand { store, gens, reporter, .. } = *hand;
    let name = plan.stage.name.as_str();
    // The description at hand says what the stage is: a record that disagrees is refused.
    if let Some((record, _)) = st::load(store, name).await? {
        st::agrees_with(store, &record, &plan.fresh)?;
    }
    tidy(hand, name).await?;
    // Generation N+1, registered before anything of it exists.
    let mut number = 0;
    let mut seen_current = None;
    let before = st::update(store, name, |r| {
        let mut r = match r {
            Some(mut r) => {
                // The description's names, TTL and drain are the stage's from now on.
                r.names = plan.fresh.names.clone();
                r.zone = plan.fresh.zone.clone();
                r.record_ttl_secs = plan.fresh.record_ttl_secs;
                r.drain_secs = plan.fresh.drain_secs;
                for (db, d) in &plan.fresh.databases {
                    r.databases.entry(db.clone()).or_insert_with(|| d.clone());
                }
                r
            }
            None => plan.fresh.clone(),
        };
        seen_current = r.current;
        number = r.next_number();
        r.generations.push(Generation::building(number, &plan.run_id, &plan.release, (hand.now)()));
        Ok(r)
    })
    .await?;
    note(
        reporter,
        StageEvent::Building {
            stage: name.to_string(),
            generation: number,
            release: plan.release.clone(),
            beside: before.current_generation().map(|cur| cur.describe()),
        },
    );

    let spec = Spec {
        number,
        run_id: plan.run_id.clone(),
        password: password.to_string(),
        serving: before.current_generation().map(Generation::describe),
    };
    let built = gens.build(&spec).await;
    let passed = built.verdict == Verdict::Passed && built.connection.is_some();
    if !passed {
        let fate = if built.verdict == Verdict::Interrupted { Fate::Interrupted } else { Fate::Failed };
        // Its run tore it down (unless kept for debugging); a teardown that left
        // something is tried again here, before the generation is marked.
        if !built.kept {
            gens.tear_down(&plan.run_id, number).await.map_err(RebuildError::tear_down(
                number,
                &plan.run_id,
                TearingDown::NotPassed,
            ))?;
        }
        let after = st::update(store, name, |r| {
            let mut r = r.ok_or(Refusal::NoRecord)?;
            let gen = r.generation_mut(number).ok_or(Refusal::NoGeneration(number))?;
            gen.fate = fate;
            gen.reason = built.reason.clone();
            gen.backups = built.backups.clone();
            Ok(r)
        })
        .await?;
        return Ok(Outcome::NotPromoted {
            number,
            verdict: built.verdict,
            still_on: after.current_generation().cloned(),
        });
    }
    let connection = built.connection.as_ref().expect("a generation that passed has its connection");
    promote(hand, &plan, number, seen_current, &built.backups, connection, signals).await
}

/// The generation passed: promoted in the record, every name switched, the one it
/// replaced drained and retired.
async fn promote(
    hand: &Stagehand<'_>,
    plan: &Plan<'_>,
    number: u64,
    seen_current: Option<u64>,
    backups: &[GenerationBackup],
    connection: &Connection,
    signals: &Signals,
) -> Result<Outcome, RebuildError> {
    let Stagehand { store, names, reporter, .. } = *hand;
    // From here — the acceptance passed — to every name switched (tokio's clock: real
    // time, or virtual time in tests and benchmarks).
    let accepted = tokio::time::Instant::now();
    let name = plan.stage.name.as_str();
    let targets = st::targets(connection);
    let databases: BTreeMap<String, StableDatabase> = promote::stable_databases(connection, plan.stage);
    let now = (hand.now)();
    let retire_at = st::retire_at(now, plan.drain);
    let promotion =
        Promotion { number, seen_current, targets: &targets, backups, databases: &databases, now, retire_at };
    let promoted = promote::promote(store, name, &promotion).await;
    let record = match promoted {
        Ok(r) => r,
        Err(st::UpdateError::Refused(source)) => {
            return Err(not_promoted(hand, plan, NotPromoted::Refused { number, source }).await)
        }
        Err(e) => {
            // No answer: the promotion may have landed. The record says.
            match st::load(store, name).await {
                Ok(Some((r, _))) if r.current == Some(number) => r,
                Ok(Some(_)) => {
                    return Err(not_promoted(hand, plan, NotPromoted::Failed { number, source: e }).await);
                }
                // Unknown either way: left as it is (`building` or current); the next
                // rebuild sees which and tidies accordingly.
                _ => return Err(RebuildError::PromotionUnknown { number, source: e }),
            }
        }
    };
    st::converge_told(store, name, names, reporter)
        .await
        .map_err(|source| RebuildError::NotSwitched { number, source })?;
    let switched_in = accepted.elapsed();
    let current = record.current_generation().cloned().expect("just promoted");
    note(reporter, StageEvent::Switched { stage: name.to_string(), current: current.describe() });
    let Some(previous) = seen_current else {
        return Ok(Outcome::Promoted { current, switched_in, retired: None, interrupted: false });
    };
    note(reporter, StageEvent::Draining { generation: previous, until: retire_at, drain: plan.drain });
    tokio::select! {
        () = tokio::time::sleep(plan.drain) => {}
        () = signals.nth(1) => {
            note(reporter, StageEvent::InterruptedDraining { generation: previous });
            return Ok(Outcome::Promoted { current, switched_in, retired: None, interrupted: true });
        }
    }
    retire(hand, name, previous).await?;
    // Generations whose drain ended meanwhile (an earlier rebuild's, interrupted while
    // its generation drained) go too.
    retire_drained(hand, name).await?;
    Ok(Outcome::Promoted { current, switched_in, retired: Some(previous), interrupted: false })
}

/// A generation that passed but is not current: marked failed first — a promotion
/// still in flight then finds the record changed and cannot land — and only then torn
/// down. When it cannot even be marked, it is left `building` for the next rebuild.
async fn not_promoted(hand: &Stagehand<'_>, plan: &Plan<'_>, why: NotPromoted) -> RebuildError {
    let name = plan.stage.name.as_str();
    let number = why.number();
    if let Err(source) = promote::mark_not_promoted(hand.store, name, number, &why.to_string()).await {
        return RebuildError::NotPromotedLeft { why, source };
    }
    match hand.gens.tear_down(&plan.run_id, number).await {
        Ok(()) => RebuildError::NotPromoted(why),
        Err(t) => RebuildError::tear_down(number, &plan.run_id, TearingDown::NotPromoted(why))(t),
    }
}

/// Retires every generation whose drain is over, and any left `retiring`.
async fn retire_drained(hand: &Stagehand<'_>, stage: &str) -> Result<(), RebuildError> {
    let Some((record, _)) = st::load(hand.store, stage).await? else { return Ok(()) };
    let now = (hand.now)();
    for gen in &record.generations {
        let due = match gen.fate {
            Fate::Draining => gen.retire_at.is_none_or(|t| t <= now),
            Fate::Retiring => true,
            _ => false,
        };
        if due && record.current != Some(gen.number) {
            retire(hand, stage, gen.number).await?;
        }
    }
    Ok(())
}

/// Everything of a stage (the caller holds its lock): every generation not retired yet
/// torn down, the names removed, the record and password deleted. The number of
/// generations removed.
pub async fn destroy(hand: &Stagehand<'_>, record: &StageRecord) -> Result<usize, RebuildError> {
    let Stagehand { store, names, gens, reporter, .. } = *hand;
    let mut removed = 0;
    for gen in record.generations.iter().filter(|g| g.fate != Fate::Retired) {
        note(
            reporter,
            StageEvent::Removing { generation: gen.number, run_id: gen.run_id.clone(), fate: gen.fate.as_str().into() },
        );
        let destroying = TearingDown::Destroying { stage: record.stage.clone() };
        gens.tear_down(&gen.run_id, gen.number).await.map_err(RebuildError::tear_down(
            gen.number,
            &gen.run_id,
            destroying,
        ))?;
        removed += 1;
    }
    names.remove().await.map_err(|e: NamesError| RebuildError::Names(e.into()))?;
    for key in [st::record_key(&record.stage), st::secret_key(&record.stage)] {
        super::store::delete_current(store, &key).await.map_err(st::UpdateError::from)?;
    }
    Ok(removed)
}

/// A description's stage as a record to start from.
pub fn fresh_record(
    stage: &Stage,
    environment: &str,
    provider: &str,
    databases: &BTreeMap<String, crate::description::Database>,
    drain: Duration,
) -> StageRecord {
    let names = stage.names.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    let mut r = StageRecord::new(&stage.name, environment, provider, names);
    r.zone = stage.zone.clone();
    r.record_ttl_secs = stage.record_ttl.as_secs();
    r.drain_secs = drain.as_secs();
    // Which names are databases' (a CNAME each on AWS); completed at the promotion.
    r.databases = databases
        .iter()
        .filter(|(db, _)| stage.names.contains_key(*db))
        .map(|(db, _)| (db.clone(), StableDatabase { name: String::new(), user: String::new(), port: String::new() }))
        .collect();
    r
}
