//! `rehearse warm`: refresh the local provider's golden copies, so that the next run
//! restores in a copy instead of a `pg_restore`.

use std::path::Path;

use super::load_or_report;
use crate::cli::{CopyMethod, Global};
use crate::description::ProviderKind;
use crate::exit;
use crate::providers::local::golden::{self, Method};
use crate::sys::state;

pub(crate) fn warm(g: &Global, file: &Path, method: CopyMethod) -> i32 {
    let loaded = match load_or_report(file, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if loaded.desc.provider() != ProviderKind::Local {
        errln!("error: {}: golden copies are for the local provider", file.display());
        return exit::USAGE;
    }
    super::with_signals(g, async |reporter, signals| {
        let method = match method {
            CopyMethod::Auto => Method::Auto,
            CopyMethod::CopyOnWrite => Method::CopyOnWrite,
            CopyMethod::Copy => Method::Copy,
        };
        let refreshed =
            golden::refresh_all(&loaded, &state::work_dir(), golden::Refresh::All, method, reporter, signals).await;
        match refreshed {
            Ok(lines) => {
                for l in lines {
                    outln!("{l}");
                }
                exit::PASSED
            }
            Err(e) if signals.count() > 0 => {
                errln!("rehearse: interrupted; the half-made golden copy was removed ({e})");
                exit::INTERRUPTED
            }
            Err(e) => {
                errln!("error: {e}");
                exit::BUILD_FAILED
            }
        }
    })
}
