//! The release on this machine: unpacked privately, installed (migrations) against the
//! copy, and its services started, each health-checked as itself.

use super::*;

impl LocalProvider {
    pub(super) async fn release(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let artifact = ctx.loaded.resolve(Path::new(&ctx.plan.release.artifact));
        crate::providers::release::place(res, ctx, &artifact).await
    }

    pub(super) async fn install(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        crate::providers::install::install(res, ctx, ctx.release_dir()).await
    }

    pub(super) async fn service(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let index: u32 = res.id.rsplit('.').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let dir = ctx.release_dir().to_path_buf();
        let command = ctx.render(&format!("services.{}.command", res.name))?;
        let port = process::free_port().map_err(|e| StepError::build(format!("no free port: {e}")))?;
        let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
        let mut cmd = process::shell(&command, &dir, ctx.run.release_user());
        cmd.envs(crate::providers::install::service_env(res, ctx)?);
        cmd.env("PORT", port.to_string());
        let t = ctx.started(res, "start", Some(command.clone()));
        // Services outlive this step (and, when kept, this process): they are not killed
        // on drop; teardown stops their whole group explicitly.
        let (mut child, handle) = process::spawn_logged(&mut cmd, &log, false)
            .map_err(|e| StepError::release(format!("cannot start `{command}`: {e}")))?;
        // Journaled before anything else can fail or be interrupted.
        ctx.created(res, &super::ProcessHandle { process: handle.clone(), port: Some(port) }).await?;
        ctx.step(res, "start", t, true, Some(format!("pid {} port {port}", handle.pid)));
        if let Some(h) = &s.health {
            let t = ctx.started(res, "health", Some(h.path.clone()));
            let deadline = Instant::now() + h.timeout;
            let _span = ctx.clock.external();
            let healthy = health::wait_healthy(port, &h.path, deadline, || match child.try_wait() {
                Ok(Some(status)) => Err(health::Ended::Exited(status)),
                _ => Ok(()),
            });
            let what = format!("GET http://127.0.0.1:{port}{} to answer 200", h.path);
            let r = ctx.waiting(res, &what, h.timeout, healthy).await;
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
        Ok(Output::Service {
            name: res.name.clone(),
            index,
            outputs: ServiceOutputs::instance("127.0.0.1".to_string(), Some(port)),
        })
    }
}

impl LocalProvider {
    /// A game day's `kill`: the instance `entry` names, its whole process group, at once
    /// (only a group provably the run's), and our own child reaped.
    pub(super) async fn kill(&self, entry: &Entry, info: &RunInfo) -> Result<(), String> {
        if entry.kind != Kind::LocalProcess {
            return Err(format!("`{}` is no process this provider can kill", entry.id));
        }
        let Some(ProcessHandle { process: h, .. }) =
            handle_of::<ProcessHandle>(entry, "local process").map_err(|e| e.to_string())?
        else {
            return Err(format!("`{}` has no journaled process", entry.id));
        };
        if !process::kill_run_group(&h, &info.run_id).await {
            return Err(format!("process group {} of `{}` is still there", h.pgid, entry.id));
        }
        let child = self.children.lock().ok().and_then(|mut c| c.remove(&entry.id));
        if let Some(mut c) = child {
            // Best effort: reaping our own child, killed; its status is not wanted.
            #[allow(clippy::let_underscore_must_use)]
            let _ = tokio::time::timeout(Duration::from_secs(2), c.wait()).await;
        }
        Ok(())
    }
}
