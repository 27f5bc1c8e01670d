//! The lifecycle commands: run, up, down, list, sweep, report, warm.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use futures_util::FutureExt;

use super::{load_or_report, use_color};
use crate::cli::{Destroy, Format, Global, RunArgs};
use crate::description::{DestroyPolicy, ProviderKind};
use crate::engine::events::{Lines, Progress, Reporter, Silent};
use crate::engine::journal::{self, Journal, Record, State};
use crate::engine::lifecycle::{self, Options};
use crate::engine::signals::Signals;
use crate::engine::{secure_fs, state, teardown};
use crate::exit;
use crate::providers::aws::api::tag_value;
use crate::providers::aws::sdk::Sdk;
use crate::providers::aws::{AwsProvider, Tagged, TAG_RESOURCE, TAG_RUN};
use crate::providers::local::LocalProvider;
use crate::providers::Provider;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}

fn reporter(g: &Global) -> Box<dyn Reporter> {
    if g.quiet || g.format == Format::Json {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() && use_color(g.color, true) {
        Box::new(Progress::new())
    } else {
        Box::new(Lines { start: Instant::now() })
    }
}

pub fn run(g: &Global, args: &RunArgs, up_only: bool) -> i32 {
    let loaded = match load_or_report(&args.file, args.release.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(release) = loaded.release_version(args.release.as_deref()) else {
        eprintln!(
            "error: no release version: pass `--release VERSION` or set `release.version` in {}",
            args.file.display()
        );
        return exit::USAGE;
    };
    let destroy = if args.keep {
        DestroyPolicy::Never
    } else {
        match args.destroy {
            Some(Destroy::Always) => DestroyPolicy::Always,
            Some(Destroy::Passing) => DestroyPolicy::Passing,
            Some(Destroy::Never) => DestroyPolicy::Never,
            None if up_only => DestroyPolicy::Never,
            None => loaded.desc.destroy,
        }
    };
    let opts = Options {
        run_id: state::new_run_id(),
        release,
        destroy,
        cold: args.cold,
        up_only,
        state_root: state::state_dir(g.state_dir.as_deref()),
        work_root: state::work_dir(),
        run_as: args.run_as.clone(),
    };
    let rt = runtime();
    let reporter = reporter(g);
    rt.block_on(async {
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return exit::BUILD_FAILED;
            }
        };
        match loaded.desc.provider() {
            ProviderKind::Local => {
                drive(g, &LocalProvider::new(&opts.work_root), &loaded, &opts, reporter.as_ref(), &signals).await
            }
            ProviderKind::Aws => {
                let region = loaded.desc.region().unwrap_or_default().to_string();
                let provider = aws_provider(&region).await;
                drive(g, &provider, &loaded, &opts, reporter.as_ref(), &signals).await
            }
        }
    })
}

/// The AWS provider over the SDK, with the standard polling schedule
/// (`POLL_FIRST`, `POLL_MAX`).
pub async fn aws_provider(region: &str) -> AwsProvider<Sdk> {
    AwsProvider::new(Sdk::new(region).await, crate::providers::aws::POLL_FIRST, crate::providers::aws::POLL_MAX)
}

/// Runs the lifecycle with a provider and turns the outcome into output and an exit
/// code; a crash inside is caught and torn down from the journal.
async fn drive<P: Provider>(
    g: &Global,
    provider: &P,
    loaded: &crate::description::Loaded,
    opts: &Options,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> i32 {
    let result =
        std::panic::AssertUnwindSafe(lifecycle::run(provider, loaded, opts, reporter, signals)).catch_unwind().await;
    match result {
        Ok(Ok(outcome)) => {
            match g.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&outcome.report).unwrap_or_default()),
                Format::Text => {
                    let files = crate::report::ReportFiles::in_dir(&outcome.report_dir);
                    eprint!(
                        "{}",
                        crate::report::terminal_summary(
                            &outcome.report,
                            &files,
                            use_color(g.color, std::io::stderr().is_terminal())
                        )
                    );
                }
            }
            outcome.exit_code
        }
        Ok(Err(e)) => {
            eprintln!("error: {}", crate::secrets::redact(&e));
            // Whatever the journal says exists is removed.
            down_after_failure(opts, provider, reporter, signals).await.unwrap_or(exit::BUILD_FAILED)
        }
        Err(_) => {
            eprintln!("error: rehearse crashed (a bug: please report it); tearing down from the journal");
            down_after_failure(opts, provider, reporter, signals).await.unwrap_or(exit::BUILD_FAILED)
        }
    }
}

/// After an error outside the normal path: tear down whatever the run's journal lists.
async fn down_after_failure<P: Provider>(
    opts: &Options,
    provider: &P,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> Option<i32> {
    let path = state::run_dir(&opts.state_root, &opts.run_id).join("journal.jsonl");
    let j = Journal::open(&path).ok()?;
    let out =
        teardown::run(provider, &j, reporter, signals, signals.count() + 1, &crate::engine::timing::Clock::new()).await;
    let _ = j.append(&Record::TornDown { complete: out.complete(), at: Utc::now() });
    if out.complete() {
        Some(exit::BUILD_FAILED)
    } else {
        eprint!("{}", teardown::leftover_text(&opts.run_id, &out.left(&format!("rehearse down {}", opts.run_id))));
        Some(exit::LEFTOVERS)
    }
}

/// The state directory, checked: `Ok(None)` when it does not exist yet; an error
/// (printed) when another user could have written what is in it.
fn checked_state(g: &Global) -> Result<Option<PathBuf>, i32> {
    let root = state::state_dir(g.state_dir.as_deref());
    for dir in [root.clone(), state::runs_dir(&root)] {
        match secure_fs::check_private_dir(&dir) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => {
                eprintln!("error: {e}; rehearse reads journals only from a directory no one else can write");
                return Err(exit::USAGE);
            }
        }
    }
    Ok(Some(root))
}

pub fn down(g: &Global, run_id: &str, region: Option<&str>) -> i32 {
    if !state::valid_run_id(run_id) {
        eprintln!("error: `{run_id}` is not a run id (they look like r-20261125-164001-7f3a9c); see `rehearse list`");
        return exit::USAGE;
    }
    let state_root = match checked_state(g) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let path = state_root.map(|r| state::run_dir(&r, run_id).join("journal.jsonl"));
    let rt = runtime();
    let reporter = reporter(g);
    let work_root = state::work_dir();
    rt.block_on(async {
        let signals = Signals::install().unwrap_or_else(|_| Signals::none());
        if let Some(path) = path.filter(|p| p.is_file()) {
            match journal::read(&path).map(|records| State::from_records(&records)) {
                Ok(State { meta: Some(meta), finished, .. }) => {
                    if meta.run_id != run_id {
                        eprintln!("error: the journal {} belongs to run {}, not {run_id}", path.display(), meta.run_id);
                        return exit::USAGE;
                    }
                    if finished.is_none() && meta.pid != std::process::id() && pid_alive(meta.pid, meta.pid_start) {
                        eprintln!(
                            "error: run {run_id} is still in progress (pid {}); interrupt it (kill -INT {}) and it tears itself down",
                            meta.pid, meta.pid
                        );
                        return exit::USAGE;
                    }
                    let journal = match Journal::open(&path) {
                        Ok(j) => j,
                        Err(e) => {
                            eprintln!("error: cannot open the journal {}: {e}", path.display());
                            return exit::BUILD_FAILED;
                        }
                    };
                    return if meta.provider == "aws" {
                        let provider = aws_provider(meta.region.as_deref().or(region).unwrap_or_default()).await;
                        finish_down(&provider, &journal, run_id, reporter.as_ref(), &signals).await
                    } else {
                        finish_down(&LocalProvider::new(&work_root), &journal, run_id, reporter.as_ref(), &signals)
                            .await
                    };
                }
                Ok(_) => eprintln!(
                    "rehearse: the journal {} has no run record; looking for what is tagged with {run_id} instead",
                    path.display()
                ),
                Err(e) => eprintln!(
                    "rehearse: the journal {} cannot be read ({e}); looking for what is tagged with {run_id} instead",
                    path.display()
                ),
            }
        }
        // The journal is gone: rebuild what the run's tags find.
        if let Some(region) = region {
            let provider = aws_provider(region).await;
            let tagged = match provider.tagged().await {
                Ok(all) => all.into_iter().filter(|t| tag_value(&t.tags, TAG_RUN) == Some(run_id)).collect::<Vec<_>>(),
                Err(e) => {
                    eprintln!("error: cannot list rehearse's resources in {region}: {e}");
                    return exit::BUILD_FAILED;
                }
            };
            // A tag is not enough: only what rehearse demonstrably made is removed.
            let (found, doubtful) = by_evidence(tagged);
            for (t, why) in &doubtful {
                eprintln!("rehearse: not removing {} {} although it is tagged {TAG_RUN}={run_id}: {why}", t.kind, t.id);
            }
            if found.is_empty() {
                eprintln!("rehearse: no journal and nothing tagged {TAG_RUN}={run_id} in {region}: nothing to remove");
                return exit::PASSED;
            }
            eprintln!("rehearse: no journal for {run_id}; removing the {} resource(s) tagged with it in {region}", found.len());
            let journal = match synthetic_journal(g, run_id, "aws", Some(region), None, &found) {
                Ok(j) => j,
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::BUILD_FAILED;
                }
            };
            return finish_down(&provider, &journal, run_id, reporter.as_ref(), &signals).await;
        }
        // Locally, the run's tag is its work directory and every process carrying its id.
        let work = std::path::absolute(&work_root).unwrap_or_else(|_| work_root.clone()).join("runs").join(run_id);
        let found = !crate::providers::local::tagged_processes(run_id).is_empty() || work.exists();
        if !found {
            eprintln!(
                "rehearse: no journal and nothing tagged with {run_id} on this machine: nothing to remove \
                 (an AWS run? pass --region)"
            );
            return exit::PASSED;
        }
        eprintln!("rehearse: no journal for {run_id}; removing what is tagged with it");
        match synthetic_journal(g, run_id, "local", None, Some(&work), &[]) {
            Ok(j) => finish_down(&LocalProvider::new(&work_root), &j, run_id, reporter.as_ref(), &signals).await,
            Err(e) => {
                eprintln!("error: {e}");
                exit::BUILD_FAILED
            }
        }
    })
}

async fn finish_down<P: Provider>(
    provider: &P,
    journal: &Journal,
    run_id: &str,
    reporter: &dyn Reporter,
    signals: &Signals,
) -> i32 {
    let out =
        teardown::run(provider, journal, reporter, signals, signals.count() + 1, &crate::engine::timing::Clock::new())
            .await;
    let _ = journal.append(&Record::TornDown { complete: out.complete(), at: Utc::now() });
    if out.complete() {
        println!("{run_id}: torn down, nothing left");
        exit::PASSED
    } else {
        eprint!(
            "{}",
            teardown::leftover_text(
                run_id,
                &out.left(&format!("rehearse down {run_id} (--region REGION for an AWS run)"))
            )
        );
        exit::LEFTOVERS
    }
}

/// What rehearse demonstrably made (see [`Tagged::evidence`]), and the rest with why
/// it is left alone: a tag alone is something anyone with tagging rights could set.
fn by_evidence(tagged: Vec<Tagged>) -> (Vec<Tagged>, Vec<(Tagged, String)>) {
    let (mut made, mut doubtful) = (Vec::new(), Vec::new());
    for t in tagged {
        match t.evidence() {
            Ok(()) => made.push(t),
            Err(why) => doubtful.push((t, why)),
        }
    }
    (made, doubtful)
}

/// A journal reconstructed for a run whose journal was lost: the local work directory,
/// or the AWS resources found by tag (listed in creation order, so teardown's reverse
/// order removes users before what they use).
fn synthetic_journal(
    g: &Global,
    run_id: &str,
    provider: &str,
    region: Option<&str>,
    work: Option<&Path>,
    found: &[crate::providers::aws::Tagged],
) -> Result<Journal, String> {
    let root = state::private_dir(&state::state_dir(g.state_dir.as_deref())).map_err(|e| e.to_string())?;
    let runs = state::private_dir(&state::runs_dir(&root)).map_err(|e| e.to_string())?;
    let dir = runs.join(run_id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = journal::RunMeta {
        run_id: run_id.to_string(),
        environment: "(unknown: journal lost)".into(),
        provider: provider.into(),
        description: String::new(),
        release: String::new(),
        owner: String::new(),
        started_at: Utc::now(),
        expires_at: Utc::now(),
        destroy: "always".into(),
        work_dir: work.map(|w| w.display().to_string()),
        region: region.map(str::to_string),
        pid: std::process::id(),
        pid_start: crate::engine::process::start_time(std::process::id() as i32).unwrap_or(0),
    };
    let path = dir.join("journal.jsonl");
    // An unreadable journal is kept beside, for a person to look at.
    if path.exists() {
        let _ =
            std::fs::rename(&path, dir.join(format!("journal.damaged-{}.jsonl", Utc::now().format("%Y%m%d-%H%M%S"))));
    }
    let j = Journal::create(&path, &meta).map_err(|e| e.to_string())?;
    if let Some(work) = work {
        j.created("workspace", "local.workspace", serde_json::json!({"dir": work})).map_err(|e| e.to_string())?;
    }
    for t in found.iter().rev() {
        let id = tag_value(&t.tags, TAG_RESOURCE).map(str::to_string).unwrap_or_else(|| format!("{}:{}", t.kind, t.id));
        let key = match t.kind {
            "aws.ec2.instance" => "instance_id",
            "aws.rds.db-instance" => "db_instance_id",
            "aws.rds.db-cluster" => "db_cluster_id",
            "aws.ec2.security-group" => "group_id",
            _ => "name",
        };
        j.created(&id, t.kind, serde_json::json!({ key: t.id })).map_err(|e| e.to_string())?;
    }
    Ok(j)
}

/// Whether the rehearse process that ran a journal is still running: its PID *and*
/// its start time (a journal from before start times were recorded falls back to the
/// PID alone).
fn pid_alive(pid: u32, start_time: u64) -> bool {
    use crate::engine::process::{is_alive, ProcHandle};
    let pid = pid as i32;
    if start_time == 0 {
        return nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
    }
    is_alive(&ProcHandle { pid, pgid: 0, start_time })
}

/// A run as `list` and `sweep` see it.
#[derive(serde::Serialize)]
struct RunRow {
    run_id: String,
    environment: String,
    release: String,
    provider: String,
    status: String,
    verdict: Option<String>,
    started_at: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
    remaining: usize,
}

/// The runs in the state directory (checked first: `Err` is the exit code).
fn scan_runs(g: &Global) -> Result<Vec<RunRow>, i32> {
    let mut rows = Vec::new();
    let Some(root) = checked_state(g)? else { return Ok(rows) };
    let Ok(rd) = std::fs::read_dir(state::runs_dir(&root)) else { return Ok(rows) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !state::valid_run_id(&name) {
            continue;
        }
        let path = e.path().join("journal.jsonl");
        let st = match journal::read(&path) {
            Ok(records) => State::from_records(&records),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!("{}: {e}", path.display());
                State::default()
            }
        };
        let Some(meta) = st.meta.clone().filter(|m| m.run_id == name) else {
            // Not knowing what a run holds is worth showing: `down` finds it by tag.
            rows.push(RunRow {
                run_id: name,
                environment: "?".into(),
                release: "?".into(),
                provider: "?".into(),
                status: "unreadable".into(),
                verdict: None,
                started_at: Utc::now(),
                expires_at: Utc::now(),
                remaining: 1,
            });
            continue;
        };
        let remaining = st.remaining().len();
        let status = match (&st.finished, st.torn_down) {
            (_, Some(true)) if remaining == 0 => "destroyed".to_string(),
            (Some((_, _, true)), _) => "kept".to_string(),
            (_, Some(_)) => "left resources".to_string(),
            (None, None) if pid_alive(meta.pid, meta.pid_start) => "running".to_string(),
            _ if remaining == 0 => "destroyed".to_string(),
            _ => "crashed".to_string(),
        };
        rows.push(RunRow {
            run_id: meta.run_id,
            environment: meta.environment,
            release: meta.release,
            provider: meta.provider,
            status,
            verdict: st.finished.map(|f| f.0),
            started_at: meta.started_at,
            expires_at: meta.expires_at,
            remaining,
        });
    }
    rows.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    Ok(rows)
}

pub fn list(g: &Global, all: bool) -> i32 {
    let rows = match scan_runs(g) {
        Ok(rows) => rows,
        Err(code) => return code,
    };
    let rows: Vec<RunRow> = rows.into_iter().filter(|r| all || r.status != "destroyed").collect();
    if g.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return exit::PASSED;
    }
    if rows.is_empty() {
        println!(
            "no {}runs{}",
            if all { "" } else { "kept or unfinished " },
            if all { "" } else { " (--all shows finished ones)" }
        );
        return exit::PASSED;
    }
    println!("{:<26} {:<12} {:<10} {:<15} {:<12} EXPIRES", "RUN", "ENVIRONMENT", "RELEASE", "STATUS", "VERDICT");
    for r in rows {
        let hint = match r.status.as_str() {
            "kept" | "crashed" | "left resources" | "unreadable" => format!("  → rehearse down {}", r.run_id),
            _ => String::new(),
        };
        println!(
            "{:<26} {:<12} {:<10} {:<15} {:<12} {}{hint}",
            r.run_id,
            r.environment,
            r.release,
            r.status,
            r.verdict.unwrap_or_else(|| "-".into()),
            r.expires_at.format("%Y-%m-%d %H:%M UTC"),
        );
    }
    exit::PASSED
}

pub fn sweep(g: &Global, yes: bool, older_than: Option<&str>, environment: Option<&str>, region: Option<&str>) -> i32 {
    let min_age = match older_than.map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)),
        Some(Err(e)) => {
            eprintln!(
                "error: --older-than `{}`: {e} (expected a duration such as 12h)",
                older_than.unwrap_or_default()
            );
            return exit::USAGE;
        }
    };
    if let Some(region) = region {
        return runtime().block_on(sweep_aws(region, yes, min_age, environment));
    }
    let now = Utc::now();
    let rows = match scan_runs(g) {
        Ok(rows) => rows,
        Err(code) => return code,
    };
    let candidates: Vec<RunRow> = rows
        .into_iter()
        .filter(|r| r.remaining > 0 && r.status != "running")
        .filter(|r| r.expires_at <= now || r.status == "crashed")
        .filter(|r| min_age.is_none_or(|age| now - r.started_at >= age))
        .filter(|r| environment.is_none_or(|e| r.environment == e))
        .collect();
    if candidates.is_empty() {
        println!("nothing to sweep: no expired rehearse environment on this machine");
        return exit::PASSED;
    }
    for r in &candidates {
        println!(
            "{} {} ({}, release {}, {}, expired {})",
            if yes { "removing" } else { "would remove" },
            r.run_id,
            r.environment,
            r.release,
            r.status,
            r.expires_at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    if !yes {
        println!("dry run: {} environment(s); run `rehearse sweep --yes` to remove them", candidates.len());
        return exit::PASSED;
    }
    let mut code = exit::PASSED;
    for r in &candidates {
        let c = down(g, &r.run_id, None);
        if c != exit::PASSED {
            code = c;
        }
    }
    code
}

pub fn report(g: &Global, run_id: &str) -> i32 {
    if !state::valid_run_id(run_id) {
        eprintln!("error: `{run_id}` is not a run id; see `rehearse list --all`");
        return exit::USAGE;
    }
    let Some(root) = (match checked_state(g) {
        Ok(r) => r,
        Err(code) => return code,
    }) else {
        eprintln!("error: no report for {run_id}: there are no runs yet (see `rehearse list --all`)");
        return exit::USAGE;
    };
    let dir = state::run_dir(&root, run_id).join("report");
    match crate::report::read_report(&dir) {
        Ok(r) => {
            match g.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default()),
                Format::Text => print!(
                    "{}",
                    crate::report::terminal_summary(
                        &r,
                        &crate::report::ReportFiles::in_dir(&dir),
                        use_color(g.color, std::io::stdout().is_terminal())
                    )
                ),
            }
            exit::PASSED
        }
        Err(e) => {
            eprintln!("error: no report for {run_id}: {e}");
            exit::USAGE
        }
    }
}

pub fn warm(g: &Global, file: &Path) -> i32 {
    let loaded = match load_or_report(file, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if loaded.desc.provider() != ProviderKind::Local {
        eprintln!("error: {}: golden copies are for the local provider", file.display());
        return exit::USAGE;
    }
    let rt = runtime();
    let reporter = reporter(g);
    rt.block_on(async {
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return exit::BUILD_FAILED;
            }
        };
        let refreshed =
            crate::providers::local::golden::refresh_all(&loaded, &state::work_dir(), reporter.as_ref(), &signals)
                .await;
        match refreshed {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                exit::PASSED
            }
            Err(e) if signals.count() > 0 => {
                eprintln!("rehearse: interrupted; the half-made golden copy was removed ({e})");
                exit::INTERRUPTED
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::BUILD_FAILED
            }
        }
    })
}

/// `sweep --region`: every resource tagged by rehearse in the region whose
/// `rehearse:expires-at` has passed (and matching the filters); listed, and with
/// `--yes` removed through the guard. Untagged resources are never considered, and an
/// unexpired one (a run in progress, a kept environment within its TTL) never matches.
async fn sweep_aws(region: &str, yes: bool, min_age: Option<chrono::Duration>, environment: Option<&str>) -> i32 {
    use crate::providers::aws::{Guard, TAG_CREATED, TAG_ENV, TAG_EXPIRES};
    let provider = aws_provider(region).await;
    let all = match provider.tagged().await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: cannot list rehearse's resources in {region}: {e}");
            return exit::BUILD_FAILED;
        }
    };
    let now = Utc::now();
    let time = |t: &[crate::providers::aws::api::Tag], k: &str| {
        tag_value(t, k).and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok()).map(|d| d.with_timezone(&Utc))
    };
    let matching: Vec<_> = all
        .into_iter()
        .filter(|t| time(&t.tags, TAG_EXPIRES).is_some_and(|e| e <= now))
        .filter(|t| min_age.is_none_or(|age| time(&t.tags, TAG_CREATED).is_some_and(|c| now - c >= age)))
        .filter(|t| environment.is_none_or(|e| tag_value(&t.tags, TAG_ENV) == Some(e)))
        .collect();
    // Tags anyone may set are not enough: only what carries rehearse's own names (and
    // no deletion protection) is swept; the rest is listed, never touched.
    let (expired, doubtful) = by_evidence(matching);
    for (t, why) in &doubtful {
        println!("not sweeping {} {}: it carries rehearse's tags, but {why}", t.kind, t.id);
    }
    if expired.is_empty() {
        println!("nothing to sweep: no expired rehearse resource in {region}");
        return exit::PASSED;
    }
    let mut code = exit::PASSED;
    for t in &expired {
        let run = tag_value(&t.tags, TAG_RUN).unwrap_or_default().to_string();
        let expires = tag_value(&t.tags, TAG_EXPIRES).unwrap_or_default();
        if !yes {
            println!("would remove {} {} (run {run}, expired {expires})", t.kind, t.id);
            continue;
        }
        match provider.destroy_id(t.kind, &t.id, &Guard { run_id: run.clone() }).await {
            Ok(()) => println!("removed {} {} (run {run}, expired {expires})", t.kind, t.id),
            Err(e) => {
                eprintln!("error: could not remove {} {}: {e}", t.kind, t.id);
                code = exit::LEFTOVERS;
            }
        }
    }
    if !yes {
        println!("dry run: {} resource(s); run `rehearse sweep --region {region} --yes` to remove them", expired.len());
    }
    code
}

/// Fills each AWS database restore in the plan with the backup it would use (the
/// newest available snapshot, or the latest restorable time), by read-only calls.
pub fn resolve_backups(loaded: &crate::description::Loaded, plan: &mut crate::plan::Plan) -> Result<(), String> {
    use crate::description::{DatabaseSource, RestoreMode};
    use crate::providers::aws::api::RdsApi;
    let region = loaded.desc.region().unwrap_or_default().to_string();
    runtime().block_on(async {
        let provider = aws_provider(&region).await;
        for r in plan.resources.iter_mut() {
            let Some(db) = loaded.desc.databases.get(&r.name) else { continue };
            let Some(source) = r.source.as_mut() else { continue };
            match (&db.source, db.restore) {
                (DatabaseSource::RdsInstance(id), RestoreMode::NewestSnapshot) => {
                    let s = provider.newest_snapshot(id).await.map_err(|e| e.message)?;
                    source.backup = Some(serde_json::json!({
                        "snapshot_id": s.id,
                        "arn": s.arn,
                        "created": s.created.map(|c| c.to_rfc3339()),
                        "type": s.kind,
                    }));
                }
                (DatabaseSource::RdsInstance(id), RestoreMode::LatestRestorableTime) => {
                    let found = provider
                        .api
                        .describe_db_instances(std::slice::from_ref(id))
                        .await
                        .map_err(|e| e.to_string())?;
                    let p = found
                        .into_iter()
                        .find(|p| &p.id == id)
                        .ok_or_else(|| format!("the production RDS instance {id} does not exist"))?;
                    source.backup = Some(
                        serde_json::json!({"latest_restorable_time": p.latest_restorable_time.map(|c| c.to_rfc3339())}),
                    );
                }
                _ => {}
            }
        }
        Ok(())
    })
}
