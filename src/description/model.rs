//! The validated description: what a file says once every key was checked, every
//! reference resolved and every template parsed.
//!
//! These types are the second stage of the two-stage configuration (raw spanned tree →
//! this model); nothing downstream (plan, engine, providers) ever sees raw YAML. They
//! also derive the JSON Schema exported by `rehearse schema`, so an editor's completion
//! matches exactly what the decoder accepts (a test keeps the two in step).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

mod compare;
mod provider;
pub use compare::*;
pub use provider::*;

/// A system to rehearse: where it runs, what production it copies, what release it
/// installs, which suites judge it.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "rehearse environment description")]
pub struct Description {
    /// Name of the environment: lowercase letters, digits, `-` and `_`, starting with a
    /// letter, at most 32 characters. Example: `shop`.
    #[schemars(regex(pattern = r"^[a-z]([a-z0-9_-]{0,30}[a-z0-9])?$"))]
    pub name: String,
    /// Where the copy is built (`provider`), with what only that provider needs.
    #[serde(flatten)]
    pub target: Target,
    /// How long the copy may live at most, even with `--destroy never`: `rehearse
    /// sweep` removes it afterwards. Example: `4h`. Default `2h`.
    #[schemars(with = "DurationText")]
    #[serde(default = "default_ttl", serialize_with = "ser_duration")]
    pub ttl: Duration,
    /// How far `rehearse extend` may push a kept environment's expiry, counted from its
    /// start. Example: `3d`. Default `7d`.
    #[schemars(with = "DurationText")]
    #[serde(default = "default_max_ttl", serialize_with = "ser_duration")]
    pub max_ttl: Duration,
    /// Who answers for the copy (tagged on every resource). Example: `team@example.com`.
    pub owner: String,
    /// Extra tags for every resource. Example: `{team: shop}`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ScalarText>")]
    pub tags: BTreeMap<String, String>,
    /// Values for templates, used as `{{ vars.NAME }}`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ScalarText>")]
    pub variables: BTreeMap<String, String>,
    /// The candidate release.
    pub release: Release,
    /// Databases restored from production backups.
    #[serde(default)]
    pub databases: BTreeMap<String, Database>,
    /// Services running the release.
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// Automated suites that judge the release.
    #[serde(default)]
    pub suites: BTreeMap<String, Suite>,
    /// When to tear the copy down: `always` (default), `passing` (keep a failed copy
    /// for debugging, within its TTL) or `never` (keep it, within its TTL).
    #[serde(default)]
    pub destroy: DestroyPolicy,
    /// Where this description's runs keep their journals, reports and locks:
    /// `file:///DIR` or `s3://BUCKET/PREFIX` (a team's shared store). `--state` and
    /// `$REHEARSE_STATE` take precedence. Default: this machine's state directory.
    /// Example: `s3://acme-rehearse/shop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(file:///|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|$))"))]
    pub state: Option<String>,
    /// A stage rebuilt as cattle by `rehearse rebuild`: generations built beside each
    /// other behind stable names that do not change. Example: `{name: staging, names:
    /// {db: 25432, web: 28080}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Where the commands that need the copy's network run (aws): masking, installs,
    /// health checks and suites. Absent: here, on the machine that runs rehearse, which
    /// must then reach the VPC. `{ssm: …}`: inside the VPC, through SSM Run Command on
    /// a runner instance, so that rehearse itself needs only AWS API access (a hosted
    /// CI runner). Example: `{ssm: {image: ami-0abcdef1234567890, instance_profile:
    /// rehearse-runner, outputs: "s3://acme-rehearse/runner"}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<Runner>,
    /// How `rehearse compare` loads the baseline and the candidate and judges them.
    /// Example: `{load: {requests: load/shop.requests, target: web, rate: 20, duration:
    /// 30s}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<Compare>,
    /// The files and directories the suites and a load command need (relative to the
    /// description's directory): copied for the user they run as, each at the same
    /// place relative to the description's directory, from which the commands run
    /// inside the copy (hidden files, `target` and `node_modules` left out; at most 256
    /// MiB in 20,000 entries). Default: `[.]`, the description's directory. Example:
    /// `[., ../tests]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Vec<PathBuf>>,
}

/// Where the commands that need the copy's network run.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Runner {
    /// Inside the VPC, through SSM Run Command.
    Ssm(SsmRunner),
}

/// A runner instance rehearse sends commands to through SSM Run Command.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{"required": ["image"]}, {"required": ["instance"]}]))]
pub struct SsmRunner {
    /// AMI with the SSM agent, `bash`, `curl`, `tar` and `psql` (and whatever the
    /// suites run), launched in the run's first subnet and security group and torn down
    /// with the run. Example: `ami-0abcdef1234567890`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Instead of `image`: an existing instance with the SSM agent, in a subnet that
    /// reaches the run's (rehearse adds it to no group: `allow_cidrs` must let it in).
    /// Never torn down. Example: `i-0123456789abcdef0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The launched runner's instance type. Default `t3.small`.
    #[serde(default = "default_runner_type")]
    pub instance_type: String,
    /// The launched runner's instance profile: SSM's managed-instance permissions and
    /// `s3:PutObject` under `outputs` (docs/iam-policy.md). Example: `rehearse-runner`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_profile: Option<String>,
    /// Where SSM writes each command's full output (`s3://BUCKET/PREFIX`), and where
    /// rehearse puts the runner's inputs (suites' files, masking SQL); the run's keys
    /// are removed at teardown. Example: `s3://acme-rehearse/runner`.
    #[schemars(regex(pattern = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/|$)"))]
    pub outputs: String,
    /// The directory whose files the suites need on the runner (their commands run
    /// from the description's directory inside it). Default: the description's
    /// `bundle`, else its directory. Example: `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
}

pub fn default_runner_type() -> String {
    "t3.small".into()
}

/// A stage: the description rebuilt night after night as generations, each verified by
/// the suites before every stable name moves to it at once.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The stage's name, unique in the state store. Example: `staging`.
    #[schemars(regex(pattern = r"^[a-z]([a-z0-9_-]{0,30}[a-z0-9])?$"))]
    pub name: String,
    /// How long the previous generation keeps serving the connections opened before
    /// the switch, before it is retired. Example: `10m`. Default `5m`.
    #[schemars(with = "DurationText")]
    #[serde(default = "default_drain", serialize_with = "ser_duration")]
    pub drain: Duration,
    /// AWS: the id of the private Route 53 hosted zone that holds the stable names.
    /// Example: `Z0123456789ABCDEFGHIJ`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// AWS: the TTL of the stable records; a switch is seen by resolvers within it.
    /// Example: `30s`. Default `10s`.
    #[schemars(with = "DurationText")]
    #[serde(default = "default_record_ttl", serialize_with = "ser_duration")]
    pub record_ttl: Duration,
    /// One stable name per database and service: a port on 127.0.0.1 (local) or a DNS
    /// name in `zone` (aws). Example: `{db: 25432, web: 28080}`.
    pub names: BTreeMap<String, StableName>,
}

/// Where clients reach a database or service of the stage, whatever its generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StableName {
    /// Local: a TCP port on 127.0.0.1 that rehearse's forwarder listens on.
    Port(#[schemars(range(min = 1024, max = 65535))] u16),
    /// AWS: a DNS name in the stage's zone (a CNAME to the database, an A record to
    /// the service's instances).
    Record(String),
}

impl std::fmt::Display for StableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StableName::Port(p) => write!(f, "127.0.0.1:{p}"),
            StableName::Record(r) => f.write_str(r),
        }
    }
}

/// How long a stage's previous generation drains when `drain` is not set.
pub fn default_drain() -> Duration {
    Duration::from_secs(300)
}

/// The TTL of a stage's records when `record_ttl` is not set.
pub fn default_record_ttl() -> Duration {
    Duration::from_secs(10)
}

/// The TTL of a description that does not set one.
pub fn default_ttl() -> Duration {
    Duration::from_secs(2 * 3600)
}

pub fn default_max_ttl() -> Duration {
    Duration::from_secs(7 * 86400)
}

/// The longest `max_ttl` a description may set: no run's expiry is ever pushed further
/// from its start, whatever a journal says.
pub const MAX_MAX_TTL: Duration = Duration::from_secs(90 * 86400);

/// The longest a stage's previous generation may drain (`stage.drain`, `rebuild --drain`).
pub const MAX_DRAIN: Duration = Duration::from_secs(24 * 3600);

/// A duration from the command line or the environment (`what` names where it came
/// from, e.g. `--lease`), refused outside `min..=max` — before anything adds it to a time,
/// where an unbounded one overflows.
pub fn bounded_duration(what: &str, text: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    // Bounds in the largest whole unit (`1d`, not humantime's `1day`; `90d`, not months).
    let span = |d: Duration| match d.as_secs() {
        s if s >= 86400 && s.is_multiple_of(86400) => format!("{}d", s / 86400),
        s if s >= 3600 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s >= 60 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format_duration(d),
    };
    let range = format!("from {} to {}", span(min), span(max));
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d < min || d > max => Err(format!("{what} {text}: out of range (a duration {range})")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{what} {text}: {e} (a duration such as 30s, 5m or 2h, {range})")),
    }
}

impl Description {
    /// Where the copy is built.
    pub fn provider(&self) -> ProviderKind {
        self.target.provider()
    }

    /// What the aws provider needs (region, network); `None` on the local provider.
    pub fn aws(&self) -> Option<&AwsTarget> {
        match &self.target {
            Target::Aws(aws) => Some(aws),
            Target::Local => None,
        }
    }

    /// The AWS region; `None` on the local provider.
    pub fn region(&self) -> Option<&str> {
        self.aws().map(|a| a.region.as_str())
    }

    /// The network the copy is placed in; `None` on the local provider.
    pub fn network(&self) -> Option<&Network> {
        self.aws().map(|a| &a.network)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Aws,
    Local,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 2] = [ProviderKind::Aws, ProviderKind::Local];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Aws => "aws",
            ProviderKind::Local => "local",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DestroyPolicy {
    #[default]
    Always,
    Passing,
    Never,
}

impl DestroyPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DestroyPolicy::Always => "always",
            DestroyPolicy::Passing => "passing",
            DestroyPolicy::Never => "never",
        }
    }
}

/// Existing network to place the copy in (aws only). The copy gets its own security
/// group; production's are never used or changed.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// VPC id. Example: `vpc-0a1b2c3d4e5f60718`.
    #[schemars(regex(pattern = r"^vpc-[0-9a-f]{8,17}$"))]
    pub vpc: String,
    /// Subnet ids (at least two in different zones for RDS). Example:
    /// `[subnet-0a1b2c3d4e5f60001, subnet-0a1b2c3d4e5f60002]`.
    pub subnets: Vec<String>,
    /// CIDRs allowed into the copy's security group (besides the group itself), on the
    /// copies' and the services' ports only. Private ranges only (10/8, 172.16/12,
    /// 192.168/16, 100.64/10, fc00::/7) unless `allow_public` says otherwise;
    /// `0.0.0.0/0` is always refused: a copy of production data is never open to the
    /// world.
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Allow `allow_cidrs` outside the private ranges (an office's public address, say).
    /// The plan warns about each. Default `false`.
    #[serde(default)]
    pub allow_public: bool,
}

/// Whether a network lies entirely inside a private range (RFC 1918, shared address
/// space, IPv6 unique local addresses).
pub fn is_private_net(net: &ipnet::IpNet) -> bool {
    const PRIVATE: [&str; 5] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"];
    PRIVATE.iter().filter_map(|p| p.parse::<ipnet::IpNet>().ok()).any(|p| p.contains(net))
}

/// The candidate release: its version and where its artifact is.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Default version when `--release` is not given. Example: `v2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Artifact location, a template. Local: a directory or `.tar.gz` (relative to the
    /// description). AWS: any URL the instances can fetch (passed to user-data).
    /// Example: `../demo/releases/{{ release.version }}`.
    pub artifact: String,
}

/// A database restored from production's latest backup.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Database engine. Only `postgres` today.
    #[serde(default)]
    pub engine: Engine,
    /// Database name inside the server (a template). Example: `shop`.
    pub name: String,
    /// Where production's backups are.
    pub source: DatabaseSource,
    /// Which backup to restore: `newest-snapshot` (default; newest available snapshot or
    /// newest local archive), `latest-restorable-time` (RDS point-in-time) or
    /// `aurora-clone` (copy-on-write clone of an Aurora cluster).
    #[serde(default)]
    pub restore: RestoreMode,
    /// What only the description's provider needs (aws: `instance_class`).
    #[serde(flatten)]
    pub target: DatabaseTarget,
    /// SQL file run on the copy before anything else touches it (relative to the
    /// description). Example: `masking.sql`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masking: Option<PathBuf>,
    /// How long to wait for the copy to be available. Default `30m` on aws, `10m` local.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_duration")]
    #[schemars(with = "Option<DurationText>")]
    pub timeout: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Postgres,
}

/// Where production's backups are: exactly one of the keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseSource {
    /// RDS instance identifier of production (aws). Example: `shop-prod-db`.
    RdsInstance(String),
    /// Aurora cluster identifier of production (aws, with `restore: aurora-clone`).
    AuroraCluster(String),
    /// Directory of `pg_dump` custom-format archives (local); the newest by the time
    /// recorded in the archive is restored. Example: `../backups`.
    BackupDir(PathBuf),
    /// A `postgres://` URL to dump from (local, read-only use).
    Url(String),
}

impl DatabaseSource {
    /// The provider a source belongs to: RDS and Aurora on aws, archives and live
    /// dumps locally.
    pub fn provider(&self) -> ProviderKind {
        match self {
            DatabaseSource::RdsInstance(_) | DatabaseSource::AuroraCluster(_) => ProviderKind::Aws,
            DatabaseSource::BackupDir(_) | DatabaseSource::Url(_) => ProviderKind::Local,
        }
    }

    /// The keys naming a provider's sources in a description.
    pub fn keys_of(provider: ProviderKind) -> &'static [&'static str] {
        match provider {
            ProviderKind::Aws => &["rds_instance", "aurora_cluster"],
            ProviderKind::Local => &["backup_dir", "url"],
        }
    }

    pub fn key(&self) -> &'static str {
        match self {
            DatabaseSource::RdsInstance(_) => "rds_instance",
            DatabaseSource::AuroraCluster(_) => "aurora_cluster",
            DatabaseSource::BackupDir(_) => "backup_dir",
            DatabaseSource::Url(_) => "url",
        }
    }

    /// A one-line description of the production source, for plans and reports. URLs
    /// are shown without their password.
    pub fn describe(&self) -> String {
        match self {
            DatabaseSource::RdsInstance(id) => format!("RDS instance {id}"),
            DatabaseSource::AuroraCluster(id) => format!("Aurora cluster {id}"),
            DatabaseSource::BackupDir(dir) => format!("pg_dump archives in {}", dir.display()),
            DatabaseSource::Url(url) => format!("live dump of {}", redact_url(url)),
        }
    }
}

/// Query parameters of a PostgreSQL URL that carry a secret.
const SECRET_PARAMS: [&str; 2] = ["password", "sslpassword"];

/// A URL with its password (in the user info, or a `password` / `sslpassword`
/// parameter) replaced by `***`. A URL that does not parse loses everything between
/// `://` and its last `@`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
            _ => url.to_string(),
        };
    };
    if u.password().is_some() {
        // Best effort: a URL that cannot carry a password has none to hide.
        #[allow(clippy::let_underscore_must_use)]
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| SECRET_PARAMS.contains(&k.as_ref())) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if SECRET_PARAMS.contains(&k.as_ref()) { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Why a URL's password cannot be taken out of it.
#[derive(Debug, thiserror::Error)]
pub enum SplitPasswordError {
    #[error("does not parse: {0}")]
    Parse(#[source] url::ParseError),
    #[error("cannot carry a password")]
    CannotCarryPassword,
}

/// A URL without its password, and the password (from the user info or a `password=`
/// parameter), percent-decoded, for `PGPASSWORD`; or why the URL cannot be split.
pub fn split_password(url: &str) -> Result<(String, Option<String>), SplitPasswordError> {
    let mut u = url::Url::parse(url).map_err(SplitPasswordError::Parse)?;
    let decode = |p: &str| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned();
    let mut password = u.password().map(decode);
    if u.password().is_some() {
        u.set_password(None).map_err(|()| SplitPasswordError::CannotCarryPassword)?;
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in u.query_pairs() {
        if k == "password" {
            password = Some(v.into_owned());
        } else {
            pairs.push((k.into_owned(), v.into_owned()));
        }
    }
    if pairs.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    Ok((u.to_string(), password.filter(|p| !p.is_empty())))
}

/// The secrets a URL carries, as written and percent-decoded (both forms can end up
/// in a log): the user info's password and `password` / `sslpassword` parameters.
pub fn url_secrets(url: &str) -> Vec<String> {
    let Ok(u) = url::Url::parse(url) else { return Vec::new() };
    let mut out = Vec::new();
    if let Some(p) = u.password() {
        out.push(p.to_string());
        out.push(percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
    }
    for (k, v) in u.query_pairs() {
        if SECRET_PARAMS.contains(&k.as_ref()) {
            out.push(v.into_owned());
        }
    }
    if let Some(q) = u.query() {
        for raw in q.split('&') {
            if let Some((k, v)) = raw.split_once('=') {
                if SECRET_PARAMS.contains(&k) {
                    out.push(v.to_string());
                }
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    out
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    #[default]
    NewestSnapshot,
    LatestRestorableTime,
    AuroraClone,
}

impl RestoreMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMode::NewestSnapshot => "newest-snapshot",
            RestoreMode::LatestRestorableTime => "latest-restorable-time",
            RestoreMode::AuroraClone => "aurora-clone",
        }
    }
}

/// A service running the release: EC2 instances (aws) or local processes.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// How many instances or processes. Default 1, at most 20.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 20))]
    pub count: u32,
    /// Databases and services this one needs first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What only the description's provider needs (aws: `image`, `instance_type`,
    /// `user_data`; local: `command`).
    #[serde(flatten)]
    pub target: ServiceTarget,
    /// Install / migration command run once in the unpacked release against the copy
    /// before the service starts. Example: `sh migrate.sh`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    /// Config templates rendered into the unpacked release before install.
    #[serde(default)]
    pub templates: Vec<ConfigTemplate>,
    /// Environment of the service (values are templates). Example:
    /// `{DATABASE_URL: "{{ databases.db.url }}"}`.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ScalarText>")]
    pub env: BTreeMap<String, String>,
    /// Port the service listens on (aws; local services get a free port in `PORT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// HTTP health check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

fn one() -> u32 {
    1
}

/// A config file rendered from a tera template into the unpacked release.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigTemplate {
    /// Template file, relative to the description. Example: `shop.conf.tera`.
    pub source: PathBuf,
    /// Destination, relative to the unpacked release. Example: `config/shop.conf`.
    pub dest: PathBuf,
}

/// An HTTP health check: GET `path` until it answers 2xx, within `timeout`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Path to GET. Example: `/health`.
    pub path: String,
    /// How long to wait at most. Default `60s`.
    #[serde(default = "default_health_timeout", serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub timeout: Duration,
}

/// The timeout of a health check that does not set one.
pub fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}

/// An automated suite: a command whose results judge the release.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Command, run from the description's directory. Example:
    /// `python3 suites/smoke.py`.
    pub command: String,
    /// Time limit; a suite that exceeds it fails. Example: `5m`.
    #[serde(serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub timeout: Duration,
    /// Services and databases the suite exercises (it starts after they are healthy).
    /// Default: all services.
    #[serde(default)]
    pub uses: Vec<String>,
    /// Where results appear: `exit-code`, or `{junit: PATH}` (the suite writes JUnit
    /// XML to `$REHEARSE_JUNIT_PATH`; PATH names the file in the report).
    pub results: SuiteResults,
    /// Environment of the suite (values are templates).
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ScalarText>")]
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SuiteResults {
    ExitCode,
    Junit(PathBuf),
}

/// A duration written as a number and a unit: `90s`, `5m`, `2h`, `1h30m`, `7d` (any
/// unit humantime reads: `ms`, `sec`, `min`, `hours`, `days`, `weeks`, ...).
#[derive(JsonSchema)]
#[schemars(transparent)]
#[allow(dead_code)]
struct DurationText(
    #[schemars(regex(
        pattern = r"^\s*([0-9]+(\.[0-9]+)?\s*(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y)\s*)+$"
    ))]
    String,
);

/// A value in a mapping of strings (tags, variables, environments): numbers and
/// booleans are taken as written (`cost-center: 4711`).
struct ScalarText;

impl JsonSchema for ScalarText {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ScalarText".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_from_the_command_line_are_bounded_before_use() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(86400));
        assert_eq!(bounded_duration("--lease", "90s", min, max), Ok(Duration::from_secs(90)));
        assert_eq!(
            bounded_duration("--lease", "300000y", min, max),
            Err("--lease 300000y: out of range (a duration from 1s to 1d)".into())
        );
        assert!(bounded_duration("--lease", "0s", min, max).unwrap_err().contains("out of range"));
        let e = bounded_duration("--lease", "99999999999999999999y", min, max).unwrap_err();
        assert!(e.starts_with("--lease 99999999999999999999y: ") && e.ends_with("from 1s to 1d)"), "{e}");
        assert!(bounded_duration("REHEARSE_LEASE", "soon", min, max).unwrap_err().contains("such as 30s"));
    }

    #[test]
    fn urls_lose_every_password_they_carry() {
        let url = "postgres://reader:p%40ss@replica:5432/shop?sslmode=require&password=S3cr%40t&sslpassword=k3y";
        let shown = redact_url(url);
        assert!(!shown.contains("p%40ss") && !shown.contains("S3cr") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("reader:***@replica") && shown.contains("sslmode=require"), "{shown}");
        let secrets = url_secrets(url);
        for s in ["p%40ss", "p@ss", "S3cr%40t", "S3cr@t", "k3y"] {
            assert!(secrets.iter().any(|x| x == s), "{s} not in {secrets:?}");
        }
        // Not a URL the parser takes: everything before the last `@` goes.
        assert_eq!(redact_url("postgres://u:p@ss@h[/db"), "postgres://***@h[/db");
    }

    #[test]
    fn a_password_leaves_the_url_for_the_environment() {
        let (bare, p) = split_password("postgres://reader:p%40ss@replica:5432/shop?sslmode=require").unwrap();
        assert_eq!(
            (bare.as_str(), p.as_deref()),
            ("postgres://reader@replica:5432/shop?sslmode=require", Some("p@ss"))
        );
        let (bare, p) = split_password("postgres://reader@replica/shop?password=S3cr%40t").unwrap();
        assert_eq!((bare.as_str(), p.as_deref()), ("postgres://reader@replica/shop", Some("S3cr@t")));
        assert_eq!(split_password("postgres://replica/shop").unwrap().1, None);
        assert!(split_password("not a url").is_err());
    }
}
