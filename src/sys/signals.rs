//! Interrupts, counted: SIGINT, SIGTERM, SIGHUP (the terminal closed, the SSH session
//! dropped) and SIGQUIT all mean "stop and tear down". The first starts teardown; the
//! second stops teardown and makes the run print what is left. Installed once per
//! process, before anything is created, so no signal is ever handled by the default
//! (killing) action mid-run — a copy of production never outlives the terminal that
//! started it.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Signals {
    rx: watch::Receiver<u32>,
}

/// Fires the signals of a [`Signals::manual`] (tests: an interrupt at a chosen
/// moment, in process).
#[derive(Clone)]
pub struct Trigger(std::sync::Arc<watch::Sender<u32>>);

impl Trigger {
    /// As if one more SIGINT arrived.
    pub fn interrupt(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

impl Signals {
    /// Starts listening for SIGINT, SIGTERM, SIGHUP and SIGQUIT (inside a tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        let (tx, rx) = watch::channel(0u32);
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut quit = signal(SignalKind::quit())?;
        // Which outputs are the terminal, asked now: after a hangup the terminal no
        // longer answers the question.
        let ttys = {
            use std::io::IsTerminal;
            (std::io::stdout().is_terminal(), std::io::stderr().is_terminal())
        };
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = int.recv() => "interrupted",
                    _ = term.recv() => "terminated",
                    _ = hup.recv() => {
                        // The terminal is gone: writing to it would fail (and printing
                        // would panic mid-teardown). What is printed from now on goes
                        // nowhere; the report and the journal still say everything.
                        detach_from_terminal(ttys);
                        "hung up"
                    }
                    _ = quit.recv() => "quit",
                };
                let n = *tx.borrow() + 1;
                if tx.send(n).is_err() {
                    break;
                }
                let line = if n == 1 {
                    format!(
                        "\nrehearse: {name} — tearing down (press Ctrl-C again to stop teardown and list what is left)"
                    )
                } else {
                    "\nrehearse: second interrupt — stopping teardown".to_string()
                };
                // Best effort: stderr is the only place to say it; if it is gone there is nowhere else.
                #[allow(clippy::let_underscore_must_use)]
                let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{line}\n").as_bytes());
            }
        });
        Ok(Signals { rx })
    }

    /// Never fires (for commands and tests without signal handling).
    pub fn none() -> Signals {
        let (tx, rx) = watch::channel(0u32);
        std::mem::forget(tx);
        Signals { rx }
    }

    /// Fires when the returned [`Trigger`] says so.
    pub fn manual() -> (Signals, Trigger) {
        let (tx, rx) = watch::channel(0u32);
        (Signals { rx }, Trigger(std::sync::Arc::new(tx)))
    }

    pub fn count(&self) -> u32 {
        *self.rx.borrow()
    }

    /// Sleeps until `until`; true when a signal came first (or had come already).
    pub async fn sleep_until(&self, until: tokio::time::Instant) -> bool {
        if self.count() > 0 {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep_until(until) => false,
            () = self.nth(1) => true,
        }
    }

    /// Sleeps `d`; true when a signal came first (or had come already).
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        self.sleep_until(tokio::time::Instant::now() + d).await
    }

    /// Resolves once at least `n` signals have arrived.
    pub async fn nth(&self, n: u32) {
        let mut rx = self.rx.clone();
        // Best effort: a closed channel means the signal handler task is gone: no further signal can come.
        #[allow(clippy::let_underscore_must_use)]
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}

/// Points standard output and error that were the terminal at /dev/null.
fn detach_from_terminal((stdout, stderr): (bool, bool)) {
    use std::os::fd::AsFd;
    // Best effort: if /dev/null cannot take their place, writes to a closed terminal
    // fail with EIO, which the writers already ignore.
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else { return };
    if stdout {
        #[allow(clippy::let_underscore_must_use)]
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
    if stderr {
        #[allow(clippy::let_underscore_must_use)]
        let _ = nix::unistd::dup2_stderr(null.as_fd());
    }
}
