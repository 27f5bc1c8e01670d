//! What a description says of a deploy: its settings (`deploy:`, else the defaults
//! with the comparison's load), and why a deploy cannot be rehearsed, said before
//! anything exists.

use std::collections::BTreeMap;
use std::path::Path;

use crate::description::{Deploy, Loaded, Switch};
use crate::plan;

/// Why the deploy of `release` over `from` cannot be rehearsed, with the exit code: a
/// baseline that cannot be built (missing, the release itself) exits 3, a description
/// that cannot rehearse a deploy exits 2 — said before anything exists.
pub fn refusal(loaded: &Loaded, from: &str, release: &str) -> Result<(), (i32, String)> {
    use crate::exit;
    if loaded.desc.provider() != crate::description::ProviderKind::Local {
        return Err((
            exit::USAGE,
            "a deploy is rehearsed on the local provider only, for now: `run --from` and `compare --deploy` need \
             `provider: local`"
                .into(),
        ));
    }
    if settings(loaded).is_none() {
        return Err((
            exit::USAGE,
            format!(
                "a deploy rehearsal (`run --from`, `compare --deploy`) needs a load to rehearse the deploy \
                 under: add `deploy:` (with its `load`) or `compare.load` with a request file to {}",
                loaded.path.display()
            ),
        ));
    }
    if from == release {
        return Err((
            exit::BUILD_FAILED,
            format!(
                "the baseline could not be built: `--from {from}` is the release being deployed; a deploy \
                 rehearsal needs the release serving now (`--from`) and another one (`--release`)"
            ),
        ));
    }
    for (which, version) in [("baseline", from), ("release", release)] {
        let plan = plan::build(loaded, Some(version), None)
            .map_err(|e| (exit::BUILD_FAILED, format!("the {which} {version} could not be planned: {e}")))?;
        let artifact = loaded.resolve(Path::new(&plan.release.artifact));
        if !artifact.exists() {
            let what =
                if which == "baseline" { "the baseline could not be built" } else { "the release cannot be deployed" };
            return Err((
                exit::BUILD_FAILED,
                format!("{what}: release {version}'s artifact {} does not exist", artifact.display()),
            ));
        }
    }
    Ok(())
}

/// The deploy settings of a description: its `deploy:` section, or the defaults with
/// the comparison's load. `None` when it has neither (the command refuses `--from`).
pub fn settings(loaded: &Loaded) -> Option<Deploy> {
    let d = &loaded.desc;
    if let Some(dep) = &d.deploy {
        return Some(dep.clone());
    }
    let load = d.compare.as_ref()?.load.clone();
    load.requests.as_ref()?;
    Some(defaults(Some(load)))
}

/// The settings of a `deploy:` section that says nothing but its load.
pub(super) fn defaults(load: Option<crate::description::Load>) -> Deploy {
    Deploy {
        load,
        steady: crate::description::default_steady(),
        settle: crate::description::default_settle(),
        switch: Switch::Rolling,
        migrations: crate::description::default_migrations(),
        max_lock_wait: None,
        max_error_rate: None,
        latency: BTreeMap::new(),
    }
}
