//! The validated description: what a file says once every key was checked, every
//! reference resolved and every template parsed.
//!
//! These types are the second stage of the two-stage configuration (raw spanned tree →
//! this model); nothing downstream (plan, engine, providers) ever sees raw YAML. They
//! also derive the JSON Schema exported by `rehearse schema`, so an editor's completion
//! matches exactly what the decoder accepts (a test keeps the two in step).
//!
//! This file holds the description's root and what every section shares (durations,
//! policies); each section's types are in `model/` (re-exported here).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

mod chaos;
mod compare;
mod databases;
mod deploy;
mod network;
mod provider;
mod runner;
mod services;
mod stage;
mod suites;
mod urls;
pub use chaos::*;
pub use compare::*;
pub use databases::*;
pub use deploy::*;
pub use network::*;
pub use provider::*;
pub use runner::*;
pub use services::*;
pub use stage::*;
pub use suites::*;
pub use urls::*;

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
    /// How `rehearse run --from OLD` rehearses the deploy itself: the old release
    /// serving the load while the new one's migration runs, then the switch, judged by
    /// explicit limits. Example: `{steady: 5s, settle: 10s, max_lock_wait: 500ms,
    /// max_error_rate: 1}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    /// A game day on the copy (`rehearse run --chaos`): faults injected on purpose
    /// while a load runs, and what must hold during and after them. Example:
    /// `{faults: {db-restart: {database: db, kind: restart, at: 5s}}, expect:
    /// {max_error_rate: 5, recover_within: 10s}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chaos: Option<Chaos>,
    /// The files and directories the suites and a load command need (relative to the
    /// description's directory): copied for the user they run as, each at the same
    /// place relative to the description's directory, from which the commands run
    /// inside the copy (hidden files, `target` and `node_modules` left out; at most 256
    /// MiB in 20,000 entries). Default: `[.]`, the description's directory. Example:
    /// `[., ../tests]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Vec<PathBuf>>,
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

/// Why [`bounded_duration`] refused a duration: what it is (`what`) and the text, said.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("{what} {text}: out of range (a duration {range})")]
    OutOfRange { what: String, text: String, range: String },
    #[error("{what} {text}: {why} (a duration such as 30s, 5m or 2h, {range})")]
    Unreadable { what: String, text: String, why: humantime::DurationError, range: String },
}

/// A duration from the command line or the environment (`what` names where it came
/// from, e.g. `--lease`), refused outside `min..=max` — before anything adds it to a time,
/// where an unbounded one overflows.
pub fn bounded_duration(what: &str, text: &str, min: Duration, max: Duration) -> Result<Duration, DurationError> {
    // Bounds in the largest whole unit (`1d`, not humantime's `1day`; `90d`, not months).
    let span = |d: Duration| match d.as_secs() {
        s if s >= 86400 && s.is_multiple_of(86400) => format!("{}d", s / 86400),
        s if s >= 3600 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s >= 60 && s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format_duration(d),
    };
    let range = format!("from {} to {}", span(min), span(max));
    let (what, text_) = (what.to_string(), text.to_string());
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d < min || d > max => Err(DurationError::OutOfRange { what, text: text_, range }),
        Ok(d) => Ok(d),
        Err(why) => Err(DurationError::Unreadable { what, text: text_, why, range }),
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
            bounded_duration("--lease", "300000y", min, max).unwrap_err().to_string(),
            "--lease 300000y: out of range (a duration from 1s to 1d)"
        );
        assert!(bounded_duration("--lease", "0s", min, max).unwrap_err().to_string().contains("out of range"));
        let e = bounded_duration("--lease", "99999999999999999999y", min, max).unwrap_err().to_string();
        assert!(e.starts_with("--lease 99999999999999999999y: ") && e.ends_with("from 1s to 1d)"), "{e}");
        assert!(bounded_duration("REHEARSE_LEASE", "soon", min, max).unwrap_err().to_string().contains("such as 30s"));
    }
}
