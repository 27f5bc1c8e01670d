//! `runner: ssm`: what needs the copy's network — masking, installs, health checks,
//! suites — runs inside the VPC, on a runner instance, through SSM Run Command; the
//! machine that runs rehearse needs only AWS API access (a hosted CI runner).
//!
//! Each job is one command (`AWS-RunShellScript`). Its inputs — the connection and
//! other environment (secrets: never in the command's parameters, which SSM keeps in
//! its history), the masking SQL, the suites' files, the release — are objects under
//! the run's prefix of the outputs bucket, fetched by the runner through presigned
//! links, so the runner needs no read access to anything. Its output goes to the same
//! prefix (SSM's `OutputS3BucketName`: beyond the 24,000 characters
//! `GetCommandInvocation` shows), and the files a job returns (a suite's JUnit file)
//! come back inside it, base64 between markers no output can forge (a nonce). The
//! run's keys are a journaled resource (`runner.data`), removed at teardown after the
//! runner, which the run launched from `image` (and terminates) or was given.
//!
//! One file (about 630 lines with its tests) because it is one protocol: every job —
//! masking, install, health check, suite — is a few lines over the same path
//! (`on_runner`: inputs uploaded, command sent, waited for, output fetched, files split
//! out by the nonce), and the runner's launch and its keys' removal are that path's two
//! ends. Split by job, each part would carry half of the protocol it depends on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::api::*;
use super::ssm::{self, SendCommand, SsmApi};
use super::AwsProvider;
use crate::description::template::DatabaseOutputs;
use crate::description::{Loaded, Runner, SsmRunner};
use crate::engine::provider::{Ctx, Output, RunInfo, StepError, SuiteDone, SuiteJob, SuiteRunError};
use crate::plan::Resource;
use crate::sys::text::shell_quote;

/// How often a job's command is asked about.
pub const RUNNER_POLL: Duration = Duration::from_secs(2);
/// How long a launched runner's SSM agent may take to register once it runs.
const AGENT_PATIENCE: Duration = Duration::from_secs(600);
/// How long the links to a job's inputs are valid.
const INPUT_LINK_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How much of a job's output is read back: its last 64 MiB, and room for a JUnit
/// file at the most rehearse reads (base64).
const OUTPUT_CAP: u64 = (64 << 20) + crate::suites::MAX_JUNIT_BYTES * 4 / 3 + 4096;

/// Why a service was not healthy from the runner.
#[derive(Debug, thiserror::Error)]
pub(super) enum RunnerHealthError {
    /// The check could not be run there: the runner's error.
    #[error("{0}")]
    Runner(String),
    /// It ran and never got a 2xx: its last line of output.
    #[error("was not healthy from the runner: {0}")]
    Unhealthy(String),
}

/// One command on the runner.
pub(super) struct Job {
    /// Names its keys and its log: `mask.db`, `install.web`, `health.web.0`, `suite.smoke`.
    pub id: String,
    /// Fetched into the job's directory before `body` runs.
    pub inputs: Vec<Input>,
    /// Exported to `body` (from a fetched file, never in the command itself).
    pub env: Vec<(String, String)>,
    /// Shell lines, run in the job's directory; stderr joins stdout.
    pub body: String,
    pub timeout: Duration,
    /// Files (relative to the job's directory) whose content comes back.
    pub files_back: Vec<String>,
}

pub(super) enum Input {
    /// Uploaded under the run's prefix, then fetched by the runner.
    Bytes { name: String, bytes: Vec<u8> },
    /// Fetched from where it is (a presigned link to the release).
    Url { name: String, url: String },
}

/// What a job's command came to.
pub(super) struct Done {
    pub exit: i32,
    /// SSM's status (`Success`, `Failed`, `TimedOut`, `Cancelled`).
    pub status: String,
    /// stdout and stderr, without the returned files.
    pub output: String,
    pub files: BTreeMap<String, Vec<u8>>,
    pub elapsed: Duration,
    pub instance: String,
}

/// The description's SSM runner, if it has one.
pub(super) fn configured(loaded: &Loaded) -> Option<&SsmRunner> {
    match &loaded.desc.runner {
        Some(Runner::Ssm(r)) => Some(r),
        None => None,
    }
}

/// The runner's outputs as the description names them: the bucket, and the prefix
/// (without slashes at its ends) that runs' ids go under.
pub(super) fn outputs_location(runner: &SsmRunner) -> Result<(String, String), StepError> {
    match crate::sys::state::StateUrl::parse(&runner.outputs) {
        Ok(crate::sys::state::StateUrl::S3 { bucket, prefix }) => Ok((bucket, prefix.trim_matches('/').to_string())),
        _ => Err(StepError::build(format!("runner.ssm.outputs `{}` is not s3://BUCKET/PREFIX", runner.outputs))),
    }
}

/// `PREFIX/RUN_ID/`: a run's keys under the outputs prefix.
pub(super) fn under(prefix: &str, run_id: &str) -> String {
    if prefix.is_empty() {
        format!("{run_id}/")
    } else {
        format!("{prefix}/{run_id}/")
    }
}

/// The run's keys: the outputs bucket, and `PREFIX/RUN_ID/`.
pub(super) fn run_prefix(runner: &SsmRunner, run_id: &str) -> Result<(String, String), StepError> {
    let (bucket, prefix) = outputs_location(runner)?;
    Ok((bucket, under(&prefix, run_id)))
}

/// A nonce for the markers around returned files.
fn nonce() -> String {
    let mut b = [0u8; 12];
    // A failed draw leaves zeros: the markers are still unlikely in any output.
    #[allow(clippy::let_underscore_must_use)]
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The command's stdout split into the output and the files returned after it.
fn split_files(stdout: &str, marker: &str) -> (String, BTreeMap<String, Vec<u8>>) {
    let begin = format!("\n{marker}-begin ");
    let end = format!("\n{marker}-end");
    let Some(first) = stdout.find(&begin) else { return (stdout.to_string(), BTreeMap::new()) };
    let mut files = BTreeMap::new();
    let mut rest = &stdout[first..];
    while let Some(at) = rest.find(&begin) {
        let after = &rest[at + begin.len()..];
        let Some((name, body)) = after.split_once('\n') else { break };
        let Some(stop) = body.find(&end) else { break };
        let text: String = body[..stop].chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) {
            files.insert(name.trim().to_string(), bytes);
        }
        rest = &body[stop + end.len()..];
    }
    (stdout[..first].to_string(), files)
}

impl<A: Ec2Api + RdsApi + S3Api + SsmApi> AwsProvider<A> {
    /// `runner.data`: the run's prefix in the outputs bucket, journaled before anything
    /// is written under it. The journal keeps only the run's part of it (`RUN_ID/`):
    /// the bucket and the prefix above come from the description at teardown too.
    pub(super) async fn runner_data(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let runner = configured(ctx.loaded).ok_or_else(|| StepError::build("no runner in the description"))?;
        let location = outputs_location(runner).map_err(StepError::nothing_created)?;
        if let Ok(mut l) = self.runner_outputs.lock() {
            *l = Some(location);
        }
        self.created(res, ctx, json!({"suffix": format!("{}/", ctx.run.run_id)})).await?;
        if let Some(existing) = &runner.instance {
            self.runner.send_replace(Some(existing.clone()));
        }
        Ok(Output::Nothing)
    }

    /// `runner`: an instance from `runner.ssm.image` in the run's group and first
    /// subnet, ready once its SSM agent takes commands.
    pub(super) async fn launch_runner(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let runner = configured(ctx.loaded).ok_or_else(|| StepError::build("no runner in the description"))?;
        let req = self.launch_request(res, ctx, None, runner.instance_profile.clone())?;
        let t = ctx.started(res, "run-instance", Some("the SSM runner".into()));
        let ids = self.api.run_instances(&req).await.map_err(|e| {
            Self::create_failed(
                &e,
                format!("cannot start the SSM runner ({} {}): {e}", req.instance_type, req.image_id),
            )
        })?;
        let id = ids.first().cloned().ok_or_else(|| StepError::build("RunInstances returned no instance"))?;
        self.created(res, ctx, json!({"instance_id": id})).await?;
        ctx.step(res, "run-instance", t, true, Some(id.clone()));
        let t = ctx.started(res, "wait-running", None);
        let what = format!("the SSM runner {id} to be running");
        let r =
            ctx.waiting(res, &what, AGENT_PATIENCE, self.wait_running(&id, Instant::now() + AGENT_PATIENCE, ctx)).await;
        ctx.step(res, "wait-running", t, r.is_ok(), None);
        r?;
        // The agent registers a while after the instance runs: until then SendCommand
        // answers InvalidInstanceId. A harmless probe tells when it takes commands.
        let t = ctx.started(res, "ssm-agent", None);
        let deadline = Instant::now() + AGENT_PATIENCE;
        let probe = SendCommand {
            instance_id: id.clone(),
            commands: vec!["true".into()],
            output_bucket: None,
            output_prefix: None,
            timeout_secs: 60,
            comment: format!("rehearse {}: runner ready?", ctx.run.run_id),
        };
        let agent = async {
            loop {
                match self.api.inner.send_command(&probe).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind == ErrorKind::Refused || e.kind == ErrorKind::NotFound || e.is_transient() => {
                        if Instant::now() >= deadline {
                            return Err(StepError::build(format!(
                                "the SSM runner {id} did not take commands within {}s ({e}): its instance profile \
                                 must allow SSM (AmazonSSMManagedInstanceCore) and its subnet reach SSM's endpoints",
                                AGENT_PATIENCE.as_secs()
                            )));
                        }
                    }
                    Err(e) => return Err(StepError::build(format!("SSM refused a command to the runner {id}: {e}"))),
                }
                let mut cancel = ctx.cancel.clone();
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = cancel.wait_for(|c| *c) => return Err(StepError::build("cancelled: another step failed")),
                }
            }
        };
        let what = format!("the SSM agent on the runner {id} to take commands");
        let r = ctx.waiting(res, &what, AGENT_PATIENCE, agent).await;
        ctx.step(res, "ssm-agent", t, r.is_ok(), None);
        r?;
        self.runner.send_replace(Some(id));
        Ok(Output::Nothing)
    }

    /// The runner's instance id, once it takes commands.
    async fn runner_instance(&self, mut cancel: watch::Receiver<bool>) -> Result<String, StepError> {
        let mut ready = self.runner.subscribe();
        tokio::select! {
            r = ready.wait_for(|r| r.is_some()) => {
                r.ok().and_then(|r| r.clone()).ok_or_else(|| StepError::build("the SSM runner is gone"))
            }
            _ = cancel.wait_for(|c| *c) => Err(StepError::build("cancelled: another step failed")),
        }
    }

    /// Runs `job` on the runner and waits for its whole result.
    pub(super) async fn on_runner(
        &self,
        run: &RunInfo,
        loaded: &Loaded,
        job: Job,
        cancel: watch::Receiver<bool>,
    ) -> Result<Done, StepError> {
        let runner = configured(loaded).ok_or_else(|| StepError::build("no runner in the description"))?;
        let instance = self.runner_instance(cancel.clone()).await?;
        let (bucket, base) = run_prefix(runner, &run.run_id)?;
        let inputs_at = format!("{base}in/{}/", job.id);
        // The links stand in the command's parameters, which SSM keeps in its history:
        // they are fetched first thing, so they live a quarter of an hour (queueing on
        // the agent included), and the inputs are deleted when the job ends.
        let valid = INPUT_LINK_LIFETIME;
        let env: String = job.env.iter().map(|(k, v)| format!("{k}={}\n", shell_quote(v))).collect();
        let mut fetches = Vec::new();
        let inputs = std::iter::once(Input::Bytes { name: "env.sh".into(), bytes: env.into_bytes() }).chain(job.inputs);
        for input in inputs {
            let (name, url) = match input {
                Input::Url { name, url } => (name, url),
                Input::Bytes { name, bytes } => {
                    let key = format!("{inputs_at}{name}");
                    self.api.put_object(&bucket, &key, bytes).await.map_err(|e| {
                        StepError::build(format!("cannot put the runner's input s3://{bucket}/{key}: {e}"))
                    })?;
                    let url = self.api.presign_get(&bucket, &key, valid).await.map_err(|e| {
                        StepError::build(format!("cannot presign the runner's input s3://{bucket}/{key}: {e}"))
                    })?;
                    (name, url)
                }
            };
            fetches.push(format!("fetch {} {}", shell_quote(&name), shell_quote(&url)));
        }
        let marker = format!("rehearse-file-{}", nonce());
        let mut script = vec![
            "set -u".to_string(),
            "work=$(mktemp -d /tmp/rehearse.XXXXXXXX) || exit 125".into(),
            "trap 'rm -rf \"$work\"' EXIT".into(),
            "cd \"$work\" || exit 125".into(),
            "fetch() { curl -fsS --retry 3 --retry-connrefused --max-time 900 -o \"$1\" \"$2\" || { echo \"rehearse: \
             the runner cannot fetch its input $1\" >&2; exit 125; }; }"
                .into(),
        ];
        script.extend(fetches);
        script.push("set -a; . ./env.sh; set +a; rm -f env.sh".into());
        // The job's own commands run as they would anywhere: no `set -u` imposed.
        script.push("set +u".into());
        script.push("(".into());
        script.extend(job.body.lines().map(str::to_string));
        script.push(") 2>&1".into());
        script.push("status=$?".into());
        for f in &job.files_back {
            script.push(format!(
                "if [ -f {q} ]; then printf '\\n%s %s\\n' {m}-begin {q}; base64 -w0 {q}; printf '\\n%s\\n' {m}-end; fi",
                q = shell_quote(f),
                m = marker
            ));
        }
        script.push("exit $status".into());
        let req = SendCommand {
            instance_id: instance.clone(),
            commands: script,
            output_bucket: Some(bucket.clone()),
            output_prefix: Some(format!("{base}out/{}", job.id)),
            timeout_secs: job.timeout.as_secs().max(1) as u32,
            comment: format!("rehearse {} {}", run.run_id, job.id),
        };
        // Only the output's last part is kept (the returned files come last): a chatty
        // job cannot run this machine out of memory.
        let fetch = |b: String, k: String| async move {
            match self.api.get_object_tail(&b, &k, OUTPUT_CAP).await.map_err(|e| e.to_string())? {
                Some((bytes, true)) => {
                    let mut out = format!(
                        "[rehearse: the start of this output, beyond its last {} MiB, was left out]\n",
                        OUTPUT_CAP >> 20
                    )
                    .into_bytes();
                    out.extend(bytes);
                    Ok(Some(out))
                }
                Some((bytes, false)) => Ok(Some(bytes)),
                None => Ok(None),
            }
        };
        let started = std::time::Instant::now();
        // Delivery and the agent's own start take a little beyond the time limit.
        let deadline = Instant::now() + job.timeout + Duration::from_secs(120);
        let finished = ssm::run_command(&self.api.inner, &req, fetch, RUNNER_POLL, deadline, cancel).await;
        // The inputs (the environment holds the copy's password) are not kept once the
        // job ended, however it ended; teardown removes whatever a killed run left.
        if let Err(e) = self.api.delete_prefix(&bucket, &inputs_at).await {
            tracing::debug!("cannot remove the runner's inputs s3://{bucket}/{inputs_at}: {e}");
        }
        let finished = finished.map_err(|e| StepError::build(format!("{} on the runner {instance}: {e}", job.id)))?;
        let (output, files) = split_files(&finished.output, &marker);
        let mut output = output;
        if !finished.stderr.is_empty() {
            output.push_str(&finished.stderr);
        }
        Ok(Done {
            exit: finished.exit_code,
            status: finished.status,
            output,
            files,
            elapsed: started.elapsed(),
            instance,
        })
    }

    /// Masking on the runner: the SQL in one transaction, with the copy's connection.
    pub(super) async fn mask_on_runner(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        sql: &Path,
        outputs: &DatabaseOutputs,
        timeout: Duration,
    ) -> Result<(), StepError> {
        // Checked where it is read, as everywhere the SQL is used (`databases::trusted_masking`).
        crate::sys::secure_fs::check_input(sql)
            .map_err(|e| StepError::build(format!("the masking SQL cannot be trusted: {e}")))?;
        let bytes = std::fs::read(sql).map_err(|e| StepError::build(format!("cannot read {}: {e}", sql.display())))?;
        let mut env = outputs.libpq_env();
        env.push(("PGCONNECT_TIMEOUT".into(), "10".into()));
        let job = Job {
            id: format!("mask.{}", res.name),
            inputs: vec![Input::Bytes { name: "masking.sql".into(), bytes }],
            env,
            body: "psql -X -q -v ON_ERROR_STOP=1 --single-transaction -f masking.sql".into(),
            timeout,
            files_back: Vec::new(),
        };
        let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
        let what = format!("the masking SQL {} to run on the copy, from the SSM runner", sql.display());
        let done =
            ctx.waiting(res, &what, timeout, self.on_runner(ctx.run, ctx.loaded, job, ctx.cancel.clone())).await?;
        write_log(&log, &done.output);
        if done.exit != 0 {
            return Err(StepError::build(format!(
                "masking SQL on {} failed on the runner {} (exit {}, {})",
                outputs.endpoint, done.instance, done.exit, done.status
            ))
            .with_log(&log, 10));
        }
        Ok(())
    }

    /// A service's install on the runner: the release fetched there (a presigned link
    /// to an `s3://` artifact, an HTTPS URL as it is, or an archive on this machine,
    /// uploaded), unpacked, and the install run in it once with the copy's connection.
    pub(super) async fn install_on_runner(&self, res: &Resource, ctx: &Ctx<'_>) -> Result<Output, StepError> {
        let s = &ctx.loaded.desc.services[res.name.as_str()];
        self.created(res, ctx, json!({})).await?;
        let Some(_) = &s.install else { return Ok(Output::Nothing) };
        let command = ctx.render(&format!("services.{}.install", res.name))?;
        let limit = crate::providers::install::INSTALL_TIMEOUT;
        let artifact = ctx.plan.release.artifact.clone();
        let release = match super::create::s3_location(&artifact) {
            Some((bucket, key)) => Input::Url {
                name: "release.tar.gz".into(),
                url: self
                    .api
                    .presign_get(bucket, key, limit + Duration::from_secs(3600))
                    .await
                    .map_err(|e| StepError::build(format!("cannot presign {artifact}: {e}")))?,
            },
            None if artifact.starts_with("https://") => Input::Url { name: "release.tar.gz".into(), url: artifact },
            None => {
                let path = ctx.loaded.resolve(Path::new(&artifact));
                let bytes = std::fs::read(&path).map_err(|e| {
                    StepError::build(format!(
                        "the runner installs from a release archive; {} cannot be read: {e}",
                        path.display()
                    ))
                })?;
                Input::Bytes { name: "release.tar.gz".into(), bytes }
            }
        };
        let body = format!(
            "mkdir release && tar -xf release.tar.gz -C release || exit 125\n\
             cd release\n\
             set -- *\n\
             if [ $# -eq 1 ] && [ -d \"$1\" ] && [ ! -L \"$1\" ]; then cd \"$1\"; fi\n\
             {command}"
        );
        let job = Job {
            id: res.id.clone(),
            inputs: vec![release],
            env: crate::providers::install::service_env(res, ctx)?,
            body,
            timeout: limit,
            files_back: Vec::new(),
        };
        let log = ctx.run.logs_dir.join(format!("{}.log", res.id));
        let t = ctx.started(res, "install", Some(format!("{command} (on the runner)")));
        let what = format!("the install `{command}` on the SSM runner");
        let done = ctx.waiting(res, &what, limit, self.on_runner(ctx.run, ctx.loaded, job, ctx.cancel.clone())).await;
        let ok = done.as_ref().is_ok_and(|d| d.exit == 0);
        ctx.step(res, "install", t, ok, Some(command.clone()));
        let done = done?;
        write_log(&log, &done.output);
        if done.exit == 125 && done.output.contains("rehearse: the runner cannot fetch") {
            return Err(StepError::build(format!("the runner {} could not fetch the release", done.instance))
                .with_log(&log, 10));
        }
        let timed_out = done.status == "TimedOut";
        match crate::providers::install::failure(&res.name, &command, Some(done.exit), timed_out, limit, &log) {
            Some(e) => Err(e),
            None => Ok(Output::Nothing),
        }
    }

    /// A health check from the runner: GET until a 2xx, within `timeout`.
    pub(super) async fn health_on_runner(
        &self,
        res: &Resource,
        ctx: &Ctx<'_>,
        url: &str,
        timeout: Duration,
    ) -> Result<(), RunnerHealthError> {
        let secs = timeout.as_secs().max(1);
        // POSIX sh: the agent may run the script with dash.
        let body = format!(
            "end=$(( $(date +%s) + {secs} ))\n\
             until curl -fsS -o /dev/null --max-time 5 {u}; do\n\
             if [ \"$(date +%s)\" -ge \"$end\" ]; then echo \"no 2xx from \"{u}\" within {secs}s\"; exit 1; fi\n\
             sleep 2\n\
             done",
            u = shell_quote(url),
        );
        let job = Job {
            id: format!("health.{}", res.id.trim_start_matches("service.")),
            inputs: Vec::new(),
            env: Vec::new(),
            body,
            timeout: timeout + Duration::from_secs(30),
            files_back: Vec::new(),
        };
        let done = self
            .on_runner(ctx.run, ctx.loaded, job, ctx.cancel.clone())
            .await
            .map_err(|e| RunnerHealthError::Runner(e.message))?;
        if done.exit == 0 {
            Ok(())
        } else {
            let last = done.output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
            Err(RunnerHealthError::Unhealthy(last))
        }
    }

    /// A suite on the runner: the bundle (the suites' files) fetched and unpacked, the
    /// command run from the description's directory inside it; its JUnit file returned.
    pub(super) async fn suite_on_runner(&self, job: &SuiteJob<'_>) -> Result<SuiteDone, SuiteRunError> {
        let runner = configured(job.loaded).ok_or_else(|| SuiteRunError::new("no runner in the description"))?;
        let paths = match (&runner.bundle, &job.loaded.desc.bundle) {
            (Some(dir), _) => vec![dir.clone()],
            (None, Some(paths)) => paths.clone(),
            (None, None) => vec![PathBuf::new()],
        };
        // rehearse's own directories never travel, wherever they are.
        let own = [&job.run.state_dir, &job.run.work_dir]
            .into_iter()
            .filter_map(|d| d.ancestors().nth(2).map(Path::to_path_buf))
            .collect::<Vec<_>>();
        let (relative, bundle) = self.bundle(paths, job.cwd, own).await.map_err(SuiteRunError::new)?;
        let junit = crate::suites::junit_name(job.suite).map(|n| n.to_string_lossy().into_owned());
        let mut env: Vec<(String, String)> = job.env.to_vec();
        env.push(("REHEARSE_SUITE".into(), job.name.to_string()));
        let mut body = String::from("mkdir results bundle && tar -xf bundle.tar.gz -C bundle || exit 125\n");
        body.push_str("export REHEARSE_SUITE_DIR=\"$work/results\"\n");
        if let Some(j) = &junit {
            body.push_str(&format!("export REHEARSE_JUNIT_PATH=\"$work/results/\"{}\n", shell_quote(j)));
        }
        body.push_str(&format!("cd bundle/{} || exit 125\n", shell_quote(&relative.display().to_string())));
        body.push_str(job.command);
        let remote = Job {
            id: format!("suite.{}", job.name),
            inputs: vec![Input::Bytes { name: "bundle.tar.gz".into(), bytes: bundle }],
            env,
            body,
            timeout: job.suite.timeout,
            files_back: junit.iter().map(|j| format!("results/{j}")).collect(),
        };
        let done = self
            .on_runner(job.run, job.loaded, remote, job.cancel.clone())
            .await
            .map_err(|e| SuiteRunError::caused(e.message.clone(), e))?;
        if done.exit == 125 && done.output.contains("rehearse: the runner cannot fetch") {
            return Err(SuiteRunError::new(format!("the runner {} could not fetch the suite's files", done.instance)));
        }
        let junit_bytes = junit.as_ref().and_then(|j| done.files.get(&format!("results/{j}")).cloned());
        Ok(SuiteDone {
            ran: crate::suites::Ran {
                status: Some(done.exit),
                timed_out: done.status == "TimedOut",
                elapsed: done.elapsed,
            },
            output: done.output.into_bytes(),
            junit: junit_bytes,
            shown_at: format!("the runner {}:$REHEARSE_SUITE_DIR", done.instance),
        })
    }

    /// The suites' bundle (`paths`, listed as [`crate::sys::bundle`] lists it) as a
    /// .tar.gz, made once per run, and where `cwd` lies inside it.
    async fn bundle(&self, paths: Vec<PathBuf>, cwd: &Path, own: Vec<PathBuf>) -> Result<(PathBuf, Vec<u8>), String> {
        let cwd = cwd.to_path_buf();
        self.bundle
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || -> Result<(PathBuf, Vec<u8>), String> {
                    let listing = crate::sys::bundle::list(&cwd, &paths, &own).map_err(|e| e.to_string())?;
                    let relative =
                        crate::sys::bundle::inside(&listing, &cwd, Path::new("")).map_err(|e| e.to_string())?;
                    let bytes = crate::sys::bundle::pack(&listing)
                        .map_err(|e| format!("cannot pack the runner's bundle {}: {e}", listing.root.display()))?;
                    Ok((relative, bytes))
                })
                .await
                .map_err(|e| format!("packing the runner's bundle failed: {e}"))?
            })
            .await
            .clone()
    }

    /// Removes the run's keys from the outputs bucket: `PREFIX/RUN_ID/` of the bucket
    /// the description names, never a location the journal names. A journal from
    /// before it kept only the run's part (`{"bucket", "prefix"}`) is honoured only
    /// where it says exactly that; anything else is not the run's and is left alone.
    /// Without a description at hand (`down` on a machine that does not have it) the
    /// keys are left, said, for the outputs prefix's lifecycle rule.
    pub(super) async fn remove_runner_data(
        &self,
        entry: &crate::engine::journal::Entry,
        meta: &crate::engine::journal::RunMeta,
    ) -> Result<(), crate::engine::provider::DestroyError> {
        use crate::engine::provider::{DestroyError, DestroyErrorKind};
        let run_id = meta.run_id.as_str();
        let h = entry.handle.as_ref();
        // A handle that does not read claims nothing the run's: it is refused below.
        let parsed: Option<super::AwsHandle> = h.and_then(|h| h.decode("runner's keys").ok());
        let claimed = match parsed.as_ref().map(|p| (p.suffix.as_deref(), p.bucket.as_deref(), p.prefix.as_deref())) {
            None if h.is_some() => None,
            None => return Ok(()),
            Some((Some(suffix), None, None)) => (suffix == format!("{run_id}/")).then(String::new),
            Some((None, Some(bucket), Some(prefix))) => Some(format!("s3://{bucket}/{prefix}")),
            Some((None, None, None)) => return Ok(()),
            Some(_) => None,
        };
        let not_ours = |what: String| {
            DestroyError::new(
                DestroyErrorKind::NotOurs,
                format!("{what} is not the run's keys in the runner's outputs bucket the description names"),
            )
        };
        if !crate::sys::state::valid_run_id(run_id) {
            return Err(not_ours(format!("the keys of `{}`", run_id.escape_debug())));
        }
        let Some((bucket, prefix)) = self.runner_location(run_id) else {
            tracing::warn!(
                "the runner's keys of {run_id} are left in its outputs bucket: no description at hand names the \
                 bucket ({} cannot be read here, and a journal's word is not taken), so the outputs prefix's \
                 lifecycle rule removes them; `rehearse down {run_id}` where the description is removes them now",
                meta.description
            );
            return Ok(());
        };
        match claimed {
            Some(c) if c.is_empty() || c == format!("s3://{bucket}/{prefix}") => {}
            Some(c) => return Err(not_ours(c)),
            None => {
                return Err(not_ours(format!("the journaled handle {}", h.map(|h| h.to_string()).unwrap_or_default())))
            }
        }
        self.api.delete_prefix(&bucket, &prefix).await.map(|_| ()).map_err(|e| {
            let kind = match e.kind {
                ErrorKind::Denied => DestroyErrorKind::Denied,
                ErrorKind::Throttled | ErrorKind::ServerError | ErrorKind::Unreachable => DestroyErrorKind::Unavailable,
                _ => DestroyErrorKind::Failed,
            };
            DestroyError::caused(kind, format!("cannot remove s3://{bucket}/{prefix}: {e}"), e)
        })
    }
}

/// A job's output as its log (best effort: the tail in the error carries the essentials).
fn write_log(log: &Path, text: &str) {
    #[allow(clippy::let_underscore_must_use)]
    let _ = std::fs::write(log, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returned_files_are_cut_out_of_the_output_and_cannot_be_forged() {
        let m = "rehearse-file-abc";
        let junit = base64::engine::general_purpose::STANDARD.encode("<testsuites/>");
        let out = format!(
            "ran\nrehearse-file-zzz-begin results/x.xml\nZm9v\nrehearse-file-zzz-end\n\n{m}-begin results/x.xml\n{junit}\n{m}-end\n"
        );
        let (output, files) = split_files(&out, m);
        assert!(output.starts_with("ran\n") && output.contains("rehearse-file-zzz"), "{output}");
        assert_eq!(files.get("results/x.xml").map(|b| b.as_slice()), Some(&b"<testsuites/>"[..]));
        assert_eq!(files.len(), 1);
    }
}
