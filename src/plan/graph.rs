//! Building the plan's resource graph from a validated description: the plan's types
//! and the builder each section (`graph/network.rs`, `databases.rs`, `services.rs`,
//! `suites.rs`) adds its resources to, one function per section and provider.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::description::template::{self, Outputs, Scope, TemplateError};
use crate::description::{format_duration, Description, Loaded};

mod databases;
mod network;
mod services;
mod suites;

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
    /// The databases' warm pools (`rehearse pool fill`): what keeping them costs, and
    /// what a run that claims a member skips.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolPlan>,
}

/// A database's warm pool, as the plan shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PoolPlan {
    pub database: String,
    pub size: u32,
    pub instance_class: String,
    /// `size` instances of `instance_class` at on-demand list prices; `null` when the
    /// class is not in the price table.
    pub cost_per_hour_usd: Option<f64>,
    pub max_age: String,
    /// `running` or `stopped` (the cost is then storage only, and a claim waits for
    /// its member's start).
    pub keep: crate::description::PoolKeep,
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
    /// A game day's fault while it lasts: journaled by the engine before it starts,
    /// gone once reverted; never part of a plan. What it did is undone by the
    /// teardown of what it hit (a proxy ends with the run, a stopped server's cluster
    /// is removed).
    #[serde(rename = "chaos.fault")]
    Fault,
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
            Kind::Fault => "chaos.fault",
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
///
/// Each section adds its resources in creation order: the network, the SSM runner, the
/// databases (then their ingress and masking), the services (then the installs every
/// aws instance waits for), the suites.
pub fn build(loaded: &Loaded, release: Option<&str>, run_id: Option<&str>) -> Result<Plan, PlanError> {
    let d = &loaded.desc;
    let version =
        loaded.release_version(release).ok_or_else(|| PlanError::NoVersion(loaded.path.display().to_string()))?;
    let run_id = run_id.unwrap_or(RUN_ID_PLACEHOLDER).to_string();
    let outputs = Outputs::placeholders(d, &version, &run_id);
    let static_ctx = template::context(d, None, &outputs, Scope::Static);
    let artifact = render(loaded, "release.artifact", &static_ctx)?;
    let full_ctx = template::context(d, Some(&artifact), &outputs, Scope::Full);
    let mut b = Builder {
        loaded,
        static_ctx,
        full_ctx,
        run_id,
        resources: Vec::new(),
        db_ids: BTreeMap::new(),
        svc_ids: BTreeMap::new(),
        network_ids: Vec::new(),
        runner: Vec::new(),
        db_ingress: None,
        service_ingress: None,
    };

    b.network();
    b.runner();
    b.databases()?;
    b.database_ingress_and_masking();
    b.service_ingress();
    b.release(&artifact, &version);
    b.services()?;
    b.suites()?;

    let Builder { mut resources, run_id, .. } = b;
    for r in &mut resources {
        let mut seen = BTreeSet::new();
        r.depends_on.retain(|d| seen.insert(d.clone()));
    }
    let known: Vec<f64> = resources.iter().filter_map(|r| r.cost_per_hour_usd).collect();
    let cost = (!known.is_empty()).then(|| (known.iter().sum::<f64>() * 10_000.0).round() / 10_000.0);

    Ok(Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        environment: d.name.clone(),
        provider: d.provider().as_str().to_string(),
        region: d.region().map(str::to_string),
        release: ReleasePlan { version, artifact },
        tags: tags(d, &run_id),
        run_id,
        ttl: format_duration(d.ttl),
        destroy: d.destroy.as_str().to_string(),
        resources,
        estimated_cost_per_hour_usd: cost,
        warnings: warnings(d),
        pools: d
            .databases
            .iter()
            .filter_map(|(name, db)| {
                let (aws, pool) = (db.aws()?, db.pool()?);
                let class = pool.class(aws).to_string();
                // Stopped members cost their storage only (not in the price table).
                let hourly = d
                    .region()
                    .and_then(|r| super::price::rds_hourly(&class, r))
                    .filter(|_| pool.keep == crate::description::PoolKeep::Running);
                Some(PoolPlan {
                    database: name.clone(),
                    size: pool.size,
                    cost_per_hour_usd: hourly.map(|h| (h * f64::from(pool.size) * 10_000.0).round() / 10_000.0),
                    instance_class: class,
                    max_age: format_duration(pool.max_age),
                    keep: pool.keep,
                })
            })
            .collect(),
    })
}

/// Tags every resource carries.
fn tags(d: &Description, run_id: &str) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    tags.insert("rehearse:run-id".to_string(), run_id.to_string());
    tags.insert("rehearse:environment".to_string(), d.name.clone());
    tags.insert("rehearse:owner".to_string(), d.owner.clone());
    tags.insert("rehearse:expires-at".to_string(), format!("(run start + {})", format_duration(d.ttl)));
    for (k, v) in &d.tags {
        tags.insert(k.clone(), v.clone());
    }
    tags
}

/// Public CIDRs the copies' and services' ports are open to.
fn warnings(d: &Description) -> Vec<String> {
    d.network()
        .into_iter()
        .flat_map(|n| n.allow_cidrs.iter())
        .filter(|c| c.parse::<ipnet::IpNet>().is_ok_and(|n| !crate::description::is_private_net(&n)))
        .map(|c| {
            format!(
                "{c} is not a private range: the copies' and the services' ports are open to it \
                 (network.allow_public: true)"
            )
        })
        .collect()
}

fn render(loaded: &Loaded, name: &str, ctx: &tera::Context) -> Result<String, PlanError> {
    template::render(&loaded.tera, name, ctx).map_err(|source| PlanError::Template { name: name.to_string(), source })
}

/// The plan under construction: what each section has added so far, and the ids later
/// sections depend on.
struct Builder<'a> {
    loaded: &'a Loaded,
    /// Templates that may not use outputs (names) and those that may (commands, env).
    static_ctx: tera::Context,
    full_ctx: tera::Context,
    run_id: String,
    resources: Vec<Resource>,
    /// What each database / service resolves to in the graph.
    db_ids: BTreeMap<&'a str, Vec<String>>,
    svc_ids: BTreeMap<&'a str, Vec<String>>,
    /// The run's security group and db subnet group (aws).
    network_ids: Vec<String>,
    /// The SSM runner's data and instance, when the description has one.
    runner: Vec<String>,
    db_ingress: Option<String>,
    service_ingress: Option<String>,
}

impl<'a> Builder<'a> {
    fn desc(&self) -> &'a Description {
        &self.loaded.desc
    }

    /// Renders a template whose scope is the description alone (names).
    fn render_static(&self, name: &str) -> Result<String, PlanError> {
        render(self.loaded, name, &self.static_ctx)
    }

    /// Renders a template that may use the release and the resources' outputs.
    fn render_full(&self, name: &str) -> Result<String, PlanError> {
        render(self.loaded, name, &self.full_ctx)
    }

    /// Where the commands that need the copy's network run, for the plan's `on`.
    fn on(&self) -> &'static str {
        if self.runner.is_empty() {
            "this machine"
        } else {
            "the runner (SSM)"
        }
    }
}

impl Resource {
    fn new(id: impl Into<String>, kind: Kind, name: &str) -> Resource {
        Resource {
            id: id.into(),
            kind,
            name: name.to_string(),
            depends_on: Vec::new(),
            attributes: Map::new(),
            source: None,
            templates: BTreeMap::new(),
            cost_per_hour_usd: None,
        }
    }
}

impl Plan {
    pub fn resource(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.id == id)
    }

    /// Keeps only the copy of database `name`, its masking (when it has one) and what
    /// those need, directly or not: a pool member, nothing of the release. The other
    /// databases stay out though the copies' ingress waits for them all (it opens the
    /// ports of the copies there are): a dependency left out is dropped.
    pub fn keep_only_database(&mut self, name: &str) {
        let another = |id: &str| {
            let rest = id.strip_prefix("database.").or_else(|| id.strip_prefix("mask."));
            rest.is_some_and(|r| r.split('.').next() != Some(name))
        };
        let mask = format!("mask.{name}");
        let first = if self.resource(&mask).is_some() { mask } else { format!("database.{name}") };
        let mut keep: BTreeSet<String> = BTreeSet::new();
        let mut todo = vec![first];
        while let Some(next) = todo.pop() {
            if another(&next) || !keep.insert(next.clone()) {
                continue;
            }
            if let Some(r) = self.resource(&next) {
                todo.extend(r.depends_on.iter().cloned());
            }
        }
        self.resources.retain(|r| keep.contains(&r.id));
        for r in &mut self.resources {
            r.depends_on.retain(|d| keep.contains(d));
        }
        let known: Vec<f64> = self.resources.iter().filter_map(|r| r.cost_per_hour_usd).collect();
        self.estimated_cost_per_hour_usd =
            (!known.is_empty()).then(|| (known.iter().sum::<f64>() * 10_000.0).round() / 10_000.0);
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
