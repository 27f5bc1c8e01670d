//! rehearse: dress rehearsals for releases on a throwaway copy of production.
//!
//! The crate follows a run's path, and its modules are layered so that arrows point
//! one way (`scripts/check-layers.sh` checks it in `make lint`):
//!
//! - [`commands`]: one function per subcommand; chooses a provider, hands it to the
//!   engine, decides the exit code and writes the report's files;
//! - [`engine`]: the lifecycle, the journal and teardown, and the contract providers
//!   implement ([`engine::provider`]); it never names a provider;
//! - [`providers`]: `aws` (EC2, RDS) and `local` (PostgreSQL and processes here),
//!   each implementing the engine's contract;
//! - `suites` (the commands that judge a release) and [`report`] (JSON, JUnit,
//!   Markdown, HTML and the terminal summary); [`compare`] (baseline against candidate:
//!   the statistics and the judge) beside them;
//! - [`plan`] (a description compiled into a resource graph) over [`description`]
//!   (a YAML file loaded and checked);
//! - [`sys`]: what everything above stands on — processes, private files, state
//!   paths, signals, the clock, health checks; with `secrets` (what every layer
//!   redacts), `style` (colour), `diag` and `exit`.
//!
//! [`testkit`] (the fake cloud) is compiled for tests and benchmarks only. `main.rs`
//! only calls [`main_impl`]; everything else lives here so tests can drive it.

// In the shipped code a `let _ =` of a Result says why the error does not matter, item
// by item (`#[allow]` with a comment); tests drop cleanup results freely.
#![warn(clippy::let_underscore_must_use)]

pub(crate) mod cli;
pub mod commands;
pub mod compare;
pub mod description;
pub(crate) mod diag;
pub mod engine;
pub(crate) mod exit;
pub mod plan;
pub mod providers;
pub mod report;
pub(crate) mod secrets;
pub(crate) mod server;
pub(crate) mod style;
pub(crate) mod suites;
pub mod sys;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

use clap::Parser;

/// Parses the command line, runs the command, returns the process exit code.
pub fn main_impl() -> i32 {
    // Whatever rehearse creates is private to its user, unless handed on on purpose.
    sys::secure_fs::private_umask();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::PASSED };
            // Best effort: clap's own message to a closed terminal: nowhere else to say it.
            #[allow(clippy::let_underscore_must_use)]
            let _ = e.print();
            return code;
        }
    };
    init_tracing(&cli.global);
    commands::dispatch(cli)
}

fn init_tracing(g: &cli::Global) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REHEARSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("rehearse={level}")));
    // Best effort: a subscriber set already (by a test harness) keeps its own settings.
    #[allow(clippy::let_underscore_must_use)]
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(commands::use_color(g.color, std::io::IsTerminal::is_terminal(&std::io::stderr())))
        .with_target(false)
        .without_time()
        .try_init();
}
