//! The lines printed at the end of a run (and by `rehearse report`): verdict, reason,
//! failure, backups, suites, teardown and where the report is. Colour comes from the
//! caller's [`Styles`], so `--color` and `NO_COLOR` decide it in one place.
// Text is built with `write!` into a `String`, which cannot fail: the `fmt::Result`
// of each write is dropped on purpose.
#![allow(clippy::let_underscore_must_use)]

use std::fmt::Write as _;

use super::files::ReportFiles;
use super::model::{RunReport, SuiteStatus, TeardownStatus, Verdict};
use super::text::{duration, one_line, plural, time};
use crate::style::{paint, Styles};
use crate::sys::text::printable;

/// The end-of-run summary of `report`, whose files are `files`, painted with
/// `styles` (a `bool` works too: `true` for colours, `false` for none).
///
/// Every string of the report is made printable on one line first: a report holds what
/// the release printed (messages, log tails) and, read back from a shared store, what
/// anyone who can write there put in it. Only the summary's own colours reach the
/// terminal as escape sequences.
pub fn terminal_summary(report: &RunReport, files: &ReportFiles, styles: impl Into<Styles>) -> String {
    let s: Styles = styles.into();
    match printable_report(report) {
        Some(clean) => summary(&clean, files, s),
        // Never expected (the report's own types go to JSON and back): the whole text,
        // uncoloured, through the sanitizer instead.
        None => crate::sys::text::printable_text(&summary(report, files, Styles::plain())),
    }
}

/// `report` with every string in it, map keys too, through [`printable`].
fn printable_report(report: &RunReport) -> Option<RunReport> {
    fn clean(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = printable(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(clean),
            serde_json::Value::Object(map) => {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, mut v)| {
                        clean(&mut v);
                        (printable(&k), v)
                    })
                    .collect();
            }
            _ => {}
        }
    }
    let mut v = serde_json::to_value(report).ok()?;
    clean(&mut v);
    serde_json::from_value(v).ok()
}

fn summary(report: &RunReport, files: &ReportFiles, s: Styles) -> String {
    let mut out = String::new();

    let (mark, word, tint) = match report.verdict {
        Verdict::Passed => ("✔", "PASSED", s.pass),
        Verdict::Failed => ("✘", "FAILED", s.fail),
        Verdict::BuildFailed => ("✘", "COULD NOT BUILD", s.fail),
        Verdict::Interrupted => ("⏹", "INTERRUPTED", s.warn),
    };
    let _ = writeln!(
        out,
        "{}{} in {} {}",
        paint(s.strong(tint), format_args!("{mark} {word}")),
        paint(s.bold, format_args!(": {} release {}", report.environment, report.release)),
        duration(report.total_ms),
        paint(s.dim, format_args!("(run {})", report.run_id)),
    );
    if let Some(reason) = &report.reason {
        let _ = writeln!(out, "  {}", one_line(reason));
    }
    if let Some(f) = &report.failure {
        let at = f.resource.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
        let _ = writeln!(out, "  {} {}", paint(s.fail, format_args!("{}{at}:", f.phase)), one_line(&f.message));
        // The end of the log is where the database or compiler says what went wrong.
        let start = f.log_tail.len().saturating_sub(5);
        for line in &f.log_tail[start..] {
            let _ = writeln!(out, "    {} {line}", paint(s.dim, "│"));
        }
        if let Some(log) = &f.log {
            let _ = writeln!(out, "    {}", paint(s.dim, format_args!("full log: {log}")));
        }
    }
    if let Some(d) = &report.deploy {
        let broken = d.limits.iter().filter(|l| !l.passed).count();
        let _ = writeln!(
            out,
            "  deploy: {} over {} ({}), {} of {} limit(s) broken",
            d.to,
            d.from,
            d.switch,
            broken,
            d.limits.len()
        );
        for l in &d.limits {
            let (mark, tint) = if l.passed { ("✔", s.pass) } else { ("✘", s.fail) };
            let line = format!("{} ≤ {}: {}", l.name, l.limit, l.measured);
            let _ = writeln!(out, "    {} {line} — {}", paint(tint, mark), one_line(&l.reason));
        }
    }
    if let Some(c) = &report.chaos {
        game_day(&mut out, c, &s);
    }
    for b in &report.backups {
        let taken = b.taken_at.map(|t| format!(", taken {}", time(t))).unwrap_or_default();
        let _ = writeln!(
            out,
            "  backup: {} ← {}{taken}; {} restore {}",
            b.database,
            b.backup,
            b.method,
            duration(b.restore_ms)
        );
    }

    let width = report.suites.iter().map(|s| s.name.chars().count()).max().unwrap_or(0);
    for suite in &report.suites {
        let (mark, tint) = match suite.status {
            SuiteStatus::Passed => ("✔", s.pass),
            SuiteStatus::Failed | SuiteStatus::Error => ("✘", s.fail),
            SuiteStatus::NotRun => ("-", s.warn),
        };
        let name = format!("{:width$}", suite.name);
        let mut line = format!("  {} {}  ", paint(tint, mark), paint(s.bold, name));
        match suite.status {
            SuiteStatus::NotRun => {
                line.push_str("not run");
                if let Some(reason) = &suite.reason {
                    let _ = write!(line, ": {}", one_line(reason));
                }
            }
            _ => {
                let _ = write!(
                    line,
                    "{}, {}, {}",
                    plural(suite.tests, "test"),
                    plural(suite.failures + suite.errors, "failure"),
                    duration(suite.duration_ms)
                );
            }
        }
        if matches!(suite.status, SuiteStatus::Failed | SuiteStatus::Error) {
            if let Some(reason) = &suite.reason {
                let _ = write!(line, " — {}", one_line(reason));
            } else if suite.status == SuiteStatus::Error {
                line.push_str(" — error");
            }
        }
        let _ = writeln!(out, "{line}");
    }

    let t = &report.teardown;
    match t.status {
        TeardownStatus::Complete => {
            let _ = writeln!(out, "  teardown: complete in {}", duration(t.duration_ms));
        }
        TeardownStatus::Kept => {
            let until = t.expires_at.map(time).unwrap_or_else(|| "its TTL".to_string());
            let _ = writeln!(
                out,
                "  teardown: {} until {until} — remove with `rehearse down {}`",
                paint(s.warn, "kept"),
                report.run_id
            );
        }
        other => {
            let what = if other == TeardownStatus::Interrupted { "INTERRUPTED" } else { "INCOMPLETE" };
            let _ = writeln!(
                out,
                "  teardown: {}: {} left behind{}",
                paint(s.strong(s.fail), what),
                plural(t.leftovers.len() as u32, "resource"),
                if t.leftovers.is_empty() { "" } else { "; remove with:" },
            );
            for l in &t.leftovers {
                let _ = writeln!(out, "    {}", paint(s.dim, format_args!("# {} ({})", l.id, l.kind)));
                let _ = writeln!(out, "    {}", l.command);
            }
            let _ = writeln!(out, "    or all at once: rehearse down {}", report.run_id);
        }
    }
    let _ = writeln!(out, "  report: {}", files.markdown.display());
    let _ = writeln!(out, "          {}", files.html.display());
    if let Some(a) = &report.access {
        access(&mut out, a, &s);
    }
    out
}

/// How to reach a kept environment: every service URL, every database's address (its
/// password only through `rehearse env`), the logs, the expiry and the commands.
fn access(out: &mut String, a: &crate::report::model::Access, s: &Styles) {
    let _ = writeln!(out, "  {}", paint(s.bold, "reach it:"));
    for (name, urls) in &a.services {
        let _ = writeln!(out, "    service {name}: {}", urls.join(" "));
    }
    for (name, d) in &a.databases {
        let _ = writeln!(
            out,
            "    database {name}: host {} port {} database {} user {} (password: rehearse env)",
            d.host, d.port, d.name, d.user
        );
    }
    let _ = writeln!(out, "    logs: {}", a.logs_dir);
    let _ = writeln!(out, "    expires: {}", time(a.expires_at));
    for c in &a.commands {
        let _ = writeln!(out, "    {}", paint(s.dim, format_args!("$ {c}")));
    }
}

/// A game day's faults, each with its expectations.
fn game_day(out: &mut String, c: &crate::compare::chaos::ChaosReport, s: &Styles) {
    let broken = c.faults.iter().filter(|f| !f.passed()).count();
    let load = if c.load { format!("{} request(s) sent", c.requests) } else { "no load".to_string() };
    let _ = writeln!(out, "  game day: {} fault(s), {broken} failed its expectations; {load}", c.faults.len());
    for f in &c.faults {
        let (mark, tint) = if f.passed() { ("✔", s.pass) } else { ("✘", s.fail) };
        let when = match (f.started_ms, f.ended_ms) {
            (Some(a), Some(b)) => format!(" from {:.1} s to {:.1} s", a as f64 / 1e3, b as f64 / 1e3),
            _ => String::new(),
        };
        let _ = writeln!(out, "    {} {} ({} on {}: {}){when}", paint(tint, mark), f.name, f.kind, f.target, f.detail);
        if let Some(why) = &f.skipped {
            let _ = writeln!(out, "      did not run: {}", one_line(why));
        }
        for l in &f.expectations {
            let (mark, tint) = if l.passed { ("✔", s.pass) } else { ("✘", s.fail) };
            let line = format!("{} ≤ {}: {}", l.name, l.limit, l.measured);
            let _ = writeln!(out, "      {} {line} — {}", paint(tint, mark), one_line(&l.reason));
        }
    }
}
