//! The release on this machine: unpacked privately, installed (migrations) against the
//! copy, and its services started, each health-checked as itself.

use super::*;

impl LocalProvider {
    pub(super) async fn release(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let artifact = ctx.loaded.resolve(Path::new(&ctx.plan.release.artifact));
        let dest = ctx.run.work_dir.join("release");
        ctx.created(res, Handle::new(json!({"dir": dest}))).await?;
        let t = ctx.started(res, "unpack", Some(artifact.display().to_string()));
        // The release is private (whatever modes the artifact carried: no one else may
        // read or change it before it runs) and belongs to the user it runs as;
        // rehearse writes into it afterwards only through no-follow descriptors.
        let owner = ctx.run.users.release.map(|u| (u.uid, u.gid));
        let r = release::unpack(&artifact, &dest, owner, ctx.clock).await;
        ctx.step(res, "unpack", t, r.is_ok(), Some(format!("{} {}", ctx.plan.release.version, artifact.display())));
        r?;
        Ok(Output::Release { dir: dest })
    }

    /// Environment of a release command: the service's `env`, the run's facts, and
    /// `DATABASE_URL`/`PG*` for the database it depends on when there is exactly one.
    pub(super) fn service_env(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Vec<(String, String)>, StepError> {
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

    pub(super) async fn install(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let dir = ctx.run.work_dir.join("release");
        ctx.created(res, Handle::new(json!({}))).await?;
        if !s.templates.is_empty() {
            // The release's directory is its user's: written through descriptors that
            // follow no link, each file replaced by a rename, owned by that user, 0600.
            let release_dir = secure_fs::Dir::open(&dir)
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
        let mut cmd = process::shell(&command, &dir, ctx.run.release_user());
        cmd.envs(self.service_env(res, ctx)?);
        let t = ctx.started(res, "install", Some(command.clone()));
        let f = process::run_logged(&mut cmd, &log, INSTALL_TIMEOUT, ctx.clock).await;
        let ok = f.as_ref().is_ok_and(|f| f.success());
        ctx.step(res, "install", t, ok, Some(command.clone()));
        let f = f.map_err(|e| StepError::build(format!("cannot run `{command}`: {e}")))?;
        if f.timed_out {
            return Err(StepError::release(format!(
                "install of `{}` (`{command}`) did not finish within {}s",
                res.name,
                INSTALL_TIMEOUT.as_secs()
            ))
            .with_log(&log, 20));
        }
        if !f.success() {
            let err = StepError::release(String::new()).with_log(&log, 20);
            // The most telling line of the output ("migration 0003_x.sql failed:")
            // makes the one-line message; the tail carries the database's error.
            let key = err.log_tail.iter().rev().find(|l| l.to_lowercase().contains("failed")).cloned();
            let message = match key {
                Some(line) => format!(
                    "install of `{}` failed (exit {}): {}",
                    res.name,
                    f.status.unwrap_or(-1),
                    line.trim().trim_end_matches(':')
                ),
                None => format!("install of `{}` failed: `{command}` exited with {}", res.name, f.status.unwrap_or(-1)),
            };
            return Err(StepError { message, ..err });
        }
        Ok(Output::Nothing)
    }

    pub(super) async fn service(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let index: u32 = res.id.rsplit('.').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let dir = ctx.run.work_dir.join("release");
        let command = ctx.render(&format!("services.{}.command", res.name))?;
        let port = process::free_port().map_err(|e| StepError::build(format!("no free port: {e}")))?;
        let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
        let mut cmd = process::shell(&command, &dir, ctx.run.release_user());
        cmd.envs(self.service_env(res, ctx)?);
        cmd.env("PORT", port.to_string());
        let t = ctx.started(res, "start", Some(command.clone()));
        // Services outlive this step (and, when kept, this process): they are not killed
        // on drop; teardown stops their whole group explicitly.
        let (mut child, handle) = process::spawn_logged(&mut cmd, &log, false)
            .map_err(|e| StepError::release(format!("cannot start `{command}`: {e}")))?;
        // Journaled before anything else can fail or be interrupted.
        ctx.created(res, Handle::new(json!({"process": handle, "port": port}))).await?;
        ctx.step(res, "start", t, true, Some(format!("pid {} port {port}", handle.pid)));
        if let Some(h) = &s.health {
            let t = ctx.started(res, "health", Some(h.path.clone()));
            let deadline = Instant::now() + h.timeout;
            let _span = ctx.clock.external();
            let r = health::wait_healthy(port, &h.path, deadline, || match child.try_wait() {
                Ok(Some(status)) => Err(format!("exited with {status} before it was healthy")),
                _ => Ok(()),
            })
            .await;
            // The port was free when it was chosen; between then and the service's bind,
            // anyone could have taken it. What answered must be the service itself.
            let r = r.map_err(|e| e.to_string()).and_then(|_| {
                let sockets = process::listening_sockets(port);
                if !sockets.is_empty() && sockets.iter().all(|i| process::group_holds_socket(handle.pgid, *i)) {
                    Ok(())
                } else {
                    Err(format!(
                        "answered on port {port}, but from a process that is not the service (another user may have \
                         taken the port): refusing to run suites against it"
                    ))
                }
            });
            ctx.step(res, "health", t, r.is_ok(), Some(format!("GET {}", h.path)));
            if let Err(e) = r {
                return Err(
                    StepError::release(format!("service `{}` (instance {index}) {e}", res.name)).with_log(&log, 20)
                );
            }
        }
        if let Ok(mut c) = self.children.lock() {
            c.insert(res.id.clone(), child);
        }
        let address = "127.0.0.1".to_string();
        let url = format!("http://{address}:{port}");
        Ok(Output::Service {
            name: res.name.clone(),
            index,
            outputs: ServiceOutputs {
                address: address.clone(),
                port: port.to_string(),
                url: url.clone(),
                addresses: vec![address],
                urls: vec![url],
            },
        })
    }
}
