//! What runs there are: `list`, `sweep` (local runs from their journals; AWS
//! resources from their tags) and `report`.

use chrono::Utc;

use super::down::{down, run_alive};
use super::{checked_state, runtime};
use crate::cli::{Format, Global};
use crate::engine::journal::{self, State};
use crate::exit;
use crate::providers::aws::api::tag_value;
use crate::providers::aws::TAG_RUN;
use crate::sys::state;

/// Where a run stands, from its journal (and whether its process still lives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum RunStatus {
    /// Its process is still running it.
    Running,
    /// Finished and kept (destroy policy), within its TTL.
    Kept,
    /// Torn down, nothing left.
    Destroyed,
    /// Torn down, but teardown left resources.
    #[serde(rename = "left resources")]
    LeftResources,
    /// Its process died before the end: what it created may still exist.
    Crashed,
    /// The journal cannot be read: `down` finds what it made by its tags.
    Unreadable,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Kept => "kept",
            RunStatus::Destroyed => "destroyed",
            RunStatus::LeftResources => "left resources",
            RunStatus::Crashed => "crashed",
            RunStatus::Unreadable => "unreadable",
        }
    }

    /// Whether something of the run may still exist that `rehearse down` removes.
    fn needs_down(self) -> bool {
        matches!(self, RunStatus::Kept | RunStatus::Crashed | RunStatus::LeftResources | RunStatus::Unreadable)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A run as `list` and `sweep` see it.
#[derive(serde::Serialize)]
struct RunRow {
    run_id: String,
    environment: String,
    release: String,
    provider: String,
    status: RunStatus,
    verdict: Option<String>,
    started_at: chrono::DateTime<Utc>,
    expires_at: chrono::DateTime<Utc>,
    remaining: usize,
    /// The name it goes by (`up --name`).
    name: Option<String>,
    /// The local user who started it.
    user: Option<String>,
    /// The description's owner.
    owner: String,
    /// The stage generation it is (`rehearse rebuild`).
    stage: Option<crate::engine::stage::StageRef>,
    /// A local run this machine did not journal (fetched from the store): why it is
    /// left alone here.
    #[serde(skip)]
    not_here: Option<(String, Option<String>)>,
}

impl RunRow {
    /// Whether the environment may still be there.
    fn live(&self) -> bool {
        self.status != RunStatus::Destroyed
    }
}

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
    let named: Vec<RunRow> = rows.into_iter().filter(|r| r.live() && r.name.as_deref() == Some(arg)).collect();
    match named.as_slice() {
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

/// Refuses a name already taken by a live run (`Err`: the exit code, said).
pub(super) fn check_name_free(g: &Global, name: &str) -> Result<(), i32> {
    if let Err(why) = crate::description::decode::KeyRule::Identifier.check(name) {
        errln!("error: --name `{name}`: {why}");
        return Err(exit::USAGE);
    }
    if let Some(r) = scan_runs(g)?.into_iter().find(|r| r.live() && r.name.as_deref() == Some(name)) {
        errln!(
            "error: the name `{name}` is taken by the live run {} ({}); pick another or `rehearse down {name}`",
            r.run_id,
            r.status
        );
        return Err(exit::USAGE);
    }
    Ok(())
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
        for r in &st.refused {
            tracing::warn!("{}", r.describe(&name));
        }
        let Some(meta) = st.meta.clone().filter(|m| m.run_id == name) else {
            // Not knowing what a run holds is worth showing: `down` finds it by tag.
            rows.push(RunRow {
                run_id: name,
                environment: "?".into(),
                release: "?".into(),
                provider: "?".into(),
                status: RunStatus::Unreadable,
                verdict: None,
                started_at: Utc::now(),
                expires_at: Utc::now(),
                remaining: 1,
                name: None,
                user: None,
                owner: "?".into(),
                stage: None,
                not_here: None,
            });
            continue;
        };
        let not_here = (meta.provider.as_str() != "aws")
            .then(|| {
                journal::journaled_here(&e.path(), &meta.run_id).err().map(|why| (why.to_string(), meta.host.clone()))
            })
            .flatten();
        let remaining = st.remaining().len();
        let status = match (&st.finished, st.torn_down) {
            (_, Some(true)) if remaining == 0 => RunStatus::Destroyed,
            (Some((_, _, true)), _) => RunStatus::Kept,
            (_, Some(_)) => RunStatus::LeftResources,
            (None, None) if run_alive(&meta, Some(&e.path())) => RunStatus::Running,
            _ if remaining == 0 => RunStatus::Destroyed,
            _ => RunStatus::Crashed,
        };
        let expires_at = st.expires_at().unwrap_or(meta.expires_at);
        rows.push(RunRow {
            run_id: meta.run_id,
            environment: meta.environment,
            release: meta.release,
            provider: meta.provider.as_str().into(),
            status,
            verdict: st.finished.map(|f| f.0.as_str().into()),
            started_at: meta.started_at,
            expires_at,
            remaining,
            name: meta.name,
            user: meta.user,
            owner: meta.owner,
            stage: meta.stage,
            not_here,
        });
    }
    rows.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    Ok(rows)
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
            p(r.verdict.as_deref().unwrap_or("-")),
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
pub(crate) fn extend(g: &Global, run: &str, duration: &str) -> i32 {
    // At most the longest `max_ttl` a description may set: more could never be allowed.
    let max = crate::description::MAX_MAX_TTL;
    let by = match crate::description::bounded_duration("extend", duration, std::time::Duration::from_secs(1), max) {
        // Whole seconds, as the journal and the tags keep them.
        Ok(d) => chrono::Duration::seconds(d.as_secs() as i64),
        Err(why) => {
            errln!("error: {why}");
            return exit::USAGE;
        }
    };
    let run_id = match resolve_run(g, run) {
        Ok(id) => id,
        Err(code) => return code,
    };
    let Some(root) = (match checked_state(g) {
        Ok(r) => r,
        Err(code) => return code,
    }) else {
        errln!("error: no run {run_id} on this machine; see `rehearse list`");
        return exit::USAGE;
    };
    let path = state::run_dir(&root, &run_id).join("journal.jsonl");
    let st = match journal::read(&path) {
        Ok(records) => State::from_records(&records),
        Err(e) => {
            errln!("error: cannot read the journal of {run_id} ({}): {e}", path.display());
            return exit::USAGE;
        }
    };
    let Some(meta) = st.meta.clone() else {
        errln!("error: the journal of {run_id} has no run record");
        return exit::USAGE;
    };
    // A local run lives on the machine that journaled it, which takes nothing others
    // append to its journal in a shared store (an extension from here would be lost).
    let shared = matches!(super::store::url(g), Ok(Some(state::StateUrl::S3 { .. })));
    let elsewhere = meta.host.as_deref().is_some_and(|h| h != crate::sys::process::host_name());
    if shared
        && meta.provider.as_str() == "local"
        && elsewhere
        && journal::journaled_here(&state::run_dir(&root, &run_id), &run_id).is_err()
    {
        errln!(
            "error: run {run_id} is a local run of {}: extend it there",
            meta.host.as_deref().unwrap_or("another machine")
        );
        return exit::USAGE;
    }
    if st.torn_down == Some(true) && st.remaining().is_empty() {
        errln!("error: run {run_id} is torn down already: there is nothing to extend");
        return exit::USAGE;
    }
    let current = st.expires_at().unwrap_or(meta.expires_at);
    // Whole seconds: what the journal says and what the tags say are then the same.
    let wanted = match current.max(Utc::now()).checked_add_signed(by) {
        Some(t) => chrono::SubsecRound::trunc_subsecs(t, 0),
        None => {
            errln!("error: the journal of {run_id} says it expires {current}: past any time rehearse can extend to");
            return exit::USAGE;
        }
    };
    let latest = meta.latest_expiry();
    if wanted > latest {
        errln!(
            "error: run {run_id} may live until {} at most (`max_ttl` {} from its start); it expires {} now",
            latest.format("%Y-%m-%d %H:%M UTC"),
            crate::description::format_duration(std::time::Duration::from_secs(
                meta.max_ttl_secs.unwrap_or(crate::description::default_max_ttl().as_secs())
            )),
            current.format("%Y-%m-%d %H:%M UTC"),
        );
        return exit::USAGE;
    }
    // On AWS the expiry is also in every resource's tag, which `sweep --region` reads:
    // those move first, and only then the journal.
    if meta.provider.as_str() == "aws" {
        let Some(region) = meta.region.clone() else {
            errln!("error: the journal of {run_id} names no region: its tags cannot be found");
            return exit::USAGE;
        };
        let retagged =
            runtime().block_on(async { super::aws_provider(&region).await.retag_expiry(&run_id, wanted).await });
        match retagged {
            Ok(n) => {
                errln!("rehearse: moved the rehearse:expires-at tag of {n} resource(s) of {run_id} in {region}")
            }
            Err(e) => {
                errln!("error: cannot move the expiry tags of {run_id} in {region}: {e}; its expiry is unchanged");
                return exit::BUILD_FAILED;
            }
        }
    }
    let appended = runtime().block_on(async {
        super::store::open_journal(g, &run_id, &path)
            .await?
            .append(&journal::Record::Extended { expires_at: wanted, at: Utc::now() })
            .await
    });
    if let Err(e) = appended {
        errln!("error: cannot write the journal {}: {e}", path.display());
        return exit::BUILD_FAILED;
    }
    outln!(
        "{run_id}: expires {} (was {})",
        wanted.format("%Y-%m-%d %H:%M:%S UTC"),
        current.format("%Y-%m-%d %H:%M:%S UTC")
    );
    exit::PASSED
}

/// `sweep --older-than`: from nothing to ten years (older is older than rehearse).
const MIN_AGE: std::time::Duration = std::time::Duration::ZERO;
const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3650 * 86400);

pub(crate) fn sweep(
    g: &Global,
    yes: bool,
    older_than: Option<&str>,
    environment: Option<&str>,
    region: Option<&str>,
) -> i32 {
    let min_age = match older_than.map(|t| crate::description::bounded_duration("--older-than", t, MIN_AGE, MAX_AGE)) {
        None => None,
        Some(Ok(d)) => Some(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)),
        Some(Err(why)) => {
            errln!("error: {why}");
            return exit::USAGE;
        }
    };
    if let Some(region) = region {
        return runtime().block_on(sweep_aws(g, region, yes, min_age, environment));
    }
    let now = Utc::now();
    let rows = match scan_runs(g) {
        Ok(rows) => rows,
        Err(code) => return code,
    };
    let candidates: Vec<RunRow> = rows
        .into_iter()
        .filter(|r| r.remaining > 0 && r.status != RunStatus::Running)
        .filter(|r| r.expires_at <= now || r.status == RunStatus::Crashed)
        .filter(|r| min_age.is_none_or(|age| now - r.started_at >= age))
        .filter(|r| environment.is_none_or(|e| r.environment == e))
        .collect();
    // A local run this machine did not journal (its journal came from the store) names
    // nothing here that is provably its own: left alone, whatever its journal says.
    let candidates: Vec<RunRow> = candidates
        .into_iter()
        .filter(|r| match &r.not_here {
            Some((why, host)) => {
                let claim = host
                    .as_deref()
                    .map(|h| format!("; its journal says host `{}`", h.escape_debug()))
                    .unwrap_or_default();
                outln!("{}: not this host's run: left alone ({why}{claim})", r.run_id);
                false
            }
            None => true,
        })
        .collect();
    // A stage's current generation serves through the stage's stable names: no TTL
    // removes it, only a later generation or `rehearse stage destroy`.
    let candidates: Vec<RunRow> = candidates
        .into_iter()
        .filter(|r| {
            let Some(stage) = &r.stage else { return true };
            match runtime().block_on(super::stage::current_generation_of(g, &r.run_id, stage)) {
                Some(name) => {
                    outln!("keeping {}: the current generation of stage `{name}`", r.run_id);
                    false
                }
                None => true,
            }
        })
        .collect();
    if candidates.is_empty() {
        outln!("nothing to sweep: no expired rehearse environment on this machine");
        return exit::PASSED;
    }
    for r in &candidates {
        outln!(
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
        outln!("dry run: {} environment(s); run `rehearse sweep --yes` to remove them", candidates.len());
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

pub(crate) fn report(g: &Global, run_id: &str) -> i32 {
    if !state::valid_run_id(run_id) {
        errln!("error: `{run_id}` is not a run id; see `rehearse list --all`");
        return exit::USAGE;
    }
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

/// `sweep --region`: every resource tagged by rehearse in the region whose
/// `rehearse:expires-at` has passed (and matching the filters); listed, and with
/// `--yes` removed through the guard. Untagged resources are never considered, and an
/// unexpired one (a run in progress, a kept environment within its TTL) never matches.
async fn sweep_aws(
    g: &Global,
    region: &str,
    yes: bool,
    min_age: Option<chrono::Duration>,
    environment: Option<&str>,
) -> i32 {
    use crate::providers::aws::{by_evidence, expired, Guard, TAG_EXPIRES, TAG_GENERATION, TAG_STAGE};
    let provider = super::aws_provider(region).await;
    let all = match provider.tagged().await {
        Ok(a) => a,
        Err(e) => {
            errln!("error: cannot list rehearse's resources in {region}: {e}");
            return exit::BUILD_FAILED;
        }
    };
    let matching = expired(all, Utc::now(), min_age, environment);
    // A stage's current generation serves through the stage's names: no TTL removes it.
    let mut serving = std::collections::BTreeMap::new();
    for t in &matching {
        let (Some(run), Some(stage)) = (tag_value(&t.tags, TAG_RUN), tag_value(&t.tags, TAG_STAGE)) else { continue };
        if !serving.contains_key(run) {
            let generation = tag_value(&t.tags, TAG_GENERATION).and_then(|n| n.parse().ok()).unwrap_or(0);
            let r = crate::engine::stage::StageRef { stage: stage.to_string(), generation };
            serving.insert(run.to_string(), super::stage::current_generation_of(g, run, &r).await);
        }
    }
    let matching: Vec<_> = matching
        .into_iter()
        .filter(|t| match tag_value(&t.tags, TAG_RUN).and_then(|r| serving.get(r)).cloned().flatten() {
            Some(stage) => {
                outln!("keeping {} {}: the current generation of stage `{stage}`", t.kind, t.id);
                false
            }
            None => true,
        })
        .collect();
    // Tags anyone may set are not enough: only what carries rehearse's own names (and
    // no deletion protection) is swept; the rest is listed, never touched.
    let (expired, doubtful) = by_evidence(matching);
    for (t, why) in &doubtful {
        outln!("not sweeping {} {}: it carries rehearse's tags, but {why}", t.kind, t.id);
    }
    if expired.is_empty() {
        outln!("nothing to sweep: no expired rehearse resource in {region}");
        return exit::PASSED;
    }
    let mut code = exit::PASSED;
    for t in &expired {
        let run = tag_value(&t.tags, TAG_RUN).unwrap_or_default().to_string();
        let expires = tag_value(&t.tags, TAG_EXPIRES).unwrap_or_default();
        if !yes {
            outln!("would remove {} {} (run {run}, expired {expires})", t.kind, t.id);
            continue;
        }
        match provider.destroy_id(t.kind, &t.id, &Guard { run_id: run.clone() }).await {
            Ok(()) => outln!("removed {} {} (run {run}, expired {expires})", t.kind, t.id),
            Err(e) => {
                errln!("error: could not remove {} {}: {e}", t.kind, t.id);
                code = exit::LEFTOVERS;
            }
        }
    }
    if !yes {
        outln!("dry run: {} resource(s); run `rehearse sweep --region {region} --yes` to remove them", expired.len());
    }
    code
}
