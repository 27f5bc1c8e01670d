//! `runner:`: the SSM runner (aws only).

use std::path::PathBuf;

use super::super::rules::{is_aws_id, is_instance_profile, is_instance_type};
use super::super::Decoder;
use super::*;
use crate::description::yaml::Node;

impl Decoder {
    /// `runner:` — `{ssm: {image | instance, instance_type, instance_profile, outputs,
    /// bundle}}`, aws only.
    pub(super) fn runner(&mut self, node: &Node, provider: Option<ProviderKind>) -> Option<Runner> {
        let mut obj = self.obj("runner", node, "a mapping with `ssm`")?;
        let ssm = self.require(&mut obj, "ssm", "the runner instance: `{ssm: {image: ami-…, outputs: s3://…}}`");
        self.finish(obj);
        let mut obj = self.obj("runner.ssm", ssm?, "a mapping with `image` or `instance`, and `outputs`")?;
        let image = self.opt_string(&mut obj, "image");
        let instance = self.opt_string(&mut obj, "instance");
        let instance_type = self.opt_string(&mut obj, "instance_type");
        let instance_profile = self.opt_string(&mut obj, "instance_profile");
        let outputs = self.req_string(&mut obj, "outputs", "`s3://BUCKET/PREFIX`, where SSM writes command output");
        let bundle = self.opt_string(&mut obj, "bundle").map(PathBuf::from);
        self.finish(obj);
        let at = |d: &mut Self, key: &str| d.positions.get(&format!("runner.ssm.{key}"));
        if let Some(i) = &image {
            if !is_aws_id(i, "ami-") {
                let pos = at(self, "image");
                self.err(pos, format!("`{i}` is not an AMI id")).expected =
                    Some("`ami-` followed by 8 or 17 hex digits".into());
            }
        }
        if let Some(i) = &instance {
            if !is_aws_id(i, "i-") {
                let pos = at(self, "instance");
                self.err(pos, format!("`{i}` is not an EC2 instance id")).expected =
                    Some("`i-` followed by 8 or 17 hex digits".into());
            }
        }
        match (&image, &instance) {
            (Some(_), Some(_)) => {
                let pos = at(self, "instance");
                self.err(pos, "`runner.ssm` names both an `image` to launch and an existing `instance`").help = Some(
                    "keep one: rehearse launches (and tears down) a runner from `image`, or uses `instance`".into(),
                );
            }
            (None, None) => {
                let pos = self.positions.get("runner.ssm#key");
                self.err(pos, "`runner.ssm` needs an `image` to launch a runner from, or an existing `instance`")
                    .expected = Some("`image: ami-…` (with the SSM agent) or `instance: i-…`".into());
            }
            _ => {}
        }
        if instance.is_some() && (instance_type.is_some() || instance_profile.is_some()) {
            let pos = at(self, "instance");
            self.err(pos, "`instance_type` and `instance_profile` are for a runner rehearse launches from `image`");
        }
        if let Some(t) = &instance_type {
            if !is_instance_type(t) {
                let pos = at(self, "instance_type");
                self.err(pos, format!("`{t}` is not an EC2 instance type")).expected =
                    Some("FAMILY.SIZE, e.g. `t3.small`".into());
            }
        }
        if let Some(p) = &instance_profile {
            if !is_instance_profile(p) {
                let pos = at(self, "instance_profile");
                self.err(pos, format!("`{p}` is not an IAM instance profile"));
            }
        }
        if let Some(o) = &outputs {
            if !matches!(crate::sys::state::StateUrl::parse(o), Ok(crate::sys::state::StateUrl::S3 { .. })) {
                let pos = at(self, "outputs");
                self.err(pos, format!("`runner.ssm.outputs` must be `s3://BUCKET/PREFIX`, not `{o}`"));
            }
        }
        if provider == Some(ProviderKind::Local) {
            let pos = self.positions.get("runner#key");
            self.err(pos, "`runner` is for the aws provider: the local provider runs everything on this machine");
        }
        Some(Runner::Ssm(SsmRunner {
            image,
            instance,
            instance_type: instance_type.unwrap_or_else(default_runner_type),
            instance_profile,
            outputs: outputs?,
            bundle,
        }))
    }
}
