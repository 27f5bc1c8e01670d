//! `rehearse request ENVIRONMENT --release V --server URL`: a rehearsal asked of a
//! server (`rehearse serve`) with the personal token in `$REHEARSE_TOKEN`; its events
//! printed as they arrive; the run's exit code.

use crate::exit;
use crate::server::client::{self, ClientError};

pub(crate) fn request(environment: &str, release: &str, server: &str) -> i32 {
    let Some(token) = std::env::var("REHEARSE_TOKEN").ok().filter(|t| !t.trim().is_empty()) else {
        errln!(
            "error: rehearse request needs a token in $REHEARSE_TOKEN (`rehearse serve --new-token USER` makes one)"
        );
        return exit::USAGE;
    };
    super::runtime().block_on(async {
        let mut say = |line: &str| errln!("{line}");
        match client::rehearse(server, token.trim(), environment, release, &mut say).await {
            Ok(done) => {
                match (&done.verdict, &done.error) {
                    (Some(v), _) => errln!("request {}: {v} (exit {})", done.id, done.exit_code),
                    (None, Some(e)) => errln!("request {}: error: {e} (exit {})", done.id, done.exit_code),
                    (None, None) => errln!("request {}: exit {}", done.id, done.exit_code),
                }
                done.exit_code
            }
            Err(e) => {
                errln!("error: {e}");
                match e {
                    ClientError::Url(_) => exit::USAGE,
                    ClientError::Refused { status, .. } if status.is_client_error() => exit::USAGE,
                    _ => exit::BUILD_FAILED,
                }
            }
        }
    })
}
