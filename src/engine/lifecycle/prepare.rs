//! The run's first phase: everything before the first resource — the plan, the users,
//! the suites' files, the state and work directories, the journal, the workspace.

use super::*;
use crate::engine::provider::{Handle, WorkspaceHandle};

/// A run whose journal and workspace exist: what the later phases need of it.
pub(super) struct Prepared {
    pub(super) plan: plan::Plan,
    pub(super) started_at: chrono::DateTime<Utc>,
    pub(super) expires_at: chrono::DateTime<Utc>,
    pub(super) state_dir: PathBuf,
    pub(super) logs_dir: PathBuf,
    pub(super) report_dir: PathBuf,
    pub(super) journal: Journal,
    pub(super) info: RunInfo,
    /// A rehearsed deploy's suites: they run once the deploy is done, not in the graph.
    pub(super) held_suites: plan::Plan,
}

/// Everything before the first resource: the plan, the users, the suites' files, the
/// state and work directories, the journal (mirrored to a shared store), the workspace
/// and the suites' copy of their files.
pub(super) async fn prepare<P: Provider>(
    provider: &P,
    loaded: &Loaded,
    opts: &Options,
    reporter: &dyn Reporter,
    started_at: chrono::DateTime<Utc>,
) -> Result<Prepared, RunError> {
    let d = &loaded.desc;
    let run_id = opts.run_id.clone();
    // A rehearsed deploy builds the old release first; its suites wait for the deploy.
    let first = opts.from.as_deref().unwrap_or(&opts.release);
    let mut plan = plan::build(loaded, Some(first), Some(&run_id))?;
    let mut held_suites = plan.clone();
    held_suites.resources.clear();
    if opts.up_only {
        plan.resources.retain(|r| !r.kind.is_suite());
    } else if opts.from.is_some() || opts.chaos.is_some() {
        let (suites, rest): (Vec<_>, Vec<_>) = plan.resources.drain(..).partition(|r| r.kind.is_suite());
        plan.resources = rest;
        held_suites.resources = suites
            .into_iter()
            .map(|mut r| {
                r.depends_on.clear();
                r
            })
            .collect();
    }
    let mut ttl = d.ttl;
    if let Some(m) = &opts.member {
        // The database and its masking (when it has one), and what they need.
        plan.keep_only_database(&m.database);
        plan.tags.insert(super::super::pool::TAG_POOL.into(), format!("{}/{}", d.name, m.database));
        plan.tags.insert(super::super::pool::TAG_MEMBER.into(), run_id.clone());
        ttl = m.keep_for;
    }
    let ttl = chrono::Duration::from_std(ttl).map_err(|_| RunError::Ttl(format_duration(ttl)))?;
    // Whole seconds, as the AWS tags carry it: journal and tags say the same instant.
    let expires_at = chrono::SubsecRound::trunc_subsecs(started_at + ttl, 0);
    // Who the copy and the release run as (rehearse as root): decided before anything
    // exists, and refused when the users are missing.
    let users = Users::resolve(opts.run_as.as_deref(), d.provider() == ProviderKind::Local).map_err(RunError::Users)?;
    // The suites' files, listed and checked before anything exists; copied for the
    // suites' user once the run's work directory is there (on a runner elsewhere, the
    // provider packs its own).
    let suites_here = !opts.up_only && !d.suites.is_empty() && !provider.runs_suites_elsewhere(loaded);
    let bundle = match suites_here {
        true => Some(crate::sys::bundle::list(
            &loaded.dir,
            d.bundle.as_deref().unwrap_or(&[PathBuf::new()]),
            &[opts.state_root.clone(), opts.work_root.clone()],
        )?),
        false => None,
    };

    // Directories and the journal exist before the first create: the state directory
    // private to this user, the work directory traversable (never listable) by the
    // users the copy and the release run as; each checked, so that no other user can
    // have placed or redirected them.
    let work_root = state::traversable_dir(&opts.work_root)?;
    let work_runs = state::traversable_dir(&work_root.join("runs"))?;
    let state_root = state::private_dir(&opts.state_root)?;
    let runs_root = state::private_dir(&state::runs_dir(&state_root))?;
    let run_state = runs_root.join(&run_id);
    let create =
        |path: &PathBuf| std::fs::create_dir(path).map_err(|source| RunError::Create { path: path.clone(), source });
    create(&run_state)?;
    let logs_dir = run_state.join("logs");
    let report_dir = run_state.join("report");
    create(&logs_dir)?;
    let work_dir = work_runs.join(&run_id);
    let meta = run_meta(loaded, opts, started_at, expires_at, &work_dir);
    let journal = open_journal(opts, &run_state, &meta).await?;
    reporter.event(Event::RunStarted {
        run_id: run_id.clone(),
        description: d.name.to_string(),
        release: opts.release.to_string(),
        provider: d.provider().as_str().to_string(),
    });
    for w in &plan.warnings {
        reporter.event(Event::PlanWarning(w.to_string()));
    }

    // The run's own corner of the work directory: the local copy, the release, the
    // suites' scratch directories, the HOME of the release's user.
    journal.intent("workspace", Kind::Workspace, None).await.map_err(RunError::Journal)?;
    let home = work_dir.join("home");
    workspace(&work_runs, &run_id, users)?;
    let workspace = Handle::of(&WorkspaceHandle { dir: work_dir.clone() }).map_err(|e| RunError::Journal(e.into()))?;
    journal.created("workspace", Kind::Workspace, workspace).await.map_err(RunError::Journal)?;
    let suites_dir = match &bundle {
        Some(listing) => copy_bundle(loaded, listing, &work_dir, users, reporter)?,
        None => loaded.dir.clone(),
    };

    let info = RunInfo {
        run_id: run_id.clone(),
        state_dir: run_state.clone(),
        logs_dir: logs_dir.clone(),
        work_dir: work_dir.clone(),
        golden_root: work_root.join("golden"),
        release_version: first.to_string(),
        expires_at,
        users,
        home,
        cold: opts.cold,
        password: opts.stage.as_ref().map(|s| s.password.clone()),
        stage: meta.stage.clone(),
        pins: opts.pins.clone(),
        suites_dir,
        // A deploy's copy, and its baseline twin in a compared deploy.
        wal_as_production: opts.from.is_some() || opts.deploy_twin,
    };
    Ok(Prepared {
        plan,
        started_at,
        expires_at,
        state_dir: run_state,
        logs_dir,
        report_dir,
        journal,
        info,
        held_suites,
    })
}

/// What the journal's first record says of the run.
fn run_meta(
    loaded: &Loaded,
    opts: &Options,
    started_at: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
    work_dir: &std::path::Path,
) -> RunMeta {
    let d = &loaded.desc;
    RunMeta {
        run_id: opts.run_id.clone(),
        environment: d.name.clone(),
        provider: d.provider(),
        // Absolute: `down` on this machine may read it again, from anywhere, for what
        // a journal must not decide (the runner's outputs bucket).
        description: std::path::absolute(&loaded.path).unwrap_or_else(|_| loaded.path.clone()).display().to_string(),
        release: opts.release.clone(),
        owner: d.owner.clone(),
        started_at,
        expires_at,
        destroy: opts.destroy,
        work_dir: Some(work_dir.display().to_string()),
        region: d.region().map(str::to_string),
        pid: std::process::id(),
        pid_start: process::start_time(std::process::id() as i32).unwrap_or(0),
        name: opts.name.clone(),
        user: Some(process::user_name(nix::unistd::geteuid().as_raw())),
        max_ttl_secs: Some(d.max_ttl.as_secs()),
        host: Some(process::host_name()),
        stage: opts
            .stage
            .as_ref()
            .map(|s| crate::engine::stage::StageRef { stage: s.stage.clone(), generation: s.generation }),
    }
}

/// Creates the run's journal; with a shared state store, the journal is there too
/// before anything is created.
async fn open_journal(opts: &Options, run_state: &std::path::Path, meta: &RunMeta) -> Result<Journal, RunError> {
    let journal = Journal::create(&run_state.join("journal.jsonl"), meta).map_err(RunError::Journal)?;
    match &opts.shared {
        Some(store) => journal
            .mirror_to(crate::engine::store::records::RemoteJournal::new(store.clone(), &opts.run_id))
            .await
            .map_err(RunError::Journal),
        None => Ok(journal),
    }
}

/// The suites run from the description's directory inside a copy of their own, owned
/// by their user: they never need the operator's tree. Returns where the description's
/// directory is in the copy.
fn copy_bundle(
    loaded: &Loaded,
    listing: &crate::sys::bundle::Listing,
    work_dir: &std::path::Path,
    users: Users,
    reporter: &dyn Reporter,
) -> Result<PathBuf, RunError> {
    let t = Instant::now();
    let owner = users.release.map(|u| (u.uid, u.gid));
    let copy = crate::sys::bundle::copy(listing, work_dir, "bundle", owner)?;
    let (files, bytes) = (listing.items.len(), listing.bytes);
    let paths = match &loaded.desc.bundle {
        Some(paths) => paths.iter().map(|p| p.display().to_string()).collect(),
        None => vec![".".into()],
    };
    reporter.event(Event::BundleCopied { paths, entries: files, bytes, elapsed: t.elapsed() });
    Ok(crate::sys::bundle::inside(listing, &loaded.dir, &copy)?)
}

/// Creates the run's work directory (`WORK/runs/RUN_ID`, traversable) with the release
/// user's HOME and the parent of the suites' scratch directories inside.
fn workspace(runs: &std::path::Path, run_id: &str, users: Users) -> Result<(), FsError> {
    let dir = Dir::open(runs)?.create_dir(std::ffi::OsStr::new(run_id), state::TRAVERSABLE)?;
    let home = dir.create_dir(std::ffi::OsStr::new("home"), 0o700)?;
    if let Some(u) = users.release {
        home.chown(u.uid, u.gid)?;
    }
    dir.create_dir(std::ffi::OsStr::new("suites"), state::TRAVERSABLE)?;
    Ok(())
}
