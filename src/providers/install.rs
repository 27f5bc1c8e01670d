//! A service's install, run once from this machine in the unpacked release, against
//! the copy, before any of the service's processes or instances start: the same
//! command, environment, time limit and failure report on every provider — the
//! migration that failed and PostgreSQL's error, from the output's tail, exit 1.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::description::template::DatabaseOutputs;
use crate::engine::provider::{Ctx, NoHandle, Output, StepError};
use crate::plan::Resource;
use crate::sys::{process, secure_fs};

/// How long an install / migration command may take.
pub(crate) const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Environment of a release command: the service's `env`, the run's facts, and
/// `DATABASE_URL`/`PG*` for the database it depends on when there is exactly one.
pub(crate) fn service_env(res: &Resource, ctx: &Ctx<'_>) -> Result<Vec<(String, String)>, StepError> {
    let s = &ctx.loaded.desc.services[res.name.as_str()];
    let mut env: Vec<(String, String)> = vec![
        ("REHEARSE_RUN_ID".into(), ctx.run.run_id.clone()),
        ("REHEARSE_RELEASE".into(), ctx.run.release_version.clone()),
    ];
    let dbs: Vec<&String> = ctx
        .loaded
        .deps
        .get(res.name.as_str())
        .into_iter()
        .flatten()
        .filter(|d| ctx.loaded.desc.databases.contains_key(*d))
        .collect();
    if let [db] = dbs.as_slice() {
        let o = ctx.tctx.get("databases").and_then(|v| v.get(db.as_str()));
        if let Some(outputs) = o.and_then(|o| DatabaseOutputs::deserialize(o).ok()) {
            env.push(("DATABASE_URL".to_string(), outputs.url.clone()));
            env.extend(outputs.libpq_env());
        }
    }
    for k in s.env.keys() {
        let v = ctx.render(&format!("services.{}.env.{k}", res.name))?;
        env.retain(|(e, _)| e != k);
        env.push((k.clone(), v));
    }
    Ok(env)
}

pub(crate) async fn install(res: &Resource, ctx: &Ctx<'_>, dir: &Path) -> Result<Output, StepError> {
    let s = &ctx.loaded.desc.services[res.name.as_str()];
    ctx.created(res, &NoHandle {}).await?;
    if !s.templates.is_empty() {
        // The release's directory is its user's: written through descriptors that
        // follow no link, each file replaced by a rename, owned by that user, 0600.
        let release_dir = secure_fs::Dir::open(dir)
            .map_err(|e| StepError::build(format!("cannot open the release directory: {e}")))?;
        let owner = ctx.run.users.release.map(|u| (u.uid, u.gid));
        for (i, t) in s.templates.iter().enumerate() {
            let text = ctx.render(&format!("services.{}.templates[{i}].source", res.name))?;
            release_dir
                .write_file(&t.dest, text.as_bytes(), owner)
                .map_err(|e| StepError::build(format!("cannot write the config template: {e}")))?;
        }
    }
    let Some(_) = &s.install else {
        return Ok(Output::Nothing);
    };
    let command = ctx.render(&format!("services.{}.install", res.name))?;
    let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
    let mut cmd = process::shell(&command, dir, ctx.run.release_user());
    cmd.envs(service_env(res, ctx)?);
    // Its connections known as the migration's (libpq takes PGAPPNAME): what a rehearsed
    // deploy's lock sampler tells apart from the traffic.
    cmd.env("PGAPPNAME", crate::compare::locks::MIGRATION_APP);
    let t = ctx.started(res, "install", Some(command.clone()));
    let what = format!("the install `{command}` to finish");
    let f =
        ctx.waiting(res, &what, INSTALL_TIMEOUT, process::run_logged(&mut cmd, &log, INSTALL_TIMEOUT, ctx.clock)).await;
    let ok = f.as_ref().is_ok_and(|f| f.success());
    ctx.step(res, "install", t, ok, Some(command.clone()));
    let f = f.map_err(|e| StepError::build(format!("cannot run `{command}`: {e}")))?;
    if let Some(e) = failure(&res.name, &command, f.status, f.timed_out, INSTALL_TIMEOUT, &log) {
        return Err(e);
    }
    Ok(Output::Nothing)
}

/// What an install that ended with `status` (or ran out of `limit`) says, from its
/// log: `None` when it passed. The most telling line of the output ("migration
/// 0003_x.sql failed:") makes the one-line message; the tail carries the database's
/// error. The same wherever the install ran (here, or on the runner).
pub(crate) fn failure(
    service: &str,
    command: &str,
    status: Option<i32>,
    timed_out: bool,
    limit: Duration,
    log: &Path,
) -> Option<StepError> {
    if timed_out {
        return Some(
            StepError::release(format!(
                "install of `{service}` (`{command}`) did not finish within {}s",
                limit.as_secs()
            ))
            .with_log(log, 20),
        );
    }
    if status == Some(0) {
        return None;
    }
    let err = StepError::release(String::new()).with_log(log, 20);
    let key = err.log_tail.iter().rev().find(|l| l.to_lowercase().contains("failed")).cloned();
    let code = status.unwrap_or(-1);
    let message = match key {
        Some(line) => format!("install of `{service}` failed (exit {code}): {}", line.trim().trim_end_matches(':')),
        None => format!("install of `{service}` failed: `{command}` exited with {code}"),
    };
    Some(StepError { message, ..err })
}
