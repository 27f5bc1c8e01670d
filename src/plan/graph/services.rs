//! The release unpacked on this machine and the services: an install (migrations) then
//! EC2 instances (aws), or an install then processes (local).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::super::price;
use super::{Builder, Kind, PlanError, Resource, RUNNER};
use crate::description::{format_duration, AwsService, AwsTarget, Loaded, Service, ServiceTarget, Target};

impl Builder<'_> {
    /// The release is unpacked on this machine for the local provider's processes, and
    /// on aws for the installs (migrations) that run from here before the instances.
    pub(super) fn release(&mut self, artifact: &str, version: &str) {
        let d = self.desc();
        let installs_here =
            d.aws().is_some() && self.runner.is_empty() && d.services.values().any(|s| s.install.is_some());
        if !((matches!(d.target, Target::Local) && !d.services.is_empty()) || installs_here) {
            return;
        }
        let mut rel = Resource::new("release", Kind::LocalRelease, "release");
        let shown = if artifact.contains("://") {
            artifact.to_string()
        } else {
            self.loaded.resolve(std::path::Path::new(artifact)).display().to_string()
        };
        rel.attributes.insert("artifact".into(), json!(shown));
        rel.attributes.insert("version".into(), json!(version));
        if installs_here {
            rel.attributes.insert("on".into(), json!("this machine, for the installs"));
        }
        self.resources.push(rel);
    }

    /// Services in dependency order, so a service's ids exist before its dependants'.
    /// On aws an install migrates the copy every service shares: no instance of any
    /// service starts before every install passed.
    pub(super) fn services(&mut self) -> Result<(), PlanError> {
        let d = self.desc();
        for name in service_order(self.loaded) {
            let Some((key, s)) = d.services.get_key_value(name.as_str()) else { continue };
            let mut dep_ids: Vec<String> = Vec::new();
            for dep in self.loaded.deps.get(name.as_str()).into_iter().flatten() {
                if let Some(v) = self.db_ids.get(dep.as_str()) {
                    dep_ids.extend(v.iter().cloned());
                }
            }
            for dep in self.loaded.deps.get(name.as_str()).into_iter().flatten() {
                if let Some(v) = self.svc_ids.get(dep.as_str()) {
                    dep_ids.extend(v.iter().cloned());
                }
            }
            let env: BTreeMap<String, String> = s
                .env
                .keys()
                .map(|k| Ok((k.clone(), self.render_full(&format!("services.{name}.env.{k}"))?)))
                .collect::<Result<_, PlanError>>()?;
            let ids = match (&d.target, &s.target) {
                (Target::Aws(aws), ServiceTarget::Aws(ec2)) => self.aws_service(key, s, aws, ec2, &dep_ids, &env)?,
                _ => self.local_service(key, s, &dep_ids, &env)?,
            };
            self.svc_ids.insert(key, ids);
        }

        let installs: Vec<String> = self
            .resources
            .iter()
            .filter(|r| r.kind == Kind::Install && d.aws().is_some())
            .map(|r| r.id.clone())
            .collect();
        for r in self.resources.iter_mut().filter(|r| r.kind == Kind::AwsInstance && r.id != RUNNER) {
            r.depends_on.extend(installs.iter().cloned());
        }
        Ok(())
    }

    /// The install runs once, from here or the runner, against the copy; the instances
    /// start only after it passed. Returns the instances' ids.
    fn aws_service(
        &mut self,
        name: &str,
        s: &Service,
        aws: &AwsTarget,
        ec2: &AwsService,
        dep_ids: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, PlanError> {
        let user_data = match &ec2.user_data {
            Some(_) => Some(self.render_full(&format!("services.{name}.user_data"))?),
            None => None,
        };
        let uses_a_copy = dep_ids.iter().any(|i| i.starts_with("database."));
        if s.install.is_some() {
            let mut inst = Resource::new(format!("install.{name}"), Kind::Install, name);
            // The copies it migrates, never other services: every instance waits for
            // every install. From the release unpacked here, or fetched by the runner.
            inst.depends_on = if self.runner.is_empty() { vec!["release".into()] } else { self.runner.clone() };
            inst.depends_on
                .extend(dep_ids.iter().filter(|i| i.starts_with("database.") || i.starts_with("mask.")).cloned());
            if uses_a_copy {
                inst.depends_on.extend(self.db_ingress.iter().cloned());
            }
            inst.attributes.insert("command".into(), json!(self.render_full(&format!("services.{name}.install"))?));
            inst.attributes.insert("on".into(), json!(format!("{}, once, before the instances", self.on())));
            inst.attributes.insert("env".into(), json!(env));
            self.resources.push(inst);
        }
        let mut ids = Vec::new();
        for i in 0..s.count {
            let id = format!("service.{name}.{i}");
            let mut r = Resource::new(id.clone(), Kind::AwsInstance, name);
            r.depends_on = self.network_ids.iter().filter(|n| n.ends_with("security-group")).cloned().collect();
            r.depends_on.extend(dep_ids.iter().cloned());
            // A service that uses a copy reaches it once its port is open; one with a
            // port is checked (and used by the suites) once that is.
            if uses_a_copy {
                r.depends_on.extend(self.db_ingress.iter().cloned());
            }
            if s.port.is_some() {
                r.depends_on.extend(self.service_ingress.iter().cloned());
            }
            // Its health check runs on the runner.
            if s.health.is_some() {
                r.depends_on.extend(self.runner.iter().cloned());
            }
            r.attributes.insert("image_id".into(), json!(ec2.image));
            r.attributes.insert("instance_type".into(), json!(ec2.instance_type));
            r.attributes.insert("subnet_id".into(), json!(aws.network.subnets.iter().cycle().nth(i as usize)));
            if let Some(p) = s.port {
                r.attributes.insert("port".into(), json!(p));
            }
            if let Some(h) = &s.health {
                r.attributes.insert("health".into(), json!({"path": h.path, "timeout": format_duration(h.timeout)}));
            }
            r.attributes.insert("env".into(), json!(env));
            if let Some(p) = &ec2.instance_profile {
                r.attributes.insert("instance_profile".into(), json!(p));
            }
            if let Some(u) = &user_data {
                r.templates.insert("user_data".into(), u.clone());
            }
            r.cost_per_hour_usd = price::ec2_hourly(&ec2.instance_type, &aws.region);
            self.resources.push(r);
            ids.push(id);
        }
        Ok(ids)
    }

    /// An install from the unpacked release (its command and config templates), then
    /// the processes. Returns the processes' ids.
    fn local_service(
        &mut self,
        name: &str,
        s: &Service,
        dep_ids: &[String],
        env: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, PlanError> {
        let install_id = format!("install.{name}");
        let mut inst = Resource::new(install_id.clone(), Kind::Install, name);
        inst.depends_on = vec!["release".into()];
        inst.depends_on.extend(dep_ids.iter().cloned());
        if s.install.is_some() {
            inst.attributes.insert("command".into(), json!(self.render_full(&format!("services.{name}.install"))?));
        }
        let configs: Vec<Value> = s
            .templates
            .iter()
            .map(|t| json!({"source": self.loaded.resolve(&t.source).display().to_string(), "dest": t.dest.display().to_string()}))
            .collect();
        if !configs.is_empty() {
            inst.attributes.insert("templates".into(), json!(configs));
        }
        inst.attributes.insert("env".into(), json!(env));
        self.resources.push(inst);
        let command = self.render_full(&format!("services.{name}.command"))?;
        let mut ids = Vec::new();
        for i in 0..s.count {
            let id = format!("service.{name}.{i}");
            let mut r = Resource::new(id.clone(), Kind::LocalProcess, name);
            r.depends_on = vec![install_id.clone()];
            r.depends_on.extend(dep_ids.iter().cloned());
            r.attributes.insert("command".into(), json!(command));
            r.attributes.insert("port".into(), json!("(free port, in $PORT)"));
            if let Some(h) = &s.health {
                r.attributes.insert("health".into(), json!({"path": h.path, "timeout": format_duration(h.timeout)}));
            }
            r.attributes.insert("env".into(), json!(env));
            self.resources.push(r);
            ids.push(id);
        }
        Ok(ids)
    }
}

/// Service names ordered so that dependencies come first (the description is
/// validated acyclic). Ties keep alphabetical order, so plans are stable.
fn service_order(loaded: &Loaded) -> Vec<String> {
    let services: BTreeSet<&str> = loaded.desc.services.keys().map(String::as_str).collect();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < services.len() {
        let before = order.len();
        for s in &services {
            if done.contains(s) {
                continue;
            }
            let ready = loaded
                .deps
                .get(*s)
                .into_iter()
                .flatten()
                .filter(|d| services.contains(d.as_str()))
                .all(|d| done.contains(d.as_str()));
            if ready {
                done.insert(s);
                order.push(s.to_string());
            }
        }
        if order.len() == before {
            // Unreachable for a validated description; never loop forever.
            order.extend(services.iter().filter(|s| !done.contains(*s)).map(|s| s.to_string()));
        }
    }
    order
}
