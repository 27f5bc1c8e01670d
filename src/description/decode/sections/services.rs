//! `services:`: each service, its config templates and health check.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::super::rules::{is_aws_id, is_instance_profile, is_instance_type, KeyRule, ServiceKeys};
use super::super::Decoder;
use super::*;
use crate::description::yaml::{Node, Value};

impl Decoder {
    pub(super) fn service(
        &mut self,
        provider: Option<ProviderKind>,
        name: &str,
        path: &str,
        node: &Node,
    ) -> Option<Service> {
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
        let restart = self.get(&mut obj, "restart").and_then(|n| {
            self.enum_value(
                &format!("{path}.restart"),
                n,
                &[("no", RestartPolicy::No), ("on-failure", RestartPolicy::OnFailure)],
            )
        });
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
            restart,
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
}
