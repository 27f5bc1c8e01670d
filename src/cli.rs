//! The command line, defined with clap; completions and the man page are generated
//! from these definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod value;
use value::Said;
pub use value::{Name, RunRef};

#[derive(Debug, Parser)]
#[command(
    name = "rehearse",
    version,
    about = "Dress rehearsals for releases on a throwaway copy of production",
    long_about = "rehearse builds an isolated copy of production from its latest backup, installs a \
                  candidate release, runs the automated suites, reports, and tears everything down.",
    after_help = crate::exit::HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// More detail on stderr (-v info, -vv debug, -vvv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors and the final verdict
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// When to use colors (NO_COLOR in the environment means never, unless `always`)
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Where runs keep their journals and reports [default: $XDG_STATE_HOME/rehearse]
    #[arg(long, global = true, env = "REHEARSE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The state store runs are kept in: file:///DIR (this machine, the default) or
    /// s3://BUCKET/PREFIX (shared: any machine pointed at it can list, report and tear down)
    #[arg(long, global = true, env = "REHEARSE_STATE", value_name = "URL")]
    pub state: Option<String>,
    /// A rehearse server to ask instead of acting here (`run`, `up`, `compare`, `down`,
    /// `extend`, `env`, `list`, `request`), with the token in $REHEARSE_TOKEN: no cloud
    /// credentials needed
    #[arg(long, global = true, env = "REHEARSE_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The change rehearsed, a field at a time: commit=SHA, author=LOGIN, pr=N,
    /// title=TEXT, url=URL (recorded in the report and shown on its pages; CI's
    /// variables fill what is not given)
    #[arg(long = "change", global = true, value_name = "KEY=VALUE", value_parser = Said(value::change_field))]
    pub change: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// `export NAME='value'` lines, for `eval "$(rehearse env RUN)"` (env only)
    Shell,
    /// `NAME='value'` lines, for a `.env` file (env only)
    Dotenv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// What `rehearse pool` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolAction {
    /// Restore and mask members until the pool has its size (replacing stale ones)
    Fill,
    /// Each member: its instance, snapshot, age and state; the pool's cost per hour
    Status,
    /// Remove every member no run has claimed
    Drain,
}

/// How `rehearse warm` keeps a golden copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CopyMethod {
    /// Copy-on-write where this machine allows it (root, loop devices, mkfs.xfs), else full
    Auto,
    /// Copy-on-write generations, or an error saying why not
    CopyOnWrite,
    /// A directory each run copies whole
    Copy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Destroy {
    /// Tear down after every run (default)
    Always,
    /// Keep a failed environment for debugging (within its TTL)
    Passing,
    /// Keep the environment (within its TTL); remove it with `rehearse down RUN_ID`
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check descriptions; print every problem with file:line:column
    Validate {
        /// Description files
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Release version to check templates with
        #[arg(long, value_name = "VERSION")]
        release: Option<String>,
    },
    /// Show what a run would create, from which production source, at what cost
    Plan {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Release version (default: the description's release.version)
        #[arg(long, value_name = "VERSION")]
        release: Option<String>,
        /// Look up which backup each database would be restored from (read-only AWS
        /// calls: the newest available snapshot); without it the plan calls no API
        #[arg(long)]
        resolve_backups: bool,
    },
    /// Print the JSON Schema of the description format (for editor completion)
    Schema,
    /// Full rehearsal: up, install, suites, report, down
    Run(RunArgs),
    /// Build the environment and keep it (until `down` or its TTL)
    Up(RunArgs),
    /// Tear down a run's environment, from its journal
    Down {
        #[arg(value_name = "RUN_ID", value_parser = Said(value::run_ref))]
        run_id: RunRef,
        /// AWS region to search by tag when the run's journal is lost
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
    },
    /// List runs and kept environments
    List {
        /// Include finished runs whose environment is gone
        #[arg(long)]
        all: bool,
        /// Only the runs this user started
        #[arg(long)]
        mine: bool,
    },
    /// Find expired rehearse resources and remove them (dry run unless --yes)
    Sweep {
        /// Really delete (default: only list)
        #[arg(long)]
        yes: bool,
        /// Only resources older than this (e.g. 12h)
        #[arg(long, value_name = "DURATION", value_parser = Said(value::older_than))]
        older_than: Option<Duration>,
        /// Only this environment's resources
        #[arg(long, value_name = "NAME")]
        environment: Option<String>,
        /// Sweep AWS resources in this region (by their rehearse tags) instead of this machine's runs
        #[arg(long, value_name = "REGION")]
        region: Option<String>,
    },
    /// Print a run's report again
    Report {
        #[arg(value_name = "RUN_ID", value_parser = Said(value::run_ref))]
        run_id: RunRef,
    },
    /// Push a kept environment's expiry out (up to the description's max_ttl from its start)
    Extend {
        #[arg(value_name = "RUN_ID", value_parser = Said(value::run_ref))]
        run_id: RunRef,
        /// How much longer, e.g. 1h or 2d
        #[arg(value_name = "DURATION", value_parser = Said(value::extension))]
        duration: Duration,
    },
    /// Print a kept environment's connection details, secrets included (default: shell
    /// `export` lines; --format dotenv or json)
    Env {
        #[arg(value_name = "RUN_ID", value_parser = Said(value::run_ref))]
        run_id: RunRef,
    },
    /// Run psql against a kept environment's database (the connection in PG* variables)
    Psql {
        #[arg(value_name = "RUN_ID", value_parser = Said(value::run_ref))]
        run_id: RunRef,
        /// The database (may be left out when there is one)
        #[arg(value_name = "DB")]
        database: Option<String>,
        /// Arguments for psql, after `--`
        #[arg(last = true, value_name = "PSQL_ARGS")]
        args: Vec<String>,
    },
    /// Print (or follow) a log of a kept environment: a service's, an install's or a suite's
    #[command(after_help = "TARGET: SERVICE, `install [SERVICE]` or `suite NAME`; none lists the logs.")]
    Logs {
        #[arg(value_name = "RUN_ID", value_parser = Said(value::run_ref))]
        run_id: RunRef,
        #[arg(value_name = "TARGET")]
        target: Vec<String>,
        /// Keep printing what is appended, until interrupted
        #[arg(short, long)]
        follow: bool,
    },
    /// Serve the self-service API: rehearsals on request, queued, audited (see README, "Self-service")
    Serve {
        /// The server's configuration (YAML: environments, proxy, tokens, rules)
        #[arg(long, value_name = "FILE", required_unless_present = "new_token")]
        config: Option<PathBuf>,
        /// Listen here instead of the configuration's `listen` (port 0: any free port)
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Print a new API token for USER and the configuration entry that admits it
        #[arg(long, value_name = "USER", conflicts_with_all = ["config", "listen"])]
        new_token: Option<String>,
    },
    /// Ask a rehearsal server for a rehearsal and follow it (token in $REHEARSE_TOKEN; exit: the run's)
    Request {
        /// The environment's name on the server
        #[arg(value_name = "ENVIRONMENT")]
        environment: String,
        /// Release version
        #[arg(long, value_name = "VERSION")]
        release: String,
    },
    /// Restore the latest backup once into a golden copy that later runs clone
    Warm {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// How runs copy it: copy-on-write copies take the same time at any size
        #[arg(long, value_enum, default_value = "auto")]
        method: CopyMethod,
    },
    /// A database's warm pool on AWS: fill it, show it, or empty it
    Pool {
        #[arg(value_enum)]
        action: PoolAction,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Hold a named lock in the state store while COMMAND runs (exit 5 if someone else holds it)
    Lock {
        #[arg(value_name = "NAME", value_parser = Said(value::lock_name))]
        name: Name,
        /// How long the lock holds without renewal (it is renewed every third of it
        /// while COMMAND runs; a holder killed outright frees it after this)
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = Said(value::lease))]
        lease: Duration,
        /// The command, after `--`
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Remove a named lock, whoever holds it (for a human, when its holder is known dead)
    Unlock {
        #[arg(value_name = "NAME", value_parser = Said(value::lock_name))]
        name: Name,
        /// Really remove it (without: say who holds it)
        #[arg(long)]
        force: bool,
    },
    /// Baseline against candidate: twin copies of production from one backup, the same
    /// load on both, judged metric by metric (exit 0 pass, 1 fail)
    Compare(CompareArgs),
    /// Rebuild a stage: a new generation from the newest backup with the release, its
    /// suites as acceptance, then every stable name switched to it at once
    Rebuild(RebuildArgs),
    /// A stage's generations and stable names (status, rollback, destroy, env)
    Stage {
        #[command(subcommand)]
        command: StageCommand,
    },
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Release version to rehearse (default: the description's release.version)
    #[arg(long, value_name = "VERSION")]
    pub release: Option<String>,
    /// When to tear down (overrides the description's `destroy`)
    #[arg(long, value_enum, value_name = "WHEN")]
    pub destroy: Option<Destroy>,
    /// Keep the environment afterwards (same as --destroy never)
    #[arg(long, conflicts_with = "destroy")]
    pub keep: bool,
    /// A name for the run, usable wherever a run id is (unique among live runs)
    #[arg(long, value_name = "NAME", value_parser = Said(value::run_name))]
    pub name: Option<Name>,
    /// Don't use the warm golden copy even if one exists
    #[arg(long)]
    pub cold: bool,
    /// When rehearse runs as root: the unprivileged user the release's install, its
    /// services and the suites run as [default: rehearse]
    #[arg(long, env = "REHEARSE_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
    /// Rehearse the deploy itself: build the copy with this release serving the
    /// description's load, then run --release's migration under it and switch (`run` only)
    #[arg(long, value_name = "VERSION")]
    pub from: Option<String>,
    /// A game day: run the description's `chaos:` faults (these, or all of them) on
    /// their schedule under its load, then the suites, and judge its expectations
    /// (`run` only)
    #[arg(long, value_name = "NAME", num_args = 0.., value_delimiter = ',')]
    pub chaos: Option<Vec<String>>,
}

#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// The description, with a `compare:` section
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The release running now (the reference)
    #[arg(long, value_name = "VERSION")]
    pub baseline: String,
    /// The release to judge against it
    #[arg(long, value_name = "VERSION")]
    pub candidate: String,
    /// Where in the request file the load starts (repetitions replay other stretches)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Rehearse the candidate's deploy over the baseline: both copies start with the
    /// baseline; the candidate's migration and switch run under the load while the
    /// baseline's twin gets the same load without them (as `run --from`)
    #[arg(long)]
    pub deploy: bool,
    /// Don't use the warm golden copy even if one exists
    #[arg(long)]
    pub cold: bool,
    /// When rehearse runs as root: the unprivileged user the release runs as [default: rehearse]
    #[arg(long, env = "REHEARSE_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct RebuildArgs {
    /// The description, with a `stage:` section
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Release version to build (default: the description's release.version)
    #[arg(long, value_name = "VERSION")]
    pub release: Option<String>,
    /// How long the replaced generation keeps serving the connections opened before the
    /// switch, before it is retired (default: the stage's `drain`, else 5m)
    #[arg(long, value_name = "DURATION", value_parser = Said(value::drain))]
    pub drain: Option<Duration>,
    /// Keep a generation that failed its acceptance, for debugging (within its TTL)
    #[arg(long)]
    pub keep_failed: bool,
    /// Don't use the warm golden copy even if one exists
    #[arg(long)]
    pub cold: bool,
    /// When rehearse runs as root: the unprivileged user the release's install, its
    /// services and the suites run as [default: rehearse]
    #[arg(long, env = "REHEARSE_RUN_AS", value_name = "USER")]
    pub run_as: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StageCommand {
    /// The current generation, its release and backup, the stable names and where they
    /// point, and every earlier generation's fate
    Status {
        #[arg(value_name = "STAGE", value_parser = Said(value::stage_name))]
        stage: Name,
    },
    /// Point every stable name back at the previous generation, while it still drains
    Rollback {
        #[arg(value_name = "STAGE", value_parser = Said(value::stage_name))]
        stage: Name,
    },
    /// Remove everything of the stage: every generation, the stable names, its record
    Destroy {
        #[arg(value_name = "STAGE", value_parser = Said(value::stage_name))]
        stage: Name,
    },
    /// Print how to reach the stage through its stable names, its password included
    /// (default: shell `export` lines; --format dotenv or json)
    Env {
        #[arg(value_name = "STAGE", value_parser = Said(value::stage_name))]
        stage: Name,
    },
    /// The local stable names' forwarder (started by `rebuild`)
    #[command(hide = true)]
    Forward {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
