//! `rehearse serve`: reads the server's configuration, starts the server (the engine
//! does the work: src/server), says where it listens, and serves until a signal.
//! `--new-token USER` prints a new API token and the configuration entry for it.

use std::net::SocketAddr;
use std::path::Path;

use crate::cli::Global;
use crate::exit;
use crate::server::{self, Config, Place};
use crate::sys::state;

pub(crate) fn serve(g: &Global, config: Option<&Path>, listen: Option<SocketAddr>, new_token: Option<&str>) -> i32 {
    if let Some(user) = new_token {
        if !crate::engine::requests::valid_user(user) {
            errln!("error: {user:?} is not a user name (letters, digits and ._@+-)");
            return exit::USAGE;
        }
        let (token, entry) = server::new_token(user);
        errln!("rehearse: the token is shown once; give it to {user}, and add the entry to the server's `tokens:`");
        outln!("{token}");
        eprint!("{entry}"); // raw: a user name by its grammar and hex digits
        return exit::PASSED;
    }
    let Some(path) = config else {
        errln!("error: rehearse serve needs --config FILE");
        return exit::USAGE;
    };
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            errln!("error: {e}");
            return exit::USAGE;
        }
    };
    if let Some(addr) = listen {
        config.listen = addr;
    }
    let place = Place { state_root: super::store::local_root(g), work_root: state::work_dir() };
    super::runtime().block_on(async {
        let signals = match super::signals() {
            Ok(s) => s,
            Err(code) => return code,
        };
        let served = server::serve(config, place, signals, |addr| {
            errln!("rehearse serve: listening on http://{addr}");
        })
        .await;
        match served {
            Ok(()) => exit::PASSED,
            Err(e) => {
                errln!("error: {e}");
                exit::BUILD_FAILED
            }
        }
    })
}
