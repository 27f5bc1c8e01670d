//! A fake of SSM Run Command behind [`SsmApi`] that really runs the commands, here.
//!
//! `SendCommand` runs the script's lines at once, joined into one `sh -c` script, in
//! a fresh temporary directory (the "instance"), with `REHEARSE_FAKE_INSTANCE` set to
//! the instance id, and keeps its exit status, stdout and stderr. It runs as a plain
//! blocking child process, so tokio's paused clock does not move while it does; the
//! fake enforces no timeout. What SSM then tells about it is timed on that clock, by
//! seeded draws:
//!
//! - the first 0–2 `GetCommandInvocation` calls answer `InvocationDoesNotExist` (a new
//!   command is not visible at once);
//! - then `InProgress`, until the command's run time (drawn) has passed since it was sent;
//! - then `Success` (exit 0) or `Failed`, `ResponseCode` the exit status, with stdout cut
//!   to [`INLINE_LIMIT`] characters and stderr to [`STDERR_INLINE_LIMIT`], as the API
//!   cuts them. With an output bucket, the whole streams are written, when the end is
//!   first reported, into the [`FakeS3`] given with [`FakeSsm::with_s3`] under the key
//!   `BUCKET/KEY` ([`output_key`]); an empty stream is not written.
//!
//! `CancelCommand` before the end makes the invocation `Cancelled` (the script has run
//! here all the same; nothing of it is written to S3). Once instances are registered
//! with [`FakeSsm::add_instance`], a command for any other is refused with
//! `InvalidInstanceId`. With [`SsmFaults::throttle`], a seeded fraction of all calls is
//! throttled (`ThrottlingException`, nothing done). Calls are counted and every
//! request kept, for tests to look at.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::store::{Condition, ObjectStore};
use crate::providers::aws::api::{ApiError, ApiResult, ErrorKind};
use crate::providers::aws::ssm::{output_key, Invocation, SendCommand, SsmApi, INLINE_LIMIT, STDERR_INLINE_LIMIT};
use crate::testkit::fake_s3::FakeS3;

/// Probabilities (0..1) per call, and timings.
#[derive(Clone, Debug)]
pub struct SsmFaults {
    /// Calls answered `ThrottlingException`.
    pub throttle: f64,
    /// How many first polls of a command answer `InvocationDoesNotExist` (uniform in
    /// the range, both ends included).
    pub invisible: (u32, u32),
    /// From `SendCommand` to the end the fake reports (uniform in the range).
    pub run_time: (Duration, Duration),
}

impl SsmFaults {
    /// No throttling; a command invisible for up to two polls, done within 1–20 s.
    pub fn realistic() -> SsmFaults {
        SsmFaults { throttle: 0.0, invisible: (0, 2), run_time: (Duration::from_secs(1), Duration::from_secs(20)) }
    }

    /// As [`SsmFaults::realistic`], with one call in five throttled.
    pub fn chaos() -> SsmFaults {
        SsmFaults { throttle: 0.2, ..SsmFaults::realistic() }
    }
}

struct Command {
    req: SendCommand,
    exit: i32,
    stdout: String,
    stderr: String,
    invisible_left: u32,
    done_at: Instant,
    cancelled: bool,
    /// Whether its streams have been written to S3.
    written: bool,
}

struct State {
    rng: u64,
    commands: BTreeMap<String, Command>,
    instances: BTreeSet<String>,
    sent: Vec<SendCommand>,
    calls: BTreeMap<&'static str, u64>,
    cancelled: Vec<String>,
    not_visible: u64,
    throttled: u64,
    ran: u64,
}

pub struct FakeSsm {
    faults: SsmFaults,
    seed: u64,
    s3: Option<Arc<FakeS3>>,
    state: Mutex<State>,
}

fn fail(code: &str, kind: ErrorKind) -> ApiError {
    ApiError { code: Some(code.into()), message: format!("{code} (fake)"), kind }
}

fn cut(s: &str, limit: usize) -> String {
    s.chars().take(limit).collect()
}

/// Runs the script in a directory of its own, removed afterwards.
fn execute(instance_id: &str, lines: &[String]) -> (i32, String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("rehearse-fake-ssm-{}-{n}", std::process::id()));
        match std::fs::create_dir(&d) {
            Ok(()) => break d,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return (-1, String::new(), format!("cannot make the fake instance's directory: {e}")),
        }
    };
    // `sh`, as the agent may run it (dash on Debian and Ubuntu): no bashism passes here.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(lines.join("\n"))
        .current_dir(&dir)
        .env("REHEARSE_FAKE_INSTANCE", instance_id)
        .stdin(Stdio::null())
        .output();
    // Best effort: a leftover directory under the temporary directory harms no test.
    #[allow(clippy::let_underscore_must_use)]
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Ok(o) => {
            use std::os::unix::process::ExitStatusExt;
            let code = o.status.code().or_else(|| o.status.signal().map(|s| 128 + s)).unwrap_or(-1);
            (code, String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
        }
        Err(e) => (127, String::new(), format!("bash: {e}\n")),
    }
}

impl FakeSsm {
    pub fn new(seed: u64, faults: SsmFaults) -> FakeSsm {
        FakeSsm {
            faults,
            seed,
            s3: None,
            state: Mutex::new(State {
                rng: seed ^ 0x2545_f491_4f6c_dd1d,
                commands: BTreeMap::new(),
                instances: BTreeSet::new(),
                sent: Vec::new(),
                calls: BTreeMap::new(),
                cancelled: Vec::new(),
                not_visible: 0,
                throttled: 0,
                ran: 0,
            }),
        }
    }

    /// Where commands with an output bucket write their streams (as `BUCKET/KEY`).
    pub fn with_s3(self, s3: Arc<FakeS3>) -> FakeSsm {
        FakeSsm { s3: Some(s3), ..self }
    }

    /// Registers a managed instance; once one is, commands for any other are refused.
    pub fn add_instance(&self, id: &str) {
        self.lock().instances.insert(id.to_string());
    }

    /// Calls made so far, per operation (`SendCommand`, `GetCommandInvocation`, ...).
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.lock().calls.clone()
    }

    /// Every `SendCommand` request, in order (refused and throttled ones included).
    pub fn sent(&self) -> Vec<SendCommand> {
        self.lock().sent.clone()
    }

    /// Commands cancelled before their end.
    pub fn cancelled(&self) -> Vec<String> {
        self.lock().cancelled.clone()
    }

    /// `InvocationDoesNotExist` answers given for commands not visible yet.
    pub fn not_visible_answers(&self) -> u64 {
        self.lock().not_visible
    }

    /// Calls answered `ThrottlingException`.
    pub fn throttled(&self) -> u64 {
        self.lock().throttled
    }

    /// Scripts run.
    pub fn ran(&self) -> u64 {
        self.lock().ran
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts the call; throttles it, by draw.
    fn enter(&self, st: &mut State, op: &'static str) -> ApiResult<()> {
        *st.calls.entry(op).or_default() += 1;
        if self.faults.throttle > 0.0 && super::draw(&mut st.rng) < self.faults.throttle {
            st.throttled += 1;
            return Err(fail("ThrottlingException", ErrorKind::Throttled));
        }
        Ok(())
    }
}

impl SsmApi for FakeSsm {
    async fn send_command(&self, req: &SendCommand) -> ApiResult<String> {
        let n = {
            let mut st = self.lock();
            st.sent.push(req.clone());
            self.enter(&mut st, "SendCommand")?;
            if !st.instances.is_empty() && !st.instances.contains(&req.instance_id) {
                return Err(fail("InvalidInstanceId", ErrorKind::Refused));
            }
            st.ran += 1;
            st.ran
        };
        // Synchronously, with the lock released: the paused clock stands still.
        let (exit, stdout, stderr) = execute(&req.instance_id, &req.commands);
        let mut st = self.lock();
        let (lo, hi) = self.faults.invisible;
        // A draw of exactly 1.0 would be one past the range.
        let invisible = (lo + ((hi.saturating_sub(lo) + 1) as f64 * super::draw(&mut st.rng)) as u32).min(hi.max(lo));
        let (lo, hi) = self.faults.run_time;
        let run_time = lo + hi.saturating_sub(lo).mul_f64(super::draw(&mut st.rng));
        let id = format!("{:08x}-5e4d-4c0d-8e00-{n:012x}", self.seed as u32);
        st.commands.insert(
            id.clone(),
            Command {
                req: req.clone(),
                exit,
                stdout,
                stderr,
                invisible_left: invisible,
                done_at: Instant::now() + run_time,
                cancelled: false,
                written: false,
            },
        );
        Ok(id)
    }

    async fn get_command_invocation(&self, command_id: &str, instance_id: &str) -> ApiResult<Invocation> {
        let (inv, writes) = {
            let mut st = self.lock();
            self.enter(&mut st, "GetCommandInvocation")?;
            let not_visible = match st.commands.get_mut(command_id) {
                Some(c) if c.req.instance_id == instance_id && c.invisible_left > 0 => {
                    c.invisible_left -= 1;
                    true
                }
                Some(c) if c.req.instance_id == instance_id => false,
                // As AWS answers for a command it does not know (yet).
                _ => return Err(fail("InvocationDoesNotExist", ErrorKind::NotFound)),
            };
            if not_visible {
                st.not_visible += 1;
                return Err(fail("InvocationDoesNotExist", ErrorKind::NotFound));
            }
            let Some(c) = st.commands.get_mut(command_id) else { unreachable!("looked up above") };
            // Not ended (or never will): a status, no output yet.
            let unfinished = |status: &str| Invocation {
                status: status.into(),
                response_code: -1,
                stdout: String::new(),
                stderr: String::new(),
                stdout_url: None,
                stderr_url: None,
            };
            if c.cancelled {
                (unfinished("Cancelled"), Vec::new())
            } else if Instant::now() < c.done_at {
                (unfinished("InProgress"), Vec::new())
            } else {
                let mut writes = Vec::new();
                let mut url = |stream: &str, body: &str| {
                    let bucket = c.req.output_bucket.as_ref()?;
                    let key = output_key(c.req.output_prefix.as_deref().unwrap_or(""), command_id, instance_id, stream);
                    if !c.written && !body.is_empty() {
                        writes.push((format!("{bucket}/{key}"), body.as_bytes().to_vec()));
                    }
                    Some(format!("https://s3.fake.invalid/{bucket}/{key}"))
                };
                let (stdout_url, stderr_url) = (url("stdout", &c.stdout), url("stderr", &c.stderr));
                c.written = true;
                let inv = Invocation {
                    status: if c.exit == 0 { "Success" } else { "Failed" }.into(),
                    response_code: c.exit,
                    stdout: cut(&c.stdout, INLINE_LIMIT),
                    stderr: cut(&c.stderr, STDERR_INLINE_LIMIT),
                    stdout_url,
                    stderr_url,
                };
                (inv, writes)
            }
        };
        // The agent's uploads, done by the time it reports the end. One that fails (a
        // fault of the fake S3) leaves its object missing, as a failed upload would.
        if let Some(s3) = &self.s3 {
            for (key, body) in writes {
                if let Err(e) = s3.put(&key, body, Condition::Always).await {
                    tracing::debug!("fake SSM: writing {key}: {e}");
                }
            }
        }
        Ok(inv)
    }

    async fn cancel_command(&self, command_id: &str, _instance_ids: &[String]) -> ApiResult<()> {
        let mut st = self.lock();
        self.enter(&mut st, "CancelCommand")?;
        let now = Instant::now();
        let Some(c) = st.commands.get_mut(command_id) else {
            return Err(fail("InvalidCommandId", ErrorKind::Refused));
        };
        // A command that has ended stays as it ended.
        if !c.cancelled && now < c.done_at {
            c.cancelled = true;
            st.cancelled.push(command_id.to_string());
        }
        Ok(())
    }
}
