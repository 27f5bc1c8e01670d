//! The CLI pointed at a server (`--server URL`, `$REHEARSE_SERVER`): `run`, `up`,
//! `compare` and `request` ask it for a rehearsal, a dry run or a comparison and follow
//! it to its end (its exit code is the run's); `down`, `extend` and `env` act on a kept
//! dry run by its request id (`q-…`), as its owner; `list` lists the server's requests.
//! The token is `$REHEARSE_TOKEN` (never an argument: it would show in `ps`). No cloud
//! credentials are needed, nor a state directory.

use serde_json::json;

use crate::cli::{Command, Format, Global, RunRef};
use crate::exit;
use crate::server::client::{ClientError, Remote, Requested};

/// The exit code of `command` done through `g.server`, or `None` when it is done here
/// (no server named, or a command that needs none: validate, plan, schema, serve …).
pub(crate) fn through(g: &Global, command: &Command) -> Option<i32> {
    let name = |file: &std::path::Path| {
        // A description's name on the server: `demo` or `environments/demo.yaml`.
        file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string()
    };
    let server = match (command, g.server.as_deref()) {
        (Command::Request { .. }, None) => {
            errln!("error: rehearse request needs --server URL (or $REHEARSE_SERVER)");
            return Some(exit::USAGE);
        }
        (_, None) => return None,
        (_, Some(s)) => s,
    };
    Some(match command {
        Command::Request { environment, release } => ask(g, server, Ask::Rehearse(environment, release, None, None)),
        Command::Run(args) | Command::Up(args) => {
            let up = matches!(command, Command::Up(_));
            if args.name.is_some() || args.cold || args.destroy.is_some() || (args.keep && !up) {
                errln!(
                    "error: --name, --cold, --destroy and --keep are the server's to decide: through a server, \
                     `run` rehearses once and `up` keeps a dry run"
                );
                return Some(exit::USAGE);
            }
            let Some(release) = args.release.as_deref() else {
                errln!("error: through a server, name the release: --release VERSION");
                return Some(exit::USAGE);
            };
            if up && args.from.is_some() {
                errln!("error: `--from` rehearses a deploy: it belongs to `rehearse run`, not `up`");
                return Some(exit::USAGE);
            }
            if up && args.chaos.is_some() {
                errln!("error: `--chaos` runs a game day: it belongs to `rehearse run`, not `up`");
                return Some(exit::USAGE);
            }
            let env = name(&args.file);
            let (from, chaos) = (args.from.as_deref(), args.chaos.as_deref());
            ask(g, server, if up { Ask::DryRun(&env, release) } else { Ask::Rehearse(&env, release, from, chaos) })
        }
        Command::Compare(args) => {
            if args.seed.is_some() || args.cold {
                errln!("error: --seed and --cold are the server's to decide through a server");
                return Some(exit::USAGE);
            }
            ask(g, server, Ask::Compare(&name(&args.file), &args.baseline, &args.candidate, args.deploy))
        }
        Command::Down { run_id, .. } => owner(server, run_id, "destroy", |remote, id| async move {
            remote.post(&format!("/api/v1/requests/{id}/destroy"), &json!({})).await?;
            let mut say = |line: &str| errln!("{line}");
            let done = remote.follow(&id, &mut say).await?;
            errln!("request {id}: {}", done.error.as_deref().unwrap_or("destroyed"));
            Ok(if done.error.as_deref().is_some_and(|e| e.contains("nothing left")) {
                exit::PASSED
            } else {
                done.exit_code
            })
        }),
        Command::Extend { run_id, duration } => owner(server, run_id, "extend", |remote, id| async move {
            let by = crate::description::format_duration(*duration);
            let answer = remote.post(&format!("/api/v1/requests/{id}/extend"), &json!({ "by": by })).await?;
            let at = answer["expires_at"].as_str().map(crate::sys::text::printable).unwrap_or_default();
            outln!("{id}: expires {at}");
            Ok(exit::PASSED)
        }),
        Command::Env { run_id } => owner(server, run_id, "reveal", |remote, id| async move {
            let answer = remote.post(&format!("/api/v1/requests/{id}/reveal"), &json!({})).await?;
            let c: crate::engine::connection::Connection = serde_json::from_value(answer)
                .map_err(|e| ClientError::Garbled(format!("the connection details: {e}")))?;
            c.check(&c.run_id).map_err(|e| ClientError::Garbled(format!("the connection details: {e}")))?;
            Ok(super::edge::connection::print_connection(g, &c))
        }),
        Command::List { .. } => list(g, server),
        Command::Serve { .. } => return None,
        Command::Validate { .. }
        | Command::Plan { .. }
        | Command::Schema
        | Command::Completions { .. }
        | Command::Man => return None,
        _ => {
            errln!(
                "error: this command is not done through a server (--server, $REHEARSE_SERVER): through one, \
                 run, up, compare, down, extend, env, list and request are; unset REHEARSE_SERVER to act here"
            );
            exit::USAGE
        }
    })
}

/// What is asked of the server.
enum Ask<'a> {
    /// Environment, release, the release it is deployed over (`--from`), and a game
    /// day's faults (`--chaos`).
    Rehearse(&'a str, &'a str, Option<&'a str>, Option<&'a [String]>),
    DryRun(&'a str, &'a str),
    /// Environment, baseline, candidate, and whether its deploy is rehearsed (`--deploy`).
    Compare(&'a str, &'a str, &'a str, bool),
}

fn token() -> Result<String, i32> {
    match std::env::var("REHEARSE_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
        Some(t) => Ok(t),
        None => {
            errln!(
                "error: asking a server needs a token in $REHEARSE_TOKEN (`rehearse serve --new-token USER` makes one)"
            );
            Err(exit::USAGE)
        }
    }
}

/// The server, asked with the token in `$REHEARSE_TOKEN`; the exit code, said, when it
/// cannot be.
fn connect(server: &str) -> Result<Remote, i32> {
    let token = token()?;
    Remote::new(server, &token).map_err(|e| failed(&e))
}

fn failed(e: &ClientError) -> i32 {
    errln!("error: {e}");
    match e {
        ClientError::Url(_) => exit::USAGE,
        // A baseline that cannot be built, as `run --from` says it locally.
        ClientError::Refused { status, .. } if status.as_u16() == 422 => exit::BUILD_FAILED,
        ClientError::Refused { status, .. } if status.is_client_error() => exit::USAGE,
        _ => exit::BUILD_FAILED,
    }
}

fn ask(g: &Global, server: &str, what: Ask<'_>) -> i32 {
    let remote = match connect(server) {
        Ok(r) => r,
        Err(code) => return code,
    };
    super::runtime().block_on(async {
        let (path, body, said) = match what {
            Ask::Rehearse(env, release, None, None) => (
                "/api/v1/rehearsals",
                json!({ "environment": env, "release": release }),
                format!("{env} release {release}"),
            ),
            // `chaos` only when asked: a server from before it refuses the field.
            Ask::Rehearse(env, release, from, Some(chaos)) => (
                "/api/v1/rehearsals",
                match from {
                    Some(from) => json!({ "environment": env, "release": release, "from": from, "chaos": chaos }),
                    None => json!({ "environment": env, "release": release, "chaos": chaos }),
                },
                format!("a game day of {env} release {release}"),
            ),
            Ask::Rehearse(env, release, Some(from), None) => (
                "/api/v1/rehearsals",
                json!({ "environment": env, "release": release, "from": from }),
                format!("{env} release {release} deployed over {from}"),
            ),
            Ask::DryRun(env, release) => (
                "/api/v1/dry-runs",
                json!({ "environment": env, "release": release }),
                format!("a dry run of {env} release {release}"),
            ),
            Ask::Compare(env, baseline, candidate, deploy) => (
                "/api/v1/comparisons",
                // `deploy` only when asked: a server from before it refuses the field.
                match deploy {
                    true => json!({ "environment": env, "baseline": baseline, "candidate": candidate, "deploy": true }),
                    false => json!({ "environment": env, "baseline": baseline, "candidate": candidate }),
                },
                format!("{env}: {candidate} against {baseline}{}", if deploy { ", its deploy under load" } else { "" }),
            ),
        };
        // The change CI says it is, for the run's pages and report.
        let mut body = body;
        if let Some(change) = super::edge::run::change_of(g) {
            body["change"] = serde_json::to_value(change).unwrap_or_default();
        }
        let id = match remote.ask(path, &body).await {
            Ok(id) => id,
            Err(e) => return failed(&e),
        };
        errln!("request {id} accepted: {said}");
        let mut say = |line: &str| errln!("{line}");
        match remote.follow(&id, &mut say).await {
            Ok(done) => {
                step_summary(&remote, &id).await;
                ended(&remote, &done)
            }
            Err(e) => failed(&e),
        }
    })
}

/// In a GitHub Actions job (`$GITHUB_STEP_SUMMARY` names its file), the request's
/// summary (its run's summary.md) appended to the job's step summary.
async fn step_summary(remote: &Remote, id: &str) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else { return };
    match remote.get_text(&format!("/api/v1/requests/{id}/summary")).await {
        Ok(md) => {
            use std::io::Write;
            let written = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .and_then(|mut f| f.write_all(crate::sys::text::printable_text(&md).as_bytes()));
            if let Err(e) = written {
                errln!("warning: cannot append the summary to {}: {e}", std::path::Path::new(&path).display());
            }
        }
        Err(e) => errln!("warning: no summary from the server: {e}"),
    }
}

/// Says how a request ended; its exit code.
fn ended(remote: &Remote, done: &Requested) -> i32 {
    let id = &done.id;
    match (&done.verdict, &done.error, &done.kept_until) {
        (Some(v), _, Some(until)) => {
            errln!("request {id}: {v}, kept until {until}");
            errln!(
                "  `rehearse env {id} --server {}` prints how to reach it; `rehearse down {id}` destroys it",
                remote.url()
            );
        }
        (Some(v), _, None) => errln!("request {id}: {v} (exit {})", done.exit_code),
        (None, Some(e), _) => errln!("request {id}: error: {e} (exit {})", done.exit_code),
        (None, None, _) => errln!("request {id}: exit {}", done.exit_code),
    }
    if let Some(c) = &done.comparison {
        errln!("open this: {}/compares/{c}/compare.html", remote.url());
    }
    done.exit_code
}

/// An action of a kept dry run's owner, on request `run_id` (a request id, `q-…`).
fn owner<F, Fut>(server: &str, run_id: &RunRef, doing: &str, act: F) -> i32
where
    F: FnOnce(Remote, String) -> Fut,
    Fut: std::future::Future<Output = Result<i32, ClientError>>,
{
    let id = match run_id {
        RunRef::Name(n) | RunRef::Id(n) if crate::engine::requests::valid_id(n) => n.clone(),
        RunRef::Name(n) | RunRef::Id(n) => {
            errln!(
                "error: through a server, a dry run is named by its request id (`q-…`, as `up` printed it), not `{}`; \
                 cannot {doing} it",
                crate::sys::text::printable(n)
            );
            return exit::USAGE;
        }
    };
    let remote = match connect(server) {
        Ok(r) => r,
        Err(code) => return code,
    };
    super::runtime().block_on(async { act(remote, id).await.unwrap_or_else(|e| failed(&e)) })
}

/// `list` through a server: its requests, newest first.
fn list(g: &Global, server: &str) -> i32 {
    let remote = match connect(server) {
        Ok(r) => r,
        Err(code) => return code,
    };
    super::runtime().block_on(async {
        let all = match remote.get("/api/v1/requests").await {
            Ok(a) => a,
            Err(e) => return failed(&e),
        };
        if g.format == Format::Json {
            return super::print_json(&all).map_or_else(|code| code, |()| exit::PASSED);
        }
        let p = |v: &serde_json::Value| crate::sys::text::printable(v.as_str().unwrap_or(""));
        outln!("{:<28} {:<12} {:<16} {:<10} {}", "REQUEST", "ENVIRONMENT", "USER", "STATE", "WHAT");
        for r in all["requests"].as_array().into_iter().flatten().rev() {
            let what = match p(&r["ask"]["kind"]).as_str() {
                "compare" => format!("{} against {}", p(&r["ask"]["candidate"]), p(&r["ask"]["baseline"])),
                "dry_run" => format!("{} (dry run)", p(&r["ask"]["release"])),
                _ => p(&r["ask"]["release"]),
            };
            let state = match (p(&r["state"]["state"]).as_str(), p(&r["state"]["verdict"])) {
                (s, v) if v.is_empty() => s.to_string(),
                ("finished", v) => v,
                (s, v) => format!("{s} ({v})"),
            };
            outln!("{:<28} {:<12} {:<16} {:<10} {what}", p(&r["id"]), p(&r["environment"]), p(&r["user"]), state);
        }
        exit::PASSED
    })
}
