//! `summary.md`: Markdown for a CI step summary (GitHub, GitLab), rendered from the
//! [`view`](super::view) by `templates/summary.md.tera`.
//!
//! Markdown has no autoescaping, so every piece of user text goes through one of the
//! filters here: `md` (inline text), `code` (inline code), `block` (fenced code
//! block). Statuses are shown as emoji (`icon`): CI systems render them everywhere.

use std::collections::HashMap;
use std::io;

use tera::{Tera, Value};

use super::model::RunReport;
use super::text::one_line;
use super::view;

const TEMPLATE: &str = include_str!("../../templates/summary.md.tera");

/// `summary.md`.
pub(crate) fn markdown(report: &RunReport) -> io::Result<String> {
    view::render("summary.md", templates(), view::context(report))
}

fn templates() -> tera::Result<Tera> {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![]);
    let text = |f: fn(&str) -> String| move |v: &Value, _: &HashMap<String, Value>| Ok(Value::String(f(&as_text(v))));
    tera.register_filter("md", text(md_text));
    tera.register_filter("code", text(md_code));
    tera.register_filter("icon", text(|s| icon(s).to_string()));
    tera.register_filter("block", |v: &Value, args: &HashMap<String, Value>| {
        let lang = args.get("lang").and_then(Value::as_str).unwrap_or("");
        Ok(Value::String(md_block(&as_text(v), lang)))
    });
    tera.add_raw_template("summary.md", TEMPLATE)?;
    Ok(tera)
}

/// The emoji for a verdict or a suite status.
fn icon(status: &str) -> &'static str {
    match status {
        "passed" => "✅",
        "failed" => "❌",
        "build-failed" | "error" => "💥",
        "interrupted" => "⏹",
        "not-run" => "⏭",
        _ => "•",
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Inline Markdown text, safe in a paragraph, a list item and a table cell: one line,
/// no HTML, no table breaks, no accidental links or code. Underscores are left alone
/// (GitHub does not emphasize inside words, and migration names are full of them).
fn md_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in one_line(s).chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '|' | '`' | '*' | '[' | ']' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// An inline code span that survives backticks in the text and table cells.
fn md_code(s: &str) -> String {
    let text = one_line(s).replace('|', "\\|");
    let longest = longest_run(&text, '`');
    let fence = "`".repeat(longest + 1);
    if longest > 0 || text.starts_with(' ') || text.ends_with(' ') {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

/// A fenced code block whose fence is longer than any backtick run in the text.
fn md_block(s: &str, lang: &str) -> String {
    let fence = "`".repeat(longest_run(s, '`').max(2) + 1);
    format!("{fence}{lang}\n{}\n{fence}", s.trim_end_matches('\n'))
}

fn longest_run(s: &str, c: char) -> usize {
    let (mut best, mut cur) = (0, 0);
    for ch in s.chars() {
        cur = if ch == c { cur + 1 } else { 0 };
        best = best.max(cur);
    }
    best
}
