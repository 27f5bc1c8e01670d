//! `rehearse down`: tear a run down from its journal — or, when the journal is lost,
//! from what its tags find, removing only what rehearse demonstrably made.

use std::path::{Path, PathBuf};

use chrono::Utc;

use super::reporter;
use crate::cli::Global;
use crate::engine::events::Reporter;
use crate::engine::journal::{self, Journal, Record, State};
use crate::engine::provider::{Handle, Provider, WorkspaceHandle};
use crate::engine::teardown;
use crate::exit;
use crate::plan::Kind;
use crate::providers::aws::api::tag_value;
use crate::providers::aws::sdk::Sdk;
use crate::providers::aws::{by_evidence, AwsProvider, Guard, Tagged, TAG_RESOURCE, TAG_RUN, TEARDOWN_ORDER};
use crate::providers::local::LocalProvider;
use crate::report::model::Leftover;
use crate::sys::signals::Signals;
use crate::sys::state;

/// Why a journal could not be rebuilt for a run whose journal was lost.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyntheticError {
    #[error(transparent)]
    Directory(#[from] crate::sys::secure_fs::FsError),
    #[error("cannot write {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Records that teardown ran; a journal that cannot take the record is said, not
/// fatal: teardown's own output already says what is left.
pub(super) async fn close_journal(journal: &Journal, complete: bool) {
    if let Err(e) = journal.append(&Record::TornDown { complete, at: Utc::now() }).await {
        errln!("rehearse: warning: cannot record the teardown in {}: {e}", journal.path().display());
    }
}

pub(crate) fn down(g: &Global, run_id: &str, region: Option<&str>) -> i32 {
    down_run(g, run_id, region, None)
}

/// `down`; with `generation` (a rebuild or `stage destroy` tearing down that stage's
/// generation), also a stage's current generation — and only a run whose journal says
/// it is that generation.
pub(crate) fn down_run(
    g: &Global,
    run_id: &str,
    region: Option<&str>,
    generation: Option<&crate::engine::stage::StageRef>,
) -> i32 {
    if !state::valid_run_id(run_id) {
        errln!("error: `{run_id}` is not a run id (they look like r-20261125-164001-7f3a9c); see `rehearse list`");
        return exit::USAGE;
    }
    let state_root = match super::checked_state(g) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let path = state_root.map(|r| state::run_dir(&r, run_id).join("journal.jsonl"));
    let rt = super::runtime();
    let reporter = reporter(g);
    let work_root = state::work_dir();
    rt.block_on(async {
        // Without signal handlers, `down` still works: it only cannot be stopped early.
        let signals = Signals::install().unwrap_or_else(|_| Signals::none());
        if let Some(path) = path.filter(|p| p.is_file()) {
            match journal::read(&path).map(|records| State::from_records(&records)) {
                Ok(State { meta: Some(meta), finished, .. }) => {
                    if meta.run_id != run_id {
                        errln!("error: the journal {} belongs to run {}, not {run_id}", path.display(), meta.run_id);
                        return exit::USAGE;
                    }
                    // A local run's processes and files are the machine's that journaled it;
                    // what a journal from the store names here is nobody's to remove.
                    if meta.provider.as_str() != "aws" {
                        if let Err(why) = journal::journaled_here(path.parent().unwrap_or(Path::new(".")), run_id) {
                            errln!("{}", not_here_text(run_id, &meta, &why.to_string()));
                            return exit::USAGE;
                        }
                    }
                    if finished.is_none() && meta.pid != std::process::id() && run_alive(&meta, path.parent()) {
                        if let Some(lease) = other_host_lease(&meta, path.parent()) {
                            errln!(
                                "error: run {run_id} is still in progress on {} (its lease runs until {}); interrupt it there and it tears itself down",
                                lease.host,
                                lease.lease_until.format("%Y-%m-%d %H:%M:%SZ")
                            );
                            return exit::USAGE;
                        }
                        errln!(
                            "error: run {run_id} is still in progress (pid {}); interrupt it (kill -INT {}) and it tears itself down",
                            meta.pid, meta.pid
                        );
                        return exit::USAGE;
                    }
                    if let Some(want) = generation.filter(|want| meta.stage.as_ref() != Some(*want)) {
                        errln!(
                            "error: run {run_id} is not generation {} of stage `{}` (its journal says {}): left alone",
                            want.generation,
                            want.stage,
                            meta.stage.as_ref().map_or("it is no stage's".to_string(), |s| format!(
                                "generation {} of `{}`",
                                s.generation,
                                s.stage.escape_debug()
                            ))
                        );
                        return exit::USAGE;
                    }
                    let current = match (&meta.stage, generation) {
                        (Some(s), None) => super::stage::current_generation_of(g, run_id, s).await,
                        _ => None,
                    };
                    {
                        if let Some(stage) = current {
                            errln!(
                                "error: run {run_id} is the current generation of stage `{stage}`, which serves through \
                                 its stable names; it goes when a later generation replaces it, or with \
                                 `rehearse stage destroy {stage}`"
                            );
                            return exit::USAGE;
                        }
                    }
                    let journal = match super::store::open_journal(g, run_id, &path).await {
                        Ok(j) => j,
                        Err(e) => {
                            errln!("error: cannot open the journal {}: {e}", path.display());
                            return exit::BUILD_FAILED;
                        }
                    };
                    return if meta.provider.as_str() == "aws" {
                        let Some(region) = meta.region.as_deref().or(region) else {
                            errln!("error: the journal of {run_id} names no region: pass --region REGION");
                            return exit::USAGE;
                        };
                        let provider = super::aws_provider(region).await;
                        let provider = match description_at_hand(&meta) {
                            Some(loaded) => provider.with_runner_outputs_of(&loaded),
                            None => provider,
                        };
                        let by_tags = Some((&provider, region));
                        finish_down(g, &provider, &journal, run_id, reporter.as_ref(), &signals, by_tags).await
                    } else {
                        let local = LocalProvider::new(&work_root);
                        finish_down(g, &local, &journal, run_id, reporter.as_ref(), &signals, None).await
                    };
                }
                Ok(_) => errln!(
                    "rehearse: the journal {} has no run record; looking for what is tagged with {run_id} instead",
                    path.display()
                ),
                Err(e) => errln!(
                    "rehearse: the journal {} cannot be read ({e}); looking for what is tagged with {run_id} instead",
                    path.display()
                ),
            }
        }
        // The journal is gone: rebuild what the run's tags find.
        if let Some(region) = region {
            let provider = super::aws_provider(region).await;
            let tagged = match provider.tagged().await {
                Ok(all) => all.into_iter().filter(|t| tag_value(&t.tags, TAG_RUN) == Some(run_id)).collect::<Vec<_>>(),
                Err(e) => {
                    errln!("error: cannot list rehearse's resources in {region}: {e}");
                    return exit::BUILD_FAILED;
                }
            };
            // A tag is not enough: only what rehearse demonstrably made is removed.
            let (found, doubtful) = by_evidence(tagged);
            for (t, why) in &doubtful {
                errln!("rehearse: not removing {} {} although it is tagged {TAG_RUN}={run_id}: {why}", t.kind, t.id);
            }
            if found.is_empty() {
                errln!("rehearse: no journal and nothing tagged {TAG_RUN}={run_id} in {region}: nothing to remove");
                return exit::PASSED;
            }
            errln!("rehearse: no journal for {run_id}; removing the {} resource(s) tagged with it in {region}", found.len());
            let journal = match synthetic_journal(g, run_id, crate::description::ProviderKind::Aws, Some(region), None, &found).await {
                Ok(j) => j,
                Err(e) => {
                    errln!("error: {e}");
                    return exit::BUILD_FAILED;
                }
            };
            return finish_down(g, &provider, &journal, run_id, reporter.as_ref(), &signals, None).await;
        }
        // Locally, the run's tag is its work directory and every process carrying its id.
        let work = std::path::absolute(&work_root).unwrap_or_else(|_| work_root.clone()).join("runs").join(run_id);
        let found = !crate::providers::local::tagged_processes(run_id).is_empty() || work.exists();
        if !found {
            errln!(
                "rehearse: no journal and nothing tagged with {run_id} on this machine: nothing to remove \
                 (an AWS run? pass --region)"
            );
            return exit::PASSED;
        }
        errln!("rehearse: no journal for {run_id}; removing what is tagged with it");
        match synthetic_journal(g, run_id, crate::description::ProviderKind::Local, None, Some(&work), &[]).await {
            Ok(j) => {
                finish_down(g, &LocalProvider::new(&work_root), &j, run_id, reporter.as_ref(), &signals, None).await
            }
            Err(e) => {
                errln!("error: {e}");
                exit::BUILD_FAILED
            }
        }
    })
}

/// Tears the run down from `journal`; on AWS (`by_tags`: the provider and region),
/// then removes whatever still carries the run's tag, so that a journal that says
/// something is gone (a `deleted` anyone with the store's policy could append) never
/// makes "nothing left" true by saying it.
async fn finish_down<P: Provider>(
    g: &Global,
    provider: &P,
    journal: &Journal,
    run_id: &str,
    reporter: &dyn Reporter,
    signals: &Signals,
    by_tags: Option<(&AwsProvider<Sdk>, &str)>,
) -> i32 {
    let mut out =
        teardown::run(provider, journal, reporter, signals, signals.count() + 1, &crate::sys::timing::Clock::new())
            .await;
    if let Some(why) = out.not_here() {
        errln!("rehearse: {run_id}: not this host's run: left alone ({why})");
        return exit::USAGE;
    }
    if let (Some((aws, region)), false) = (by_tags, out.interrupted) {
        remove_still_tagged(aws, run_id, region, &mut out).await;
    }
    close_journal(journal, out.complete()).await;
    if out.complete() {
        // Nothing left to connect to: its connection details (and their secrets) go too.
        if let Some(dir) = journal.path().parent() {
            if let Err(e) = crate::engine::connection::Connection::remove(dir) {
                errln!("rehearse: warning: cannot remove the connection details in {}: {e}", dir.display());
            }
        }
        if let Ok(Some(store)) = super::store::shared(g).await {
            if let Err(e) = crate::engine::store::sync::remove_connection(store.as_ref(), run_id).await {
                errln!("rehearse: warning: cannot remove the connection details from {}: {e}", store.url());
            }
            // A runner killed outright leaves its lease behind: once it has run out,
            // it goes with the run (the version read is the version removed).
            let lease = crate::engine::store::run_lease(run_id);
            if let Ok(Some((info, etag))) = crate::engine::store::lock::holder(store.as_ref(), &lease).await {
                if info.lease_until <= Utc::now() {
                    let key = crate::engine::store::lock_key(&lease);
                    if let Err(e) = store.delete(&key, Some(etag)).await {
                        errln!("rehearse: warning: cannot remove the run's lapsed lease from {}: {e}", store.url());
                    }
                }
            }
        }
        outln!("{run_id}: torn down, nothing left");
        exit::PASSED
    } else {
        err!(
            "{}",
            teardown::leftover_text(
                run_id,
                &out.listed(&format!("rehearse down {run_id} (--region REGION for an AWS run)"))
            )
        );
        exit::LEFTOVERS
    }
}

/// After a teardown from the journal: what is still tagged with the run (and that
/// rehearse demonstrably made, as `down --region` and `sweep` want) is removed through
/// the guard, users before what they use; what cannot be listed or removed is left,
/// said. The journal is trusted for what it says exists, never for what it says is gone.
async fn remove_still_tagged(provider: &AwsProvider<Sdk>, run_id: &str, region: &str, out: &mut teardown::Outcome) {
    let by_tag = format!("rehearse down {run_id} --region {region}");
    let tagged = match provider.tagged().await {
        Ok(all) => all.into_iter().filter(|t| tag_value(&t.tags, TAG_RUN) == Some(run_id)).collect::<Vec<_>>(),
        Err(e) => {
            out.add_leftovers(vec![Leftover {
                id: "(unknown)".into(),
                kind: "journal".into(),
                provider_id: Some(format!("cannot list what is tagged {TAG_RUN}={run_id} in {region}: {e}")),
                command: by_tag,
            }]);
            return;
        }
    };
    let (found, doubtful) = by_evidence(tagged);
    for (t, why) in &doubtful {
        errln!("rehearse: not removing {} {} although it is tagged {TAG_RUN}={run_id}: {why}", t.kind, t.id);
    }
    if found.is_empty() {
        return;
    }
    errln!(
        "rehearse: {} resource(s) still tagged {TAG_RUN}={run_id} after the teardown from its journal (which says \
         they are gone, or does not name them): removing them",
        found.len()
    );
    let guard = Guard { run_id: run_id.to_string() };
    let mut left = Vec::new();
    for kind in TEARDOWN_ORDER {
        let wave: Vec<&Tagged> = found.iter().filter(|t| t.kind == kind).collect();
        let results =
            futures_util::future::join_all(wave.iter().map(|t| provider.destroy_id(t.kind, &t.id, &guard))).await;
        for (t, r) in wave.into_iter().zip(results) {
            match r {
                Ok(()) => errln!("rehearse: removed {} {} (tagged {TAG_RUN}={run_id})", t.kind, t.id),
                Err(e) => {
                    errln!("rehearse: cannot remove {} {}: {e}", t.kind, t.id);
                    left.push(Leftover {
                        id: tag_value(&t.tags, TAG_RESOURCE).unwrap_or(&t.id).to_string(),
                        kind: t.kind.to_string(),
                        provider_id: Some(t.id.clone()),
                        command: by_tag.clone(),
                    });
                }
            }
        }
    }
    out.add_leftovers(left);
}

/// The run's description, read again from this machine's disk, for what a journal
/// must not decide (the runner's outputs bucket): only if it is there, no one but its
/// owners could have written it (as for masking SQL), and it loads. The path is the
/// journal's word, but what it names is a file this machine already trusts or nothing.
fn description_at_hand(meta: &journal::RunMeta) -> Option<crate::description::Loaded> {
    let path = Path::new(&meta.description);
    if meta.description.is_empty() || !path.is_absolute() || !path.is_file() {
        return None;
    }
    if let Err(e) = crate::sys::secure_fs::check_input(path) {
        errln!("rehearse: not reading the run's description again: {e}");
        return None;
    }
    crate::description::load(path, Some(&meta.release)).ok()
}

/// A journal reconstructed for a run whose journal was lost: the local work directory,
/// or the AWS resources found by tag (listed in creation order, so teardown's reverse
/// order removes users before what they use).
async fn synthetic_journal(
    g: &Global,
    run_id: &str,
    provider: crate::description::ProviderKind,
    region: Option<&str>,
    work: Option<&Path>,
    found: &[Tagged],
) -> Result<Journal, SyntheticError> {
    let root = state::private_dir(&super::store::local_root(g))?;
    let runs = state::private_dir(&state::runs_dir(&root))?;
    let dir = runs.join(run_id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(SyntheticError::Io { path: dir, source }),
    }
    let meta = journal::RunMeta {
        run_id: run_id.to_string(),
        environment: "(unknown: journal lost)".into(),
        provider,
        description: String::new(),
        release: String::new(),
        owner: String::new(),
        started_at: Utc::now(),
        expires_at: Utc::now(),
        destroy: crate::description::DestroyPolicy::Always,
        work_dir: work.map(|w| w.display().to_string()),
        region: region.map(str::to_string),
        pid: std::process::id(),
        pid_start: crate::sys::process::start_time(std::process::id() as i32).unwrap_or(0),
        name: None,
        user: Some(crate::sys::process::user_name(nix::unistd::geteuid().as_raw())),
        max_ttl_secs: None,
        host: Some(crate::sys::process::host_name()),
        stage: None,
    };
    let path = dir.join("journal.jsonl");
    // An unreadable journal is kept beside, for a person to look at; if it cannot be
    // moved, the new journal cannot be created either, and that error is the one said.
    if path.exists() {
        let kept = dir.join(format!("journal.damaged-{}.jsonl", Utc::now().format("%Y%m%d-%H%M%S")));
        std::fs::rename(&path, &kept).map_err(|source| SyntheticError::Io { path: path.clone(), source })?;
    }
    let io = |source| SyntheticError::Io { path: path.clone(), source };
    let j = Journal::create(&path, &meta).map_err(io)?;
    // With a shared store, the rebuilt journal goes there too (after whatever it has).
    let j = match super::store::shared(g).await {
        Ok(Some(store)) => super::store::mirror(j, store, run_id).await.map_err(io)?,
        _ => j,
    };
    if let Some(work) = work {
        let handle = Handle::of(&WorkspaceHandle { dir: work.to_path_buf() }).map_err(|e| io(e.into()))?;
        j.created("workspace", Kind::Workspace, handle).await.map_err(io)?;
    }
    for t in found.iter().rev() {
        let id = tag_value(&t.tags, TAG_RESOURCE).map(str::to_string).unwrap_or_else(|| format!("{}:{}", t.kind, t.id));
        let handle = Handle::of(&crate::providers::aws::AwsHandle::found(t.kind, &t.id)).map_err(|e| io(e.into()))?;
        j.created(&id, t.kind, handle).await.map_err(io)?;
    }
    Ok(j)
}

/// What `down` and `sweep` say of a local run this machine did not journal.
pub(super) fn not_here_text(run_id: &str, meta: &journal::RunMeta, why: &str) -> String {
    let claim =
        meta.host.as_deref().map(|h| format!("; its journal says host `{}`", h.escape_debug())).unwrap_or_default();
    format!(
        "rehearse: {run_id}: not this host's run: left alone ({why}{claim}); a local run's processes and files are \
         removed only on the machine that ran it, with `rehearse down {run_id}` there"
    )
}

/// A run's lease as last fetched from the shared store, when the run is on another
/// machine (`runs/RUN_ID/lease.json`).
fn other_host_lease(meta: &journal::RunMeta, run_dir: Option<&Path>) -> Option<crate::engine::store::lock::LockInfo> {
    let host = meta.host.as_deref()?;
    if host == crate::sys::process::host_name() {
        return None;
    }
    let text = std::fs::read(run_dir?.join("lease.json")).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether the process running a journal's run still lives: on this machine, its PID
/// and start time; on another (a shared store), its lease has not run out.
pub(super) fn run_alive(meta: &journal::RunMeta, run_dir: Option<&Path>) -> bool {
    match meta.host.as_deref() {
        Some(h) if h != crate::sys::process::host_name() => {
            other_host_lease(meta, run_dir).is_some_and(|l| l.lease_until > Utc::now())
        }
        _ => pid_alive(meta.pid, meta.pid_start),
    }
}

/// Whether the rehearse process that ran a journal is still running: its PID *and*
/// its start time (a journal from before start times were recorded falls back to the
/// PID alone).
pub(super) fn pid_alive(pid: u32, start_time: u64) -> bool {
    use crate::sys::process::{is_alive, ProcHandle};
    let pid = pid as i32;
    if start_time == 0 {
        return nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    }
    is_alive(&ProcHandle { pid, pgid: 0, start_time })
}
