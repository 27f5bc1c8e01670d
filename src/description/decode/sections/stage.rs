//! `stage:`: a stage's name, drain, record TTL and stable names.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::rules::KeyRule;
use super::super::Decoder;
use super::*;
use crate::description::yaml::{Node, Value};
use crate::diag::did_you_mean;

impl Decoder {
    /// `stage:`: its name, its drain, and a stable name per database or service — a
    /// port locally, a DNS name in the Route 53 zone on AWS.
    pub(super) fn stage(
        &mut self,
        node: &Node,
        provider: Option<ProviderKind>,
        databases: Option<&BTreeMap<String, Database>>,
        services: Option<&BTreeMap<String, Service>>,
    ) -> Option<Stage> {
        let mut obj = self.obj("stage", node, "a mapping with `name` and `names`")?;
        let name = self.req_string(&mut obj, "name", "the stage's name, e.g. `staging`");
        if let Some(n) = &name {
            if let Err(msg) = KeyRule::Identifier.check(n) {
                let pos = self.positions.get("stage.name");
                self.err(pos, format!("invalid stage name `{n}`: {msg}"));
            }
        }
        let drain = match self.get(&mut obj, "drain") {
            Some(n) => self.duration("stage.drain", n, Duration::ZERO, crate::description::MAX_DRAIN),
            None => Some(default_drain()),
        };
        let zone = self.opt_string(&mut obj, "zone");
        let record_ttl = match self.get(&mut obj, "record_ttl") {
            Some(n) => self.duration("stage.record_ttl", n, Duration::from_secs(1), Duration::from_secs(3600)),
            None => Some(default_record_ttl()),
        };
        let names_node = self.require(&mut obj, "names", "a stable name per database and service, e.g. `{db: 25432}`");
        self.finish(obj);
        let mut names = BTreeMap::new();
        if let Some(n) = names_node {
            let entries = self.obj("stage.names", n, "a mapping of databases and services to stable names")?;
            for (k, v) in entries.entries {
                let path = format!("stage.names.{}", k.name);
                let known = databases.is_none_or(|d| d.contains_key(&k.name))
                    || services.is_none_or(|s| s.contains_key(&k.name));
                if !known {
                    let all =
                        databases.into_iter().flat_map(|d| d.keys()).chain(services.into_iter().flat_map(|s| s.keys()));
                    let d = self.err(k.pos, format!("`{path}` names no database or service of this description"));
                    if let Some(m) = did_you_mean(&k.name, all.map(String::as_str)) {
                        d.help = Some(format!("did you mean `{m}`?"));
                    }
                    continue;
                }
                let stable = match &v.value {
                    Value::Int(_) => self.integer(&path, v, 1024, 65535).map(|p| StableName::Port(p as u16)),
                    Value::Str(s) => Some(StableName::Record(s.clone())),
                    other => {
                        let kind = other.kind();
                        self.err(v.pos, format!("`{path}` must be a port (local) or a DNS name (aws), found {kind}"));
                        None
                    }
                };
                match (provider, stable) {
                    (Some(ProviderKind::Local), Some(StableName::Record(r))) => {
                        self.err(
                            v.pos,
                            format!("`{path}` is `{r}`; the local provider's stable names are ports on 127.0.0.1"),
                        )
                        .expected = Some("a port from 1024 to 65535, e.g. `25432`".into());
                    }
                    (Some(ProviderKind::Aws), Some(StableName::Port(p))) => {
                        self.err(v.pos, format!("`{path}` is the port {p}; the aws provider's stable names are DNS names in `stage.zone`")).expected =
                            Some("a DNS name, e.g. `db.staging.shop.internal`".into());
                    }
                    (Some(ProviderKind::Aws), Some(StableName::Record(r))) if !is_dns_name(&r) => {
                        self.err(v.pos, format!("`{path}` is not a DNS name: `{r}`")).expected = Some(
                            "labels of letters, digits and `-`, separated by dots, e.g. `db.staging.shop.internal`"
                                .into(),
                        );
                    }
                    (_, Some(stable)) => {
                        if let Some((other, _)) = names.iter().find(|(_, s)| **s == stable) {
                            self.err(v.pos, format!("`{path}` is `{stable}`, already the stable name of `{other}`"));
                        } else {
                            names.insert(k.name.clone(), stable);
                        }
                    }
                    _ => {}
                }
            }
            if entries.entries.is_empty() {
                self.err(n.pos, "`stage.names` is empty: a stage needs at least one stable name").expected =
                    Some("a stable name per database and service, e.g. `{db: 25432}`".into());
            }
        }
        match (provider, &zone) {
            (Some(ProviderKind::Aws), None) => {
                let pos = self.positions.get("stage#key");
                self.err(
                    pos,
                    "the aws provider's stable names live in a private Route 53 hosted zone: set `stage.zone`",
                )
                .expected = Some("the zone's id, e.g. `Z0123456789ABCDEFGHIJ`".into());
            }
            (Some(ProviderKind::Local), Some(_)) => {
                let pos = self.positions.get("stage.zone");
                self.err(pos, "the local provider does not use `stage.zone`: its stable names are ports on 127.0.0.1");
            }
            (Some(ProviderKind::Aws), Some(z)) if !is_zone_id(z) => {
                let pos = self.positions.get("stage.zone");
                self.err(pos, format!("`stage.zone` is not a Route 53 hosted zone id: `{z}`")).expected =
                    Some("capital letters and digits, e.g. `Z0123456789ABCDEFGHIJ`".into());
            }
            _ => {}
        }
        Some(Stage { name: name?, drain: drain?, zone, record_ttl: record_ttl?, names })
    }
}
