//! Decoding each part of a description — the top level, network, release, databases,
//! services, suites — from its mapping, one function per part: the top level and the
//! release here, each other section in `sections/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::rules::{check_version, KeyRule};
use super::Decoder;
use crate::description::model::*;
use crate::description::yaml::Node;

mod databases;
mod network;
mod runner;
mod services;
mod stage;
mod suites;

const TOP_KEYS_HELP: &str = "`name`, `provider`, `owner`, `release` and optionally `region`, \
                             `ttl`, `max_ttl`, `tags`, `network`, `variables`, `databases`, `services`, \
                             `suites`, `destroy`, `state`, `stage`, `runner`, `compare`, `deploy`, `chaos`, `bundle`";

impl Decoder {
    /// The whole description, or `None` when a part it cannot do without is missing
    /// or broken.
    pub(super) fn sections(&mut self, root: &Node) -> Option<Description> {
        let mut obj = self.obj("", root, "a mapping (`name: ...`, `provider: ...`, ...)")?;
        if obj.entries.is_empty() {
            self.err(root.pos, "the description is an empty mapping").expected = Some(TOP_KEYS_HELP.into());
            return None;
        }
        let name = self.req_string(&mut obj, "name", "the environment's name, e.g. `shop`");
        if let Some(n) = &name {
            if let Err(msg) = KeyRule::Identifier.check(n) {
                let pos = self.positions.get("name");
                self.err(pos, format!("invalid environment name `{n}`: {msg}"));
            }
        }
        let provider = self.require(&mut obj, "provider", "`aws` or `local`").and_then(|n| {
            self.enum_value("provider", n, &[("aws", ProviderKind::Aws), ("local", ProviderKind::Local)])
        });
        let region = self.opt_string(&mut obj, "region");
        let ttl = match self.get(&mut obj, "ttl") {
            Some(n) => self.duration("ttl", n, Duration::from_secs(300), Duration::from_secs(7 * 86400)),
            None => Some(default_ttl()),
        };
        let max_ttl = match self.get(&mut obj, "max_ttl") {
            Some(n) => self.duration("max_ttl", n, Duration::from_secs(300), crate::description::MAX_MAX_TTL),
            None => Some(default_max_ttl()),
        };
        if let (Some(t), Some(m)) = (ttl, max_ttl) {
            if t > m {
                let pos = self.positions.get("ttl");
                self.err(
                    pos,
                    format!("`ttl` ({}) is longer than `max_ttl` ({})", format_duration(t), format_duration(m)),
                );
            }
        }
        let owner = self.req_string(&mut obj, "owner", "who answers for the copy, e.g. `team@example.com`");
        let tags = match self.get(&mut obj, "tags") {
            Some(n) => self.string_map("tags", n, KeyRule::Tag),
            None => BTreeMap::new(),
        };
        for (k, v) in &tags {
            if v.chars().count() > 256 {
                let pos = self.positions.get(&format!("tags.{k}"));
                self.err(pos, format!("tag `{k}` is longer than 256 characters"));
            }
        }
        let network = self.get(&mut obj, "network").and_then(|n| self.network(n));
        let variables = match self.get(&mut obj, "variables") {
            Some(n) => self.string_map("variables", n, KeyRule::Variable),
            None => BTreeMap::new(),
        };
        let release = self
            .require(&mut obj, "release", "a mapping with `artifact` (and optionally `version`)")
            .and_then(|n| self.release(n));
        let databases = self.named("databases", &mut obj, |d, name, path, n| d.database(provider, name, path, n));
        let services = self.named("services", &mut obj, |d, name, path, n| d.service(provider, name, path, n));
        let suites = self.named("suites", &mut obj, |d, _, path, n| d.suite(path, n));
        let destroy = match self.get(&mut obj, "destroy") {
            Some(n) => self.enum_value(
                "destroy",
                n,
                &[
                    ("always", DestroyPolicy::Always),
                    ("passing", DestroyPolicy::Passing),
                    ("never", DestroyPolicy::Never),
                ],
            ),
            None => Some(DestroyPolicy::Always),
        };
        let state = self.opt_string(&mut obj, "state");
        if let Some(url) = &state {
            if let Err(why) = crate::sys::state::StateUrl::parse(url) {
                let pos = self.positions.get("state");
                self.err(pos, format!("`state`: {why}")).expected =
                    Some("`file:///DIR` or `s3://BUCKET/PREFIX`".into());
            }
        }
        let stage = match self.get(&mut obj, "stage") {
            Some(n) => self.stage(n, provider, databases.as_ref(), services.as_ref()),
            None => None,
        };
        let runner = match self.get(&mut obj, "runner") {
            Some(n) => self.runner(n, provider),
            None => None,
        };
        let compare = match self.get(&mut obj, "compare") {
            Some(n) => self.compare(n, services.as_ref()),
            None => None,
        };
        let deploy = match self.get(&mut obj, "deploy") {
            Some(n) => self.deploy(n, services.as_ref(), compare.as_ref()),
            None => None,
        };
        let chaos = match self.get(&mut obj, "chaos") {
            Some(n) => self.chaos(n, provider, services.as_ref(), compare.as_ref()),
            None => None,
        };
        let bundle = self
            .get(&mut obj, "bundle")
            .map(|n| self.string_list("bundle", n).into_iter().map(PathBuf::from).collect::<Vec<_>>());
        self.finish(obj);
        let target = self.target(provider?, region, network);
        Some(Description {
            name: name?,
            target,
            ttl: ttl?,
            max_ttl: max_ttl?,
            owner: owner?,
            tags,
            variables,
            release: release?,
            databases: databases?,
            services: services?,
            suites: suites?,
            destroy: destroy?,
            state,
            stage,
            runner,
            compare,
            deploy,
            chaos,
            bundle,
        })
    }

    fn release(&mut self, node: &Node) -> Option<Release> {
        let mut obj = self.obj("release", node, "a mapping with `artifact` and optionally `version`")?;
        let version = self.opt_string(&mut obj, "version");
        if let Some(v) = &version {
            if let Err(msg) = check_version(v) {
                let pos = self.positions.get("release.version");
                self.err(pos, format!("invalid release version `{v}`: {msg}"));
            }
        }
        let artifact = self.req_string(
            &mut obj,
            "artifact",
            "where the release artifact is, e.g. `releases/{{ release.version }}.tar.gz`",
        );
        self.finish(obj);
        Some(Release { version, artifact: artifact? })
    }
}

/// A DNS name as Route 53 takes it: dot-separated labels of letters, digits and `-`
/// (not at either end), at most 63 characters each and 253 in all.
pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A hosted zone id: capital letters and digits (AWS's start with `Z`; the
/// `/hostedzone/` prefix the API sometimes adds is accepted).
pub fn is_zone_id(s: &str) -> bool {
    let s = s.strip_prefix("/hostedzone/").unwrap_or(s);
    (2..=32).contains(&s.len()) && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}
