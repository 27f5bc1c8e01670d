//! A game day on the copy (`rehearse run FILE --release R --chaos [NAME…]`): once the
//! copy serves the release, the description's load starts against it; after the steady
//! window the faults start on their schedule (`after: load`, each `at` from then), each
//! reverted when its `duration` ends; once they all ended and the settling passed, the
//! suites run while the load goes on, with the faults that start `after: suite.NAME`
//! (from the suites' start; they all start at once). Then the load stops and each
//! fault's expectations are judged ([`crate::compare::chaos`]).
//!
//! The path faults go through fault proxies ([`crate::sys::fault_proxy`]) that are in
//! the path from the run's start: a service's connection to a database it depends on
//! is pointed at a proxy when the service starts ([`Paths::outputs_for`]), the load's
//! connections to a service at one when the load starts. With no fault set a proxy
//! only copies. A fault is reverted on every exit path (its end, a signal, the phase
//! ending early): the proxies are cleared before the phase returns, and they die with
//! the process.
//!
//! A database's `restart` stops its server (`pg_ctl stop -m fast|immediate`) and starts
//! it again after `duration`, as the run started it, journaling the new server (teardown
//! finds it by its data directory either way); it is started again on every way out.
//!
//! A service's `kill` kills an instance's whole process group at once; the load, spread
//! over the service's instances by a balancing proxy (as a load balancer would), goes
//! around it. With `restart: on-failure` the instance is started again a second later,
//! as the run started it, healthy before the balancer sends to it ([`kill`]).
//!
//! On aws the instances' and databases' faults ([`cloud`]); a path fault there, and a
//! failover RDS would refuse, are refused by [`refusal`] before anything is built.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

mod cloud;
mod journaled;
mod kill;

use journaled::{begin, journal_reverted};

use super::events::Reporter;
use super::journal::{self, Journal, State};
use super::provider::{Injected, Provider, RunInfo};
use crate::compare::chaos::{self as judged, ChaosReport, FaultReport};
use crate::compare::load::{self, Request, Timed};
use crate::description::template::{DatabaseOutputs, Outputs};
use crate::description::RestartMode;
use crate::description::{Chaos, ChaosFault, FaultKind, FaultTargetKind, Loaded, ProviderKind};
use crate::exit;
use crate::plan::Plan;
use crate::report::model::StepTiming;
use crate::sys::fault_proxy::{Fault, FaultProxy};
use crate::sys::signals::Signals;
use crate::sys::timing::Clock;

/// The faults `names` pick (all when empty), in name order.
pub fn selected(loaded: &Loaded, names: &[String]) -> Result<Vec<(String, ChaosFault)>, String> {
    let Some(chaos) = &loaded.desc.chaos else {
        return Err(format!(
            "`--chaos` runs a game day, but {} has no `chaos:` section to say its faults",
            loaded.path.display()
        ));
    };
    if names.is_empty() {
        return Ok(chaos.faults.iter().map(|(n, f)| (n.clone(), f.clone())).collect());
    }
    let mut out = Vec::new();
    for n in names {
        match chaos.faults.get(n) {
            Some(f) => out.push((n.clone(), f.clone())),
            None => {
                let known = chaos.faults.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
                return Err(format!("`--chaos {n}`: `chaos.faults` has no fault `{n}` (it has {known})"));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    Ok(out)
}

/// Why `--chaos names` cannot run, before anything is built: the exit code and the
/// message.
pub fn refusal(loaded: &Loaded, names: &[String], from: bool, up_only: bool) -> Result<(), (i32, String)> {
    if up_only {
        return Err((exit::USAGE, "`--chaos` runs a game day: it belongs to `rehearse run`, not `up`".into()));
    }
    if from {
        return Err((
            exit::USAGE,
            "`--chaos` and `--from` are two rehearsals: run the deploy and the game day apart".into(),
        ));
    }
    let faults = selected(loaded, names).map_err(|e| (exit::USAGE, e))?;
    let aws = loaded.desc.provider() == ProviderKind::Aws;
    for (name, f) in &faults {
        let refused = match (f.target_kind(), aws) {
            (Some(FaultTargetKind::Path), true) => Some(
                "on aws the faults on a path are not built yet (their proxy would run on the runner or the \
                 instances); the instances' and databases' faults are"
                    .to_string(),
            ),
            (Some(FaultTargetKind::Database), true) if f.failover == Some(true) => Some(
                "rehearse's RDS copies are single-AZ, and RDS refuses a failover on those; an Aurora copy fails \
                 over with `kind: failover`"
                    .to_string(),
            ),
            (Some(FaultTargetKind::Database), true) if f.kind == FaultKind::Failover => {
                let aurora = f
                    .database
                    .as_ref()
                    .and_then(|d| loaded.desc.databases.get(d))
                    .is_some_and(|d| matches!(d.source, crate::description::DatabaseSource::AuroraCluster(_)));
                (!aurora).then(|| {
                    "only an Aurora copy (`source: {aurora_cluster: …}`) has a cluster to fail over; an RDS \
                     instance is `reboot`ed"
                        .to_string()
                })
            }
            _ => None,
        };
        if let Some(why) = refused {
            return Err((exit::USAGE, format!("`--chaos {name}`: {why}")));
        }
    }
    Ok(())
}

/// The fault proxies of a game day's paths, by `(FROM, TO)`: started when `FROM` first
/// connects (a service when it starts, the load's client when the load does).
pub struct Paths {
    wanted: Vec<(String, String)>,
    /// Services a selected `kill` hits: the load reaches them through a proxy even with
    /// one instance, so that it follows one started again elsewhere.
    killed: Vec<String>,
    proxies: tokio::sync::Mutex<BTreeMap<(String, String), FaultProxy>>,
    seed: u64,
}

impl Paths {
    /// The paths the selected faults hurt.
    pub fn of(faults: &[(String, ChaosFault)], seed: u64) -> Paths {
        let mut wanted: Vec<(String, String)> =
            faults.iter().filter_map(|(_, f)| f.path_ends()).map(|(a, b)| (a.to_string(), b.to_string())).collect();
        wanted.sort();
        wanted.dedup();
        let killed = faults.iter().filter(|(_, f)| f.kind == FaultKind::Kill).filter_map(|(_, f)| f.service.clone());
        let killed = killed.collect();
        Paths { wanted, killed, proxies: tokio::sync::Mutex::new(BTreeMap::new()), seed }
    }

    /// `outputs` as service `service` sees them: each database it reaches through a
    /// proxy pointed at the proxy.
    pub async fn outputs_for(&self, service: &str, outputs: &Outputs) -> Result<Outputs, String> {
        let mut mine = outputs.clone();
        for (from, to) in self.wanted.iter().filter(|(f, _)| f == service) {
            let Some(db) = outputs.databases.get(to) else { continue };
            let upstream = address(&db.host, &db.port)
                .ok_or_else(|| format!("database `{to}` is at `{}`, which the proxy cannot reach", db.endpoint))?;
            let at = self.proxy(from, to, vec![upstream]).await?;
            let proxied = DatabaseOutputs::new(
                at.ip().to_string(),
                at.port().to_string(),
                db.name.clone(),
                db.user.clone(),
                db.password.clone(),
            );
            mine.databases.insert(to.clone(), proxied);
        }
        Ok(mine)
    }

    /// Where the load's client reaches `target`, whose instances are at `instances`:
    /// through a proxy when a fault is on that path or the service has several
    /// instances (the proxy spreads the connections over them, as a load balancer
    /// would, and goes around one that is down).
    pub async fn client_target(&self, target: &str, instances: Vec<(String, u16)>) -> Result<(String, u16), String> {
        let path = ("client".to_string(), target.to_string());
        let Some(first) = instances.first().cloned() else {
            return Err(format!("the load's target `{target}` has no instance to send requests to"));
        };
        if !self.wanted.contains(&path) && instances.len() == 1 && !self.killed.contains(&path.1) {
            return Ok(first);
        }
        let mut addrs = Vec::new();
        for (host, port) in &instances {
            addrs.push(
                address(host, &port.to_string())
                    .ok_or_else(|| format!("service `{target}` is at `{host}`, which the proxy cannot reach"))?,
            );
        }
        let at = self.proxy(&path.0, &path.1, addrs).await?;
        Ok((at.ip().to_string(), at.port()))
    }

    /// The load's new connections to `target` go to `instances` from now on (one of
    /// them started again elsewhere); nothing when the load reaches it unproxied.
    async fn retarget(&self, target: &str, instances: &[String]) {
        let proxies = self.proxies.lock().await;
        if let Some(p) = proxies.get(&("client".to_string(), target.to_string())) {
            let addrs =
                instances.iter().filter_map(|u| load::target(u)).filter_map(|(h, p)| address(&h, &p.to_string()));
            p.set_upstreams(addrs.collect());
        }
    }

    async fn proxy(&self, from: &str, to: &str, upstream: Vec<SocketAddr>) -> Result<SocketAddr, String> {
        let mut proxies = self.proxies.lock().await;
        let key = (from.to_string(), to.to_string());
        if let Some(p) = proxies.get(&key) {
            return Ok(p.addr());
        }
        let p = FaultProxy::start_balanced(upstream, self.seed ^ proxies.len() as u64)
            .await
            .map_err(|e| format!("cannot start the fault proxy of `{from} -> {to}`: {e}"))?;
        let at = p.addr();
        proxies.insert(key, p);
        Ok(at)
    }

    /// Sets `fault` on the path `from -> to`; false when it has no proxy (its `FROM`
    /// never connected).
    async fn set(&self, from: &str, to: &str, fault: Fault) -> bool {
        let proxies = self.proxies.lock().await;
        match proxies.get(&(from.to_string(), to.to_string())) {
            Some(p) => {
                p.set(fault);
                true
            }
            None => false,
        }
    }

    /// Every fault cleared.
    async fn clear(&self) {
        for p in self.proxies.lock().await.values() {
            p.set(Fault::None);
        }
    }
}

/// `HOST:PORT` of a loopback or literal address.
fn address(host: &str, port: &str) -> Option<SocketAddr> {
    let host = if host == "localhost" { "127.0.0.1" } else { host };
    format!("{host}:{port}").parse().ok().or_else(|| format!("[{host}]:{port}").parse().ok())
}

/// What the game day works with: the run as the graph left it.
pub(super) struct Env<'a, P: Provider> {
    pub provider: &'a P,
    pub journal: &'a Journal,
    pub info: &'a RunInfo,
    pub clock: &'a Clock,
    pub loaded: &'a Loaded,
    pub plan: &'a Plan,
    pub steps: &'a std::sync::Mutex<Vec<StepTiming>>,
    /// The run's outputs as they are now: an instance started again moves.
    pub outputs: std::sync::Mutex<Outputs>,
    pub paths: &'a Paths,
    pub reporter: &'a dyn Reporter,
    pub signals: &'a Signals,
}

impl<P: Provider> Env<'_, P> {
    /// The run's outputs now.
    pub fn outputs(&self) -> Outputs {
        self.outputs.lock().map(|o| o.clone()).unwrap_or_else(|e| e.into_inner().clone())
    }
}

/// How the game day ended.
pub(super) struct Played<T> {
    pub report: ChaosReport,
    /// What the suites came to, when they ran (not after a signal: the run's verdict
    /// says it was interrupted).
    pub suites: Option<T>,
}

/// Runs the game day of `faults`, then `suites` under the load (with the run's
/// outputs as they are then).
pub(super) async fn rehearse<P: Provider, T, F: Future<Output = T>>(
    env: &Env<'_, P>,
    faults: &[(String, ChaosFault)],
    suites: impl FnOnce(Outputs) -> F,
) -> Played<T> {
    let chaos = env.loaded.desc.chaos.clone().unwrap_or_else(|| Chaos {
        load: None,
        steady: Duration::ZERO,
        settle: Duration::from_secs(1),
        faults: BTreeMap::new(),
        expect: Default::default(),
    });
    let mut report = ChaosReport { suites_judged: chaos.expect.suites_pass, ..ChaosReport::default() };
    // The load, when there is one: its own or the comparison's, to its target's first
    // instance (through the client's proxy when a fault is on that path).
    let load = match load_requests(env, &chaos).await {
        Ok(l) => l,
        Err(why) => {
            report.faults = faults.iter().map(|(n, f)| skipped(n, f, &why)).collect();
            return Played { report, suites: None };
        }
    };
    report.load = load.is_some();
    let (stop_load, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let load_task = load.map(|(requests, target, rate, timeout)| {
        let (_keep, target_rx) = tokio::sync::watch::channel(target);
        tokio::spawn(async move {
            let _keep = _keep;
            load::replay_until(&requests, target_rx, rate, timeout, stop_rx).await
        })
    });

    let (on_load, on_suites): (Vec<_>, Vec<_>) = faults.iter().partition(|(_, f)| f.after == "load");
    let mut runs: Vec<FaultReport> = Vec::new();
    let mut interrupted = env.signals.sleep(chaos.steady).await;
    if !interrupted {
        let (done, stopped) = play(env, &on_load, started).await;
        runs.extend(done);
        interrupted = stopped || env.signals.sleep(chaos.settle).await;
    }
    let mut suites_done = None;
    if !interrupted {
        let suites_run = suites(env.outputs());
        let faults_run = async {
            let played = play(env, &on_suites, started).await;
            let settled = on_suites.is_empty() || played.1 || env.signals.sleep(chaos.settle).await;
            (played, settled)
        };
        let (s, ((done, stopped), settled_by_signal)) = tokio::join!(suites_run, faults_run);
        runs.extend(done);
        suites_done = Some(s);
        interrupted = stopped || settled_by_signal || env.signals.count() > 0;
    }
    // Reverted on every path: whatever a fault left set is cleared.
    env.paths.clear().await;
    stop_load.send_replace(true);
    let timed: Vec<Timed> = match load_task {
        Some(t) => t.await.unwrap_or_default(),
        None => Vec::new(),
    };
    report.requests = timed.len();
    report.seconds = judged::timeline(&timed);
    for (name, f) in faults {
        let ran = runs.iter().find(|r| &r.name == name).cloned();
        let mut r = ran.unwrap_or_else(|| {
            let why = if interrupted { "interrupted before it started" } else { "never started" };
            skipped(name, f, why)
        });
        if let (Some(s), Some(e), None) = (r.started_ms, r.ended_ms, &r.skipped) {
            let (recovered, limits) = judged::expectations(&f.expectations(&chaos.expect), s, e, &timed, report.load);
            r.recovery_ms = recovered;
            r.expectations = limits;
        }
        report.faults.push(r);
    }
    Played { report, suites: suites_done }
}

/// The load's requests, its target's address and its rate and timeout; `None` when
/// the description has none.
async fn load_requests<P: Provider>(
    env: &Env<'_, P>,
    chaos: &Chaos,
) -> Result<Option<(Vec<Request>, (String, u16), f64, Duration)>, String> {
    let spec = match chaos.load.clone().or_else(|| env.loaded.desc.compare.as_ref().map(|c| c.load.clone())) {
        Some(s) => s,
        None => return Ok(None),
    };
    let file = spec.requests.as_ref().ok_or("a game day's load is a request file (`requests`)")?;
    let requests = load::read_request_file(&env.loaded.resolve(file))?;
    let instances: Vec<(String, u16)> = env
        .outputs()
        .services
        .get(&spec.target)
        .map(|s| s.urls.iter().filter_map(|u| load::target(u)).collect())
        .unwrap_or_default();
    let target = env.paths.client_target(&spec.target, instances).await?;
    Ok(Some((requests, target, spec.rate, spec.timeout)))
}

/// Runs `faults`, each from its `at` after now: their reports, and whether a signal
/// stopped them.
async fn play<P: Provider>(
    env: &Env<'_, P>,
    faults: &[&(String, ChaosFault)],
    load_start: Instant,
) -> (Vec<FaultReport>, bool) {
    let anchor = Instant::now();
    let runs = faults.iter().map(|(name, f)| one(env, name, f, anchor, load_start));
    let done: Vec<(FaultReport, bool)> = futures_util::future::join_all(runs).await;
    let stopped = done.iter().any(|(_, s)| *s);
    (done.into_iter().map(|(r, _)| r).collect(), stopped)
}

/// One fault: waits for its start, sets it, waits out its duration, clears it.
async fn one<P: Provider>(
    env: &Env<'_, P>,
    name: &str,
    f: &ChaosFault,
    anchor: Instant,
    load_start: Instant,
) -> (FaultReport, bool) {
    let mut r = skipped(name, f, "");
    r.skipped = None;
    if env.signals.sleep_until(anchor + f.at).await {
        r.skipped = Some("interrupted before it started".into());
        return (r, true);
    }
    if let (Some(db), FaultKind::Restart) = (&f.database, f.kind) {
        let stopped = restart(env, name, db, f, &mut r, load_start).await;
        return (r, stopped);
    }
    if let (Some(service), FaultKind::Kill) = (&f.service, f.kind) {
        let stopped = kill::kill(env, name, service, f, &mut r, load_start).await;
        return (r, stopped);
    }
    if matches!(f.kind, FaultKind::Stop | FaultKind::Reboot | FaultKind::Terminate | FaultKind::Failover) {
        let stopped = cloud::cloud(env, name, f, &mut r, load_start).await;
        return (r, stopped);
    }
    let Some((from, to)) = f.path_ends() else {
        r.skipped = Some(format!("a `{}` fault is not run yet", f.kind.as_str()));
        return (r, false);
    };
    let fault = match f.kind {
        FaultKind::Latency => {
            Fault::Latency { delay: f.delay.unwrap_or_default(), jitter: f.jitter.unwrap_or_default() }
        }
        FaultKind::Bandwidth => Fault::Bandwidth { bytes_per_sec: f.bytes_per_second.unwrap_or(1) },
        FaultKind::Reset => Fault::Reset,
        FaultKind::Blackhole => Fault::Blackhole,
        other => {
            r.skipped = Some(format!("a `{}` fault on a path is not a thing", other.as_str()));
            return (r, false);
        }
    };
    let Some(said) = begin(env, name, f, &mut r).await else { return (r, false) };
    if !env.paths.set(from, to, fault).await {
        journal_reverted(env, name).await;
        let why = format!("`{from}` never connected to `{to}` through its proxy");
        r.skipped = Some(why.clone());
        said.finished(false, why);
        return (r, false);
    }
    r.started_ms = Some(said.began.duration_since(load_start).as_millis() as u64);
    let stopped = env.signals.sleep(f.duration.unwrap_or_default()).await;
    env.paths.set(from, to, Fault::None).await;
    journal_reverted(env, name).await;
    r.ended_ms = Some(load_start.elapsed().as_millis() as u64);
    said.finished(true, if stopped { "cleared early: a signal" } else { "cleared" });
    (r, stopped)
}

/// A database stopped (`mode`), down for `duration`, started again as the run started
/// it and journaled anew (the server is another process); started again on every way
/// out, a signal too. Whether a signal cut the downtime short.
async fn restart<P: Provider>(
    env: &Env<'_, P>,
    name: &str,
    db: &str,
    f: &ChaosFault,
    r: &mut FaultReport,
    load_start: Instant,
) -> bool {
    let id = format!("database.{db}");
    let records = journal::read(env.journal.path()).unwrap_or_default();
    let Some(entry) = State::from_records(&records).remaining().into_iter().find(|e| e.id == id).cloned() else {
        r.skipped = Some(format!("the run's journal has no `{id}` to stop"));
        return false;
    };
    let Some(said) = begin(env, name, f, r).await else { return false };
    let immediate = f.mode == Some(RestartMode::Immediate);
    if let Err(e) = env.provider.inject(&entry, Injected::StopDatabase { immediate }, env.info, env.clock).await {
        journal_reverted(env, name).await;
        let why = format!("cannot stop `{db}`: {e}");
        r.skipped = Some(why.clone());
        said.finished(false, why);
        return false;
    }
    r.started_ms = Some(said.began.duration_since(load_start).as_millis() as u64);
    let stopped = env.signals.sleep(f.duration.unwrap_or_default()).await;
    let started = env.provider.inject(&entry, Injected::StartDatabase, env.info, env.clock).await;
    r.ended_ms = Some(load_start.elapsed().as_millis() as u64);
    let outcome = match started {
        Ok(Some(handle)) => env
            .journal
            .created(&id, entry.kind, handle)
            .await
            .map_err(|e| format!("`{db}` started again, but the journal could not record its server: {e}")),
        Ok(None) => Ok(()),
        Err(e) => Err(format!("`{db}` did not start again: {e}")),
    };
    match &outcome {
        // The fault ran; what it left is the run's failure to judge (its teardown
        // removes the cluster either way).
        Err(e) => r.skipped = Some(e.clone()),
        Ok(()) => journal_reverted(env, name).await,
    }
    let detail = match (&outcome, stopped) {
        (Err(e), _) => e.clone(),
        (Ok(()), true) => "started again early: a signal".into(),
        (Ok(()), false) => "started again".into(),
    };
    said.finished(outcome.is_ok(), detail);
    stopped
}

/// A fault's report before (or instead of) running: `why` it did not.
fn skipped(name: &str, f: &ChaosFault, why: &str) -> FaultReport {
    let target = match (&f.service, &f.database, f.path_ends()) {
        (Some(s), _, _) => match f.instance {
            Some(i) => format!("service {s}.{i}"),
            None => format!("service {s}"),
        },
        (_, Some(d), _) => format!("database {d}"),
        (_, _, Some((a, b))) => format!("path {a} -> {b}"),
        _ => "nothing".into(),
    };
    let fmt = crate::description::format_duration;
    let detail = match f.kind {
        FaultKind::Latency => match f.jitter.filter(|j| !j.is_zero()) {
            Some(j) => format!("{} ± {} each way", fmt(f.delay.unwrap_or_default()), fmt(j)),
            None => format!("{} each way", fmt(f.delay.unwrap_or_default())),
        },
        FaultKind::Bandwidth => format!("{} bytes a second each way", f.bytes_per_second.unwrap_or(0)),
        FaultKind::Reset => "every connection reset".into(),
        FaultKind::Blackhole => "nothing moves".into(),
        FaultKind::Restart => format!("`{}` stop", f.mode.unwrap_or_default().as_str()),
        FaultKind::Kill => "its process group killed (SIGKILL)".into(),
        FaultKind::Stop => "stopped, then started again".into(),
        FaultKind::Reboot if f.failover == Some(true) => "rebooted, failing over to its standby".into(),
        FaultKind::Reboot => "rebooted".into(),
        FaultKind::Terminate => "terminated".into(),
        FaultKind::Failover => "its Aurora cluster failed over".into(),
    };
    let detail = match f.duration {
        Some(d) => format!("{detail}, for {}", fmt(d)),
        None => detail,
    };
    FaultReport {
        name: name.to_string(),
        kind: f.kind.as_str().to_string(),
        target,
        detail,
        skipped: Some(why.to_string()),
        ..FaultReport::default()
    }
}
