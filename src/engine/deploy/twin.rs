//! The baseline twin of a compared deploy (`rehearse compare --deploy`): how the
//! comparison tells the deploy, waiting with its load ready, where the twin serves.

use crate::sys::signals::Signals;

/// The baseline twin of a compared deploy: a copy from the same backup serving the old
/// release, which receives the same load at the same time without the migration. The
/// deploy waits for it before its load starts.
#[derive(Clone)]
pub struct Twin {
    target: tokio::sync::watch::Receiver<Option<TwinState>>,
}

/// What became of the twin.
#[derive(Clone, Debug)]
pub enum TwinState {
    /// Up, its load target at this address.
    Serving(String, u16),
    /// It never came up (or has no address for the load): the deploy goes on alone.
    Gone(String),
}

/// The caller's end of a [`Twin`]: says once what became of it.
pub struct TwinReady(tokio::sync::watch::Sender<Option<TwinState>>);

impl Twin {
    pub fn new() -> (TwinReady, Twin) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (TwinReady(tx), Twin { target: rx })
    }

    /// What became of the twin, once the caller says (gone if the caller goes first);
    /// `None` when a signal came meanwhile.
    pub(super) async fn wait(&self, signals: &Signals) -> Option<TwinState> {
        let mut rx = self.target.clone();
        let said = async {
            match rx.wait_for(Option::is_some).await {
                Ok(state) => state.clone().unwrap_or_else(|| TwinState::Gone("no answer".into())),
                Err(_) => TwinState::Gone("its comparison ended first".into()),
            }
        };
        tokio::select! {
            s = said => Some(s),
            _ = signals.nth(1) => None,
        }
    }
}

impl TwinReady {
    pub fn say(&self, state: TwinState) {
        self.0.send_replace(Some(state));
    }
}
