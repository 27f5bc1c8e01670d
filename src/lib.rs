//! rehearse: dress rehearsals for releases on a throwaway copy of production.
//!
//! The crate follows a run's path: [`description`] (load and check a YAML file) →
//! [`plan`] (compile it into a resource graph) → `engine` (lifecycle, journal,
//! teardown) → `providers` (aws, local) → `suites` → `report`; [`secrets`] is what
//! every layer redacts. `main.rs` only calls
//! [`main_impl`]; everything else lives here so tests can drive it.

pub mod cli;
pub mod commands;
pub mod description;
pub mod diag;
pub mod engine;
pub mod exit;
pub mod plan;
pub mod providers;
pub mod report;
pub mod secrets;
pub mod style;
pub mod suites;
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(commands::use_color(g.color, std::io::IsTerminal::is_terminal(&std::io::stderr())))
        .with_target(false)
        .without_time()
        .try_init();
}
