//! Diagnostics about a description file, rendered the way compilers do.
//!
//! Each problem leads with `FILE:LINE:COL: error: MESSAGE` — the form editors' problem
//! matchers, Emacs' compile mode and CI log annotators already parse — followed by the
//! offending source line with a caret, what was expected, and a "did you mean" hint.
//! miette's graphical reports were considered; they do not lead with that greppable
//! line, and the renderer below is short.
// Text is built with `write!` into a `String`, which cannot fail: the `fmt::Result`
// of each write is dropped on purpose.
#![allow(clippy::let_underscore_must_use)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A 1-based line and column in a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    /// What is wrong, a lowercase fragment.
    pub message: String,
    /// What was expected instead.
    pub expected: Option<String>,
    /// A suggestion ("did you mean `count`?").
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic { pos, message: message.into(), expected: None, help: None }
    }

    pub fn expected(mut self, expected: impl Into<String>) -> Self {
        self.expected = Some(expected.into());
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// All problems found in one file, with the file's text for snippets.
#[derive(Debug)]
pub struct FileDiagnostics {
    pub path: PathBuf,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

impl FileDiagnostics {
    pub fn new(path: &Path, source: String, mut items: Vec<Diagnostic>) -> Self {
        items.sort_by(|a, b| a.pos.cmp(&b.pos).then_with(|| a.message.cmp(&b.message)));
        items.dedup();
        FileDiagnostics { path: path.to_path_buf(), source, items }
    }

    /// Renders every problem, then a one-line count.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.items {
            render_one(&mut out, &self.path, &self.source, d);
        }
        let n = self.items.len();
        let _ = writeln!(
            out,
            "{}: {} problem{} found; nothing was created",
            self.path.display(),
            n,
            if n == 1 { "" } else { "s" }
        );
        out
    }
}

fn render_one(out: &mut String, path: &Path, source: &str, d: &Diagnostic) {
    let _ = writeln!(out, "{}:{}:{}: error: {}", path.display(), d.pos.line, d.pos.col, d.message);
    if let Some(line) = source_line(source, d.pos.line) {
        let gutter = d.pos.line.to_string();
        let pad = " ".repeat(gutter.len());
        let caret_col = line.chars().take(d.pos.col.saturating_sub(1) as usize).count();
        let marker: String = line.chars().take(caret_col).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
        let _ = writeln!(out, "{pad} |");
        let _ = writeln!(out, "{gutter} | {line}");
        let _ = writeln!(out, "{pad} | {marker}^");
        if let Some(e) = &d.expected {
            let _ = writeln!(out, "{pad} = expected: {e}");
        }
        if let Some(h) = &d.help {
            let _ = writeln!(out, "{pad} = help: {h}");
        }
    } else {
        if let Some(e) = &d.expected {
            let _ = writeln!(out, "  = expected: {e}");
        }
        if let Some(h) = &d.help {
            let _ = writeln!(out, "  = help: {h}");
        }
    }
}

/// The given 1-based line, cut to a readable width and with control characters shown
/// as `?` (a binary file must not garble the terminal).
fn source_line(source: &str, line: u32) -> Option<String> {
    let text = source.lines().nth(line.checked_sub(1)? as usize)?;
    let clean: String = text.chars().take(160).map(|c| if c.is_control() && c != '\t' { '?' } else { c }).collect();
    Some(clean)
}

/// The closest known name to `unknown`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(unknown: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // Jaro-Winkler catches long names with a wrong tail (`instance_typ`); an edit
    // distance with transpositions catches short ones (`wbe` for `web`).
    known
        .into_iter()
        .filter_map(|k| {
            let jw = strsim::jaro_winkler(unknown, k);
            let edits = strsim::osa_distance(unknown, k);
            let close = jw > 0.8 || edits <= 1 || (edits <= 2 && k.len() > 5);
            close.then_some((jw - edits as f64, k))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_snippet_and_hints() {
        let src = "name: demo\nprovidr: local\n".to_string();
        let d = Diagnostic::new(Pos { line: 2, col: 1 }, "unknown key `providr`")
            .expected("one of `name`, `provider`")
            .help("did you mean `provider`?");
        let text = FileDiagnostics::new(Path::new("x.yaml"), src, vec![d]).render();
        assert_eq!(
            text,
            "x.yaml:2:1: error: unknown key `providr`\n  |\n2 | providr: local\n  | ^\n  \
             = expected: one of `name`, `provider`\n  = help: did you mean `provider`?\n\
             x.yaml: 1 problem found; nothing was created\n"
        );
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(did_you_mean("cuont", ["count", "command"]), Some("count"));
        assert_eq!(did_you_mean("zzz", ["count", "command"]), None);
    }
}
