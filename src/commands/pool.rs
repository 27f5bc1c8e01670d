//! `rehearse pool fill|status|drain FILE`: the warm pools of a description's databases
//! on AWS (`pool:` of a database). A member is made as a run of its own — the database
//! alone, restored from the newest snapshot and masked, kept for the pool's `max_age` —
//! and recorded in the state store ([`crate::engine::pool`]).

use std::path::Path;

use std::time::Duration;

use chrono::Utc;
use sha2::Digest;

use super::edge::run::{described, outcome, NO_LEASE};
use super::load_or_report;
use crate::cli::Global;
use crate::description::{DatabaseSource, Loaded, Pool, PoolKeep, Target};
use crate::engine::lifecycle::Options;
use crate::engine::pool::{self as members, Member, MemberRun, State};
use crate::engine::provider::{Pin, Pins, Provider};
use crate::engine::run::Ended;
use crate::engine::store::ObjectStore;
use crate::exit;
use crate::report::model::Verdict;
use crate::sys::signals::Signals;
use crate::sys::state;

/// How many times one fill reads the pool again after making members (claims made
/// meanwhile had their own refills turned away by its lock).
const REFILL_ROUNDS: usize = 3;

/// What `rehearse pool` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Fill,
    Status,
    Drain,
}

pub(crate) fn pool(g: &Global, action: Action, file: &Path) -> i32 {
    let loaded = match load_or_report(file, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Target::Aws(aws) = &loaded.desc.target else {
        errln!(
            "error: {}: pools are for the aws provider (locally, `rehearse warm` keeps a golden copy)",
            file.display()
        );
        return exit::USAGE;
    };
    let pools: Vec<(String, Pool)> =
        loaded.desc.databases.iter().filter_map(|(n, d)| d.pool().map(|p| (n.clone(), p.clone()))).collect();
    if pools.is_empty() {
        errln!("error: {}: no database has a `pool:`", file.display());
        return exit::USAGE;
    }
    let g = &described(g, &loaded);
    let region = aws.region.clone();
    super::with_signals(g, async |reporter, signals| {
        let super::store::Opened { shared, locks, local_root } = match super::store::open_for_runs(g).await {
            Ok(o) => o,
            Err(code) => return code,
        };
        let provider = super::aws_provider(&region).await;
        let pins = match provider.pin_sources(&loaded).await {
            Ok(p) => p,
            Err(e) => {
                errln!("error: cannot find the newest snapshots: {}", e.message);
                return exit::BUILD_FAILED;
            }
        };
        let mut code = exit::PASSED;
        for (name, pool) in &pools {
            let Some(Pin::Snapshot(snapshot)) = pins.get(name.as_str()).cloned() else {
                errln!("error: database `{name}`: no snapshot to fill its pool from");
                code = exit::BUILD_FAILED;
                continue;
            };
            let wanted = match wanted(&loaded, name, pool, &snapshot) {
                Ok(w) => w,
                Err(e) => {
                    errln!("error: database `{name}`: {e}");
                    code = exit::BUILD_FAILED;
                    continue;
                }
            };
            let here = Here {
                g,
                loaded: &loaded,
                provider: &provider,
                locks: locks.clone(),
                shared: shared.clone(),
                local_root: &local_root,
            };
            // A fill or a drain reads the pool under its lock: what it read is what it
            // changes, and a member still `restoring` then is a dead fill's.
            let c = match action {
                Action::Status => match here.current(name).await {
                    Ok((all, _)) => status(&loaded.desc.name, name, pool, &wanted, &all, &region),
                    Err(c) => c,
                },
                Action::Fill => {
                    here.locked(name, "fill", async {
                        // Read again after making members: a run that claimed meanwhile had
                        // its own refill turned away by this fill's lock.
                        let mut code = exit::PASSED;
                        for _ in 0..REFILL_ROUNDS {
                            let (c, made) = match here.current(name).await {
                                Ok((all, verified)) => {
                                    here.fill(name, pool, &wanted, &all, &verified, &pins, reporter, signals).await
                                }
                                Err(c) => (c, 0),
                            };
                            code = c;
                            if c != exit::PASSED || made == 0 || signals.count() > 0 {
                                break;
                            }
                        }
                        code
                    })
                    .await
                }
                Action::Drain => {
                    here.locked(name, "drain", async {
                        match here.current(name).await {
                            Ok((all, verified)) => here.drain(name, &all, &verified, reporter, signals).await,
                            Err(c) => c,
                        }
                    })
                    .await
                }
            };
            if c != exit::PASSED {
                code = c;
            }
        }
        code
    })
}

/// What a member of `name`'s pool must be made from now.
fn wanted(loaded: &Loaded, name: &str, pool: &Pool, snapshot: &str) -> Result<members::Wanted, String> {
    let db = &loaded.desc.databases[name];
    if !matches!(db.source, DatabaseSource::RdsInstance(_)) {
        return Err("a pool needs an `rds_instance` source".into());
    }
    let masking = match &db.masking {
        Some(m) => {
            let path = loaded.resolve(m);
            crate::sys::secure_fs::check_input(&path).map_err(|e| format!("the masking SQL cannot be trusted: {e}"))?;
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            Some(sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
        }
        None => None,
    };
    let class = db.aws().map(|a| pool.class(a).to_string()).unwrap_or_default();
    Ok(members::Wanted { snapshot: snapshot.to_string(), masking, max_age: pool.max_age, class })
}

fn status(env: &str, name: &str, pool: &Pool, wanted: &members::Wanted, all: &[members::Read], region: &str) -> i32 {
    let now = Utc::now();
    let ready =
        all.iter().filter(|r| matches!(r.member.state, State::Ready { .. }) && wanted.misfit(&r.member, now).is_none());
    let class = all.first().map_or("", |r| r.member.class.as_str());
    outln!("{env}/{name}: {} of {} ready (newest snapshot {})", ready.count(), pool.size, wanted.snapshot);
    for r in all {
        let m = &r.member;
        let age = crate::description::format_duration((now - m.made_at).to_std().unwrap_or_default());
        let state = match &m.state {
            State::Restoring => "restoring".to_string(),
            State::Ready { .. } => match wanted.misfit(m, now) {
                None if m.stopped => "ready (stopped)".into(),
                None => "ready".into(),
                Some(why) => format!("stale: {why}"),
            },
            State::Claimed { run_id, .. } => format!("claimed by {run_id}"),
        };
        outln!("  {}  {}  {}  {age} old  {state}", m.member, m.instance, m.snapshot);
    }
    if let Some(h) = crate::plan::price::rds_hourly(class, region) {
        let running =
            all.iter().filter(|r| !matches!(r.member.state, State::Claimed { .. }) && !r.member.stopped).count();
        let stopped = all.iter().filter(|r| r.member.stopped).count();
        let also = if stopped > 0 { format!("; {stopped} stopped: storage only") } else { String::new() };
        outln!(
            "  cost: ~${:.2}/hour for {running} running instance(s) of {class} in {region} (on-demand list price{also})",
            h * running as f64
        );
    }
    exit::PASSED
}

/// Where this command's runs go.
struct Here<'a> {
    g: &'a Global,
    loaded: &'a Loaded,
    provider: &'a crate::providers::aws::AwsProvider<crate::providers::aws::sdk::Sdk>,
    locks: std::sync::Arc<dyn ObjectStore>,
    shared: Option<std::sync::Arc<dyn ObjectStore>>,
    local_root: &'a Path,
}

/// Members whose instance is verifiably the member its record says: only their runs
/// are torn down here (a forged record only loses its record).
type Verified = std::collections::BTreeSet<String>;

impl Here<'_> {
    /// The pool's members as they are now (records read, forged ones said, dead claims
    /// and records of gone instances settled), and which of them are verifiably the
    /// pool's.
    async fn current(&self, name: &str) -> Result<(Vec<members::Read>, Verified), i32> {
        let env = self.loaded.desc.name.to_string();
        let (all, forged) = members::members(self.locks.as_ref(), &env, name).await.map_err(|e| {
            errln!("error: {e}");
            exit::BUILD_FAILED
        })?;
        for f in &forged {
            errln!("warning: {f}");
        }
        let all = self.provider.settle_pool(self.locks.as_ref(), all, Utc::now()).await.map_err(|e| {
            errln!("error: {e}");
            exit::BUILD_FAILED
        })?;
        let verified = self.provider.verified_members(&format!("{env}/{name}"), &all).await.map_err(|e| {
            errln!("error: cannot check the pool's members against their instances: {e}");
            exit::BUILD_FAILED
        })?;
        Ok((all, verified))
    }

    /// `work` under the pool's lock: of two fills (or a fill and a drain) at once, one
    /// changes the pool and the other says so.
    async fn locked(&self, name: &str, what: &str, work: impl std::future::Future<Output = i32>) -> i32 {
        let lock = format!("pool-{}-{name}", self.loaded.desc.name);
        let purpose = format!("rehearse pool {what} ({name})");
        let held =
            match super::edge::lock::take(self.locks.clone(), &lock, &purpose, None, Duration::from_secs(60)).await {
                Ok(l) => l,
                Err(exit::LOCKED) => {
                    outln!("{}/{name}: another `rehearse pool` is changing it", self.loaded.desc.name);
                    // A fill that finds another at work leaves the pool to it (that one
                    // reads the pool again when done); a drain that could not drain fails.
                    return if what == "drain" { exit::LOCKED } else { exit::PASSED };
                }
                Err(code) => return code,
            };
        let code = work.await;
        super::edge::lock::give_back(held, &lock).await;
        code
    }

    /// Makes members until the pool has `size` that fit, retiring the unfit ready ones
    /// first, those whose retirement did not finish, and those still `restoring` past
    /// [`members::RESTORING_BOUND`]: under the pool's lock, such a member is a dead
    /// fill's (its run is torn down if its instance is verifiably the member, else only
    /// its record goes). The members are made at once, each a run of its own. Its exit
    /// code and how many it made.
    #[allow(clippy::too_many_arguments)] // each is a distinct fact of the fill
    async fn fill(
        &self,
        name: &str,
        pool: &Pool,
        wanted: &members::Wanted,
        all: &[members::Read],
        verified: &Verified,
        pins: &Pins,
        reporter: &dyn crate::engine::events::Reporter,
        signals: &Signals,
    ) -> (i32, usize) {
        let now = Utc::now();
        let mut code = exit::PASSED;
        let why_unfit = |r: &members::Read| match r.member.state {
            State::Restoring => (now - r.member.made_at)
                .to_std()
                .is_ok_and(|age| age > members::RESTORING_BOUND)
                .then(|| "left restoring by a fill that ended".to_string()),
            State::Ready { .. } => wanted.misfit(&r.member, now),
            State::Claimed { .. } if members::retiring(r) => Some("its retirement did not finish".into()),
            State::Claimed { .. } => None,
        };
        let unfit: Vec<(&members::Read, String)> = all.iter().filter_map(|r| why_unfit(r).map(|w| (r, w))).collect();
        for (r, why) in &unfit {
            outln!("{}: retiring ({why})", r.member.member);
            if self.retire(r, verified, reporter, signals).await != exit::PASSED {
                code = exit::LEFTOVERS;
            }
        }
        let live = all.len() - unfit.len();
        let missing = (pool.size as usize).saturating_sub(live);
        if missing == 0 {
            outln!("{}/{name}: the pool is full ({} of {})", self.loaded.desc.name, live, pool.size);
            return (code, 0);
        }
        let mut pins = pins.clone();
        pins.retain(|k, _| k == name);
        let makes = (0..missing).map(|_| self.make(name, pool, wanted, &pins, reporter, signals));
        for c in futures_util::future::join_all(makes).await {
            if c != exit::PASSED {
                code = c;
            }
        }
        (code, missing)
    }

    /// One new member: its record (the intent) first, then its run; ready when the
    /// run passed, else its record removed (the run tore down what it made).
    async fn make(
        &self,
        name: &str,
        pool: &Pool,
        wanted: &members::Wanted,
        pins: &Pins,
        reporter: &dyn crate::engine::events::Reporter,
        signals: &Signals,
    ) -> i32 {
        let env = self.loaded.desc.name.to_string();
        let id = state::new_run_id();
        let record = Member {
            member: id.clone(),
            instance: crate::providers::aws::AwsProvider::<()>::rds_id(&id, name),
            snapshot: wanted.snapshot.clone(),
            taken_at: None,
            masking: wanted.masking.clone(),
            class: wanted.class.clone(),
            made_at: Utc::now(),
            stopped: false,
            state: State::Restoring,
        };
        let key = members::key(&env, name, &id);
        let etag = match members::write(self.locks.as_ref(), &key, &record, None).await {
            Ok(e) => e,
            Err(e) => {
                errln!("error: {e}");
                return exit::BUILD_FAILED;
            }
        };
        // Kept past its max_age by a claim's lease: a member claimed at the end of its
        // age is not swept from under the run taking it.
        let keep_for = pool.max_age + members::CLAIM_LEASE;
        let opts = self.options(&id, pins, Some(MemberRun { database: name.to_string(), keep_for }));
        let (out, code) = outcome(self.g, self.loaded, &opts, self.locks.clone(), NO_LEASE, reporter, signals).await;
        let passed = matches!(&out.ended, Ended::Reported { report, .. } if report.verdict == Verdict::Passed);
        let read = members::Read { key: key.clone(), member: record.clone(), etag };
        if passed {
            let mut ready = record;
            if pool.keep == PoolKeep::Stopped {
                // Stopped before it is offered: a claim starts it. One that does not stop
                // is offered running.
                let pool_tag = format!("{env}/{name}");
                match self.provider.stop_member(&pool_tag, &id, &ready.instance).await {
                    Ok(()) => ready.stopped = true,
                    Err(e) => errln!("warning: {id}: kept running, not stopped: {e}"),
                }
            }
            ready.state = State::Ready { ready_at: Utc::now() };
            return match members::write(self.locks.as_ref(), &key, &ready, Some(read.etag)).await {
                Ok(_) => {
                    let stopped = if ready.stopped { ", stopped" } else { "" };
                    outln!("{id}: ready ({}{stopped})", ready.instance);
                    exit::PASSED
                }
                Err(e) => {
                    errln!("error: {e}; the member is kept: remove it with `rehearse down {id}`");
                    exit::BUILD_FAILED
                }
            };
        }
        // The run failed: what it kept goes, then its record.
        let c = self.down(&id, reporter, signals).await;
        if let Err(e) = members::remove(self.locks.as_ref(), &read).await {
            errln!("error: {e}");
        }
        if code == exit::PASSED {
            c
        } else {
            code
        }
    }

    /// Takes a member out of the pool: its run torn down, then its record.
    async fn retire(
        &self,
        r: &members::Read,
        verified: &Verified,
        reporter: &dyn crate::engine::events::Reporter,
        signals: &Signals,
    ) -> i32 {
        // Claimed first (by the member itself), so that no run claims it meanwhile.
        let mut mine = r.member.clone();
        mine.state = State::Claimed { run_id: r.member.member.clone(), at: Utc::now() };
        let etag = match members::write(self.locks.as_ref(), &r.key, &mine, Some(r.etag.clone())).await {
            Ok(e) => e,
            Err(e) => {
                errln!("{}: not retired: {e}", r.member.member);
                return exit::PASSED;
            }
        };
        let code = if verified.contains(&r.member.member) {
            self.down(&r.member.member, reporter, signals).await
        } else {
            outln!(
                "{}: its instance {} is not this pool's member (or not there yet): record dropped, nothing torn down",
                r.member.member,
                r.member.instance
            );
            exit::PASSED
        };
        if code == exit::PASSED {
            let read = members::Read { key: r.key.clone(), member: mine, etag };
            if let Err(e) = members::remove(self.locks.as_ref(), &read).await {
                errln!("error: {e}");
                return exit::BUILD_FAILED;
            }
        }
        code
    }

    async fn drain(
        &self,
        name: &str,
        all: &[members::Read],
        verified: &Verified,
        reporter: &dyn crate::engine::events::Reporter,
        signals: &Signals,
    ) -> i32 {
        let mut code = exit::PASSED;
        for r in all {
            if let State::Claimed { run_id, .. } = &r.member.state {
                if !members::retiring(r) {
                    outln!("{}: claimed by {run_id}: left to that run", r.member.member);
                    continue;
                }
            }
            outln!("{}: removing", r.member.member);
            let c = self.retire(r, verified, reporter, signals).await;
            if c != exit::PASSED {
                code = c;
            }
        }
        outln!("{}/{name}: drained", self.loaded.desc.name);
        code
    }

    async fn down(&self, run_id: &str, reporter: &dyn crate::engine::events::Reporter, signals: &Signals) -> i32 {
        let edge = match super::edge::down::Edge::open(self.g, reporter, signals).await {
            Some(e) => e,
            None => return exit::USAGE,
        };
        edge.down(run_id, Some(self.local_root), None, None).await.code
    }

    fn options(&self, run_id: &str, pins: &Pins, member: Option<MemberRun>) -> Options {
        Options {
            run_id: run_id.to_string(),
            release: self.loaded.release_version(None).unwrap_or_else(|| "pool".into()),
            destroy: crate::description::DestroyPolicy::Never,
            cold: false,
            up_only: true,
            state_root: self.local_root.to_path_buf(),
            work_root: state::work_dir(),
            run_as: None,
            exit_code: super::edge::run::exit_code,
            name: None,
            shared: self.shared.clone(),
            stage: None,
            pins: pins.clone(),
            change: None,
            member,
            from: None,
            twin: None,
            deploy_twin: false,
            chaos: None,
        }
    }
}
