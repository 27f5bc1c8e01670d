//! `runner:`: where the commands that need the copy's network run (an SSM runner).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Serialize;

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
