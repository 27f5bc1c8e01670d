//! One function per subcommand: parse nothing, decide nothing about formats beyond
//! choosing text or JSON, and return an exit code.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::CommandFactory;

use crate::cli::{Cli, Command, Format, Global, RunRef};
use crate::description;
use crate::engine::events::{Lines, Progress, Reporter, Silent};
use crate::exit;
use crate::plan;
use crate::providers::aws::sdk::Sdk;
use crate::providers::aws::AwsProvider;
use crate::style::Styles;
use crate::sys::{secure_fs, state};
use store::Part;

// What the commands print quotes what strangers wrote: run names, users, hosts and
// releases from journals in a shared store, lock holders, stage records, resource ids,
// error messages that carry them. Every line goes through the same sanitizer as log
// tails on its way to the terminal (or a pipe: see `logs`), so none of it can retitle
// the terminal, set its clipboard, plant a link or clear the screen. A raw `println!`
// in the commands is for exact output only (`env`'s shell lines, JSON, the colored
// summaries that sanitize their parts), marked `// raw:`; `scripts/check-layers.sh`
// refuses any other.

/// `println!` through [`crate::sys::text::printable_text`].
macro_rules! outln {
    ($($arg:tt)*) => {
        println!("{}", $crate::sys::text::printable_text(&format!($($arg)*))) // raw: sanitized
    };
}

/// `eprintln!` through [`crate::sys::text::printable_text`].
macro_rules! errln {
    ($($arg:tt)*) => {
        eprintln!("{}", $crate::sys::text::printable_text(&format!($($arg)*))) // raw: sanitized
    };
}

/// `eprint!` through [`crate::sys::text::printable_text`].
macro_rules! err {
    ($($arg:tt)*) => {
        eprint!("{}", $crate::sys::text::printable_text(&format!($($arg)*))) // raw: sanitized
    };
}

mod access;
mod compare;
mod down;
mod edge;
mod inventory;
mod lock;
mod pool;
mod remote;
mod run;
mod serve;
mod stage;
mod store;
mod warm;

pub use edge::run::{exit_code, outcome_exit_code};

pub fn dispatch(cli: Cli) -> i32 {
    let g = &cli.global;
    if matches!(g.format, Format::Shell | Format::Dotenv)
        && !matches!(
            cli.command,
            Command::Env { .. } | Command::Stage { command: crate::cli::StageCommand::Env { .. } }
        )
    {
        errln!("error: --format shell and --format dotenv are for `rehearse env`; elsewhere use text or json");
        return exit::USAGE;
    }
    if let Some(code) = remote::through(g, &cli.command) {
        return code;
    }
    match &cli.command {
        Command::Validate { files, release } => validate(g, files, release.as_deref()),
        Command::Plan { file, release, resolve_backups } => plan_cmd(g, file, release.as_deref(), *resolve_backups),
        Command::Schema => schema(),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "rehearse", &mut std::io::stdout());
            exit::PASSED
        }
        Command::Man => {
            let man = clap_mangen::Man::new(Cli::command());
            let mut out = Vec::new();
            if let Err(e) = man.render(&mut out) {
                errln!("error: failed to render the man page: {e}");
                return exit::USAGE;
            }
            match std::io::stdout().write_all(&out) {
                Ok(()) => exit::PASSED,
                Err(e) => {
                    errln!("error: cannot write the man page: {e}");
                    exit::USAGE
                }
            }
        }
        Command::Run(args) => run::run(g, args, false),
        Command::Up(args) => run::run(g, args, true),
        Command::Down { run_id, region } => {
            named(g, run_id, &[Part::Journal, Part::Connection], |id| down::down(g, id, region.as_deref()))
        }
        Command::List { all, mine } => {
            store::fetched(g, None, &[], || inventory::list(g, *all, *mine)).unwrap_or_else(|code| code)
        }
        Command::Sweep { yes, older_than, environment, region } => store::fetched(g, None, &[], || {
            down::sweep(g, *yes, *older_than, environment.as_deref(), region.as_deref())
        })
        .unwrap_or_else(|code| code),
        Command::Report { run_id } => named(g, run_id, &[Part::Journal, Part::Report], |id| inventory::report(g, id)),
        Command::Extend { run_id, duration } => {
            named(g, run_id, &[Part::Journal], |id| inventory::extend(g, id, *duration))
        }
        Command::Warm { file, method } => warm::warm(g, file, *method),
        // Only through a server (above).
        Command::Request { .. } => exit::USAGE,
        Command::Serve { config, listen, new_token } => {
            serve::serve(g, config.as_deref(), *listen, new_token.as_deref())
        }
        Command::Env { run_id } => named(g, run_id, &[Part::Journal, Part::Connection], |id| access::env(g, id)),
        Command::Psql { run_id, database, args } => {
            named(g, run_id, &[Part::Journal, Part::Connection], |id| access::psql(g, id, database.as_deref(), args))
        }
        Command::Logs { run_id, target, follow } => {
            named(g, run_id, &[Part::Journal, Part::Logs], |id| access::logs(g, id, target, *follow))
        }
        Command::Pool { action, file } => pool::pool(
            g,
            match action {
                crate::cli::PoolAction::Fill => pool::Action::Fill,
                crate::cli::PoolAction::Status => pool::Action::Status,
                crate::cli::PoolAction::Drain => pool::Action::Drain,
            },
            file,
        ),
        Command::Lock { name, lease, command } => lock::lock(g, name, *lease, command),
        Command::Unlock { name, force } => lock::unlock(g, name, *force),
        Command::Compare(args) => compare::compare(g, args),
        Command::Rebuild(args) => stage::rebuild(g, args),
        Command::Stage { command } => stage::stage(g, command),
    }
}

/// Whether to color output on a stream (one rule, in [`crate::style`]).
pub use crate::style::use_color;

fn validate(g: &crate::cli::Global, files: &[std::path::PathBuf], release: Option<&str>) -> i32 {
    let mut failed = false;
    let mut json_items = Vec::new();
    for file in files {
        match description::load(file, release) {
            Ok(loaded) => {
                let d = &loaded.desc;
                let summary = format!(
                    "{}: valid ({} provider, {} database{}, {} service{}, {} suite{})",
                    file.display(),
                    d.provider().as_str(),
                    d.databases.len(),
                    plural(d.databases.len()),
                    d.services.len(),
                    plural(d.services.len()),
                    d.suites.len(),
                    plural(d.suites.len()),
                );
                match g.format {
                    Format::Text if !g.quiet => outln!("{summary}"),
                    Format::Json => json_items.push(serde_json::json!({"file": file, "valid": true, "problems": []})),
                    _ => {}
                }
            }
            Err(diags) => {
                failed = true;
                match g.format {
                    Format::Text | Format::Shell | Format::Dotenv => err!("{}", diags.render()),
                    Format::Json => {
                        let problems: Vec<_> = diags
                            .items
                            .iter()
                            .map(|d| {
                                serde_json::json!({
                                    "line": d.pos.line, "column": d.pos.col, "message": d.message,
                                    "expected": d.expected, "help": d.help,
                                })
                            })
                            .collect();
                        json_items.push(serde_json::json!({"file": file, "valid": false, "problems": problems}));
                    }
                }
            }
        }
    }
    if g.format == Format::Json {
        if let Err(code) = print_json(&json_items) {
            return code;
        }
    }
    if failed {
        exit::USAGE
    } else {
        exit::PASSED
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Loads a description or prints its problems; `Err` carries the exit code.
pub fn load_or_report(file: &std::path::Path, release: Option<&str>) -> Result<description::Loaded, i32> {
    description::load(file, release).map_err(|diags| {
        err!("{}", diags.render());
        exit::USAGE
    })
}

fn plan_cmd(g: &crate::cli::Global, file: &std::path::Path, release: Option<&str>, resolve: bool) -> i32 {
    let loaded = match load_or_report(file, release) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut plan = match plan::build(&loaded, release, None) {
        Ok(p) => p,
        Err(e) => {
            errln!("error: {e}");
            return exit::USAGE;
        }
    };
    if let (true, Some(aws)) = (resolve, loaded.desc.aws()) {
        let region = aws.region.clone();
        let resolved =
            runtime().block_on(async { aws_provider(&region).await.resolve_backups(&loaded, &mut plan).await });
        if let Err(e) = resolved {
            errln!("error: {e}");
            return exit::BUILD_FAILED;
        }
    }
    match g.format {
        Format::Json => return print_json(&plan).map_or_else(|code| code, |()| exit::PASSED),
        Format::Text | Format::Shell | Format::Dotenv => {
            print!("{}", plan::render::text(&plan, Styles::stdout(g.color))) // raw: colored; the description's own text
        }
    }
    exit::PASSED
}

fn schema() -> i32 {
    let schema = description::schema();
    print_json(&schema).map_or_else(|code| code, |()| exit::PASSED)
}

/// Runs `f` with the run id that `arg` names: a run id, or a live run's name; with a
/// shared state store, the `parts` of that run are fetched from it first.
fn named(g: &Global, arg: &RunRef, parts: &[Part], f: impl FnOnce(&str) -> i32) -> i32 {
    // A name is resolved among every run the store has; a run id needs no resolving.
    let id = match arg {
        RunRef::Id(id) => Ok(Ok(id.clone())),
        RunRef::Name(name) => store::fetched(g, None, &[], || inventory::resolve_run(g, name)),
    };
    match id {
        Ok(Ok(id)) => store::fetched(g, Some(&id), parts, || f(&id)).unwrap_or_else(|code| code),
        Ok(Err(code)) | Err(code) => code,
    }
}

/// Signal handlers for a command that creates things: without them an interrupt
/// would kill it before its teardown, so it does not start (`Err`: the exit code).
/// A command's async body on a new runtime, with the reporter `g` asks for and the
/// signal handlers installed (or the exit code of why they could not be).
fn with_signals(g: &Global, body: impl AsyncFnOnce(&dyn Reporter, &crate::sys::signals::Signals) -> i32) -> i32 {
    let reporter = reporter(g);
    runtime().block_on(async {
        match signals() {
            Ok(s) => body(reporter.as_ref(), &s).await,
            Err(code) => code,
        }
    })
}

fn signals() -> Result<crate::sys::signals::Signals, i32> {
    crate::sys::signals::Signals::install().map_err(|e| {
        errln!("error: cannot install signal handlers: {e}");
        exit::BUILD_FAILED
    })
}

/// Prints `value` as pretty JSON on stdout. Serializing rehearse's own types fails only
/// through a bug; then nothing half-written is printed, and the error says so.
fn print_json<T: serde::Serialize>(value: &T) -> Result<(), i32> {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            // Strings keep their text, escaped: valid JSON that a terminal cannot act on.
            println!("{}", crate::sys::text::terminal_safe_json(&text)); // raw: JSON, escaped
            Ok(())
        }
        Err(e) => {
            errln!("error: cannot print JSON: {e} (a bug: please report it)");
            Err(exit::BUILD_FAILED)
        }
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime can be built")
}

fn reporter(g: &Global) -> Box<dyn Reporter> {
    if g.quiet || g.format == Format::Json {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() && Styles::stderr(g.color).is_colored() {
        // Spinners where colour is wanted; `--color never` on a terminal gets lines.
        Box::new(Progress::new(Styles::stderr(g.color)))
    } else {
        Box::new(Lines { start: Instant::now(), styles: Styles::stderr(g.color) })
    }
}

/// The AWS provider over the SDK, with the standard polling schedule
/// (`POLL_FIRST`, `POLL_MAX`).
pub async fn aws_provider(region: &str) -> AwsProvider<Sdk> {
    AwsProvider::new(Sdk::new(region).await, crate::providers::aws::POLL_FIRST, crate::providers::aws::POLL_MAX)
}

/// The state directory, checked: `Ok(None)` when it does not exist yet; an error
/// (printed) when another user could have written what is in it.
fn checked_state(g: &Global) -> Result<Option<PathBuf>, i32> {
    let root = store::local_root(g);
    for dir in [root.clone(), state::runs_dir(&root)] {
        match secure_fs::check_private_dir(&dir) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) => {
                errln!("error: {e}; rehearse reads journals only from a directory no one else can write");
                return Err(exit::USAGE);
            }
        }
    }
    Ok(Some(root))
}
