//! Decoding each part of a description — the top level, network, release, databases,
//! services, suites — from its mapping, one function per part.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::rules::{
    check_rds_identifier, check_version, is_aws_id, is_instance_profile, is_instance_type, KeyRule, ServiceKeys,
};
use super::Decoder;
use crate::description::model::*;
use crate::description::yaml::{Node, Value};
use crate::diag::did_you_mean;

const TOP_KEYS_HELP: &str = "`name`, `provider`, `owner`, `release` and optionally `region`, \
                             `ttl`, `max_ttl`, `tags`, `network`, `variables`, `databases`, `services`, \
                             `suites`, `destroy`, `state`, `stage`, `runner`, `compare`, `bundle`";

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
            bundle,
        })
    }

    /// `runner:` — `{ssm: {image | instance, instance_type, instance_profile, outputs,
    /// bundle}}`, aws only.
    fn runner(&mut self, node: &Node, provider: Option<ProviderKind>) -> Option<Runner> {
        let mut obj = self.obj("runner", node, "a mapping with `ssm`")?;
        let ssm = self.require(&mut obj, "ssm", "the runner instance: `{ssm: {image: ami-…, outputs: s3://…}}`");
        self.finish(obj);
        let mut obj = self.obj("runner.ssm", ssm?, "a mapping with `image` or `instance`, and `outputs`")?;
        let image = self.opt_string(&mut obj, "image");
        let instance = self.opt_string(&mut obj, "instance");
        let instance_type = self.opt_string(&mut obj, "instance_type");
        let instance_profile = self.opt_string(&mut obj, "instance_profile");
        let outputs = self.req_string(&mut obj, "outputs", "`s3://BUCKET/PREFIX`, where SSM writes command output");
        let bundle = self.opt_string(&mut obj, "bundle").map(PathBuf::from);
        self.finish(obj);
        let at = |d: &mut Self, key: &str| d.positions.get(&format!("runner.ssm.{key}"));
        if let Some(i) = &image {
            if !is_aws_id(i, "ami-") {
                let pos = at(self, "image");
                self.err(pos, format!("`{i}` is not an AMI id")).expected =
                    Some("`ami-` followed by 8 or 17 hex digits".into());
            }
        }
        if let Some(i) = &instance {
            if !is_aws_id(i, "i-") {
                let pos = at(self, "instance");
                self.err(pos, format!("`{i}` is not an EC2 instance id")).expected =
                    Some("`i-` followed by 8 or 17 hex digits".into());
            }
        }
        match (&image, &instance) {
            (Some(_), Some(_)) => {
                let pos = at(self, "instance");
                self.err(pos, "`runner.ssm` names both an `image` to launch and an existing `instance`").help = Some(
                    "keep one: rehearse launches (and tears down) a runner from `image`, or uses `instance`".into(),
                );
            }
            (None, None) => {
                let pos = self.positions.get("runner.ssm#key");
                self.err(pos, "`runner.ssm` needs an `image` to launch a runner from, or an existing `instance`")
                    .expected = Some("`image: ami-…` (with the SSM agent) or `instance: i-…`".into());
            }
            _ => {}
        }
        if instance.is_some() && (instance_type.is_some() || instance_profile.is_some()) {
            let pos = at(self, "instance");
            self.err(pos, "`instance_type` and `instance_profile` are for a runner rehearse launches from `image`");
        }
        if let Some(t) = &instance_type {
            if !is_instance_type(t) {
                let pos = at(self, "instance_type");
                self.err(pos, format!("`{t}` is not an EC2 instance type")).expected =
                    Some("FAMILY.SIZE, e.g. `t3.small`".into());
            }
        }
        if let Some(p) = &instance_profile {
            if !is_instance_profile(p) {
                let pos = at(self, "instance_profile");
                self.err(pos, format!("`{p}` is not an IAM instance profile"));
            }
        }
        if let Some(o) = &outputs {
            if !matches!(crate::sys::state::StateUrl::parse(o), Ok(crate::sys::state::StateUrl::S3 { .. })) {
                let pos = at(self, "outputs");
                self.err(pos, format!("`runner.ssm.outputs` must be `s3://BUCKET/PREFIX`, not `{o}`"));
            }
        }
        if provider == Some(ProviderKind::Local) {
            let pos = self.positions.get("runner#key");
            self.err(pos, "`runner` is for the aws provider: the local provider runs everything on this machine");
        }
        Some(Runner::Ssm(SsmRunner {
            image,
            instance,
            instance_type: instance_type.unwrap_or_else(default_runner_type),
            instance_profile,
            outputs: outputs?,
            bundle,
        }))
    }

    /// `stage:`: its name, its drain, and a stable name per database or service — a
    /// port locally, a DNS name in the Route 53 zone on AWS.
    fn stage(
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

    fn network(&mut self, node: &Node) -> Option<Network> {
        let mut obj =
            self.obj("network", node, "a mapping with `vpc`, `subnets`, `allow_cidrs` and optionally `allow_public`")?;
        let vpc = self.req_string(&mut obj, "vpc", "the VPC id, e.g. `vpc-0a1b2c3d4e5f60718`");
        if let Some(v) = &vpc {
            if !is_aws_id(v, "vpc-") {
                let pos = self.positions.get("network.vpc");
                self.err(pos, format!("`network.vpc` is not a VPC id: `{v}`")).expected =
                    Some("`vpc-` followed by 8 or 17 hex digits".into());
            }
        }
        let subnets = match self.require(&mut obj, "subnets", "a list of subnet ids") {
            Some(n) => self.string_list("network.subnets", n),
            None => Vec::new(),
        };
        for (i, s) in subnets.iter().enumerate() {
            if !is_aws_id(s, "subnet-") {
                let pos = self.positions.get(&format!("network.subnets[{i}]"));
                self.err(pos, format!("`{s}` is not a subnet id")).expected =
                    Some("`subnet-` followed by 8 or 17 hex digits".into());
            }
        }
        if subnets.is_empty() && obj.entries.iter().any(|(k, _)| k.name == "subnets") {
            let pos = self.positions.get("network.subnets");
            self.err(pos, "`network.subnets` is empty").expected =
                Some("at least one subnet id (two in different zones for databases)".into());
        }
        let allow_cidrs = match self.get(&mut obj, "allow_cidrs") {
            Some(n) => self.string_list("network.allow_cidrs", n),
            None => Vec::new(),
        };
        let allow_public = match self.get(&mut obj, "allow_public") {
            Some(n) => match n.value {
                Value::Bool(b) => b,
                _ => {
                    let kind = n.value.kind();
                    self.err(n.pos, format!("`network.allow_public` must be true or false, found {kind}"));
                    false
                }
            },
            None => false,
        };
        for (i, c) in allow_cidrs.iter().enumerate() {
            let pos = self.positions.get(&format!("network.allow_cidrs[{i}]"));
            match c.parse::<ipnet::IpNet>() {
                Err(_) => {
                    self.err(pos, format!("`{c}` is not a CIDR block")).expected =
                        Some("an address and prefix length, e.g. `10.20.0.0/16`".into());
                }
                Ok(net) if net.prefix_len() == 0 => {
                    self.err(pos, format!("`{c}` would open the copy of production to the whole internet")).expected =
                        Some("the CIDR of your office, VPN or CI runners, e.g. `10.20.0.0/16`".into());
                }
                Ok(net) if net.trunc() != net => {
                    self.err(pos, format!("`{c}` has host bits set")).help =
                        Some(format!("did you mean `{}`?", net.trunc()));
                }
                Ok(net) if !allow_public && !is_private_net(&net) => {
                    let d = self.err(
                        pos,
                        format!(
                            "`{c}` is not a private range: the copy of production would be reachable from the internet"
                        ),
                    );
                    d.expected =
                        Some("a range inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10".into());
                    d.help = Some(
                        "if the copy must be reachable from it (an office's public address), say so with \
                         `allow_public: true` under `network`"
                            .into(),
                    );
                }
                Ok(_) => {}
            }
        }
        self.finish(obj);
        Some(Network { vpc: vpc?, subnets, allow_cidrs, allow_public })
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

    fn database(&mut self, provider: Option<ProviderKind>, name: &str, path: &str, node: &Node) -> Option<Database> {
        let mut obj = self.obj(path, node, "a mapping with `name`, `source`, ...")?;
        let engine = match self.get(&mut obj, "engine") {
            Some(n) => self.enum_value(&format!("{path}.engine"), n, &[("postgres", Engine::Postgres)]),
            None => Some(Engine::Postgres),
        };
        let db_name = self.req_string(&mut obj, "name", "the database name inside the server, e.g. `shop`");
        let source = self
            .require(&mut obj, "source", "one of `rds_instance`, `aurora_cluster`, `backup_dir`, `url`")
            .and_then(|n| self.database_source(&format!("{path}.source"), n));
        let restore = match self.get(&mut obj, "restore") {
            Some(n) => self.enum_value(
                &format!("{path}.restore"),
                n,
                &[
                    ("newest-snapshot", RestoreMode::NewestSnapshot),
                    ("latest-restorable-time", RestoreMode::LatestRestorableTime),
                    ("aurora-clone", RestoreMode::AuroraClone),
                ],
            ),
            None => Some(RestoreMode::NewestSnapshot),
        };
        let instance_class = self.opt_string(&mut obj, "instance_class");
        let masking = self.opt_string(&mut obj, "masking").map(PathBuf::from);
        let timeout = match self.get(&mut obj, "timeout") {
            Some(n) => Some(self.duration(
                &format!("{path}.timeout"),
                n,
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )?),
            None => None,
        };
        self.finish(obj);
        let (source, restore) = (source?, restore?);
        let target = self.database_target(provider?, name, &source, restore, instance_class);
        Some(Database { engine: engine?, name: db_name?, source, restore, target, masking, timeout })
    }

    fn database_source(&mut self, path: &str, node: &Node) -> Option<DatabaseSource> {
        let mut obj =
            self.obj(path, node, "a mapping with one of `rds_instance`, `aurora_cluster`, `backup_dir`, `url`")?;
        let mut found = Vec::new();
        for key in ["rds_instance", "aurora_cluster", "backup_dir", "url"] {
            if let Some(s) = self.opt_string(&mut obj, key) {
                found.push((key, s));
            }
        }
        let pos = obj.pos;
        let has_unknown = obj.has_unknown();
        self.finish(obj);
        if found.len() > 1 {
            let keys: Vec<String> = found.iter().map(|(k, _)| format!("`{k}`")).collect();
            self.err(
                pos,
                format!("`{path}` names {} sources ({}); a database has exactly one", found.len(), keys.join(", ")),
            );
            return None;
        }
        let Some((key, value)) = found.pop() else {
            if !has_unknown {
                self.err(pos, format!("`{path}` names no source")).expected =
                    Some("one of `rds_instance`, `aurora_cluster`, `backup_dir`, `url`".into());
            }
            return None;
        };
        let vpos = self.positions.get(&format!("{path}.{key}"));
        Some(match key {
            "rds_instance" | "aurora_cluster" => {
                if let Err(msg) = check_rds_identifier(&value) {
                    self.err(
                        vpos,
                        format!(
                            "invalid {} identifier `{value}`: {msg}",
                            if key == "rds_instance" { "RDS instance" } else { "Aurora cluster" }
                        ),
                    );
                }
                if key == "rds_instance" {
                    DatabaseSource::RdsInstance(value)
                } else {
                    DatabaseSource::AuroraCluster(value)
                }
            }
            "backup_dir" => DatabaseSource::BackupDir(PathBuf::from(value)),
            _ => {
                if !(value.starts_with("postgres://") || value.starts_with("postgresql://"))
                    || url::Url::parse(&value).is_err()
                {
                    self.err(vpos, format!("`{path}.url` is not a PostgreSQL URL")).expected =
                        Some("`postgres://USER@HOST:PORT/DB` (password from PGPASSWORD or ~/.pgpass)".into());
                } else if let Some(short) = url_secrets(&value).into_iter().find(|p| p.len() < crate::secrets::MIN_LEN)
                {
                    let d = self.err(
                        vpos,
                        format!(
                            "`{path}.url` carries a password of {} character(s), too short to be told apart and \
                             kept out of logs and reports",
                            short.chars().count()
                        ),
                    );
                    d.help = Some("leave the password out of the URL: pass it in PGPASSWORD or ~/.pgpass".into());
                }
                DatabaseSource::Url(value)
            }
        })
    }

    fn service(&mut self, provider: Option<ProviderKind>, name: &str, path: &str, node: &Node) -> Option<Service> {
        let mut obj = self.obj(path, node, "a mapping with `command` (local) or `image` and `instance_type` (aws)")?;
        let count = match self.get(&mut obj, "count") {
            Some(n) => self.integer(&format!("{path}.count"), n, 1, 20).map(|n| n as u32),
            None => Some(1),
        };
        let depends_on = match self.get(&mut obj, "depends_on") {
            Some(n) => self.string_list(&format!("{path}.depends_on"), n),
            None => Vec::new(),
        };
        let image = self.opt_string(&mut obj, "image");
        if let Some(img) = &image {
            if !is_aws_id(img, "ami-") {
                let pos = self.positions.get(&format!("{path}.image"));
                self.err(pos, format!("`{img}` is not an AMI id")).expected =
                    Some("`ami-` followed by 8 or 17 hex digits".into());
            }
        }
        let instance_type = self.opt_string(&mut obj, "instance_type");
        if let Some(t) = &instance_type {
            if !is_instance_type(t) {
                let pos = self.positions.get(&format!("{path}.instance_type"));
                self.err(pos, format!("`{t}` is not an EC2 instance type")).expected =
                    Some("FAMILY.SIZE, e.g. `t3.small` or `m6i.large`".into());
            }
        }
        let user_data = self.opt_string(&mut obj, "user_data").map(PathBuf::from);
        let instance_profile = self.opt_string(&mut obj, "instance_profile");
        if let Some(p) = &instance_profile {
            if !is_instance_profile(p) {
                let pos = self.positions.get(&format!("{path}.instance_profile"));
                self.err(pos, format!("`{p}` is not an IAM instance profile")).expected = Some(
                    "a profile name (letters, digits and `+=,.@_-`, at most 128) or its ARN, \
                     `arn:aws:iam::ACCOUNT:instance-profile/NAME`"
                        .into(),
                );
            }
        }
        let bootstrap_timeout = match self.get(&mut obj, "bootstrap_timeout") {
            Some(n) => Some(self.duration(
                &format!("{path}.bootstrap_timeout"),
                n,
                Duration::ZERO,
                Duration::from_secs(2 * 3600),
            )?),
            None => None,
        };
        let command = self.opt_string(&mut obj, "command");
        let install = self.opt_string(&mut obj, "install");
        let templates = match self.get(&mut obj, "templates") {
            Some(n) => self.config_templates(&format!("{path}.templates"), n),
            None => Vec::new(),
        };
        let env = match self.get(&mut obj, "env") {
            Some(n) => self.string_map(&format!("{path}.env"), n, KeyRule::EnvVar),
            None => BTreeMap::new(),
        };
        let port = match self.get(&mut obj, "port") {
            Some(n) => Some(self.integer(&format!("{path}.port"), n, 1, 65535)? as u16),
            None => None,
        };
        let health = match self.get(&mut obj, "health") {
            Some(n) => Some(self.health(&format!("{path}.health"), n)?),
            None => None,
        };
        self.finish(obj);
        let keys = ServiceKeys {
            image,
            instance_type,
            user_data,
            instance_profile,
            bootstrap_timeout,
            command,
            has_health: health.is_some(),
            port,
        };
        let target = self.service_target(provider?, name, keys);
        Some(Service { count: count?, depends_on, target, install, templates, env, port, health })
    }

    fn config_templates(&mut self, path: &str, node: &Node) -> Vec<ConfigTemplate> {
        let Value::Seq(items) = &node.value else {
            let kind = node.value.kind();
            self.err(node.pos, format!("`{path}` must be a list of `{{source, dest}}` mappings, found {kind}"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(mut obj) = self.obj(&p, item, "a mapping with `source` and `dest`") else {
                continue;
            };
            let source = self.req_string(&mut obj, "source", "the template file, relative to the description");
            let dest = self.req_string(&mut obj, "dest", "the file to write, relative to the release");
            self.finish(obj);
            if let (Some(source), Some(dest)) = (source, dest) {
                let dest = PathBuf::from(dest);
                if dest.is_absolute() || dest.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    let pos = self.positions.get(&format!("{p}.dest"));
                    self.err(pos, format!("`{}` points outside the release", dest.display())).expected =
                        Some("a relative path inside the unpacked release, e.g. `config/app.conf`".into());
                    continue;
                }
                out.push(ConfigTemplate { source: PathBuf::from(source), dest });
            }
        }
        out
    }

    fn health(&mut self, path: &str, node: &Node) -> Option<Health> {
        let mut obj = self.obj(path, node, "a mapping with `path` and `timeout`")?;
        let hpath = self.req_string(&mut obj, "path", "the HTTP path to GET, e.g. `/health`");
        if let Some(p) = &hpath {
            if !p.starts_with('/') {
                let pos = self.positions.get(&format!("{path}.path"));
                self.err(pos, format!("health path `{p}` must start with `/`")).help = Some(format!("write `/{p}`"));
            }
        }
        let timeout = match self.get(&mut obj, "timeout") {
            Some(n) => {
                self.duration(&format!("{path}.timeout"), n, Duration::from_secs(1), Duration::from_secs(6 * 3600))
            }
            None => Some(default_health_timeout()),
        };
        self.finish(obj);
        Some(Health { path: hpath?, timeout: timeout? })
    }

    fn suite(&mut self, path: &str, node: &Node) -> Option<Suite> {
        let mut obj = self.obj(path, node, "a mapping with `command`, `timeout`, `results`")?;
        let command = self.req_string(&mut obj, "command", "the command that runs the suite");
        let timeout = self.require(&mut obj, "timeout", "a duration such as `5m`").and_then(|n| {
            self.duration(&format!("{path}.timeout"), n, Duration::from_secs(1), Duration::from_secs(24 * 3600))
        });
        let uses = match self.get(&mut obj, "uses") {
            Some(n) => self.string_list(&format!("{path}.uses"), n),
            None => Vec::new(),
        };
        let results = self
            .require(&mut obj, "results", "`exit-code` or `{junit: PATH}`")
            .and_then(|n| self.suite_results(&format!("{path}.results"), n));
        let env = match self.get(&mut obj, "env") {
            Some(n) => self.string_map(&format!("{path}.env"), n, KeyRule::EnvVar),
            None => BTreeMap::new(),
        };
        self.finish(obj);
        Some(Suite { command: command?, timeout: timeout?, uses, results: results?, env })
    }

    fn suite_results(&mut self, path: &str, node: &Node) -> Option<SuiteResults> {
        match &node.value {
            Value::Str(s) if s == "exit-code" => Some(SuiteResults::ExitCode),
            Value::Str(s) if s == "junit" => {
                self.err(node.pos, format!("`{path}: junit` needs the file the suite writes")).expected =
                    Some("`{junit: results.xml}`".into());
                None
            }
            Value::Map(_) => {
                let mut obj = self.obj(path, node, "")?;
                let junit = self.req_string(&mut obj, "junit", "the JUnit XML file the suite writes");
                self.finish(obj);
                Some(SuiteResults::Junit(PathBuf::from(junit?)))
            }
            other => {
                let shown = match other {
                    Value::Str(s) => format!("`{s}`"),
                    v => v.kind().to_string(),
                };
                let d = self.err(node.pos, format!("`{path}` must be `exit-code` or `{{junit: PATH}}`, found {shown}"));
                if let Value::Str(s) = other {
                    if let Some(m) = did_you_mean(s, ["exit-code"]) {
                        d.help = Some(format!("did you mean `{m}`?"));
                    }
                }
                None
            }
        }
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
