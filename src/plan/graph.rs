//! Building the plan's resource graph from a validated description.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::price;
use crate::description::template::{self, Outputs, Scope, TemplateError};
use crate::description::{
    format_duration, DatabaseSource, DatabaseTarget, Loaded, ProviderKind, RestoreMode, ServiceTarget, SuiteResults,
    Target,
};

/// Version of the JSON plan format (`rehearse plan --format json`); bumped on any
/// incompatible change. Documented in README.md.
pub const PLAN_SCHEMA_VERSION: u32 = 2;

/// The ingress rules of the copies' ports and of the services' ports (aws).
pub const DB_INGRESS: &str = "network.ingress.databases";
pub const SERVICE_INGRESS: &str = "network.ingress.services";
/// The SSM runner (`runner: ssm` with an `image`) and its keys in the outputs bucket.
pub const RUNNER: &str = "runner";
pub const RUNNER_DATA: &str = "runner.data";

/// What a run id looks like before a run assigns one.
pub const RUN_ID_PLACEHOLDER: &str = "(assigned at run)";

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub schema_version: u32,
    pub environment: String,
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub release: ReleasePlan,
    pub run_id: String,
    pub ttl: String,
    pub destroy: String,
    /// Tags every resource carries (the run's id is filled in at run time).
    pub tags: BTreeMap<String, String>,
    /// Resources in an order that respects dependencies (creation order).
    pub resources: Vec<Resource>,
    /// Sum of the known hourly prices; `null` when no resource has a known price.
    pub estimated_cost_per_hour_usd: Option<f64>,
    /// What the description allows that deserves a second look (public CIDRs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReleasePlan {
    pub version: String,
    pub artifact: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Resource {
    /// Stable id, unique in the plan: `network.security-group`, `database.db`,
    /// `service.web.0`, `suite.smoke`.
    pub id: String,
    pub kind: Kind,
    /// The description's name for it (`web`, `db`, `smoke`).
    pub name: String,
    pub depends_on: Vec<String>,
    /// Provider attributes (instance type, image, commands, environment, ...).
    pub attributes: Map<String, Value>,
    /// The production resource this one is copied from: read, never changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<ProductionSource>,
    /// Rendered templates (user-data), with outputs not yet known shown as markers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, String>,
    pub cost_per_hour_usd: Option<f64>,
}

/// What a resource is: in the plan, in the journal (serialized by these names), and in
/// a provider's match over what it can create and destroy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    #[serde(rename = "aws.ec2.security-group")]
    AwsSecurityGroup,
    #[serde(rename = "aws.rds.db-subnet-group")]
    AwsDbSubnetGroup,
    #[serde(rename = "aws.rds.db-instance")]
    AwsDbInstance,
    #[serde(rename = "aws.rds.db-cluster")]
    AwsDbCluster,
    #[serde(rename = "aws.ec2.instance")]
    AwsInstance,
    /// Ingress rules of the run's security group: TCP to the copies' or the services'
    /// ports from `allow_cidrs` and the group itself.
    #[serde(rename = "aws.ec2.ingress")]
    AwsIngress,
    /// Masking SQL on an AWS copy, once its port is open (the local provider masks
    /// inside its restore).
    #[serde(rename = "mask")]
    Mask,
    /// The run's keys in the SSM runner's bucket (`runner.ssm.outputs`): the runner's
    /// inputs and the commands' output, removed with the run.
    #[serde(rename = "aws.s3.prefix")]
    AwsS3Prefix,
    #[serde(rename = "local.postgres")]
    LocalPostgres,
    #[serde(rename = "local.release")]
    LocalRelease,
    /// A service's install (migrations), run once against the copy before any of its
    /// processes or instances: from this machine, or on the SSM runner.
    #[serde(rename = "install", alias = "local.install")]
    Install,
    #[serde(rename = "local.process")]
    LocalProcess,
    #[serde(rename = "suite")]
    Suite,
    /// The run's own directory on this machine (its suites' scratch space, logs of
    /// local tools, the local provider's clusters and release): created by the engine
    /// before any resource, never part of a plan.
    #[serde(rename = "local.workspace")]
    Workspace,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AwsSecurityGroup => "aws.ec2.security-group",
            Kind::AwsDbSubnetGroup => "aws.rds.db-subnet-group",
            Kind::AwsDbInstance => "aws.rds.db-instance",
            Kind::AwsDbCluster => "aws.rds.db-cluster",
            Kind::AwsInstance => "aws.ec2.instance",
            Kind::AwsIngress => "aws.ec2.ingress",
            Kind::AwsS3Prefix => "aws.s3.prefix",
            Kind::Mask => "mask",
            Kind::LocalPostgres => "local.postgres",
            Kind::LocalRelease => "local.release",
            Kind::Install => "install",
            Kind::LocalProcess => "local.process",
            Kind::Suite => "suite",
            Kind::Workspace => "local.workspace",
        }
    }

    /// Suites are run, not created; everything else is a resource torn down later.
    pub fn is_suite(self) -> bool {
        self == Kind::Suite
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProductionSource {
    /// `rds_instance`, `aurora_cluster`, `backup_dir` or `url`.
    pub kind: String,
    pub identifier: String,
    pub restore: String,
    /// Filled by a provider that looked the backup up (snapshot id, ARN, time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<Value>,
}

/// Problems compiling a valid description into a plan (only a missing version today).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no release version: pass `--release VERSION` or set `release.version` in {0}")]
    NoVersion(String),
    #[error("cannot render `{name}`: {source}")]
    Template {
        name: String,
        #[source]
        source: TemplateError,
    },
}

/// Compiles a loaded description into a plan for `release` (or its default version).
pub fn build(loaded: &Loaded, release: Option<&str>, run_id: Option<&str>) -> Result<Plan, PlanError> {
    let d = &loaded.desc;
    let version =
        loaded.release_version(release).ok_or_else(|| PlanError::NoVersion(loaded.path.display().to_string()))?;
    let run_id = run_id.unwrap_or(RUN_ID_PLACEHOLDER).to_string();
    let outputs = Outputs::placeholders(d, &version, &run_id);
    let static_ctx = template::context(d, None, &outputs, Scope::Static);
    let render = |name: &str, ctx: &tera::Context| {
        template::render(&loaded.tera, name, ctx)
            .map_err(|source| PlanError::Template { name: name.to_string(), source })
    };
    let artifact = render("release.artifact", &static_ctx)?;
    let full_ctx = template::context(d, Some(&artifact), &outputs, Scope::Full);

    let mut resources: Vec<Resource> = Vec::new();
    let new = |id: String, kind: Kind, name: &str| Resource {
        id,
        kind,
        name: name.to_string(),
        depends_on: Vec::new(),
        attributes: Map::new(),
        source: None,
        templates: BTreeMap::new(),
        cost_per_hour_usd: None,
    };

    // What each database / service resolves to in the graph.
    let mut db_ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut svc_ids: BTreeMap<&str, Vec<String>> = BTreeMap::new();

    // The decoder builds every part of a description for its provider: an aws
    // description's databases and services are aws ones.
    let network_ids: Vec<String> = match &d.target {
        Target::Aws(aws) => {
            let net = &aws.network;
            let mut sg = new("network.security-group".into(), Kind::AwsSecurityGroup, "security-group");
            sg.attributes.insert("vpc_id".into(), json!(net.vpc));
            sg.attributes.insert("ingress".into(), json!("none until opened below"));
            sg.attributes.insert("egress".into(), json!("all"));
            resources.push(sg);
            let mut ids = vec!["network.security-group".to_string()];
            if !d.databases.is_empty() {
                let mut sng = new("network.db-subnet-group".into(), Kind::AwsDbSubnetGroup, "db-subnet-group");
                sng.attributes.insert("subnet_ids".into(), json!(net.subnets));
                resources.push(sng);
                ids.push("network.db-subnet-group".into());
            }
            ids
        }
        Target::Local => Vec::new(),
    };

    // With `runner: ssm`, the commands that need the copy's network run on a runner
    // instance in the run's group: its keys in the outputs bucket first, then (unless
    // an existing instance is named) the runner itself.
    let runner = match (&d.target, &d.runner) {
        (Target::Aws(aws), Some(crate::description::Runner::Ssm(r))) => {
            let mut data = new(RUNNER_DATA.into(), Kind::AwsS3Prefix, "runner");
            data.attributes.insert("location".into(), json!(format!("{}/{run_id}/", r.outputs.trim_end_matches('/'))));
            data.attributes.insert("holds".into(), json!("the runner's inputs and its commands' output"));
            resources.push(data);
            let mut ids = vec![RUNNER_DATA.to_string()];
            match (&r.image, &r.instance) {
                (Some(image), _) => {
                    let mut inst = new(RUNNER.into(), Kind::AwsInstance, "runner");
                    inst.depends_on = vec!["network.security-group".into(), RUNNER_DATA.into()];
                    inst.attributes.insert("image_id".into(), json!(image));
                    inst.attributes.insert("instance_type".into(), json!(r.instance_type));
                    inst.attributes.insert("subnet_id".into(), json!(aws.network.subnets.first()));
                    if let Some(p) = &r.instance_profile {
                        inst.attributes.insert("instance_profile".into(), json!(p));
                    }
                    inst.attributes.insert("runs".into(), json!("masking, installs, health checks, suites (SSM)"));
                    inst.cost_per_hour_usd = price::ec2_hourly(&r.instance_type, &aws.region);
                    resources.push(inst);
                    ids.push(RUNNER.into());
                }
                (None, Some(existing)) => {
                    if let Some(data) = resources.last_mut() {
                        data.attributes.insert("runner".into(), json!(existing));
                    }
                }
                (None, None) => {}
            }
            ids
        }
        _ => Vec::new(),
    };

    for (name, db) in &d.databases {
        let db_name = render(&format!("databases.{name}.name"), &static_ctx)?;
        let source = Some(ProductionSource {
            kind: db.source.key().to_string(),
            identifier: match &db.source {
                DatabaseSource::RdsInstance(s) | DatabaseSource::AuroraCluster(s) => s.clone(),
                DatabaseSource::BackupDir(p) => loaded.resolve(p).display().to_string(),
                DatabaseSource::Url(u) => crate::description::redact_url(u),
            },
            restore: db.restore.as_str().to_string(),
            backup: None,
        });
        let timeout = db.timeout.unwrap_or(match d.provider() {
            ProviderKind::Aws => std::time::Duration::from_secs(30 * 60),
            ProviderKind::Local => std::time::Duration::from_secs(10 * 60),
        });
        let mut attrs = Map::new();
        attrs.insert("engine".into(), json!("postgres"));
        attrs.insert("database_name".into(), json!(db_name));
        attrs.insert("restore".into(), json!(db.restore.as_str()));
        attrs.insert("timeout".into(), json!(format_duration(timeout)));
        if let Some(m) = &db.masking {
            attrs.insert("masking".into(), json!(loaded.resolve(m).display().to_string()));
        }
        match (&d.target, &db.target) {
            (Target::Aws(aws), DatabaseTarget::Aws(rds)) => {
                let class = &rds.instance_class;
                attrs.insert("instance_class".into(), json!(class));
                attrs.insert("publicly_accessible".into(), json!(false));
                attrs.insert("deletion_protection".into(), json!(false));
                attrs.insert("skip_final_snapshot".into(), json!(true));
                attrs.insert("master_password".into(), json!("(generated at run, never printed)"));
                let cost = price::rds_hourly(class, &aws.region);
                if db.restore == RestoreMode::AuroraClone {
                    let cluster_id = format!("database.{name}.cluster");
                    let mut cluster = new(cluster_id.clone(), Kind::AwsDbCluster, name);
                    cluster.depends_on = network_ids.clone();
                    cluster.source = source;
                    cluster.attributes.insert("restore_type".into(), json!("copy-on-write"));
                    cluster.attributes.insert("deletion_protection".into(), json!(false));
                    cluster.attributes.insert("skip_final_snapshot".into(), json!(true));
                    resources.push(cluster);
                    let mut inst = new(format!("database.{name}"), Kind::AwsDbInstance, name);
                    inst.depends_on = vec![cluster_id];
                    inst.depends_on.extend(network_ids.iter().cloned());

                    inst.attributes = attrs;
                    inst.cost_per_hour_usd = cost;
                    resources.push(inst);
                } else {
                    let mut inst = new(format!("database.{name}"), Kind::AwsDbInstance, name);
                    inst.depends_on = network_ids.clone();

                    inst.source = source;
                    inst.attributes = attrs;
                    inst.cost_per_hour_usd = cost;
                    resources.push(inst);
                }
            }
            _ => {
                let mut pg = new(format!("database.{name}"), Kind::LocalPostgres, name);
                pg.source = source;
                attrs.insert("listen".into(), json!("127.0.0.1 and a unix socket in the run directory"));
                attrs.insert("password".into(), json!("(generated at run, never printed)"));
                pg.attributes = attrs;
                resources.push(pg);
            }
        }
        db_ids.insert(name, vec![format!("database.{name}")]);
    }

    // On AWS the run's group opens only TCP, only to what is needed, and the copies'
    // port only once every copy has the run's own password: before that, a copy still
    // has production's master password.
    let ingress_from: Option<Vec<String>> = d.aws().map(|aws| {
        let mut from = aws.network.allow_cidrs.clone();
        from.push("self".into());
        from
    });
    let db_ingress = ingress_from.as_ref().filter(|_| !d.databases.is_empty()).map(|ingress_from| {
        let mut r = new(DB_INGRESS.into(), Kind::AwsIngress, "databases");
        r.depends_on = vec!["network.security-group".into()];
        r.depends_on.extend(db_ids.values().flatten().cloned());
        r.attributes.insert("protocol".into(), json!("tcp"));
        r.attributes.insert("ports".into(), json!("each copy's port, once its password is rotated"));
        r.attributes.insert("from".into(), json!(ingress_from));
        resources.push(r);
        DB_INGRESS.to_string()
    });
    // On AWS a copy is masked once its port is open (from here or the runner), and
    // whatever uses the copy waits for the masking.
    if let Some(ingress) = &db_ingress {
        for (name, db) in d.databases.iter().filter(|(_, db)| db.masking.is_some()) {
            let id = format!("mask.{name}");
            let mut m = new(id.clone(), Kind::Mask, name);
            m.depends_on = vec![format!("database.{name}"), ingress.clone()];
            m.depends_on.extend(runner.iter().cloned());
            if let Some(sql) = &db.masking {
                m.attributes.insert("sql".into(), json!(loaded.resolve(sql).display().to_string()));
            }
            let on = if runner.is_empty() { "this machine" } else { "the runner (SSM)" };
            m.attributes.insert("on".into(), json!(format!("{on}, in one transaction")));
            resources.push(m);
            if let Some(ids) = db_ids.get_mut(name.as_str()) {
                ids.push(id);
            }
        }
    }
    let service_ports: BTreeSet<u16> = d.services.values().filter_map(|s| s.port).collect();
    let service_ingress = ingress_from.as_ref().filter(|_| !service_ports.is_empty()).map(|ingress_from| {
        let mut r = new(SERVICE_INGRESS.into(), Kind::AwsIngress, "services");
        r.depends_on = vec!["network.security-group".into()];
        r.attributes.insert("protocol".into(), json!("tcp"));
        r.attributes.insert("ports".into(), json!(service_ports));
        r.attributes.insert("from".into(), json!(ingress_from));
        resources.push(r);
        SERVICE_INGRESS.to_string()
    });

    // The release is unpacked on this machine for the local provider's processes, and
    // on aws for the installs (migrations) that run from here before the instances.
    let installs_here = d.aws().is_some() && runner.is_empty() && d.services.values().any(|s| s.install.is_some());
    if (matches!(d.target, Target::Local) && !d.services.is_empty()) || installs_here {
        let mut rel = new("release".into(), Kind::LocalRelease, "release");
        let shown = if artifact.contains("://") {
            artifact.clone()
        } else {
            loaded.resolve(std::path::Path::new(&artifact)).display().to_string()
        };
        rel.attributes.insert("artifact".into(), json!(shown));
        rel.attributes.insert("version".into(), json!(version));
        if installs_here {
            rel.attributes.insert("on".into(), json!("this machine, for the installs"));
        }
        resources.push(rel);
    }

    // Services in dependency order, so a service's ids exist before its dependants'.
    for name in service_order(loaded) {
        let s = &d.services[name.as_str()];
        let deps_of = |ids: &BTreeMap<&str, Vec<String>>, out: &mut Vec<String>| {
            for dep in loaded.deps.get(name.as_str()).into_iter().flatten() {
                if let Some(v) = ids.get(dep.as_str()) {
                    out.extend(v.iter().cloned());
                }
            }
        };
        let mut dep_ids: Vec<String> = Vec::new();
        deps_of(&db_ids, &mut dep_ids);
        deps_of(&svc_ids, &mut dep_ids);
        let env: BTreeMap<String, String> = s
            .env
            .keys()
            .map(|k| Ok((k.clone(), render(&format!("services.{name}.env.{k}"), &full_ctx)?)))
            .collect::<Result<_, PlanError>>()?;
        let mut ids = Vec::new();
        match (&d.target, &s.target) {
            (Target::Aws(aws), ServiceTarget::Aws(ec2)) => {
                let user_data = match &ec2.user_data {
                    Some(_) => Some(render(&format!("services.{name}.user_data"), &full_ctx)?),
                    None => None,
                };
                // The install runs once, from here, against the copy; the instances
                // start only after it passed.
                if s.install.is_some() {
                    let mut inst = new(format!("install.{name}"), Kind::Install, &name);
                    // The copies it migrates, never other services: every
                    // instance waits for every install (below).
                    // From the release unpacked here, or fetched by the runner.
                    inst.depends_on = if runner.is_empty() { vec!["release".into()] } else { runner.clone() };
                    inst.depends_on.extend(
                        dep_ids.iter().filter(|i| i.starts_with("database.") || i.starts_with("mask.")).cloned(),
                    );
                    if dep_ids.iter().any(|i| i.starts_with("database.")) {
                        inst.depends_on.extend(db_ingress.iter().cloned());
                    }
                    inst.attributes
                        .insert("command".into(), json!(render(&format!("services.{name}.install"), &full_ctx)?));
                    let on = if runner.is_empty() { "this machine" } else { "the runner (SSM)" };
                    inst.attributes.insert("on".into(), json!(format!("{on}, once, before the instances")));
                    inst.attributes.insert("env".into(), json!(env));
                    resources.push(inst);
                }
                for i in 0..s.count {
                    let id = format!("service.{name}.{i}");
                    let mut r = new(id.clone(), Kind::AwsInstance, &name);
                    r.depends_on = network_ids.iter().filter(|n| n.ends_with("security-group")).cloned().collect();
                    r.depends_on.extend(dep_ids.iter().cloned());
                    // A service that uses a copy reaches it once its port is open; one
                    // with a port is checked (and used by the suites) once that is.
                    if dep_ids.iter().any(|i| i.starts_with("database.")) {
                        r.depends_on.extend(db_ingress.iter().cloned());
                    }
                    if s.port.is_some() {
                        r.depends_on.extend(service_ingress.iter().cloned());
                    }
                    // Its health check runs on the runner.
                    if s.health.is_some() {
                        r.depends_on.extend(runner.iter().cloned());
                    }
                    r.attributes.insert("image_id".into(), json!(ec2.image));
                    r.attributes.insert("instance_type".into(), json!(ec2.instance_type));
                    r.attributes.insert("subnet_id".into(), json!(aws.network.subnets.iter().cycle().nth(i as usize)));
                    if let Some(p) = s.port {
                        r.attributes.insert("port".into(), json!(p));
                    }
                    if let Some(h) = &s.health {
                        r.attributes
                            .insert("health".into(), json!({"path": h.path, "timeout": format_duration(h.timeout)}));
                    }
                    r.attributes.insert("env".into(), json!(env));
                    if let Some(p) = &ec2.instance_profile {
                        r.attributes.insert("instance_profile".into(), json!(p));
                    }
                    if let Some(u) = &user_data {
                        r.templates.insert("user_data".into(), u.clone());
                    }
                    r.cost_per_hour_usd = price::ec2_hourly(&ec2.instance_type, &aws.region);
                    resources.push(r);
                    ids.push(id);
                }
            }
            _ => {
                let install_id = format!("install.{name}");
                let mut inst = new(install_id.clone(), Kind::Install, &name);
                inst.depends_on = vec!["release".into()];
                inst.depends_on.extend(dep_ids.iter().cloned());
                if s.install.is_some() {
                    inst.attributes
                        .insert("command".into(), json!(render(&format!("services.{name}.install"), &full_ctx)?));
                }
                let configs: Vec<Value> = s
                    .templates
                    .iter()
                    .map(|t| json!({"source": loaded.resolve(&t.source).display().to_string(), "dest": t.dest.display().to_string()}))
                    .collect();
                if !configs.is_empty() {
                    inst.attributes.insert("templates".into(), json!(configs));
                }
                inst.attributes.insert("env".into(), json!(env));
                resources.push(inst);
                let command = render(&format!("services.{name}.command"), &full_ctx)?;
                for i in 0..s.count {
                    let id = format!("service.{name}.{i}");
                    let mut r = new(id.clone(), Kind::LocalProcess, &name);
                    r.depends_on = vec![install_id.clone()];
                    r.depends_on.extend(dep_ids.iter().cloned());
                    r.attributes.insert("command".into(), json!(command));
                    r.attributes.insert("port".into(), json!("(free port, in $PORT)"));
                    if let Some(h) = &s.health {
                        r.attributes
                            .insert("health".into(), json!({"path": h.path, "timeout": format_duration(h.timeout)}));
                    }
                    r.attributes.insert("env".into(), json!(env));
                    resources.push(r);
                    ids.push(id);
                }
            }
        }
        svc_ids.insert(d.services.get_key_value(name.as_str()).map(|(k, _)| k.as_str()).unwrap_or_default(), ids);
    }

    // On aws an install migrates the copy every service shares: no instance of any
    // service starts before every install passed.
    let installs: Vec<String> =
        resources.iter().filter(|r| r.kind == Kind::Install && d.aws().is_some()).map(|r| r.id.clone()).collect();
    for r in resources.iter_mut().filter(|r| r.kind == Kind::AwsInstance && r.id != RUNNER) {
        r.depends_on.extend(installs.iter().cloned());
    }

    for (name, s) in &d.suites {
        let mut r = new(format!("suite.{name}"), Kind::Suite, name);
        r.depends_on.extend(runner.iter().cloned());
        for dep in loaded.deps.get(&format!("suite:{name}")).into_iter().flatten() {
            if let Some(v) = svc_ids.get(dep.as_str()).or_else(|| db_ids.get(dep.as_str())) {
                r.depends_on.extend(v.iter().cloned());
            }
        }
        r.attributes.insert("command".into(), json!(render(&format!("suites.{name}.command"), &full_ctx)?));
        r.attributes.insert("timeout".into(), json!(format_duration(s.timeout)));
        r.attributes.insert(
            "results".into(),
            match &s.results {
                SuiteResults::ExitCode => json!("exit-code"),
                SuiteResults::Junit(p) => json!({"junit": p.display().to_string()}),
            },
        );
        let env: BTreeMap<String, String> = s
            .env
            .keys()
            .map(|k| Ok((k.clone(), render(&format!("suites.{name}.env.{k}"), &full_ctx)?)))
            .collect::<Result<_, PlanError>>()?;
        r.attributes.insert("env".into(), json!(env));
        resources.push(r);
    }

    for r in &mut resources {
        let mut seen = BTreeSet::new();
        r.depends_on.retain(|d| seen.insert(d.clone()));
    }
    let known: Vec<f64> = resources.iter().filter_map(|r| r.cost_per_hour_usd).collect();
    let cost = (!known.is_empty()).then(|| (known.iter().sum::<f64>() * 10_000.0).round() / 10_000.0);

    let mut tags = BTreeMap::new();
    tags.insert("rehearse:run-id".to_string(), run_id.clone());
    tags.insert("rehearse:environment".to_string(), d.name.clone());
    tags.insert("rehearse:owner".to_string(), d.owner.clone());
    tags.insert("rehearse:expires-at".to_string(), format!("(run start + {})", format_duration(d.ttl)));
    for (k, v) in &d.tags {
        tags.insert(k.clone(), v.clone());
    }

    Ok(Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        environment: d.name.clone(),
        provider: d.provider().as_str().to_string(),
        region: d.region().map(str::to_string),
        release: ReleasePlan { version, artifact },
        run_id,
        ttl: format_duration(d.ttl),
        destroy: d.destroy.as_str().to_string(),
        tags,
        resources,
        estimated_cost_per_hour_usd: cost,
        warnings: d
            .network()
            .into_iter()
            .flat_map(|n| n.allow_cidrs.iter())
            .filter(|c| c.parse::<ipnet::IpNet>().is_ok_and(|n| !crate::description::is_private_net(&n)))
            .map(|c| {
                format!(
                    "{c} is not a private range: the copies' and the services' ports are open to it \
                     (network.allow_public: true)"
                )
            })
            .collect(),
    })
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

impl Plan {
    pub fn resource(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.id == id)
    }

    /// Ids of resources (not suites) that depend on `id`.
    pub fn dependants(&self, id: &str) -> Vec<&Resource> {
        self.resources.iter().filter(|r| r.depends_on.iter().any(|d| d == id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn journals_written_before_the_install_kind_was_renamed_still_read() {
        let old: Kind = serde_json::from_str("\"local.install\"").unwrap();
        assert_eq!(old, Kind::Install);
        assert_eq!(serde_json::to_string(&Kind::Install).unwrap(), "\"install\"");
    }
}
