//! A service's `kill` on a game day: an instance's whole process group killed at once
//! (`SIGKILL`, as a crash), journaled gone; the load's balancing proxy goes around it.
//! With the service's `restart: on-failure`, rehearse starts it again a second later as
//! the run started it (journaled before it exists, healthy before anything is sent to
//! it), and the balancer sends to its new port; with `restart: no` it stays down until
//! the run ends.

use std::time::Duration;

use tokio::time::Instant;

use super::Env;
use crate::compare::chaos::FaultReport;
use crate::description::template::{self, Scope};
use crate::description::{ChaosFault, RestartPolicy};
use crate::engine::journal::{self, State};
use crate::engine::provider::{Ctx, Injected, Output, Provider};

/// How long an instance that ended waits before it is started again (as systemd's
/// `RestartSec`): a process that dies as it starts does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Kills `service`'s instance `f.instance` (every instance without one), then starts
/// it again where its restart policy says so. Whether a signal cut it short.
pub(super) async fn kill<P: Provider>(
    env: &Env<'_, P>,
    name: &str,
    service: &str,
    f: &ChaosFault,
    r: &mut FaultReport,
    load_start: Instant,
) -> bool {
    let Some(s) = env.loaded.desc.services.get(service) else {
        r.skipped = Some(format!("the description has no service `{service}`"));
        return false;
    };
    let instances: Vec<u32> = match f.instance {
        Some(i) => vec![i],
        None => (0..s.count).collect(),
    };
    let Some(said) = super::begin(env, name, f, r).await else { return false };
    let finish = |ok: bool, detail: String| said.finished(ok, detail);
    let began = said.began;
    let mut killed = Vec::new();
    let failed = kill_each(env, service, &instances, &mut killed).await.err();
    if killed.is_empty() {
        super::journal_reverted(env, name).await;
        let e = failed.unwrap_or_else(|| "nothing to kill".into());
        r.skipped = Some(e.clone());
        finish(false, e);
        return false;
    }
    // What it did kill is journaled gone; with a restart policy it is started again
    // even when another instance could not be killed (that failure is the fault's).
    r.skipped = failed.clone();
    r.started_ms = Some(began.duration_since(load_start).as_millis() as u64);
    if s.restart() == RestartPolicy::No {
        // Done: what it killed stays down, journaled gone.
        super::journal_reverted(env, name).await;
        r.ended_ms = r.started_ms;
        finish(failed.is_none(), "killed; it stays down (`restart: no`)".into());
        return false;
    }
    if env.signals.sleep(RESTART_DELAY).await {
        // The run ends: what was killed is journaled gone, nothing to start again.
        super::journal_reverted(env, name).await;
        r.ended_ms = Some(load_start.elapsed().as_millis() as u64);
        finish(true, "killed; not started again: a signal".into());
        return true;
    }
    let (mut urls, mut not_started) = (Vec::new(), Vec::new());
    for i in &killed {
        // Each one tried, whatever became of the one before.
        match start_again(env, service, *i).await {
            Ok(url) => urls.push(url),
            Err(e) => not_started.push(e),
        }
    }
    super::journal_reverted(env, name).await;
    r.ended_ms = Some(load_start.elapsed().as_millis() as u64);
    // The fault ran; what it left is the run's failure to judge.
    let problems: Vec<String> = failed.into_iter().chain(not_started).collect();
    if problems.is_empty() {
        finish(true, format!("killed; started again (`restart: on-failure`) at {}", urls.join(", ")));
    } else {
        r.skipped = Some(problems.join("; "));
        finish(false, problems.join("; "));
    }
    false
}

/// Each of `instances` killed and journaled gone (each one in `killed` once it is).
async fn kill_each<P: Provider>(
    env: &Env<'_, P>,
    service: &str,
    instances: &[u32],
    killed: &mut Vec<u32>,
) -> Result<(), String> {
    let records = journal::read(env.journal.path()).map_err(|e| format!("cannot read the run's journal: {e}"))?;
    let state = State::from_records(&records);
    for i in instances {
        let id = format!("service.{service}.{i}");
        let Some(entry) = state.remaining().into_iter().find(|e| e.id == id).cloned() else {
            return Err(format!("the run's journal has no `{id}` to kill"));
        };
        env.provider
            .inject(&entry, Injected::KillProcess, env.info, env.clock)
            .await
            .map_err(|e| format!("cannot kill `{id}`: {e}"))?;
        killed.push(*i);
        // Gone: nothing of it is left for teardown to stop.
        env.journal
            .deleted(&id)
            .await
            .map_err(|e| format!("`{id}` was killed, but the journal could not say so: {e}"))?;
    }
    Ok(())
}

/// Instance `index` of `service` started again as the run started it (reaching its
/// databases through the same proxies): the run's outputs and the load's balancer
/// follow it to its new port. Its URL.
async fn start_again<P: Provider>(env: &Env<'_, P>, service: &str, index: u32) -> Result<String, String> {
    let id = format!("service.{service}.{index}");
    let res = env.plan.resources.iter().find(|r| r.id == id).ok_or_else(|| format!("the plan has no `{id}`"))?;
    let proxied = env.paths.outputs_for(service, &env.outputs()).await?;
    let tctx = template::context(&env.loaded.desc, Some(&env.plan.release.artifact), &proxied, Scope::Full);
    // Nothing cancels the start but its own health check's time.
    let (_uncancelled, cancel) = tokio::sync::watch::channel(false);
    let (l, j, c, rep, st) = (env.loaded, env.journal, env.clock, env.reporter, env.steps);
    let ctx = Ctx::new(env.info, l, env.plan, j, c, rep, st, tctx, cancel);
    let key = env.provider.idempotency_key(res, &env.info.run_id);
    env.journal
        .intent(&res.id, res.kind, key.as_deref())
        .await
        .map_err(|e| format!("cannot write the journal: {e}"))?;
    let o = match env.provider.create(res, &ctx).await {
        Ok(Output::Service { outputs, .. }) => outputs,
        Ok(_) => return Err(format!("`{id}` started again, but as no service")),
        Err(e) => return Err(format!("`{id}` did not start again: {e}")),
    };
    let urls = {
        let mut all = env.outputs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = all.services.get_mut(service) else { return Ok(o.url) };
        let i = index as usize;
        if let (Some(u), Some(a)) = (s.urls.get_mut(i), s.addresses.get_mut(i)) {
            (*u, *a) = (o.url.clone(), o.address.clone());
        }
        if i == 0 {
            (s.url, s.address, s.port) = (o.url.clone(), o.address.clone(), o.port.clone());
        }
        s.urls.clone()
    };
    env.paths.retarget(service, &urls).await;
    Ok(o.url)
}
