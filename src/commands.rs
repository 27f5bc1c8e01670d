//! One function per subcommand: parse nothing, decide nothing about formats beyond
//! choosing text or JSON, and return an exit code.

use std::io::{IsTerminal, Write};

use clap::CommandFactory;

use crate::cli::{Cli, ColorChoice, Command, Format};
use crate::description;
use crate::exit;
use crate::plan;

mod runs;

pub fn dispatch(cli: Cli) -> i32 {
    let g = &cli.global;
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
                eprintln!("error: failed to render the man page: {e}");
                return exit::USAGE;
            }
            let _ = std::io::stdout().write_all(&out);
            exit::PASSED
        }
        Command::Run(args) => runs::run(g, args, false),
        Command::Up(args) => runs::run(g, args, true),
        Command::Down { run_id, region } => runs::down(g, run_id, region.as_deref()),
        Command::List { all } => runs::list(g, *all),
        Command::Sweep { yes, older_than, environment, region } => {
            runs::sweep(g, *yes, older_than.as_deref(), environment.as_deref(), region.as_deref())
        }
        Command::Report { run_id } => runs::report(g, run_id),
        Command::Warm { file } => runs::warm(g, file),
    }
}

/// Whether to color output on a stream: `always`, `never`, or (auto) when the stream
/// is a terminal and NO_COLOR is not set (<https://no-color.org>).
pub fn use_color(choice: ColorChoice, is_tty: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

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
                    Format::Text if !g.quiet => println!("{summary}"),
                    Format::Json => json_items.push(serde_json::json!({"file": file, "valid": true, "problems": []})),
                    _ => {}
                }
            }
            Err(diags) => {
                failed = true;
                match g.format {
                    Format::Text => eprint!("{}", diags.render()),
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
        println!("{}", serde_json::to_string_pretty(&json_items).unwrap_or_default());
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
        eprint!("{}", diags.render());
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
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    if resolve && loaded.desc.provider() == description::ProviderKind::Aws {
        if let Err(e) = runs::resolve_backups(&loaded, &mut plan) {
            eprintln!("error: {e}");
            return exit::BUILD_FAILED;
        }
    }
    match g.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&plan).unwrap_or_default()),
        Format::Text => print!("{}", plan::render::text(&plan, use_color(g.color, std::io::stdout().is_terminal()))),
    }
    exit::PASSED
}

fn schema() -> i32 {
    let schema = description::schema();
    println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
    exit::PASSED
}
