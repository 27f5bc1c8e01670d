//! What a static linter says of each migration file of a deploy, shown beside what was
//! measured, never instead of it: squawk (<https://squawkhq.com>), when it is installed
//! (`squawk` on PATH; `make test-deps` puts PyPI's `squawk-cli` in `.venv/bin`).
//!
//! Each file's text, as the lock sampler traces it, goes to `squawk --reporter json` on
//! its standard input (named with `--stdin-filepath`), run in the new release's
//! directory so that a `.squawk.toml` the release ships applies. Its answer is read
//! capped and parsed; its findings take no part in the verdict.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::locks::MigrationFile;

/// The linter's name, as the reports say it and as it is looked for on PATH.
pub const SQUAWK: &str = "squawk";
/// How long one file's lint may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The most of its answer read for one file.
const MAX_ANSWER: u64 = 1 << 20;
/// The most files linted in one deploy, and findings kept for one file.
const MAX_FILES: usize = 50;
const MAX_FINDINGS: usize = 50;

/// The linter's findings for a deploy's migration files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lint {
    /// The linter and its version (`squawk 2.70.0`).
    pub tool: String,
    pub findings: Vec<Finding>,
    /// Files it could not lint, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One finding: where, which rule, what it says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The migration file, as the deploy names it (`migrations/0004_x.sql`).
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// `Warning` or `Error`, as the linter says.
    pub level: String,
    pub rule: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Lint {
    /// The rules found in `file`, each once, in the order first found.
    pub fn rules_of(&self, file: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in self.findings.iter().filter(|f| f.file == file) {
            if !out.contains(&f.rule.as_str()) {
                out.push(&f.rule);
            }
        }
        out
    }
}

/// squawk's JSON reporter's record (its other fields are not read).
#[derive(Deserialize)]
struct Reported {
    #[serde(default)]
    line: u64,
    #[serde(default)]
    column: u64,
    #[serde(default)]
    level: String,
    #[serde(default)]
    rule_name: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    help: Option<String>,
}

/// The linter on PATH, if there is one.
pub fn find() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(SQUAWK)).find(|p| p.is_file())
}

/// The findings of the linter at `tool` for `files`, run in `dir`.
pub async fn squawk(tool: &Path, dir: &Path, files: &[MigrationFile]) -> Lint {
    let version = run(tool, dir, &["--version"], None).await;
    let mut lint = Lint {
        tool: match &version {
            Ok(v) => crate::sys::text::printable(v.trim()),
            Err(_) => SQUAWK.to_string(),
        },
        ..Lint::default()
    };
    if let Err(e) = version {
        lint.errors.push(format!("{SQUAWK} --version: {e}"));
        return lint;
    }
    for f in files.iter().take(MAX_FILES) {
        let args = ["--reporter", "json", "--stdin-filepath", &f.name];
        let found = run(tool, dir, &args, Some(&f.text)).await.and_then(|answer| parse(&f.name, &answer));
        match found {
            Ok(found) => lint.findings.extend(found.into_iter().take(MAX_FINDINGS)),
            Err(e) => lint.errors.push(format!("{}: {e}", f.name)),
        }
    }
    lint
}

/// The findings in squawk's JSON answer for `file`.
fn parse(file: &str, answer: &str) -> Result<Vec<Finding>, String> {
    let answer = answer.trim();
    if answer.is_empty() {
        return Ok(Vec::new());
    }
    let reported: Vec<Reported> =
        serde_json::from_str(answer).map_err(|e| format!("its answer is not squawk's JSON report: {e}"))?;
    Ok(reported
        .into_iter()
        .map(|r| Finding {
            file: file.to_string(),
            line: r.line,
            column: r.column,
            level: crate::sys::text::printable(&r.level),
            rule: crate::sys::text::printable(&r.rule_name),
            message: crate::sys::text::printable(&r.message),
            help: r.help.map(|h| crate::sys::text::printable(&h)),
        })
        .collect())
}

/// `tool ARGS` in `dir`, `input` on its standard input: its standard output (read up to
/// [`MAX_ANSWER`]). squawk exits 1 when it finds something: any exit with an answer
/// counts, a signal or a timeout does not.
async fn run(tool: &Path, dir: &Path, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = tokio::process::Command::new(tool)
        .args(args)
        .current_dir(dir)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", tool.display()))?;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().ok_or("no standard output")?;
    let work = async {
        if let (Some(w), Some(text)) = (stdin.as_mut(), input) {
            // A linter that stops reading early answers anyway: its answer decides.
            #[allow(clippy::let_underscore_must_use)]
            let _ = w.write_all(text.as_bytes()).await;
        }
        drop(stdin);
        let mut out = Vec::new();
        (&mut stdout).take(MAX_ANSWER + 1).read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        if out.len() as u64 > MAX_ANSWER {
            return Err(format!("its answer is larger than {} MiB", MAX_ANSWER >> 20));
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        match status.code() {
            Some(0 | 1) => Ok(String::from_utf8_lossy(&out).into_owned()),
            Some(c) => Err(format!("exited {c}")),
            None => Err("ended by a signal".into()),
        }
    };
    match tokio::time::timeout(TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer in {} s", TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squawks_report_is_read_per_finding_and_its_text_made_printable() {
        let answer = r#"[{"file":"stdin","line":4,"column":0,"level":"Warning","message":"During normal index creation, table updates are blocked\u001b[2J","help":"Use `concurrently` to avoid blocking writes.","rule_name":"require-concurrent-index-creation","column_end":65,"line_end":4}]"#;
        let found = parse("migrations/0004_x.sql", answer).unwrap();
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!(
            (f.file.as_str(), f.line, f.rule.as_str()),
            ("migrations/0004_x.sql", 4, "require-concurrent-index-creation")
        );
        assert!(!f.message.contains('\u{1b}'), "{}", f.message);
        assert_eq!(parse("f.sql", "").unwrap(), Vec::new());
        assert!(parse("f.sql", "Found 3 issues").unwrap_err().contains("not squawk's JSON report"));
        let lint = Lint { tool: "squawk 2".into(), findings: vec![f.clone(), f.clone()], errors: Vec::new() };
        assert_eq!(lint.rules_of("migrations/0004_x.sql"), vec!["require-concurrent-index-creation"]);
    }
}
