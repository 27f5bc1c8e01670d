//! Decoding `deploy:`: the load during a rehearsed deploy, its windows, the switch,
//! where the new release's migrations are, and the limits that judge it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Decoder;
use crate::description::model::*;
use crate::description::yaml::Node;

impl Decoder {
    /// `deploy:` — `load` (default `compare.load`), `steady`, `settle`, `switch`,
    /// `migrations` and the limits.
    pub(super) fn deploy(
        &mut self,
        node: &Node,
        services: Option<&BTreeMap<String, Service>>,
        compare: Option<&Compare>,
    ) -> Option<Deploy> {
        let mut obj = self.obj("deploy", node, "a mapping of how the deploy is rehearsed and judged")?;
        let own_load = self.get(&mut obj, "load");
        let load = own_load.map(|n| self.load("deploy.load", n, services));
        let steady = self.get(&mut obj, "steady");
        let settle = self.get(&mut obj, "settle");
        let switch = self.get(&mut obj, "switch");
        let migrations = self.opt_string(&mut obj, "migrations");
        let max_lock_wait = self.get(&mut obj, "max_lock_wait");
        let max_error_rate = self.get(&mut obj, "max_error_rate");
        let latency = self.get(&mut obj, "latency");
        self.finish(obj);
        let window = |d: &mut Self, key: &str, n: Option<&Node>, dflt: Duration| match n {
            Some(n) => d.duration(&format!("deploy.{key}"), n, Duration::from_secs(1), Duration::from_secs(3600)),
            None => Some(dflt),
        };
        let steady = window(self, "steady", steady, default_steady());
        let settle = window(self, "settle", settle, default_settle());
        let switch = match switch {
            Some(n) => {
                self.enum_value("deploy.switch", n, &[("rolling", Switch::Rolling), ("restart", Switch::Restart)])
            }
            None => Some(Switch::Rolling),
        };
        let migrations = migrations.unwrap_or_else(default_migrations);
        if let Err(why) = check_migrations(&migrations) {
            let pos = self.positions.get("deploy.migrations");
            self.err(pos, format!("`deploy.migrations` `{migrations}`: {why}")).expected =
                Some("a directory of the release and a pattern of one `*`, e.g. `migrations/*.sql`".into());
        }
        let max_lock_wait = max_lock_wait.and_then(|n| {
            self.duration("deploy.max_lock_wait", n, Duration::from_millis(1), Duration::from_secs(3600))
        });
        let max_error_rate = max_error_rate.and_then(|n| self.number("deploy.max_error_rate", n, 0.0, 100.0));
        let latency = match latency {
            Some(n) => self.latency_limits("deploy.latency", n),
            None => BTreeMap::new(),
        };
        // The load: its own, or the comparison's; one rehearse replays (a load tool's
        // results carry no send times to cut them into before, during and after).
        let load = match load {
            Some(l) => l,
            None => match compare {
                Some(c) => Some(c.load.clone()),
                None => {
                    let pos = self.positions.get("deploy#key");
                    self.err(pos, "`deploy` needs a load: `deploy.load` or `compare.load`").expected =
                        Some("`load: {requests: FILE, target: SERVICE, rate: N}`".into());
                    None
                }
            },
        };
        if let Some(l) = &load {
            if l.requests.is_none() {
                let pos = self.positions.get(if own_load.is_some() { "deploy.load" } else { "compare.load" });
                self.err(
                    pos,
                    "a deploy's load is a request file (`requests`) that rehearse replays: a load command's results \
                     carry no send times to tell before, during and after the migration apart",
                )
                .help = Some("give `deploy.load` its own `requests` file and `target`".into());
            }
        }
        Some(Deploy {
            load: load.filter(|l| l.requests.is_some()),
            steady: steady?,
            settle: settle?,
            switch: switch?,
            migrations,
            max_lock_wait,
            max_error_rate,
            latency,
        })
    }

    /// `deploy.latency`, `chaos.expect.latency` (`at`): `METHOD PATH` → the most its
    /// p99 may be.
    pub(super) fn latency_limits(&mut self, at: &str, node: &Node) -> BTreeMap<String, Duration> {
        let mut out = BTreeMap::new();
        let Some(obj) = self.obj(at, node, "a mapping of endpoints (`GET /products`) to durations") else {
            return out;
        };
        for (k, v) in obj.entries {
            let endpoint = k.name.trim();
            let ok = endpoint.split_once(' ').is_some_and(|(m, p)| {
                !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && p.starts_with('/') && !p.contains('?')
            });
            if !ok {
                self.err(k.pos, format!("`{at}` has `{}`, which is no endpoint", k.name)).expected =
                    Some("`METHOD PATH` without a query, as the load groups requests: `GET /products`".into());
                continue;
            }
            let path = format!("{at}.{endpoint}");
            if let Some(d) = self.duration(&path, v, Duration::from_millis(1), Duration::from_secs(3600)) {
                out.insert(endpoint.to_string(), d);
            }
        }
        out
    }
}

/// `DIR/*.EXT`: a relative directory without `..`, and a file pattern of one `*`.
pub(crate) fn check_migrations(pattern: &str) -> Result<(), String> {
    let (dir, file) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    if pattern.starts_with('/') || dir.split('/').any(|c| c == ".." || c.contains('*')) {
        return Err("must be a directory inside the release, without `..` or a `*`".into());
    }
    if file.matches('*').count() != 1 || file.contains('?') || file.contains('[') {
        return Err("the file name needs exactly one `*` (and no other pattern)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name: shop\nprovider: local\nowner: a@example.com\nrelease:\n  version: v2\n  artifact: r\n\
        services:\n  web:\n    command: python3 app.py\n    health:\n      path: /health\n";

    fn deploy(extra: &str) -> Deploy {
        let dir = tempfile::tempdir().unwrap();
        for f in ["l.requests", "own.requests"] {
            std::fs::write(dir.path().join(f), "GET /products\n").unwrap();
        }
        let text = format!("{BASE}{extra}");
        let loaded =
            crate::description::load_str(&dir.path().join("d.yaml"), text, None).unwrap_or_else(|e| panic!("{e:?}"));
        loaded.desc.deploy.clone().expect("a deploy section")
    }

    #[test]
    fn a_deploy_takes_the_comparisons_load_and_its_defaults() {
        let d = deploy("compare:\n  load:\n    requests: l.requests\n    target: web\n    rate: 15\ndeploy:\n  max_lock_wait: 500ms\n");
        let load = d.load.as_ref().unwrap();
        assert_eq!((load.target.as_str(), load.rate), ("web", 15.0));
        assert_eq!((d.steady, d.settle, d.switch), (default_steady(), default_settle(), Switch::Rolling));
        assert_eq!(d.migrations, "migrations/*.sql");
        assert_eq!(d.max_lock_wait, Some(Duration::from_millis(500)));
        let d = deploy(
            "deploy:\n  load:\n    requests: own.requests\n    target: web\n  switch: restart\n  steady: 2s\n  \
             settle: 3s\n  migrations: db/*.up.sql\n  max_error_rate: 0.5\n  latency:\n    GET /products: 800ms\n",
        );
        assert_eq!(d.load.unwrap().requests.unwrap(), std::path::PathBuf::from("own.requests"));
        assert_eq!((d.switch, d.steady, d.settle), (Switch::Restart, Duration::from_secs(2), Duration::from_secs(3)));
        assert_eq!((d.migrations.as_str(), d.max_error_rate), ("db/*.up.sql", Some(0.5)));
        assert_eq!(d.latency["GET /products"], Duration::from_millis(800));
    }

    #[test]
    fn migration_patterns_stay_in_the_release() {
        for ok in ["migrations/*.sql", "*.sql", "db/migrate/*.up.sql"] {
            assert!(check_migrations(ok).is_ok(), "{ok}");
        }
        for bad in ["/etc/*.sql", "../m/*.sql", "m/*/x.sql", "m/*.*", "m/x.sql", "m/[0-9]*.sql"] {
            assert!(check_migrations(bad).is_err(), "{bad}");
        }
    }
}
