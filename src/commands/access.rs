//! Using a kept environment: `env` (its connection details, secrets included — the only
//! command that prints them), `psql` (a session on one of its copies, the connection in
//! libpq's environment, never on a command line) and `logs` (a service's, an install's
//! or a suite's log, printed or followed, with the run's secrets redacted).
//!
//! `logs` prints what a release wrote, or what anyone who can write the state store put
//! there: every line goes through the terminal sanitizer, whether stdout is a terminal
//! or not. A pipe is most often a terminal one step removed (`| less -R`, `| tee`,
//! `| grep`, a CI log viewer that renders escapes), a file written now is `cat` on a
//! terminal later, and rehearse cannot know which; the sanitizer keeps every line, tab
//! and printable character, so `grep` finds what it would have found. The log as the
//! release wrote it is the file in the run's state directory (`logs` with no target
//! lists them).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::checked_state;
use super::edge::connection::print_connection;
use crate::cli::Global;
use crate::description::template::DatabaseOutputs;
use crate::engine::connection::Connection;
use crate::exit;
use crate::secrets;
use crate::sys::state;

/// The state directory of `run_id` (a run id: the command line's, or a name's,
/// resolved by `named` in commands.rs), or the exit code (said).
fn run_state(g: &Global, run_id: &str) -> Result<PathBuf, i32> {
    let dir = checked_state(g)?.map(|root| state::run_dir(&root, run_id)).filter(|d| d.is_dir());
    dir.ok_or_else(|| {
        errln!("error: no run {run_id} on this machine; see `rehearse list`");
        exit::USAGE
    })
}

/// The connection details of a kept run, or the exit code (said).
fn connection(g: &Global, run_id: &str) -> Result<Connection, i32> {
    let dir = run_state(g, run_id)?;
    Connection::read(&dir, run_id).map_err(|e| {
        errln!("error: {e}");
        exit::USAGE
    })
}

/// `rehearse env RUN`: the variables a client of the copy needs — the run's standard
/// ones (`REHEARSE_DB_<NAME>_URL`, `REHEARSE_SERVICE_<NAME>_URL`, …) and, when the
/// environment has one database, `DATABASE_URL` and libpq's `PG*`.
pub(super) fn env(g: &Global, run_id: &str) -> i32 {
    let c = match connection(g, run_id) {
        Ok(c) => c,
        Err(code) => return code,
    };
    print_connection(g, &c)
}

/// `rehearse psql RUN [DB] [-- ARGS]`: replaces this process with `psql`, its
/// connection in `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD` and `PGDATABASE`, so that
/// the password is on no command line another user could read.
pub(super) fn psql(g: &Global, run_id: &str, database: Option<&str>, args: &[String]) -> i32 {
    let c = match connection(g, run_id) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let db: &DatabaseOutputs = match (database, c.databases.len()) {
        (Some(name), _) => match c.databases.get(name) {
            Some(d) => d,
            None => {
                let known: Vec<&String> = c.databases.keys().collect();
                errln!("error: run {run_id} has no database `{name}` (it has: {known:?})");
                return exit::USAGE;
            }
        },
        (None, 1) => c.databases.values().next().expect("one database"),
        (None, 0) => {
            errln!("error: run {run_id} has no database");
            return exit::USAGE;
        }
        (None, _) => {
            let known: Vec<&String> = c.databases.keys().collect();
            errln!("error: run {run_id} has several databases: name one of {known:?}");
            return exit::USAGE;
        }
    };
    // PostgreSQL's own psql when this machine has its server binaries; else the PATH's.
    let program = crate::providers::local::postgres::PgBin::find()
        .map(|b| b.dir.join("psql"))
        .unwrap_or_else(|_| PathBuf::from("psql"));
    let mut cmd = std::process::Command::new(&program);
    cmd.args(args).env_remove("PGSERVICE").env_remove("PGSERVICEFILE").envs(db.libpq_env());
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    errln!("error: cannot run {}: {e}", program.display());
    exit::BUILD_FAILED
}

/// The log files a target names, in the run's state directory `dir`.
fn log_files(dir: &Path, target: &[String]) -> Result<Vec<PathBuf>, String> {
    let logs = dir.join("logs");
    let in_dir = |d: &Path, prefix: &str| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix) && n.ends_with(".log"))
            })
            .collect();
        v.sort();
        v
    };
    let found = match target {
        [kind] if kind == "install" => in_dir(&logs, "install."),
        [kind, name] if kind == "install" => in_dir(&logs, &format!("install.{name}.")),
        [kind, name] if kind == "suite" => in_dir(&dir.join("suites").join(name), ""),
        [service] => in_dir(&logs, &format!("service.{service}.")),
        _ => return Err("name a SERVICE, `install [SERVICE]` or `suite NAME`".into()),
    };
    if found.is_empty() {
        let available: Vec<String> = in_dir(&logs, "")
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .collect();
        return Err(format!("no log for `{}` (the run's logs: {})", target.join(" "), available.join(", ")));
    }
    Ok(found)
}

/// `rehearse logs RUN [TARGET] [-f]`: prints the target's logs (every instance of a
/// service, each line prefixed with its file when there are several), or lists them;
/// `--follow` keeps printing what is appended until interrupted.
pub(super) fn logs(g: &Global, run_id: &str, target: &[String], follow: bool) -> i32 {
    let dir = match run_state(g, run_id) {
        Ok(d) => d,
        Err(code) => return code,
    };
    // The run's passwords never reach the terminal through a log.
    if let Ok(c) = Connection::read(&dir, run_id) {
        for d in c.databases.values() {
            secrets::register(&d.password);
        }
    }
    if target.is_empty() {
        let suites = std::fs::read_dir(dir.join("suites")).into_iter().flatten().flatten().map(|e| e.path());
        let mut all: Vec<PathBuf> = std::iter::once(dir.join("logs"))
            .chain(suites)
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        all.sort();
        for f in all {
            outln!("{}", f.display());
        }
        return exit::PASSED;
    }
    let files = match log_files(&dir, target) {
        Ok(f) => f,
        Err(why) => {
            errln!("error: {why}");
            return exit::USAGE;
        }
    };
    let prefix = files.len() > 1;
    let mut offsets = vec![0u64; files.len()];
    loop {
        for (f, offset) in files.iter().zip(offsets.iter_mut()) {
            let name = crate::sys::text::printable(f.file_stem().and_then(|n| n.to_str()).unwrap_or_default());
            // A look reads at most LOG_CHUNK: a big log is printed in several, never
            // held whole in memory.
            loop {
                let (text, end, more) = match read_from(f, *offset, LOG_CHUNK) {
                    Ok(read) => read,
                    Err(e) => {
                        errln!("error: cannot read {}: {e}", f.display());
                        return exit::BUILD_FAILED;
                    }
                };
                *offset = end;
                let mut out = std::io::stdout().lock();
                for line in text.lines() {
                    // Made printable first, so that no sequence split a secret on the
                    // screen that redaction would not see whole.
                    let line = secrets::redact(&crate::sys::text::printable_text(line)).into_owned();
                    let written = if prefix { writeln!(out, "{name}| {line}") } else { writeln!(out, "{line}") };
                    if written.is_err() {
                        // The reader went away (`| head`): nothing more to show.
                        return exit::PASSED;
                    }
                }
                if !more {
                    break;
                }
            }
        }
        if !follow {
            return exit::PASSED;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How much of a log `logs` reads at a time.
const LOG_CHUNK: u64 = 1 << 20;

/// The complete lines of `path` from byte `offset` on, at most `max` bytes of them, where
/// they end, and whether there is more to read now (a line still being written waits for
/// the next look; a line longer than `max` is printed in pieces).
fn read_from(path: &Path, offset: u64, max: u64) -> std::io::Result<(String, u64, bool)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(max).read_to_end(&mut bytes)?;
    let full = bytes.len() as u64 == max;
    let complete = match bytes.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if full => bytes.len(),
        None => 0,
    };
    bytes.truncate(complete);
    Ok((String::from_utf8_lossy(&bytes).into_owned(), start + complete as u64, full))
}
