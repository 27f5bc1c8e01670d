//! `suites:`: the automated suites that judge the release.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

use super::*;

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
