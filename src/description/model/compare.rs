//! `compare:` — the load a comparison sends to both environments (a request file or
//! a load command of your own) and the judge's settings, with Kayenta's defaults.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::{ser_duration, DurationText};

/// `compare:` — the load both environments get, and the judge's settings.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    pub load: Load,
    #[serde(default)]
    pub judge: JudgeSettings,
}

/// The same load on both environments at once.
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// A request file (`METHOD PATH [BODY]` a line, `#` comments), relative to the
    /// description, replayed at `rate` for `duration`. Example: `load/shop.requests`.
    /// Either this or `command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<PathBuf>,
    /// Your own load tool instead (k6, vegeta, locust…): a shell command run once per
    /// environment, both at once, from the description's directory, with
    /// `REHEARSE_URL` (the target's URL), `REHEARSE_SIDE`, `REHEARSE_RATE`,
    /// `REHEARSE_DURATION` (seconds) and `REHEARSE_RESULTS` (the file it writes its
    /// results to, in `format`). It gets `duration` + 60 s. Example:
    /// `k6 run --out json=$REHEARSE_RESULTS load/shop.js`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// What `command` writes to `$REHEARSE_RESULTS`: `samples` (CSV lines
    /// `ENDPOINT,LATENCY_MS,OK`), `k6` (`k6 run --out json=…`) or `vegeta` (`vegeta
    /// encode --to csv`). Default `samples`.
    #[serde(default)]
    pub format: LoadFormat,
    /// The service the requests go to (its first instance's URL). Example: `web`.
    pub target: String,
    /// Requests a second, to each environment. Default 20.
    #[serde(default = "default_load_rate")]
    pub rate: f64,
    /// How long the load lasts. Default `60s`.
    #[serde(default = "default_load_duration", serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub duration: Duration,
    /// A request without an answer within this is an error. Default `10s`.
    #[serde(default = "default_load_timeout", serialize_with = "ser_duration")]
    #[schemars(with = "DurationText")]
    pub timeout: Duration,
}

/// The results file format of a load command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LoadFormat {
    /// `ENDPOINT,LATENCY_MS,OK` a line (OK: 1/0 or true/false; a header line is skipped).
    #[default]
    Samples,
    /// k6's JSON output (`--out json=FILE`): `http_req_duration` and `http_req_failed` points.
    K6,
    /// `vegeta encode --to csv`: one attack result a line.
    Vegeta,
}

impl LoadFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadFormat::Samples => "samples",
            LoadFormat::K6 => "k6",
            LoadFormat::Vegeta => "vegeta",
        }
    }
}

pub fn default_load_rate() -> f64 {
    20.0
}

pub fn default_load_duration() -> Duration {
    Duration::from_secs(60)
}

pub fn default_load_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The judge's settings (Kayenta's NetflixACAJudge; README "Comparing releases").
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeSettings {
    /// Confidence level of each metric's interval, 0.5..0.9999. Default 0.98.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// The tolerated shift, as a fraction of the Hodges-Lehmann estimate. Default 0.25.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Fewer samples than this on either side: NoData. Default 50.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// Score (passing / judged × 100) at or above which the candidate passes. Default 95.
    #[serde(default = "default_pass")]
    pub pass: f64,
    /// Score at or above which a failing candidate is "marginal". Default 75.
    #[serde(default = "default_marginal")]
    pub marginal: f64,
    /// Metrics whose failure (or lack of data) fails the comparison whatever the
    /// score. Example: `["latency GET /products", "errors GET /products"]`.
    #[serde(default)]
    pub critical: Vec<String>,
}

fn default_confidence() -> f64 {
    0.98
}
fn default_tolerance() -> f64 {
    0.25
}
fn default_min_samples() -> u32 {
    50
}
fn default_pass() -> f64 {
    95.0
}
fn default_marginal() -> f64 {
    75.0
}

impl Default for JudgeSettings {
    fn default() -> Self {
        JudgeSettings {
            confidence: default_confidence(),
            tolerance: default_tolerance(),
            min_samples: default_min_samples(),
            pass: default_pass(),
            marginal: default_marginal(),
            critical: Vec::new(),
        }
    }
}
