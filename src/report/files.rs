//! The report directory: which files a run's report has, writing them all, and
//! reading `report.json` back for `rehearse report`.
//!
//! Every file is written atomically (temporary name in the same directory, then
//! rename): a CI system picking up `junit.xml` never sees half a file.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::model::{RunReport, REPORT_SCHEMA_VERSION};
use super::{html, junit, markdown};

pub(crate) const JSON_FILE: &str = "report.json";
pub(crate) const JUNIT_FILE: &str = "junit.xml";
pub(crate) const MARKDOWN_FILE: &str = "summary.md";
pub(crate) const HTML_FILE: &str = "report.html";

/// Where [`write_all`] put each format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    pub json: PathBuf,
    pub junit: PathBuf,
    pub markdown: PathBuf,
    pub html: PathBuf,
}

impl ReportFiles {
    /// The paths the report of a run in `dir` has (or will have).
    pub(crate) fn in_dir(dir: &Path) -> Self {
        ReportFiles {
            json: dir.join(JSON_FILE),
            junit: dir.join(JUNIT_FILE),
            markdown: dir.join(MARKDOWN_FILE),
            html: dir.join(HTML_FILE),
        }
    }
}

/// Creates `dir` if needed and writes every format into it.
///
/// `report.json` is written first: it is the source of the others and what
/// `rehearse report` reads back. A failure to write one file does not stop the
/// others; the first error is returned.
pub fn write_all(report: &RunReport, dir: &Path) -> io::Result<ReportFiles> {
    fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
    let files = ReportFiles::in_dir(dir);
    let outputs: [(&Path, io::Result<String>); 4] = [
        (&files.json, json(report)),
        (&files.junit, junit::to_xml(report)),
        (&files.markdown, markdown::markdown(report)),
        (&files.html, html::html(report)),
    ];
    let mut first_error = None;
    for (path, text) in outputs {
        let written = text.and_then(|t| write_atomic(path, t.as_bytes()));
        if let Err(e) = written {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(files),
    }
}

/// `report.json`: pretty JSON, newline-terminated.
pub(crate) fn json(report: &RunReport) -> io::Result<String> {
    let mut text = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    text.push('\n');
    Ok(text)
}

/// Why [`read_report`] could not return a report.
#[derive(Debug, thiserror::Error)]
pub enum ReadReportError {
    #[error("find a report at {}: the run wrote none (is the run id right, or is it still running?)", path.display())]
    Missing { path: PathBuf },
    #[error("read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "read {}: its schema version is {found}, this rehearse reads version {REPORT_SCHEMA_VERSION}",
        path.display()
    )]
    Version { path: PathBuf, found: u64 },
    #[error("read {}: more than {} MiB, the most rehearse reads", path.display(), MAX_REPORT_BYTES >> 20)]
    TooLarge { path: PathBuf },
}

/// Reads `report.json` back from a run's report directory.
pub fn read_report(dir: &Path) -> Result<RunReport, ReadReportError> {
    let path = dir.join(JSON_FILE);
    let text = match read_capped(&path) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(ReadReportError::TooLarge { path }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadReportError::Missing { path }),
        Err(source) => return Err(ReadReportError::Read { path, source }),
    };
    // Check the version before the shape, so a report from a newer rehearse says so
    // instead of failing on some renamed field.
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(source) => return Err(ReadReportError::Parse { path, source }),
    };
    match value.get("schema_version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(REPORT_SCHEMA_VERSION) => {}
        Some(found) => return Err(ReadReportError::Version { path, found }),
        None => {}
    }
    serde_json::from_value(value).map_err(|source| ReadReportError::Parse { path, source })
}

/// The most of a `report.json` rehearse reads (a report may come from a shared store,
/// whose cap for a run's files is the same).
pub(crate) const MAX_REPORT_BYTES: u64 = 64 << 20;

/// The text of `path`, or `None` when it is bigger than [`MAX_REPORT_BYTES`].
fn read_capped(path: &Path) -> io::Result<Option<String>> {
    use std::io::Read as _;
    let f = fs::File::open(path)?;
    if f.metadata()?.len() > MAX_REPORT_BYTES {
        return Ok(None);
    }
    let mut text = String::new();
    f.take(MAX_REPORT_BYTES + 1).read_to_string(&mut text)?;
    Ok((text.len() as u64 <= MAX_REPORT_BYTES).then_some(text))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, so readers
/// see the old file or the new one, never a partial one.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}-{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the write's error is the one returned; a leftover temporary file is only untidy.
        #[allow(clippy::let_underscore_must_use)]
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", path.display())))
}
