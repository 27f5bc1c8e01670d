//! SIGINT and SIGTERM, counted. The first starts teardown; the second stops teardown
//! and makes the run print what is left. Installed once per process, before anything
//! is created, so no signal is ever handled by the default (killing) action mid-run.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Signals {
    rx: watch::Receiver<u32>,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM (inside a tokio runtime).
    pub fn install() -> std::io::Result<Signals> {
        let (tx, rx) = watch::channel(0u32);
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                let n = *tx.borrow() + 1;
                if tx.send(n).is_err() {
                    break;
                }
                eprintln!(
                    "{}",
                    if n == 1 {
                        "\nrehearse: interrupted — tearing down (press Ctrl-C again to stop teardown and list what is left)"
                    } else {
                        "\nrehearse: second interrupt — stopping teardown"
                    }
                );
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

    pub fn count(&self) -> u32 {
        *self.rx.borrow()
    }

    /// Resolves once at least `n` signals have arrived.
    pub async fn nth(&self, n: u32) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|c| *c >= n).await;
    }
}
