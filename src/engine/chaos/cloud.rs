//! The faults on a cloud's resources (aws): a service's instances `stop`ped for
//! `duration` and started again, `reboot`ed or `terminate`d; a database `reboot`ed; an
//! Aurora copy's cluster `failover`ed. The provider does each call through its guard,
//! on the run's own resources only, and waits until the resource has settled (stopped,
//! running, terminated, available again).
//!
//! Reverted on every way out: a stopped instance is started again when its `duration`
//! ends; interrupted meanwhile, the run's teardown terminates it (a stopped instance is
//! terminated as any other), so nothing waits minutes to start what is about to go. A
//! terminated instance is journaled gone. A run killed during a fault leaves the fault
//! journaled with its resource, and `rehearse down` removes both.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{Env, FaultReport};
use crate::description::{ChaosFault, FaultKind};
use crate::engine::journal::{self, Entry, State};
use crate::engine::provider::{Injected, Provider};

/// How long an interrupted wait may run on before the run's teardown takes over: a
/// day is longer than any fault's own bound.
const UNTIL_A_SIGNAL: Duration = Duration::from_secs(24 * 3600);

/// Runs the cloud fault `f`: whether a signal cut it short.
pub(super) async fn cloud<P: Provider>(
    env: &Env<'_, P>,
    name: &str,
    f: &ChaosFault,
    r: &mut FaultReport,
    load_start: Instant,
) -> bool {
    let targets = match targets(env, f) {
        Ok(t) => t,
        Err(e) => {
            r.skipped = Some(e);
            return false;
        }
    };
    let Some(said) = super::begin(env, name, f, r).await else { return false };
    let finish = |ok: bool, detail: String| said.finished(ok, detail);
    let began = said.began;
    let what = match f.kind {
        FaultKind::Stop => Injected::StopInstance,
        FaultKind::Terminate => Injected::TerminateInstance,
        FaultKind::Reboot if f.database.is_some() => Injected::RebootDatabase { failover: f.failover == Some(true) },
        FaultKind::Reboot => Injected::RebootInstance,
        _ => Injected::FailoverCluster,
    };
    r.started_ms = Some(began.duration_since(load_start).as_millis() as u64);
    let (hit, done, stopped) = each(env, &targets, what).await;
    let failed = done.err();
    if let Some(e) = &failed {
        r.skipped = Some(e.clone());
    }
    if what == Injected::TerminateInstance {
        // What was terminated is gone: nothing of it is left for teardown. (Only that:
        // an instance whose call failed or was cut short by a signal stays journaled.)
        for id in &hit {
            if let Err(e) = env.journal.deleted(id).await {
                tracing::warn!("`{id}` was terminated, but the journal could not say so: {e}");
            }
        }
    }
    if what != Injected::StopInstance || failed.is_some() || stopped {
        super::journal_reverted(env, name).await;
        r.ended_ms = Some(load_start.elapsed().as_millis() as u64);
        let detail = match (&failed, stopped) {
            (Some(e), _) => e.clone(),
            (None, true) => "interrupted: the run's teardown removes what it hit".into(),
            (None, false) => format!("{} (settled)", what_done(what)),
        };
        finish(failed.is_none(), detail);
        return stopped;
    }
    // Stopped: down for its duration, then started again.
    let interrupted = env.signals.sleep(f.duration.unwrap_or_default()).await;
    if interrupted {
        super::journal_reverted(env, name).await;
        r.ended_ms = Some(load_start.elapsed().as_millis() as u64);
        finish(true, "stopped; not started again: a signal (the run's teardown terminates it)".into());
        return true;
    }
    let (_, started, stopped) = each(env, &targets, Injected::StartInstance).await;
    super::journal_reverted(env, name).await;
    r.ended_ms = Some(load_start.elapsed().as_millis() as u64);
    match started {
        Ok(()) => finish(true, "stopped, then started again".into()),
        Err(e) => {
            r.skipped = Some(e.clone());
            finish(false, e);
        }
    }
    stopped
}

/// The journaled resources fault `f` hits.
fn targets<P: Provider>(env: &Env<'_, P>, f: &ChaosFault) -> Result<Vec<Entry>, String> {
    let ids: Vec<String> = match (&f.service, &f.database) {
        (Some(s), _) => {
            let count = env.loaded.desc.services.get(s).map(|s| s.count).unwrap_or(0);
            match f.instance {
                Some(i) => vec![format!("service.{s}.{i}")],
                None => (0..count).map(|i| format!("service.{s}.{i}")).collect(),
            }
        }
        (_, Some(d)) if f.kind == FaultKind::Failover => vec![format!("database.{d}.cluster")],
        (_, Some(d)) => vec![format!("database.{d}")],
        _ => return Err(format!("a `{}` fault needs a service or a database", f.kind.as_str())),
    };
    let records = journal::read(env.journal.path()).map_err(|e| format!("cannot read the run's journal: {e}"))?;
    let state = State::from_records(&records);
    let remaining = state.remaining();
    ids.iter()
        .map(|id| {
            remaining
                .iter()
                .find(|e| &e.id == id)
                .map(|e| (*e).clone())
                .ok_or_else(|| format!("the run's journal has no `{id}` to {}", f.kind.as_str()))
        })
        .collect()
}

/// `what` on each of `targets`, one after another, each until it settled; stops
/// waiting at a signal. The ids it settled on, the first failure, and whether a signal
/// came.
async fn each<P: Provider>(
    env: &Env<'_, P>,
    targets: &[Entry],
    what: Injected,
) -> (Vec<String>, Result<(), String>, bool) {
    let (mut hit, mut first) = (Vec::new(), Ok(()));
    for t in targets {
        let injected = env.provider.inject(t, what, env.info, env.clock);
        match until_a_signal(env, injected).await {
            None => return (hit, first, true),
            Some(Ok(_)) => hit.push(t.id.clone()),
            Some(Err(e)) => {
                if first.is_ok() {
                    first = Err(format!("`{}`: {e}", t.id));
                }
            }
        }
    }
    (hit, first, false)
}

/// `fut`'s outcome, or `None` when a signal came first.
async fn until_a_signal<P: Provider, T>(env: &Env<'_, P>, fut: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        v = fut => Some(v),
        _ = env.signals.sleep(UNTIL_A_SIGNAL) => None,
    }
}

fn what_done(what: Injected) -> &'static str {
    match what {
        Injected::TerminateInstance => "terminated",
        Injected::RebootInstance => "rebooted",
        Injected::RebootDatabase { failover: true } => "rebooted with a failover",
        Injected::RebootDatabase { failover: false } => "rebooted",
        Injected::FailoverCluster => "failed over",
        _ => "done",
    }
}
