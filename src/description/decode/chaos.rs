//! Decoding `chaos:`: a game day's load, its windows, its faults (each kind's keys
//! read from the one table the schema reads, [`KIND_SHAPES`]) and its expectations.
//! What the faults name (services, instances, databases, suites) is checked against the
//! rest of the description in `validate`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::rules::KeyRule;
use super::Decoder;
use crate::description::model::*;
use crate::description::yaml::{Node, Value};

/// Every key a fault may have, whatever its kind.
const FAULT_KEYS: [&str; 14] = [
    "service",
    "instance",
    "database",
    "path",
    "kind",
    "mode",
    "failover",
    "delay",
    "jitter",
    "bytes_per_second",
    "after",
    "at",
    "duration",
    "expect",
];

/// The keys every fault may have besides its target and its kind's own.
const COMMON_KEYS: [&str; 4] = ["kind", "after", "at", "expect"];

impl Decoder {
    /// `chaos:` — `load` (default `compare.load`), `steady`, `settle`, `faults`, `expect`.
    pub(super) fn chaos(
        &mut self,
        node: &Node,
        provider: Option<ProviderKind>,
        services: Option<&BTreeMap<String, Service>>,
        compare: Option<&Compare>,
    ) -> Option<Chaos> {
        let mut obj = self.obj("chaos", node, "a mapping of the faults of a game day and what must hold")?;
        let own_load = self.get(&mut obj, "load");
        let load = own_load.map(|n| self.load("chaos.load", n, services));
        let steady = self.get(&mut obj, "steady");
        let settle = self.get(&mut obj, "settle");
        let faults = self.require(&mut obj, "faults", "a mapping of fault names to faults");
        let expect = self.get(&mut obj, "expect");
        self.finish(obj);
        let steady = match steady {
            Some(n) => self.duration("chaos.steady", n, Duration::ZERO, Duration::from_secs(3600)),
            None => Some(default_chaos_steady()),
        };
        let settle = match settle {
            Some(n) => self.duration("chaos.settle", n, Duration::from_secs(1), Duration::from_secs(3600)),
            None => Some(default_chaos_settle()),
        };
        let faults = faults.and_then(|n| self.faults(n, provider));
        let expect = match expect {
            Some(n) => self.expect("chaos.expect", n, true),
            None => Some(Expect::default()),
        };
        // The load: its own, or the comparison's; none is allowed (the expectations on
        // the traffic then fail, closed), a load command is not (its results carry no
        // send times to place against the faults).
        let load = match load {
            Some(l) => l,
            None => compare.map(|c| c.load.clone()),
        };
        if let Some(l) = &load {
            if l.requests.is_none() {
                let pos = self.positions.get(if own_load.is_some() { "chaos.load" } else { "compare.load" });
                self.err(
                    pos,
                    "a game day's load is a request file (`requests`) that rehearse replays: a load command's \
                     results carry no send times to place against the faults",
                )
                .help = Some("give `chaos.load` its own `requests` file and `target`".into());
            }
        }
        Some(Chaos {
            load: load.filter(|l| l.requests.is_some()),
            steady: steady?,
            settle: settle?,
            faults: faults?,
            expect: expect?,
        })
    }

    fn faults(&mut self, node: &Node, provider: Option<ProviderKind>) -> Option<BTreeMap<String, ChaosFault>> {
        let obj = self.obj("chaos.faults", node, "a mapping of fault names to faults")?;
        if obj.entries.is_empty() {
            self.err(node.pos, "`chaos.faults` names no fault").expected =
                Some("at least one, e.g. `db-restart: {database: db, kind: restart}`".into());
            return None;
        }
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (k, v) in obj.entries {
            if let Err(msg) = KeyRule::Identifier.check(&k.name) {
                self.err(k.pos, format!("invalid name `{}` in `chaos.faults`: {msg}", k.name));
                ok = false;
                continue;
            }
            match self.fault(&format!("chaos.faults.{}", k.name), v, provider) {
                Some(f) => {
                    out.insert(k.name.clone(), f);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn fault(&mut self, path: &str, node: &Node, provider: Option<ProviderKind>) -> Option<ChaosFault> {
        let mut obj = self.obj(path, node, "a mapping with a target (`service`, `database` or `path`) and a `kind`")?;
        let mut found: BTreeMap<&'static str, &Node> = BTreeMap::new();
        for key in FAULT_KEYS {
            if let Some(n) = self.get(&mut obj, key) {
                found.insert(key, n);
            }
        }
        let kind_node = self.require(&mut obj, "kind", "what the fault does, e.g. `restart`");
        self.finish(obj);
        let choices: Vec<(&'static str, FaultKind)> = FaultKind::ALL.iter().map(|k| (k.as_str(), *k)).collect();
        let kind = kind_node.and_then(|n| self.enum_value(&format!("{path}.kind"), n, &choices))?;

        let (_, mut ok) = self.fault_shape(path, kind, &found, provider)?;
        let get = |k: &str| found.get(k).copied();
        let string = |d: &mut Self, k: &str| get(k).and_then(|n| d.nonempty_string(&format!("{path}.{k}"), n));
        let service = string(self, "service");
        let database = string(self, "database");
        let path_text = string(self, "path");
        if let Some(p) = &path_text {
            let named = |s: &str| KeyRule::Identifier.check(s).is_ok();
            if !split_path(p).is_some_and(|(a, b)| named(a) && named(b)) {
                let pos = self.positions.get(&format!("{path}.path"));
                self.err(pos, format!("`{path}.path` must be `FROM -> TO`, found `{p}`")).expected = Some(
                    "a service to a database it uses (`web -> db`) or the load's client to a service \
                          (`client -> web`)"
                        .into(),
                );
                ok = false;
            }
        }
        let instance = get("instance").and_then(|n| self.integer(&format!("{path}.instance"), n, 0, 999));
        let mode = get("mode").and_then(|n| {
            self.enum_value(
                &format!("{path}.mode"),
                n,
                &[("fast", RestartMode::Fast), ("immediate", RestartMode::Immediate)],
            )
        });
        let failover = match get("failover") {
            Some(n) => match n.value {
                Value::Bool(b) => Some(b),
                _ => {
                    let found_kind = n.value.kind();
                    self.err(n.pos, format!("`{path}.failover` must be true or false, found {found_kind}"));
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let hour = Duration::from_secs(3600);
        let dur = |d: &mut Self, k: &str, min: Duration| {
            get(k).and_then(|n| d.duration(&format!("{path}.{k}"), n, min, hour))
        };
        let delay = dur(self, "delay", Duration::from_millis(1));
        let jitter = dur(self, "jitter", Duration::ZERO);
        let at = dur(self, "at", Duration::ZERO);
        let min_duration = if kind == FaultKind::Restart { Duration::ZERO } else { Duration::from_millis(100) };
        let duration = dur(self, "duration", min_duration);
        let expect = match get("expect") {
            Some(n) => match self.expect(&format!("{path}.expect"), n, false) {
                Some(e) => Some(FaultExpect {
                    max_error_rate: e.max_error_rate,
                    latency: e.latency,
                    recover_within: e.recover_within,
                }),
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let bytes_per_second = get("bytes_per_second")
            .and_then(|n| self.integer(&format!("{path}.bytes_per_second"), n, 1, 1 << 40))
            .map(|n| n as u64);
        let after = match get("after") {
            Some(n) => {
                let a = self.string(&format!("{path}.after"), n);
                let good = a.as_deref().is_some_and(|a| {
                    a == "load" || a.strip_prefix("suite.").is_some_and(|s| KeyRule::Identifier.check(s).is_ok())
                });
                if a.is_some() && !good {
                    self.err(n.pos, format!("`{path}.after` must be `load` or `suite.NAME`")).expected =
                        Some("what `at` counts from: the load's start, or a suite's".into());
                    ok = false;
                }
                a
            }
            None => Some(default_after()),
        };
        // Each key that was there and did not decode has said so.
        let decoded = |k: &str, some: bool| !found.contains_key(k) || some;
        ok &= decoded("service", service.is_some())
            && decoded("database", database.is_some())
            && decoded("path", path_text.is_some())
            && decoded("instance", instance.is_some())
            && decoded("mode", mode.is_some())
            && decoded("delay", delay.is_some())
            && decoded("jitter", jitter.is_some())
            && decoded("at", at.is_some())
            && decoded("duration", duration.is_some())
            && decoded("bytes_per_second", bytes_per_second.is_some());
        if !ok {
            return None;
        }
        Some(ChaosFault {
            service,
            instance: instance.map(|i| i as u32),
            database,
            path: path_text,
            kind,
            mode,
            failover,
            delay,
            jitter,
            bytes_per_second,
            after: after?,
            at: at.unwrap_or_default(),
            duration,
            expect,
        })
    }

    /// The shape a fault's kind has on its target: exactly one target, one the kind
    /// takes, on a provider that has it, with the kind's own keys and no other; with
    /// whether its keys were right.
    fn fault_shape(
        &mut self,
        path: &str,
        kind: FaultKind,
        found: &BTreeMap<&'static str, &Node>,
        provider: Option<ProviderKind>,
    ) -> Option<(&'static KindShape, bool)> {
        // Exactly one target, and one this kind takes.
        let targets: Vec<FaultTargetKind> =
            [FaultTargetKind::Service, FaultTargetKind::Database, FaultTargetKind::Path]
                .into_iter()
                .filter(|t| found.contains_key(t.key()))
                .collect();
        let fits: Vec<&KindShape> = KIND_SHAPES.iter().filter(|s| s.kind == kind).collect();
        let wanted = fits.iter().map(|s| format!("a `{}`", s.target.key())).collect::<Vec<_>>().join(" or ");
        let shape = match targets.as_slice() {
            [t] => match fits.iter().find(|s| s.target == *t) {
                Some(s) => *s,
                None => {
                    let pos = self.positions.key(&format!("{path}.{}", t.key()));
                    self.err(
                        pos,
                        format!("`{path}`: a `{}` fault must be on {wanted}, not a `{}`", kind.as_str(), t.key()),
                    );
                    return None;
                }
            },
            _ => {
                let pos = self.positions.key(path);
                self.err(pos, format!("`{path}` needs a `service`, a `database` or a `path`: exactly one")).expected =
                    Some(format!("for a `{}` fault, {wanted}", kind.as_str()));
                return None;
            }
        };
        if let Some(p) = provider {
            if !shape.providers.contains(&p) {
                let other = shape.providers.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ");
                let pos = self.positions.get(&format!("{path}.kind"));
                let d = self.err(
                    pos,
                    format!(
                        "`{path}.kind` `{}` on a {} is for the {other} provider",
                        kind.as_str(),
                        shape.target.key()
                    ),
                );
                d.help = Some(match (p, shape.target) {
                    (ProviderKind::Local, FaultTargetKind::Service) => {
                        "locally a service's instance is `kill`ed".into()
                    }
                    (ProviderKind::Local, _) => {
                        "locally a database is `restart`ed (`mode: fast` or `immediate`)".into()
                    }
                    (ProviderKind::Aws, FaultTargetKind::Service) => {
                        "on aws an instance is `stop`ped, `reboot`ed or `terminate`d".into()
                    }
                    (ProviderKind::Aws, _) => "on aws a database is `reboot`ed (with `failover`) or failed over".into(),
                });
            }
        }
        // The kind's own keys, and no other.
        let allowed = |k: &str| {
            k == shape.target.key()
                || COMMON_KEYS.contains(&k)
                || shape.keys.contains(&k)
                || (k == "duration" && shape.lasts)
        };
        for key in found.keys().filter(|k| !allowed(k)) {
            let pos = self.positions.key(&format!("{path}.{key}"));
            let mut own: Vec<&str> = vec![shape.target.key(), "kind", "after", "at", "expect"];
            own.extend(shape.keys.iter().copied());
            if shape.lasts {
                own.push("duration");
            }
            let list = own.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            self.err(pos, format!("unknown key `{key}` in `{path}` for a `{}` fault", kind.as_str())).expected =
                Some(format!("one of {list}"));
        }
        let mut ok = found.keys().all(|k| allowed(k));
        for key in shape.required {
            if !found.contains_key(key) {
                let pos = self.positions.key(path);
                self.err(pos, format!("missing required key `{key}` in `{path}` for a `{}` fault", kind.as_str()));
                ok = false;
            }
        }
        Some((shape, ok))
    }

    /// `chaos.expect` (`suites`: it may say `suites_pass`), or a fault's own at `at`.
    fn expect(&mut self, at: &str, node: &Node, suites: bool) -> Option<Expect> {
        let mut obj = self.obj(at, node, "a mapping of what must hold during and after the faults")?;
        let max_error_rate = self.get(&mut obj, "max_error_rate");
        let latency = self.get(&mut obj, "latency");
        let recover_within = self.get(&mut obj, "recover_within");
        let suites_pass = if suites { self.get(&mut obj, "suites_pass") } else { None };
        self.finish(obj);
        let max_error_rate = match max_error_rate {
            Some(n) => Some(self.number(&format!("{at}.max_error_rate"), n, 0.0, 100.0)?),
            None => None,
        };
        let latency = match latency {
            Some(n) => self.latency_limits(&format!("{at}.latency"), n),
            None => BTreeMap::new(),
        };
        let recover_within = match recover_within {
            Some(n) => Some(self.duration(
                &format!("{at}.recover_within"),
                n,
                Duration::from_millis(1),
                Duration::from_secs(3600),
            )?),
            None => None,
        };
        let suites_pass = match suites_pass {
            Some(n) => match n.value {
                Value::Bool(b) => b,
                _ => {
                    let kind = n.value.kind();
                    self.err(n.pos, format!("`{at}.suites_pass` must be true or false, found {kind}"));
                    return None;
                }
            },
            None => true,
        };
        Some(Expect { max_error_rate, latency, recover_within, suites_pass })
    }
}

#[cfg(test)]
mod tests;
