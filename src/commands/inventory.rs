//! What runs there are: `list`, `report` and `extend`, and the run a name means
//! (from [`crate::engine::inventory`]). `sweep` is `down`'s (commands/down.rs).

use chrono::Utc;

use super::checked_state;
use super::runtime;
use crate::cli::{Format, Global};
use crate::engine::inventory::{RunRow, RunStatus};
use crate::engine::journal;
use crate::exit;
use crate::sys::state;

/// The run a person means by `arg`: a run id as it is, or the name of a live run of
/// this state directory (`up --name`). `Err`: the exit code, said.
///
/// A name is a claim in a journal, and with a shared store anyone with the store's
/// policy can write a journal claiming any name: so a name that more than one live run
/// claims is refused, naming them all, rather than resolved to whichever sorts first.
/// (`up --name` holds the lock `NAME` only while it claims the name; nothing in the
/// store could prove a claim afterwards that a forger could not write as well.)
pub(super) fn resolve_run(g: &Global, arg: &str) -> Result<String, i32> {
    if state::valid_run_id(arg) {
        return Ok(arg.to_string());
    }
    let rows = scan_runs(g)?;
    match crate::engine::inventory::live_named(&rows, arg).as_slice() {
        [r] => Ok(r.run_id.clone()),
        [] => {
            errln!(
                "error: `{arg}` is neither a run id (r-20261125-164001-7f3a9c) nor the name of a live run; see `rehearse list`"
            );
            Err(exit::USAGE)
        }
        several => {
            errln!(
                "error: the name `{arg}` is claimed by {} live runs; name the one you mean by its id:",
                several.len()
            );
            for r in several {
                errln!(
                    "  {}  {} ({}), started {} by {}",
                    r.run_id,
                    r.environment,
                    r.status,
                    r.started_at.format("%Y-%m-%d %H:%M:%SZ"),
                    r.user.as_deref().unwrap_or("?")
                );
            }
            Err(exit::USAGE)
        }
    }
}

/// The runs in the state directory (checked first: `Err` is the exit code).
fn scan_runs(g: &Global) -> Result<Vec<RunRow>, i32> {
    Ok(checked_state(g)?.map(|root| crate::engine::inventory::scan(&root)).unwrap_or_default())
}

pub(crate) fn list(g: &Global, all: bool, mine: bool) -> i32 {
    let rows = match scan_runs(g) {
        Ok(rows) => rows,
        Err(code) => return code,
    };
    let me = crate::sys::process::user_name(nix::unistd::geteuid().as_raw());
    let rows: Vec<RunRow> = rows
        .into_iter()
        .filter(|r| all || r.live())
        .filter(|r| !mine || r.user.as_deref() == Some(me.as_str()))
        .collect();
    if g.format == Format::Json {
        return super::print_json(&rows).map_or_else(|code| code, |()| exit::PASSED);
    }
    if rows.is_empty() {
        outln!(
            "no {}runs{}",
            if all { "" } else { "kept or unfinished " },
            if all { "" } else { " (--all shows finished ones)" }
        );
        return exit::PASSED;
    }
    outln!(
        "{:<26} {:<12} {:<12} {:<10} {:<15} {:<10} {:<10} {:>6} {:>9}",
        "RUN",
        "NAME",
        "ENVIRONMENT",
        "RELEASE",
        "STATUS",
        "VERDICT",
        "USER",
        "AGE",
        "TIME LEFT"
    );
    let now = Utc::now();
    for r in rows {
        let handle = r.name.clone().unwrap_or_else(|| r.run_id.clone());
        // A stage's kept generation goes with its stage (`down` refuses the current one);
        // one left by a rebuild that died is any run's.
        let hint = match (&r.stage, r.status.needs_down()) {
            (Some(s), true) if r.status == RunStatus::Kept => format!("  → rehearse stage status {}", s.stage),
            (_, true) => format!("  → rehearse down {handle}"),
            (_, false) => String::new(),
        };
        let left = if r.live() { short(r.expires_at - now) } else { "-".into() };
        let name = match (&r.name, &r.stage) {
            (Some(n), _) => n.clone(),
            (None, Some(s)) => format!("{}#{}", s.stage, s.generation),
            (None, None) => "-".into(),
        };
        // Each cell printable on its own, so that the columns line up as they will show.
        let p = crate::sys::text::printable;
        outln!(
            "{:<26} {:<12} {:<12} {:<10} {:<15} {:<10} {:<10} {:>6} {:>9}{}",
            p(&r.run_id),
            p(&name),
            p(&r.environment),
            p(&r.release),
            r.status,
            p(r.verdict.map_or("-", |v| v.as_str())),
            p(r.user.as_deref().unwrap_or("-")),
            short(now - r.started_at),
            left,
            p(&hint),
        );
    }
    exit::PASSED
}

/// A time span the way a person reads it in a column: `45s`, `12m`, `3h`, `2d`;
/// `expired` when it is over.
fn short(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        ..0 => "expired".into(),
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `rehearse extend RUN DURATION`: pushes a kept environment's expiry out by
/// `duration`, up to its `max_ttl` from its start; `list` and `sweep` honour it.
/// `run_id` is resolved (see `named` in commands.rs); `duration` is within its bounds
/// ([`crate::cli::value::extension`]).
pub(crate) fn extend(g: &Global, run_id: &str, duration: std::time::Duration) -> i32 {
    use crate::engine::extend::{self as engine_extend, ExtendError};
    // Whole seconds, as the journal and the tags keep them.
    let by = chrono::Duration::seconds(duration.as_secs() as i64);
    let Some(root) = (match checked_state(g) {
        Ok(r) => r,
        Err(code) => return code,
    }) else {
        errln!("error: no run {run_id} on this machine; see `rehearse list`");
        return exit::USAGE;
    };
    let meta = match engine_extend::read_state(&root, run_id) {
        Ok(st) => st.meta,
        Err(e) => {
            errln!("error: {e}");
            return exit::USAGE;
        }
    };
    let Some(meta) = meta else {
        errln!("error: the journal of {run_id} has no run record");
        return exit::USAGE;
    };
    // A local run lives on the machine that journaled it, which takes nothing others
    // append to its journal in a shared store (an extension from here would be lost).
    let shared = matches!(super::store::url(g), Ok(Some(state::StateUrl::S3 { .. })));
    let elsewhere = meta.host.as_deref().is_some_and(|h| h != crate::sys::process::host_name());
    if shared
        && meta.provider == crate::description::ProviderKind::Local
        && elsewhere
        && journal::journaled_here(&state::run_dir(&root, run_id), run_id).is_err()
    {
        errln!(
            "error: run {run_id} is a local run of {}: extend it there",
            meta.host.as_deref().unwrap_or("another machine")
        );
        return exit::USAGE;
    }
    let extended = runtime().block_on(async {
        let store = match super::store::shared(g).await {
            Ok(s) => s,
            Err(code) => return Err(Err(code)),
        };
        let result = match meta.provider {
            crate::description::ProviderKind::Aws => {
                let Some(region) = meta.region.clone() else {
                    errln!("error: the journal of {run_id} names no region: its tags cannot be found");
                    return Err(Err(exit::USAGE));
                };
                let provider = super::aws_provider(&region).await;
                engine_extend::extend(&provider, &root, run_id, by, None, store).await
            }
            crate::description::ProviderKind::Local => {
                let provider = crate::providers::local::LocalProvider::new(&state::work_dir());
                engine_extend::extend(&provider, &root, run_id, by, None, store).await
            }
        };
        result.map_err(Ok)
    });
    match extended {
        Ok(x) => {
            if x.marks_moved > 0 {
                errln!("rehearse: moved the rehearse:expires-at tag of {} resource(s) of {run_id}", x.marks_moved);
            }
            outln!(
                "{run_id}: expires {} (was {})",
                x.now.format("%Y-%m-%d %H:%M:%S UTC"),
                x.was.format("%Y-%m-%d %H:%M:%S UTC")
            );
            exit::PASSED
        }
        Err(Err(code)) => code,
        Err(Ok(e)) => {
            errln!("error: {e}");
            match e {
                ExtendError::Marks { .. } | ExtendError::Write { .. } => exit::BUILD_FAILED,
                _ => exit::USAGE,
            }
        }
    }
}

/// `rehearse report RUN`: `run_id` is resolved (see `named` in commands.rs).
pub(crate) fn report(g: &Global, run_id: &str) -> i32 {
    let Some(root) = (match checked_state(g) {
        Ok(r) => r,
        Err(code) => return code,
    }) else {
        errln!("error: no report for {run_id}: there are no runs yet (see `rehearse list --all`)");
        return exit::USAGE;
    };
    let dir = state::run_dir(&root, run_id).join("report");
    match crate::report::read_report(&dir) {
        Ok(r) => {
            match g.format {
                Format::Json => {
                    if let Err(code) = super::print_json(&r) {
                        return code;
                    }
                }
                Format::Text | Format::Shell | Format::Dotenv => {
                    let files = crate::report::ReportFiles::in_dir(&dir);
                    let summary = crate::report::terminal_summary(&r, &files, crate::style::Styles::stdout(g.color));
                    print!("{summary}"); // raw: colored; the summary makes its parts printable
                }
            }
            exit::PASSED
        }
        Err(e) => {
            errln!("error: no report for {run_id}: {e}");
            exit::USAGE
        }
    }
}
