//! Commands on a runner instance inside the VPC, through SSM Run Command
//! (`AWS-RunShellScript`): the slice of the SSM API used, as a trait over plain types,
//! and [`run_command`], which sends one command and waits for its whole result.
//!
//! What the API makes awkward, and how it is handled here:
//!
//! - **A new command is not visible at once.** `GetCommandInvocation` right after
//!   `SendCommand` may answer `InvocationDoesNotExist` (the service is eventually
//!   consistent; the SDKs' own `CommandExecuted` waiters fail on it, see
//!   aws/aws-sdk-ruby#2556 and boto/boto3#2701). That answer is read as "not visible
//!   yet" and asked again at the poll interval, until the deadline.
//! - **The inline output is cut.** `StandardOutputContent` holds the first 24,000
//!   characters written to stdout, `StandardErrorContent` the first 8,000 of stderr
//!   (GetCommandInvocation's reference). The whole streams are only in S3, where the
//!   agent writes them when the command names an output bucket ([`output_key`]). A
//!   result whose inline text may have been cut is read from there, and when it cannot
//!   be, the command fails with [`CommandError::Truncated`] instead of handing back
//!   part of a JUnit file as if it were all of it.
//! - **SendCommand has no idempotency token.** A repeat after a lost answer or a 5xx
//!   could run the script twice, so it is sent again only when it was throttled (not
//!   executed); otherwise the error says the command may have run.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::api::{ApiError, ApiResult, ErrorKind};

/// The document every command runs: the lines of a shell script.
pub const DOCUMENT: &str = "AWS-RunShellScript";

/// `StandardOutputContent` is cut at 24,000 characters.
pub const INLINE_LIMIT: usize = 24_000;
/// `StandardErrorContent` is cut at 8,000 characters.
pub const STDERR_INLINE_LIMIT: usize = 8_000;
/// Inline text this close to its limit (in bytes, which are never fewer than
/// characters) is taken as possibly cut: the agent may count differently and marks a
/// cut with a suffix of its own. A false alarm only costs one S3 read.
const CUT_SLACK: usize = 1_000;

/// One command for one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendCommand {
    pub instance_id: String,
    /// The script's lines (`AWS-RunShellScript`'s `commands` parameter): the agent runs
    /// them as one script, in order.
    pub commands: Vec<String>,
    /// Where the agent writes the whole stdout and stderr ([`output_key`]).
    pub output_bucket: Option<String>,
    pub output_prefix: Option<String>,
    /// `executionTimeout`: the agent stops the script after this long (and reports
    /// `TimedOut`). Also the delivery timeout (`TimeoutSeconds`, at least 30 s).
    pub timeout_secs: u32,
    /// Shown in the console's command history (SSM keeps the first 100 characters).
    pub comment: String,
}

/// One command's invocation on one instance, as `GetCommandInvocation` tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// `Pending`, `InProgress`, `Delayed`, `Success`, `Cancelled`, `TimedOut`,
    /// `Failed` or `Cancelling`.
    pub status: String,
    /// The script's exit status; -1 while it has not run.
    pub response_code: i32,
    /// The first [`INLINE_LIMIT`] characters of stdout (empty until it has finished).
    pub stdout: String,
    /// The first [`STDERR_INLINE_LIMIT`] characters of stderr.
    pub stderr: String,
    /// Where the whole streams are, when the command named an output bucket.
    pub stdout_url: Option<String>,
    pub stderr_url: Option<String>,
}

impl Invocation {
    /// Whether the invocation has ended (every status but the four on the way).
    pub fn is_terminal(&self) -> bool {
        !matches!(self.status.as_str(), "Pending" | "InProgress" | "Delayed" | "Cancelling")
    }
}

/// SSM Run Command, as rehearse uses it.
pub trait SsmApi: Send + Sync {
    /// Sends `req` as an `AWS-RunShellScript` command; the command's id.
    fn send_command(&self, req: &SendCommand) -> impl Future<Output = ApiResult<String>> + Send;
    /// `InvocationDoesNotExist` is [`ErrorKind::NotFound`] (with its code).
    fn get_command_invocation(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> impl Future<Output = ApiResult<Invocation>> + Send;
    fn cancel_command(&self, command_id: &str, instance_ids: &[String]) -> impl Future<Output = ApiResult<()>> + Send;
}

/// The S3 key of one stream of a command's output, as the SSM agent writes it:
/// `PREFIX/COMMAND-ID/INSTANCE-ID/awsrunShellScript/0.awsrunShellScript/STREAM`, with
/// `stream` `stdout` or `stderr`, and no leading `PREFIX/` for an empty prefix.
///
/// The API reference (`CommandPlugin`, `OutputS3KeyPrefix`) names the parts up to the
/// plugin's directory: the bucket, the prefix, the managed node's id, `awsrunShellScript`
/// (docs.aws.amazon.com/systems-manager/latest/APIReference/API_CommandPlugin.html);
/// the agent puts the command's id before the node's, and the first step of the
/// document (`0.awsrunShellScript`) holds the `stdout` and `stderr` objects — the
/// layout the agent writes and the CLI's `send-command --output-s3-key-prefix` users
/// read back.
pub fn output_key(prefix: &str, command_id: &str, instance_id: &str, stream: &str) -> String {
    let tail = format!("{command_id}/{instance_id}/awsrunShellScript/0.awsrunShellScript/{stream}");
    match prefix.trim_matches('/') {
        "" => tail,
        p => format!("{p}/{tail}"),
    }
}

/// A command that ran to its end (whatever its exit status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub command_id: String,
    /// `Success`, `Failed`, `TimedOut` or `Cancelled` (cancelled by someone else).
    pub status: String,
    /// The script's exit status (-1 when it did not run to an exit).
    pub exit_code: i32,
    /// The whole of stdout.
    pub output: String,
    /// The whole of stderr.
    pub stderr: String,
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        self.status == "Success" && self.exit_code == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// `SendCommand` failed. After a lost answer or a 5xx the command may be running.
    #[error("SSM SendCommand to {instance_id}: {error}{}", maybe_ran(*.may_have_run))]
    Send { instance_id: String, error: ApiError, may_have_run: bool },
    /// `GetCommandInvocation` was refused (not throttled, not a 5xx, not "not visible yet").
    #[error("SSM command {command_id} on {instance_id}: {error}")]
    Poll { command_id: String, instance_id: String, error: ApiError },
    /// The deadline passed first; `cancel` says whether `CancelCommand` was accepted.
    #[error(
        "SSM command {command_id} on {instance_id} had not finished by its deadline (last seen: {last_seen}); {}",
        cancelled(.cancel)
    )]
    Deadline { command_id: String, instance_id: String, last_seen: String, cancel: Result<(), ApiError> },
    /// The run was interrupted; `command_id` is None when nothing had been sent (and
    /// `cancel` is then `Ok`: there was nothing to cancel).
    #[error("SSM command to {instance_id} interrupted; {}", after_interrupt(.command_id, .cancel))]
    Interrupted { command_id: Option<String>, instance_id: String, cancel: Result<(), ApiError> },
    /// The command finished, but the inline copy of `stream` may be cut and the whole
    /// stream could not be read from where the agent should have written it.
    #[error(
        "SSM command {command_id} on {instance_id} finished ({status}), but its {stream} is truncated (more than the API's inline {limit} characters) and the whole {stream} {where_}: {reason}",
        where_ = whereabouts(.location)
    )]
    Truncated {
        command_id: String,
        instance_id: String,
        status: String,
        stream: &'static str,
        limit: usize,
        /// `s3://BUCKET/KEY`.
        location: Option<String>,
        reason: String,
    },
}

fn maybe_ran(may: bool) -> &'static str {
    if may {
        " (the command may have run)"
    } else {
        ""
    }
}

fn whereabouts(location: &Option<String>) -> String {
    match location {
        Some(l) => format!("should have been at {l}"),
        None => "was not written to S3 (no output bucket was given)".into(),
    }
}

fn after_interrupt(command_id: &Option<String>, cancel: &Result<(), ApiError>) -> String {
    match command_id {
        Some(id) => format!("command {id}: {}", cancelled(cancel)),
        None => "nothing was sent".into(),
    }
}

fn cancelled(cancel: &Result<(), ApiError>) -> String {
    match cancel {
        Ok(()) => "CancelCommand sent".into(),
        Err(e) => format!("CancelCommand failed: {e}"),
    }
}

/// The longest pause after a throttled or failed poll.
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// Why waiting stopped early.
enum Stop {
    Deadline,
    Interrupted,
}

/// Resolves once `cancel` holds `true`; never, when its sender is gone.
async fn interrupted(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `fut`, unless the deadline passes or the run is interrupted first.
async fn unless_stopped<T>(
    fut: impl Future<Output = T>,
    deadline: Instant,
    cancel: &mut watch::Receiver<bool>,
) -> Result<T, Stop> {
    tokio::select! {
        biased;
        _ = interrupted(cancel) => Err(Stop::Interrupted),
        _ = tokio::time::sleep_until(deadline) => Err(Stop::Deadline),
        v = fut => Ok(v),
    }
}

/// Runs `req` on its instance and waits for its end: sends it, polls
/// `GetCommandInvocation` every `poll` until the invocation is terminal, and returns
/// its status, exit code and whole output ([`Finished`]; a failing script is a
/// `Finished`, not an error).
///
/// `fetch(bucket, key)` reads an object of the output bucket (`Ok(None)`: there is
/// none). With an output bucket, the streams are read from S3 whenever their objects
/// exist (an empty stream may have none: then the inline text, empty, is it); without
/// one, or when an object is missing or unreadable, the inline text is used unless it
/// may have been cut, which is [`CommandError::Truncated`].
///
/// Throttled, failed (5xx) and lost polls are asked again, with a growing pause;
/// `InvocationDoesNotExist` as well (a new command is not visible at once). When
/// `deadline` passes or `cancel` turns true, the command is cancelled (best effort)
/// and the error says so.
pub async fn run_command<A, F, Fut>(
    api: &A,
    req: &SendCommand,
    fetch: F,
    poll: Duration,
    deadline: Instant,
    mut cancel: watch::Receiver<bool>,
) -> Result<Finished, CommandError>
where
    A: SsmApi,
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = Result<Option<Vec<u8>>, String>>,
{
    let instance_id = req.instance_id.clone();
    if *cancel.borrow() {
        return Err(CommandError::Interrupted { command_id: None, instance_id, cancel: Ok(()) });
    }
    let command_id = send(api, req, deadline, &mut cancel).await?;
    let mut pause = poll;
    let mut last_seen = "not visible yet".to_string();
    let invocation = loop {
        let stopped =
            match unless_stopped(api.get_command_invocation(&command_id, &instance_id), deadline, &mut cancel).await {
                Ok(Ok(inv)) if inv.is_terminal() => break inv,
                Ok(Ok(inv)) => {
                    last_seen = inv.status;
                    pause = poll;
                    None
                }
                Ok(Err(e)) if e.kind == ErrorKind::NotFound || e.is_transient() || e.kind == ErrorKind::Unreachable => {
                    tracing::debug!("GetCommandInvocation {command_id}: {e}; asking again");
                    if e.kind != ErrorKind::NotFound {
                        pause = (pause * 2).min(LONGEST_PAUSE.max(poll));
                    }
                    None
                }
                Ok(Err(error)) => return Err(CommandError::Poll { command_id, instance_id, error }),
                Err(stop) => Some(stop),
            };
        let stopped = match stopped {
            Some(stop) => Some(stop),
            None => unless_stopped(tokio::time::sleep(pause), deadline, &mut cancel).await.err(),
        };
        if let Some(stop) = stopped {
            // Best effort, and not held up by the deadline that has just passed.
            let cancel = api.cancel_command(&command_id, std::slice::from_ref(&instance_id)).await;
            return Err(match stop {
                Stop::Deadline => CommandError::Deadline { command_id, instance_id, last_seen, cancel },
                Stop::Interrupted => CommandError::Interrupted { command_id: Some(command_id), instance_id, cancel },
            });
        }
    };
    let output = whole(req, &command_id, &invocation, "stdout", &fetch).await?;
    let stderr = whole(req, &command_id, &invocation, "stderr", &fetch).await?;
    Ok(Finished { command_id, status: invocation.status, exit_code: invocation.response_code, output, stderr })
}

/// Sends the command; again only while it is throttled (a throttled call was not
/// executed), never after an answer that leaves it uncertain. A call under way is
/// not abandoned (its command would run unseen); the pauses between calls are.
async fn send<A: SsmApi>(
    api: &A,
    req: &SendCommand,
    deadline: Instant,
    cancel: &mut watch::Receiver<bool>,
) -> Result<String, CommandError> {
    let mut pause = Duration::from_millis(500);
    loop {
        match api.send_command(req).await {
            Ok(id) => return Ok(id),
            Err(e) if e.kind == ErrorKind::Throttled && Instant::now() + pause < deadline => {
                tracing::debug!("SendCommand to {}: {e}; sending it again", req.instance_id);
                if unless_stopped(tokio::time::sleep(pause), deadline, cancel).await.is_err() {
                    let instance_id = req.instance_id.clone();
                    return Err(CommandError::Interrupted { command_id: None, instance_id, cancel: Ok(()) });
                }
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
            Err(error) => {
                let may_have_run = matches!(error.kind, ErrorKind::ServerError | ErrorKind::Unreachable);
                return Err(CommandError::Send { instance_id: req.instance_id.clone(), error, may_have_run });
            }
        }
    }
}

/// The whole of one stream: from S3 when it is there, else the inline text if it
/// cannot have been cut.
async fn whole<F, Fut>(
    req: &SendCommand,
    command_id: &str,
    inv: &Invocation,
    stream: &'static str,
    fetch: &F,
) -> Result<String, CommandError>
where
    F: Fn(String, String) -> Fut,
    Fut: Future<Output = Result<Option<Vec<u8>>, String>>,
{
    let (inline, limit) =
        if stream == "stdout" { (&inv.stdout, INLINE_LIMIT) } else { (&inv.stderr, STDERR_INLINE_LIMIT) };
    let may_be_cut = inline.len() >= limit - CUT_SLACK;
    let truncated = |location: Option<String>, reason: String| CommandError::Truncated {
        command_id: command_id.to_string(),
        instance_id: req.instance_id.clone(),
        status: inv.status.clone(),
        stream,
        limit,
        location,
        reason,
    };
    let Some(bucket) = &req.output_bucket else {
        return if may_be_cut { Err(truncated(None, "nothing to read".into())) } else { Ok(inline.clone()) };
    };
    let key = output_key(req.output_prefix.as_deref().unwrap_or(""), command_id, &req.instance_id, stream);
    let location = format!("s3://{bucket}/{key}");
    let reason = match fetch(bucket.clone(), key).await {
        Ok(Some(body)) => return Ok(String::from_utf8_lossy(&body).into_owned()),
        Ok(None) => "no such object".to_string(),
        Err(e) => e,
    };
    if may_be_cut {
        return Err(truncated(Some(location), reason));
    }
    if !inline.is_empty() {
        tracing::debug!("{location}: {reason}; the inline {stream} is whole");
    }
    Ok(inline.clone())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::store::ObjectStore;
    use crate::testkit::fake_s3::{FakeS3, S3Faults};
    use crate::testkit::fake_ssm::{FakeSsm, SsmFaults};

    const POLL: Duration = Duration::from_secs(2);

    fn request(commands: &[&str], bucket: Option<&str>) -> SendCommand {
        SendCommand {
            instance_id: "i-0runner".into(),
            commands: commands.iter().map(|c| c.to_string()).collect(),
            output_bucket: bucket.map(str::to_string),
            output_prefix: bucket.map(|_| "rehearse/r-1/suites".to_string()),
            timeout_secs: 600,
            comment: "rehearse r-1: suites".into(),
        }
    }

    type Fetched = std::pin::Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, String>> + Send>>;

    /// Reads the fake S3 the way the fake SSM writes it: `BUCKET/KEY`.
    fn fetch_from(s3: &Arc<FakeS3>) -> impl Fn(String, String) -> Fetched {
        let s3 = s3.clone();
        move |bucket, key| {
            let s3 = s3.clone();
            Box::pin(async move {
                s3.get(&format!("{bucket}/{key}")).await.map(|o| o.map(|o| o.body)).map_err(|e| e.to_string())
            })
        }
    }

    fn never() -> watch::Receiver<bool> {
        watch::channel(false).1
    }

    /// A JUnit report of 400 cases, about 37 KB: more than the inline 24,000.
    const JUNIT: &str = r#"echo '<?xml version="1.0" encoding="UTF-8"?>'
echo '<testsuite name="shop" tests="400">'
for i in $(seq 1 400); do
  printf '  <testcase classname="shop.checkout" name="case_%03d" file="tests/test_checkout.py" time="0.01"/>\n' "$i"
done
echo '</testsuite>'
echo "ran on $REHEARSE_FAKE_INSTANCE" >&2"#;

    #[tokio::test(start_paused = true)]
    async fn a_long_output_comes_back_whole_from_s3() {
        let s3 = Arc::new(FakeS3::new(1, S3Faults::realistic()));
        let ssm = FakeSsm::new(1, SsmFaults::realistic()).with_s3(s3.clone());
        let req = request(&[JUNIT], Some("rehearse-out"));
        let done = run_command(&ssm, &req, fetch_from(&s3), POLL, Instant::now() + Duration::from_secs(600), never())
            .await
            .unwrap();
        assert!(done.succeeded(), "{done:?}");
        assert!(done.output.len() > 30_000, "{}", done.output.len());
        assert!(done.output.starts_with("<?xml") && done.output.ends_with("</testsuite>\n"));
        assert_eq!(done.output.matches("<testcase ").count(), 400);
        assert!(done.output.contains("name=\"case_400\""));
        assert_eq!(done.stderr, "ran on i-0runner\n");
        // The inline copy was cut; the object is where output_key says.
        let inline = ssm.get_command_invocation(&done.command_id, "i-0runner").await.unwrap();
        assert_eq!(inline.stdout.chars().count(), INLINE_LIMIT);
        let key = output_key("rehearse/r-1/suites", &done.command_id, "i-0runner", "stdout");
        assert_eq!(s3.peek(&format!("rehearse-out/{key}")).unwrap(), done.output.as_bytes());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_output_that_cannot_be_read_is_an_error_not_part_of_a_file() {
        let s3 = Arc::new(FakeS3::new(2, S3Faults::realistic()));
        let ssm = FakeSsm::new(2, SsmFaults::realistic()).with_s3(s3.clone());
        let until = Instant::now() + Duration::from_secs(600);
        // No output bucket: the inline 24,000 characters are all there is.
        let e = run_command(&ssm, &request(&[JUNIT], None), fetch_from(&s3), POLL, until, never()).await.unwrap_err();
        assert!(matches!(&e, CommandError::Truncated { stream: "stdout", location: None, .. }), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        // A bucket, but the object cannot be read.
        let fails = |_: String, _: String| async { Err::<Option<Vec<u8>>, String>("403 Forbidden".into()) };
        let e =
            run_command(&ssm, &request(&[JUNIT], Some("rehearse-out")), fails, POLL, until, never()).await.unwrap_err();
        let CommandError::Truncated { location: Some(location), reason, .. } = &e else { panic!("{e}") };
        assert!(location.starts_with("s3://rehearse-out/rehearse/r-1/suites/") && location.ends_with("/stdout"));
        assert_eq!(reason, "403 Forbidden");
        assert!(e.to_string().contains(&format!("should have been at {location}")), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_not_visible_at_first_is_waited_for() {
        let s3 = Arc::new(FakeS3::new(3, S3Faults::realistic()));
        let faults = SsmFaults { invisible: (2, 2), ..SsmFaults::realistic() };
        let ssm = FakeSsm::new(3, faults).with_s3(s3.clone());
        let req = request(&["echo hello from \"$REHEARSE_FAKE_INSTANCE\""], None);
        let done = run_command(&ssm, &req, fetch_from(&s3), POLL, Instant::now() + Duration::from_secs(600), never())
            .await
            .unwrap();
        assert_eq!((done.status.as_str(), done.exit_code), ("Success", 0));
        assert_eq!(done.output, "hello from i-0runner\n");
        assert_eq!(ssm.not_visible_answers(), 2, "two InvocationDoesNotExist answers were absorbed");
        assert_eq!(ssm.calls()["SendCommand"], 1, "sent once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_command_gives_its_exit_code_and_output() {
        let s3 = Arc::new(FakeS3::new(4, S3Faults::realistic()));
        let ssm = FakeSsm::new(4, SsmFaults::chaos()).with_s3(s3.clone());
        let req =
            request(&["echo masking 3 tables", "echo 'relation \"orders\" does not exist' >&2", "exit 3"], Some("b"));
        let done = run_command(&ssm, &req, fetch_from(&s3), POLL, Instant::now() + Duration::from_secs(3600), never())
            .await
            .unwrap();
        assert_eq!((done.status.as_str(), done.exit_code), ("Failed", 3));
        assert!(!done.succeeded());
        assert_eq!(done.output, "masking 3 tables\n");
        assert_eq!(done.stderr, "relation \"orders\" does not exist\n");
        // The lines ran as one script, in a directory of their own.
        let done = run_command(
            &ssm,
            &request(&["x=1", "echo $((x + 1))", "pwd"], None),
            fetch_from(&s3),
            POLL,
            Instant::now() + Duration::from_secs(3600),
            never(),
        )
        .await
        .unwrap();
        let (two, dir) = done.output.split_once('\n').unwrap();
        assert_eq!(two, "2");
        assert_ne!(dir.trim_end(), std::env::current_dir().unwrap().to_str().unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_calls_are_sent_again_and_the_command_runs_once() {
        let s3 = Arc::new(FakeS3::new(8, S3Faults::realistic()));
        let ssm = FakeSsm::new(8, SsmFaults { throttle: 0.5, ..SsmFaults::realistic() }).with_s3(s3.clone());
        let req = request(&["echo once"], Some("b"));
        let done = run_command(&ssm, &req, fetch_from(&s3), POLL, Instant::now() + Duration::from_secs(600), never())
            .await
            .unwrap();
        assert!(done.succeeded(), "{done:?}");
        assert_eq!(done.output, "once\n");
        assert!(ssm.throttled() > 1, "seed 8 throttles several calls: {}", ssm.throttled());
        assert_eq!(ssm.ran(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passed_deadline_cancels_the_command() {
        let s3 = Arc::new(FakeS3::new(5, S3Faults::realistic()));
        let slow =
            SsmFaults { run_time: (Duration::from_secs(900), Duration::from_secs(900)), ..SsmFaults::realistic() };
        let ssm = FakeSsm::new(5, slow).with_s3(s3.clone());
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        let e =
            run_command(&ssm, &request(&["true"], None), fetch_from(&s3), POLL, deadline, never()).await.unwrap_err();
        let CommandError::Deadline { command_id, last_seen, cancel, .. } = &e else { panic!("{e}") };
        assert_eq!((last_seen.as_str(), cancel), ("InProgress", &Ok(())));
        assert!(e.to_string().contains("deadline") && e.to_string().contains("CancelCommand sent"), "{e}");
        assert_eq!(Instant::now(), deadline, "it stopped at the deadline, not a poll later");
        assert_eq!(ssm.cancelled(), vec![command_id.clone()]);
        assert_eq!(ssm.get_command_invocation(command_id, "i-0runner").await.unwrap().status, "Cancelled");
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupted_run_cancels_the_command() {
        let s3 = Arc::new(FakeS3::new(6, S3Faults::realistic()));
        let slow =
            SsmFaults { run_time: (Duration::from_secs(900), Duration::from_secs(900)), ..SsmFaults::realistic() };
        let ssm = FakeSsm::new(6, slow).with_s3(s3.clone());
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            tx.send(true).unwrap();
            // Held until the end, so that the receiver sees `true`, not a closed channel.
            std::future::pending::<()>().await;
        });
        let deadline = Instant::now() + Duration::from_secs(600);
        let e = run_command(&ssm, &request(&["true"], None), fetch_from(&s3), POLL, deadline, rx).await.unwrap_err();
        assert!(matches!(&e, CommandError::Interrupted { command_id: Some(_), cancel: Ok(()), .. }), "{e}");
        assert!(e.to_string().contains("interrupted") && e.to_string().contains("CancelCommand sent"), "{e}");
        assert_eq!(ssm.cancelled().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_instance_is_refused_without_running_anything() {
        let s3 = Arc::new(FakeS3::new(7, S3Faults::realistic()));
        let ssm = FakeSsm::new(7, SsmFaults::realistic()).with_s3(s3.clone());
        ssm.add_instance("i-0other");
        let req = request(&["echo never"], None);
        let e = run_command(&ssm, &req, fetch_from(&s3), POLL, Instant::now() + Duration::from_secs(60), never())
            .await
            .unwrap_err();
        let CommandError::Send { error, may_have_run: false, .. } = &e else { panic!("{e}") };
        assert_eq!(error.code.as_deref(), Some("InvalidInstanceId"));
        assert_eq!(ssm.sent().len(), 1);
        assert_eq!(ssm.ran(), 0);
    }

    #[test]
    fn output_keys_follow_the_agents_layout() {
        assert_eq!(
            output_key("runs/r-1/", "c0ffee", "i-1", "stdout"),
            "runs/r-1/c0ffee/i-1/awsrunShellScript/0.awsrunShellScript/stdout"
        );
        assert_eq!(
            output_key("", "c0ffee", "i-1", "stderr"),
            "c0ffee/i-1/awsrunShellScript/0.awsrunShellScript/stderr"
        );
    }
}
