//! The plan as a person reads it, in the spirit of `terraform plan`.
// Text is built with `write!` into a `String`, which cannot fail: the `fmt::Result`
// of each write is dropped on purpose.
#![allow(clippy::let_underscore_must_use)]

use std::fmt::Write as _;

use super::graph::{Plan, Resource};
use crate::style::Styles;

/// Renders the plan as text, painted with `styles` (plain ones paint nothing).
pub fn text(plan: &Plan, styles: Styles) -> String {
    // `{style}` opens a style, `{style:#}` closes it; a plain style writes nothing.
    let (green, bold, dim) = (styles.pass, styles.bold, styles.dim);
    let mut out = String::new();
    let region = plan.region.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
    let _ = writeln!(
        out,
        "{bold}Plan for `{}` on {}{region}, release {}{bold:#}",
        plan.environment, plan.provider, plan.release.version
    );
    let _ = writeln!(out, "  artifact: {}", plan.release.artifact);
    let _ = writeln!(
        out,
        "  every resource is tagged with the run's id and expires {} after the run starts; destroy: {}",
        plan.ttl, plan.destroy
    );
    for w in &plan.warnings {
        let _ = writeln!(out, "  {bold}warning:{bold:#} {w}");
    }
    let _ = writeln!(out);
    let width = plan.resources.iter().map(|r| r.id.len()).max().unwrap_or(0);
    for r in plan.resources.iter() {
        let marker = if r.kind.is_suite() { "▶" } else { "+" };
        let cost = r.cost_per_hour_usd.map(|c| format!("  ~${c:.4}/h")).unwrap_or_default();
        let _ = writeln!(out, "  {green}{marker}{green:#} {bold}{:width$}{bold:#}  {}{cost}", r.id, r.kind.as_str(),);
        resource_details(&mut out, r, dim);
    }
    let created = plan.resources.iter().filter(|r| !r.kind.is_suite()).count();
    let suites = plan.resources.len() - created;
    let cost = match plan.estimated_cost_per_hour_usd {
        Some(c) => format!(
            ", estimated ${c:.2}/hour at on-demand list prices{}",
            plan.region.as_deref().map(|r| format!(" in {r}")).unwrap_or_default()
        ),
        None if plan.provider == "local" => ", no cloud cost (local)".to_string(),
        None => ", cost unknown (types not in the price table)".to_string(),
    };
    let _ = writeln!(
        out,
        "{bold}Plan: {created} resource{} to create, {suites} suite{} to run{cost}.{bold:#}",
        if created == 1 { "" } else { "s" },
        if suites == 1 { "" } else { "s" },
    );
    for p in &plan.pools {
        let (cost, waits) = match p.keep {
            crate::description::PoolKeep::Running => (
                p.cost_per_hour_usd.map(|c| format!(" ~${c:.2}/hour while full,")).unwrap_or_default(),
                "waits only for its own password",
            ),
            crate::description::PoolKeep::Stopped => (
                " kept stopped (storage only),".to_string(),
                "waits for its member's start (minutes) and its own password",
            ),
        };
        let _ = writeln!(
            out,
            "Pool of `{}`: {} × {}{cost} each member at most {} old (`rehearse pool fill`); a run that claims one skips the restore and the masking (on RDS, 10–40 minutes) and {waits}.",
            p.database, p.size, p.instance_class, p.max_age
        );
    }
    let sources: Vec<String> =
        plan.resources.iter().filter_map(|r| r.source.as_ref()).map(|s| s.identifier.clone()).collect();
    if !sources.is_empty() {
        let _ = writeln!(out, "Production is only read, never changed: {}.", sources.join(", "));
    }
    out
}

fn resource_details(out: &mut String, r: &Resource, dim: anstyle::Style) {
    let pad = "      ";
    if let Some(s) = &r.source {
        let what = match s.kind.as_str() {
            "rds_instance" => format!("{} of RDS instance {}", restore_words(&s.restore), s.identifier),
            "aurora_cluster" => format!("copy-on-write clone of Aurora cluster {}", s.identifier),
            "backup_dir" => format!("newest pg_dump archive in {}", s.identifier),
            _ => format!("live dump of {}", s.identifier),
        };
        let _ = writeln!(out, "{pad}from: {what} (read-only)");
        if let Some(b) = &s.backup {
            let _ = writeln!(out, "{pad}backup: {}", compact(b));
        }
    }
    let w = r.attributes.keys().chain(r.templates.keys()).map(String::len).max().unwrap_or(0).max(10);
    for (k, v) in &r.attributes {
        let _ = writeln!(out, "{pad}{k:<w$} = {}", compact(v));
    }
    for (k, v) in &r.templates {
        let _ = writeln!(out, "{pad}{k:<w$} = <<EOT");
        for line in v.lines() {
            let _ = writeln!(out, "{pad}  {dim}{line}{dim:#}");
        }
        let _ = writeln!(out, "{pad}  EOT");
    }
    if !r.depends_on.is_empty() {
        let _ = writeln!(out, "{pad}depends on: {}", r.depends_on.join(", "));
    }
}

fn restore_words(mode: &str) -> &'static str {
    match mode {
        "latest-restorable-time" => "latest restorable time",
        _ => "newest available snapshot",
    }
}

fn compact(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(compact).collect::<Vec<_>>().join(", "),
        serde_json::Value::Object(map) if map.is_empty() => "{}".to_string(),
        serde_json::Value::Object(map) => {
            let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={}", compact(v))).collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}
