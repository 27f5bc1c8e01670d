//! A named lock in the state store taken for a command, and given back: who holds it
//! said when it is refused, a stale holder's takeover said.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::engine::store::lock::{self, Acquired, Lease, LockInfo};
use crate::engine::store::ObjectStore;
use crate::exit;

/// Takes `name` for this process, or says who holds it (`Err`: the exit code).
pub(crate) async fn take(
    store: Arc<dyn ObjectStore>,
    name: &str,
    purpose: &str,
    run_id: Option<&str>,
    lease: Duration,
) -> Result<Lease, i32> {
    let me = LockInfo::for_this_process(name, purpose, run_id);
    match lock::acquire(store.as_ref(), &me, lease, &Utc::now).await {
        Ok(Acquired::Held(held)) => {
            if let Some(stale) = &held.took_over {
                errln!(
                    "rehearse: took over the lock `{name}`: its lease ran out at {} ({})",
                    stale.lease_until.format("%Y-%m-%d %H:%M:%SZ"),
                    stale.refusal()
                );
            }
            Ok(Lease::keep(store, held, lease))
        }
        Ok(Acquired::Refused(holder)) => {
            errln!("error: {}", holder.refusal());
            Err(exit::LOCKED)
        }
        Err(e) => {
            errln!("error: cannot take the lock `{name}` in {}: {e}", store.url());
            Err(exit::BUILD_FAILED)
        }
    }
}

/// Gives a lock back; a lock lost on the way is said.
pub(crate) async fn give_back(lease: Lease, name: &str) {
    match lease.release().await {
        Ok(true) => {}
        Ok(false) => errln!("rehearse: warning: the lock `{name}` was no longer this process's when it ended"),
        Err(e) => {
            errln!("rehearse: warning: cannot release the lock `{name}` ({e}); it frees itself when its lease runs out")
        }
    }
}
