//! `rehearse run` and `rehearse up`: a rehearsal through the engine, its report
//! written and its exit code decided here.

use super::edge::run::{described, exit_code, rehearse};
use super::load_or_report;
use crate::cli::{Destroy, Global, RunArgs};
use crate::description::DestroyPolicy;
use crate::engine::lifecycle::Options;
use crate::exit;
use crate::sys::state;

pub(crate) fn run(g: &Global, args: &RunArgs, up_only: bool) -> i32 {
    let loaded = match load_or_report(&args.file, args.release.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(release) = loaded.release_version(args.release.as_deref()) else {
        errln!(
            "error: no release version: pass `--release VERSION` or set `release.version` in {}",
            args.file.display()
        );
        return exit::USAGE;
    };
    if let Some(names) = &args.chaos {
        if let Err((code, why)) = crate::engine::chaos::refusal(&loaded, names, args.from.is_some(), up_only) {
            errln!("error: {why}");
            return code;
        }
    }
    if let Some(from) = &args.from {
        let refused = match up_only {
            true => Err((exit::USAGE, "`--from` rehearses a deploy: it belongs to `rehearse run`, not `up`".into())),
            false => crate::engine::deploy::refusal(&loaded, from, &release),
        };
        if let Err((code, why)) = refused {
            errln!("error: {why}");
            return code;
        }
    }
    let destroy = if args.keep {
        DestroyPolicy::Never
    } else {
        match args.destroy {
            Some(Destroy::Always) => DestroyPolicy::Always,
            Some(Destroy::Passing) => DestroyPolicy::Passing,
            Some(Destroy::Never) => DestroyPolicy::Never,
            None if up_only => DestroyPolicy::Never,
            None => loaded.desc.destroy,
        }
    };
    // A game day's services reach their databases through proxies that end with the
    // run: what it built is no use kept.
    let destroy = match (&args.chaos, destroy) {
        (None, d) => d,
        (Some(_), DestroyPolicy::Always) => DestroyPolicy::Always,
        (Some(_), _) if args.keep || args.destroy.is_some() => {
            errln!(
                "error: a game day (`--chaos`) is always torn down: its services reach their databases through fault \
                 proxies that end with the run; leave out `--keep`/`--destroy`"
            );
            return exit::USAGE;
        }
        // The description's `destroy: passing|never` is for its ordinary runs.
        (Some(_), _) => DestroyPolicy::Always,
    };
    let g = &described(g, &loaded);
    let run_id = state::new_run_id();
    super::with_signals(g, async |reporter, signals| {
        let super::store::Opened { shared, locks, local_root } = match super::store::open_for_runs(g).await {
            Ok(o) => o,
            Err(code) => return code,
        };
        let lease = match super::store::lease() {
            Ok(l) => l,
            Err(code) => return code,
        };
        // A name is claimed under its lock: of two runs asking for the same name at
        // once, one waits for nothing and the other is told who has it.
        let name_lock = match &args.name {
            Some(name) => {
                let verb = if up_only { "up" } else { "run" };
                let held = match super::edge::lock::take(
                    locks.clone(),
                    name,
                    &format!("rehearse {verb} --name {name}"),
                    Some(&run_id),
                    lease,
                )
                .await
                {
                    Ok(l) => l,
                    Err(code) => return code,
                };
                let free = match super::store::fetch_all(g).await {
                    Ok(()) => super::edge::run::check_name_free(g, name),
                    Err(code) => Err(code),
                };
                if let Err(code) = free {
                    super::edge::lock::give_back(held, name).await;
                    return code;
                }
                Some((held, name.clone()))
            }
            None => None,
        };
        let opts = Options {
            run_id: run_id.clone(),
            release,
            destroy,
            cold: args.cold,
            up_only,
            state_root: local_root,
            work_root: state::work_dir(),
            run_as: args.run_as.clone(),
            exit_code,
            name: args.name.as_ref().map(|n| n.to_string()),
            shared,
            stage: None,
            pins: Default::default(),
            change: super::edge::run::change_of(g),
            member: None,
            from: args.from.clone(),
            twin: None,
            deploy_twin: false,
            chaos: args.chaos.clone(),
        };
        let code = rehearse(g, &loaded, &opts, locks, reporter, signals).await.code;
        if let Some((l, name)) = name_lock {
            super::edge::lock::give_back(l, &name).await;
        }
        code
    })
}
