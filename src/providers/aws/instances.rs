//! The run's instances: each launched in the run's security group with its user-data
//! (the release reached by instance profile or a presigned link, never a credential),
//! waited for until it runs, then judged by its health check or by the bootstrap
//! marker its user-data writes on the serial console.

use super::create::s3_location;
use super::*;

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// One instance of the planned resource `res` (its image, type and subnet), in the
    /// run's security group, tagged, with a client token that makes a repeat idempotent.
    pub(super) fn launch_request(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        user_data: Option<&str>,
        instance_profile: Option<String>,
    ) -> Result<RunInstances, StepError> {
        let attr = |k: &str| res.attributes.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        Ok(RunInstances {
            image_id: attr("image_id"),
            instance_type: attr("instance_type"),
            subnet_id: attr("subnet_id"),
            security_group_id: self.id_of("network.security-group")?,
            user_data: user_data.map(|u| base64::engine::general_purpose::STANDARD.encode(u)),
            count: 1,
            tags: Self::tags(ctx, res),
            client_token: Self::client_token(&ctx.run.run_id, &res.id),
            instance_profile,
        })
    }

    pub(super) async fn instance(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let profile = s.aws().and_then(|a| a.instance_profile.clone());
        let index: u32 = res.id.rsplit('.').next().and_then(|i| i.parse().ok()).unwrap_or(0);
        let user_data = match s.user_data() {
            Some(_) => Some(self.user_data(res, ctx, profile.is_some()).await?),
            None => None,
        };
        let bootstrap = user_data.as_deref().is_some_and(|u| u.contains(BOOTSTRAP_MARKER));
        let req = self.launch_request(res, ctx, user_data.as_deref(), profile)?;
        let t = ctx.started(res, "run-instance", None);
        // A lost answer is sent again (`Patient`): the client token makes the repeat
        // return the same instances, and a later refusal comes back as uncertain.
        let ids = self.api.run_instances(&req).await.map_err(|e| {
            let msg =
                format!("cannot start {} ({} {} in {}): {e}", res.id, req.instance_type, req.image_id, req.subnet_id);
            Self::create_failed(&e, msg)
        })?;
        let id = ids.first().cloned().ok_or_else(|| StepError::build("RunInstances returned no instance"))?;
        self.created(res, ctx, json!({"instance_id": id})).await?;
        ctx.step(res, "run-instance", t, true, Some(id.clone()));
        let t = ctx.started(res, "wait-running", None);
        let bound = s.health.as_ref().map(|h| h.timeout).unwrap_or(Duration::from_secs(600));
        let deadline = Instant::now() + bound;
        let r = ctx
            .waiting(res, &format!("instance {id} to be running"), bound, self.wait_running(&id, deadline, ctx))
            .await;
        ctx.step(res, "wait-running", t, r.is_ok(), None);
        let inst = r?;
        let address = inst.private_ip.clone().unwrap_or_default();
        let outputs = ServiceOutputs::instance(address.clone(), s.port);
        let url = &outputs.url;
        let who = format!("service `{}` (instance {index}, {id})", res.name);
        match (&s.health, s.port) {
            (Some(h), Some(p)) => {
                let t = ctx.started(res, "health", Some(h.path.clone()));
                let healthy = async {
                    if super::runner::configured(ctx.loaded).is_some() {
                        let url = format!("http://{address}:{p}{}", h.path);
                        self.health_on_runner(res, ctx, &url, h.timeout).await.map_err(|e| e.to_string())
                    } else {
                        let deadline = std::time::Instant::now() + h.timeout;
                        crate::sys::health::wait_healthy_at(&address, p, &h.path, deadline, || Ok(()))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                };
                // A bootstrap that reports a failure ends the wait at once.
                let checked = async {
                    tokio::select! {
                        r = healthy => r.map_err(|e| StepError::release(format!("{who} {e}"))),
                        e = self.watch_bootstrap(&id, res, ctx, &who, None), if bootstrap => e,
                    }
                };
                let what = format!("GET {url}{} on {id} to answer 200", h.path);
                let r = ctx.waiting(res, &what, h.timeout, checked).await;
                ctx.step(res, "health", t, r.is_ok(), None);
                r?;
            }
            _ => {
                let timeout = s.aws().and_then(|a| a.bootstrap_timeout).unwrap_or(BOOTSTRAP_TIMEOUT);
                if bootstrap && !timeout.is_zero() {
                    let t = ctx.started(res, "bootstrap", None);
                    let what = format!(
                        "the bootstrap marker (`{BOOTSTRAP_MARKER}N`) on the console of {id}, written when its \
                         user-data ends (services.{}.bootstrap_timeout)",
                        res.name
                    );
                    let watch = self.watch_bootstrap(&id, res, ctx, &who, Some(Instant::now() + timeout));
                    let r = ctx.waiting(res, &what, timeout, watch).await;
                    ctx.step(res, "bootstrap", t, r.is_ok(), None);
                    r?;
                }
            }
        }
        Ok(Output::Service { name: res.name.clone(), index, outputs })
    }
}

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// Waits until instance `id` runs (the batched poller), or the run is cancelled.
    pub(super) async fn wait_running(&self, id: &str, deadline: Instant, ctx: &Ctx<'_>) -> Result<Instance, StepError> {
        // The poller retries a failed describe at its next interval: no retry stacked on it.
        let api = &self.api.inner;
        let cancelled = async {
            let mut rx = ctx.cancel.clone();
            // Best effort: a closed channel means the run is over: the select then ends with the wait.
            #[allow(clippy::let_underscore_must_use)]
            let _ = rx.wait_for(|c| *c).await;
        };
        let _span = ctx.clock.external();
        let wait = self.instances.wait(
            id,
            |ids| async move { api.describe_instances(&ids).await },
            |i| i.id.clone(),
            |i| match i.map(|i| i.state.as_str()) {
                Some("running") => Ok(true),
                Some(s @ ("terminated" | "shutting-down" | "stopped")) => {
                    Err(super::poller::Never(format!("instance {id} is `{s}`")))
                }
                // Right after RunInstances an instance may not be visible yet.
                _ => Ok(false),
            },
            |i| i.map(|i| i.state.clone()).unwrap_or_else(|| "not visible yet".into()),
            deadline,
        );
        let r = tokio::select! {
            r = wait => r.map_err(|e| e.to_string()),
            _ = cancelled => Err("cancelled: another step failed".to_string()),
        };
        r.map_err(StepError::build)?.ok_or_else(|| StepError::build(format!("{id} disappeared")))
    }

    /// The service's user-data, rendered with `release.url`: a presigned HTTPS link for
    /// an `s3://` artifact when the instance has no profile to read it with, valid until
    /// the run expires — the instance needs no credentials, and none is ever written
    /// into user-data (anyone who may describe the instance can read it).
    async fn user_data(&self, res: &Resource, ctx: &Ctx<'_>, has_profile: bool) -> Result<String, StepError> {
        let name = format!("services.{}.user_data", res.name);
        let artifact = &ctx.plan.release.artifact;
        let Some((bucket, key)) = s3_location(artifact).filter(|_| !has_profile) else {
            return ctx.render(&name);
        };
        // User-data runs once, at first boot: the link lives as long as the boot may
        // take (the health check's or bootstrap's time) and a quarter of an hour — not
        // the run's whole life — and never past the run.
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        let boot = s
            .health
            .as_ref()
            .map(|h| h.timeout)
            .unwrap_or_default()
            .max(s.aws().and_then(|a| a.bootstrap_timeout).unwrap_or(BOOTSTRAP_TIMEOUT));
        let left = (ctx.run.expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
        let expires_in = (boot + Duration::from_secs(15 * 60)).min(left).clamp(Duration::from_secs(60), PRESIGN_MAX);
        let url = self.api.presign_get(bucket, key, expires_in).await.map_err(|e| {
            StepError::build(format!("cannot presign {artifact} for the instances of `{}`: {e}", res.name))
                .nothing_created()
        })?;
        let mut tctx = ctx.tctx.clone();
        let mut release = tctx.get("release").cloned().unwrap_or_else(|| json!({}));
        release["url"] = json!(url);
        tctx.insert("release", &release);
        crate::description::template::render(&ctx.loaded.tera, &name, &tctx)
            .map_err(|e| StepError::build(format!("cannot render `{name}`: {e}")).nothing_created())
    }

    /// Reads the instance's console until its bootstrap marker says how user-data
    /// ended: a failure is the run's failure, with the output's tail; success returns
    /// when `deadline` is given (the instance is ready), else the watch goes on (a
    /// health check decides). Without a marker by `deadline`, the run fails.
    async fn watch_bootstrap(
        &self,
        id: &str,
        res: &Resource,
        ctx: &Ctx<'_>,
        who: &str,
        deadline: Option<Instant>,
    ) -> Result<(), StepError> {
        let mut told = false;
        loop {
            match self.api.console_output(id).await {
                Ok(Some(text)) => match bootstrap_status(&text) {
                    Some((0, _)) if deadline.is_some() => return Ok(()),
                    // Success: the health check decides from here.
                    Some((0, _)) => return std::future::pending().await,
                    Some((code, before)) => {
                        let log = ctx.run.logs_dir.join(format!("{}.console.log", res.id));
                        // Best effort: the tail below carries the essentials if the log cannot be written.
                        #[allow(clippy::let_underscore_must_use)]
                        let _ = std::fs::write(&log, &text);
                        let last = before.iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
                        let mut err = StepError::release(format!(
                            "{who}: its bootstrap (user-data) failed with exit {code}: {}",
                            last.trim()
                        ));
                        err.log_tail = before.iter().rev().take(20).rev().cloned().collect();
                        err.log = Some(log);
                        return Err(err);
                    }
                    None => {}
                },
                Ok(None) => {}
                // Unreadable console (a refusal this identity cannot change ends the
                // watch at once; anything else may pass): said once, read again until
                // the deadline; without one, the health check decides.
                Err(e) => {
                    let why = format!("{who}: cannot read its console output: {e}");
                    if !told {
                        ctx.reporter.event(crate::engine::events::Event::ConsoleUnreadable {
                            resource: who.to_string(),
                            error: e.to_string(),
                        });
                        told = true;
                    }
                    match deadline {
                        Some(_) if e.kind == ErrorKind::Denied => return Err(StepError::build(why)),
                        None if e.kind == ErrorKind::Denied => return std::future::pending().await,
                        _ => {}
                    }
                }
            }
            if let Some(d) = deadline {
                if Instant::now() >= d {
                    return Err(StepError::release(format!(
                        "{who}: no bootstrap marker (`{BOOTSTRAP_MARKER}N`) on its console within the \
                         bootstrap timeout; the instance's user-data must end by writing it \
                         (templates/user-data.sh.tera does)"
                    )));
                }
            }
            let mut cancel = ctx.cancel.clone();
            tokio::select! {
                _ = tokio::time::sleep(CONSOLE_POLL) => {}
                _ = cancel.wait_for(|c| *c) => return Err(StepError::build("cancelled: another step failed")),
            }
        }
    }
}

/// The exit status the bootstrap marker reports on a console, and the lines before it,
/// made printable: they end up in messages, the report and on the terminal, and a
/// console carries whatever the instance's boot and user-data wrote (escape sequences
/// included, as log tails do).
pub(crate) fn bootstrap_status(console: &str) -> Option<(i32, Vec<String>)> {
    let lines: Vec<&str> = console.lines().collect();
    lines.iter().enumerate().rev().find_map(|(i, line)| {
        let at = line.find(BOOTSTRAP_MARKER)?;
        let digits: String = line[at + BOOTSTRAP_MARKER.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
        let code = digits.parse().ok()?;
        Some((code, lines[..i].iter().map(|l| crate::sys::text::printable(l)).collect()))
    })
}
