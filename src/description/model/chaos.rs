//! `chaos:` — a game day on the copy (`rehearse run FILE --release R --chaos [NAME…]`):
//! faults injected on purpose while a load runs, and the expectations the release must
//! meet during and after them.
//!
//! A fault has one target (a service or one of its instances, a database, or the path
//! from a service, or from the load's client, to what it connects to), a kind that fits
//! the target and the provider, a start (`after` the load or a suite started, `at` an
//! offset from it) and, for the faults that last, a `duration`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::Serialize;

use super::{ser_duration, ser_opt_duration, DurationText, Load, ProviderKind};

/// `chaos:` — the faults of a game day and what must hold through them.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Chaos {
    /// The traffic the faults are judged by: a request file replayed by rehearse
    /// (`requests`, `target`, `rate`, `timeout`; it runs from the steady window until
    /// the settling after the last fault ends). Default: `compare.load`. Without any,
    /// an expectation on the traffic cannot be checked and fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// How long the load runs before the clock of the faults' `at` starts. Default `5s`.
    #[serde(default = "default_chaos_steady", serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub steady: Duration,
    /// How long the load goes on after the last fault ended. Default `10s`.
    #[serde(default = "default_chaos_settle", serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub settle: Duration,
    /// The faults, by name (`--chaos NAME…` picks some; all by default). Example:
    /// `{db-restart: {database: db, kind: restart, mode: fast, at: 5s}}`.
    pub faults: BTreeMap<String, ChaosFault>,
    /// What must hold during and after the faults.
    #[serde(default)]
    pub expect: Expect,
}

/// One fault: its target (exactly one of `service`, `database`, `path`), its kind and
/// when it starts and ends.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosFault {
    /// A service: every instance, or one with `instance`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// One instance of `service`, from 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
    /// A database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// A path, `FROM -> TO`: a service to a database it depends on (`web -> db`) or the
    /// load's client to a service (`client -> web`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub kind: FaultKind,
    /// `restart`: `fast` (the default: sessions ended cleanly) or `immediate` (as a
    /// crash: recovery from the WAL at the next start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<RestartMode>,
    /// `reboot` of a database: with failover to its standby (Multi-AZ only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
    /// `latency`: added to every chunk each way.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_duration")]
    pub delay: Option<Duration>,
    /// `latency`: up to this much more, drawn per chunk from the run's seed.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_duration")]
    pub jitter: Option<Duration>,
    /// `bandwidth`: the most bytes a second each way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// What `at` counts from: `load` (its start, after `steady`; the default) or
    /// `suite.NAME` (that suite's start).
    #[serde(default = "default_after")]
    pub after: String,
    /// When the fault starts, after `after`. Default `0s`.
    #[serde(default, serialize_with = "ser_duration")]
    pub at: Duration,
    /// How long a lasting fault lasts (`restart`: how long the database stays down,
    /// default `0s`; `stop`: how long the instance stays stopped); the instant ones
    /// (`kill`, `reboot`, `terminate`, `failover`) take none.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_duration")]
    pub duration: Option<Duration>,
    /// This fault's own expectations on the traffic, instead of `chaos.expect`'s (a
    /// restart fails every request while the database is down: its expectation is the
    /// recovery). Example: `{recover_within: 10s}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<FaultExpect>,
}

/// A fault's own expectations on the traffic (`chaos.faults.NAME.expect`).
#[derive(Clone, Debug, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultExpect {
    /// As `chaos.expect.max_error_rate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// As `chaos.expect.latency`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", serialize_with = "super::deploy::ser_durations")]
    #[schemars(with = "BTreeMap<String, DurationText>")]
    pub latency: BTreeMap<String, Duration>,
    /// As `chaos.expect.recover_within`.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_duration")]
    #[schemars(with = "Option<DurationText>")]
    pub recover_within: Option<Duration>,
}

impl ChaosFault {
    /// What this fault's traffic is judged by: its own expectations, else the section's.
    pub fn expectations(&self, section: &Expect) -> Expect {
        match &self.expect {
            Some(e) => Expect {
                max_error_rate: e.max_error_rate,
                latency: e.latency.clone(),
                recover_within: e.recover_within,
                suites_pass: section.suites_pass,
            },
            None => section.clone(),
        }
    }
}

/// What a fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A service's instance (local): its process group killed (SIGKILL).
    Kill,
    /// A database (local): stopped (`mode`) and started again after `duration`.
    Restart,
    /// A service's instance (aws): stopped for `duration`, then started.
    Stop,
    /// A service's instance or a database (aws): rebooted.
    Reboot,
    /// A service's instance (aws): terminated.
    Terminate,
    /// An Aurora cluster (aws): failed over to a replica.
    Failover,
    /// A path: `delay` (± `jitter`) added each way, for `duration`.
    Latency,
    /// A path: at most `bytes_per_second` each way, for `duration`.
    Bandwidth,
    /// A path: every connection reset, open and new, for `duration`.
    Reset,
    /// A path: nothing moves for `duration`; then it resumes.
    Blackhole,
}

/// Which target a kind takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTargetKind {
    Service,
    Database,
    Path,
}

/// A kind's shape: its target, the keys of its own, which of them it requires, and
/// whether it lasts (takes a `duration`).
pub struct KindShape {
    pub kind: FaultKind,
    pub target: FaultTargetKind,
    pub keys: &'static [&'static str],
    pub required: &'static [&'static str],
    pub lasts: bool,
    pub providers: &'static [ProviderKind],
}

/// Every kind's shape, the one table the decoder and the schema both read.
pub const KIND_SHAPES: &[KindShape] = &[
    KindShape {
        kind: FaultKind::Kill,
        target: FaultTargetKind::Service,
        keys: &["instance"],
        required: &[],
        lasts: false,
        providers: &[ProviderKind::Local],
    },
    KindShape {
        kind: FaultKind::Restart,
        target: FaultTargetKind::Database,
        keys: &["mode"],
        required: &[],
        lasts: true,
        providers: &[ProviderKind::Local],
    },
    KindShape {
        kind: FaultKind::Stop,
        target: FaultTargetKind::Service,
        keys: &["instance"],
        required: &["duration"],
        lasts: true,
        providers: &[ProviderKind::Aws],
    },
    KindShape {
        kind: FaultKind::Reboot,
        target: FaultTargetKind::Service,
        keys: &["instance"],
        required: &[],
        lasts: false,
        providers: &[ProviderKind::Aws],
    },
    KindShape {
        kind: FaultKind::Reboot,
        target: FaultTargetKind::Database,
        keys: &["failover"],
        required: &[],
        lasts: false,
        providers: &[ProviderKind::Aws],
    },
    KindShape {
        kind: FaultKind::Terminate,
        target: FaultTargetKind::Service,
        keys: &["instance"],
        required: &[],
        lasts: false,
        providers: &[ProviderKind::Aws],
    },
    KindShape {
        kind: FaultKind::Failover,
        target: FaultTargetKind::Database,
        keys: &[],
        required: &[],
        lasts: false,
        providers: &[ProviderKind::Aws],
    },
    KindShape {
        kind: FaultKind::Latency,
        target: FaultTargetKind::Path,
        keys: &["delay", "jitter"],
        required: &["delay", "duration"],
        lasts: true,
        providers: &[ProviderKind::Local, ProviderKind::Aws],
    },
    KindShape {
        kind: FaultKind::Bandwidth,
        target: FaultTargetKind::Path,
        keys: &["bytes_per_second"],
        required: &["bytes_per_second", "duration"],
        lasts: true,
        providers: &[ProviderKind::Local, ProviderKind::Aws],
    },
    KindShape {
        kind: FaultKind::Reset,
        target: FaultTargetKind::Path,
        keys: &[],
        required: &["duration"],
        lasts: true,
        providers: &[ProviderKind::Local, ProviderKind::Aws],
    },
    KindShape {
        kind: FaultKind::Blackhole,
        target: FaultTargetKind::Path,
        keys: &[],
        required: &["duration"],
        lasts: true,
        providers: &[ProviderKind::Local, ProviderKind::Aws],
    },
];

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Kill,
        FaultKind::Restart,
        FaultKind::Stop,
        FaultKind::Reboot,
        FaultKind::Terminate,
        FaultKind::Failover,
        FaultKind::Latency,
        FaultKind::Bandwidth,
        FaultKind::Reset,
        FaultKind::Blackhole,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Restart => "restart",
            FaultKind::Stop => "stop",
            FaultKind::Reboot => "reboot",
            FaultKind::Terminate => "terminate",
            FaultKind::Failover => "failover",
            FaultKind::Latency => "latency",
            FaultKind::Bandwidth => "bandwidth",
            FaultKind::Reset => "reset",
            FaultKind::Blackhole => "blackhole",
        }
    }
}

impl FaultTargetKind {
    pub fn key(self) -> &'static str {
        match self {
            FaultTargetKind::Service => "service",
            FaultTargetKind::Database => "database",
            FaultTargetKind::Path => "path",
        }
    }
}

impl ChaosFault {
    /// The shape of this fault's kind on its target.
    pub fn shape(&self) -> Option<&'static KindShape> {
        let target = self.target_kind()?;
        KIND_SHAPES.iter().find(|s| s.kind == self.kind && s.target == target)
    }

    pub fn target_kind(&self) -> Option<FaultTargetKind> {
        match (&self.service, &self.database, &self.path) {
            (Some(_), None, None) => Some(FaultTargetKind::Service),
            (None, Some(_), None) => Some(FaultTargetKind::Database),
            (None, None, Some(_)) => Some(FaultTargetKind::Path),
            _ => None,
        }
    }

    /// The path's two ends, `(FROM, TO)`.
    pub fn path_ends(&self) -> Option<(&str, &str)> {
        self.path.as_deref().and_then(split_path)
    }
}

/// `FROM -> TO` into its ends (trimmed, both non-empty).
pub fn split_path(p: &str) -> Option<(&str, &str)> {
    let (a, b) = p.split_once("->")?;
    let (a, b) = (a.trim(), b.trim());
    (!a.is_empty() && !b.is_empty()).then_some((a, b))
}

/// `restart`'s mode, as `pg_ctl stop -m` takes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    #[default]
    Fast,
    Immediate,
}

impl RestartMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartMode::Fast => "fast",
            RestartMode::Immediate => "immediate",
        }
    }
}

/// `chaos.expect` — what must hold.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The largest share, in percent, of the requests sent while a fault lasts and
    /// until the release recovered that may fail. Example: `5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Per endpoint (`METHOD PATH`), the most its p99 latency may be while a fault
    /// lasts. Example: `{"GET /products": 800ms}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", serialize_with = "super::deploy::ser_durations")]
    #[schemars(with = "BTreeMap<String, DurationText>")]
    pub latency: BTreeMap<String, Duration>,
    /// How soon after a fault ends the traffic must be back: no failed request, and
    /// each endpoint's p99 over a second within the `latency` limits. Example: `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "ser_opt_duration")]
    #[schemars(with = "Option<DurationText>")]
    pub recover_within: Option<Duration>,
    /// Whether the suites must pass after the faults. Default `true`.
    #[serde(default = "default_true")]
    pub suites_pass: bool,
}

impl Default for Expect {
    fn default() -> Self {
        Expect { max_error_rate: None, latency: BTreeMap::new(), recover_within: None, suites_pass: true }
    }
}

fn default_true() -> bool {
    true
}

pub fn default_chaos_steady() -> Duration {
    Duration::from_secs(5)
}

pub fn default_chaos_settle() -> Duration {
    Duration::from_secs(10)
}

pub fn default_after() -> String {
    "load".to_string()
}

/// The pattern of `path`: two names (or `client`) and an arrow.
pub const PATH_PATTERN: &str = r"^\s*[a-z]([a-z0-9_-]{0,30}[a-z0-9])?\s*->\s*[a-z]([a-z0-9_-]{0,30}[a-z0-9])?\s*$";

/// The pattern of `after`.
pub const AFTER_PATTERN: &str = r"^(load|suite\.[a-z][a-z0-9_-]{0,62})$";

impl JsonSchema for ChaosFault {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "ChaosFault".into()
    }

    /// One branch a kind and target: the target's key, `kind`, the kind's own keys and
    /// the common ones, nothing else.
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let duration = g.subschema_for::<DurationText>().to_value();
        let mode = g.subschema_for::<RestartMode>().to_value();
        let expect = g.subschema_for::<FaultExpect>().to_value();
        let branches: Vec<serde_json::Value> = KIND_SHAPES
            .iter()
            .map(|s| {
                let mut props = serde_json::Map::new();
                let target = s.target.key();
                let named = if s.target == FaultTargetKind::Path {
                    serde_json::json!({ "type": "string", "pattern": PATH_PATTERN })
                } else {
                    serde_json::json!({ "type": "string", "minLength": 1 })
                };
                props.insert(target.into(), named);
                props.insert("kind".into(), serde_json::json!({ "const": s.kind.as_str() }));
                props.insert("after".into(), serde_json::json!({ "type": "string", "pattern": AFTER_PATTERN }));
                props.insert("at".into(), duration.clone());
                props.insert("expect".into(), expect.clone());
                if s.lasts {
                    props.insert("duration".into(), duration.clone());
                }
                for k in s.keys {
                    let v = match *k {
                        "instance" => serde_json::json!({ "type": "integer", "minimum": 0 }),
                        "mode" => mode.clone(),
                        "failover" => serde_json::json!({ "type": "boolean" }),
                        "bytes_per_second" => serde_json::json!({ "type": "integer", "minimum": 1 }),
                        _ => duration.clone(),
                    };
                    props.insert((*k).into(), v);
                }
                let mut required = vec![target, "kind"];
                required.extend(s.required.iter().copied());
                serde_json::json!({
                    "type": "object",
                    "properties": props,
                    "required": required,
                    "additionalProperties": false,
                })
            })
            .collect();
        schemars::json_schema!({
            "description": "One fault: its target (`service`, `database` or `path`), its `kind`, when it starts \
                            (`after`, `at`) and, if it lasts, its `duration`.",
            "oneOf": branches,
        })
    }
}
