//! The run's network (aws: its security group and db subnet group), the SSM runner, and
//! the ingress rules of the services' ports.

use std::collections::BTreeSet;

use serde_json::json;

use super::super::price;
use super::{Builder, Kind, Resource, RUNNER, RUNNER_DATA, SERVICE_INGRESS};
use crate::description::{Runner, Target};

impl Builder<'_> {
    /// The decoder builds every part of a description for its provider: an aws
    /// description's databases and services are aws ones. The local provider needs no
    /// network.
    pub(super) fn network(&mut self) {
        let d = self.desc();
        let Target::Aws(aws) = &d.target else { return };
        let net = &aws.network;
        let mut sg = Resource::new("network.security-group", Kind::AwsSecurityGroup, "security-group");
        sg.attributes.insert("vpc_id".into(), json!(net.vpc));
        sg.attributes.insert("ingress".into(), json!("none until opened below"));
        sg.attributes.insert("egress".into(), json!("all"));
        self.resources.push(sg);
        self.network_ids.push("network.security-group".into());
        if !d.databases.is_empty() {
            let mut sng = Resource::new("network.db-subnet-group", Kind::AwsDbSubnetGroup, "db-subnet-group");
            sng.attributes.insert("subnet_ids".into(), json!(net.subnets));
            self.resources.push(sng);
            self.network_ids.push("network.db-subnet-group".into());
        }
    }

    /// With `runner: ssm`, the commands that need the copy's network run on a runner
    /// instance in the run's group: its keys in the outputs bucket first, then (unless
    /// an existing instance is named) the runner itself.
    pub(super) fn runner(&mut self) {
        let d = self.desc();
        let (Target::Aws(aws), Some(Runner::Ssm(r))) = (&d.target, &d.runner) else { return };
        let mut data = Resource::new(RUNNER_DATA, Kind::AwsS3Prefix, "runner");
        data.attributes
            .insert("location".into(), json!(format!("{}/{}/", r.outputs.trim_end_matches('/'), self.run_id)));
        data.attributes.insert("holds".into(), json!("the runner's inputs and its commands' output"));
        match (&r.image, &r.instance) {
            (Some(image), _) => {
                self.resources.push(data);
                let mut inst = Resource::new(RUNNER, Kind::AwsInstance, "runner");
                inst.depends_on = vec!["network.security-group".into(), RUNNER_DATA.into()];
                inst.attributes.insert("image_id".into(), json!(image));
                inst.attributes.insert("instance_type".into(), json!(r.instance_type));
                inst.attributes.insert("subnet_id".into(), json!(aws.network.subnets.first()));
                if let Some(p) = &r.instance_profile {
                    inst.attributes.insert("instance_profile".into(), json!(p));
                }
                inst.attributes.insert("runs".into(), json!("masking, installs, health checks, suites (SSM)"));
                inst.cost_per_hour_usd = price::ec2_hourly(&r.instance_type, &aws.region);
                self.resources.push(inst);
                self.runner = vec![RUNNER_DATA.into(), RUNNER.into()];
            }
            (None, existing) => {
                if let Some(existing) = existing {
                    data.attributes.insert("runner".into(), json!(existing));
                }
                self.resources.push(data);
                self.runner = vec![RUNNER_DATA.into()];
            }
        }
    }

    /// On aws the services' ports open to `allow_cidrs` and the run's group itself.
    pub(super) fn service_ingress(&mut self) {
        let d = self.desc();
        let service_ports: BTreeSet<u16> = d.services.values().filter_map(|s| s.port).collect();
        let Some(from) = self.ingress_from().filter(|_| !service_ports.is_empty()) else { return };
        let mut r = Resource::new(SERVICE_INGRESS, Kind::AwsIngress, "services");
        r.depends_on = vec!["network.security-group".into()];
        r.attributes.insert("protocol".into(), json!("tcp"));
        r.attributes.insert("ports".into(), json!(service_ports));
        r.attributes.insert("from".into(), json!(from));
        self.resources.push(r);
        self.service_ingress = Some(SERVICE_INGRESS.to_string());
    }

    /// Where the run's group lets TCP in from (aws): `allow_cidrs` and the group itself.
    pub(super) fn ingress_from(&self) -> Option<Vec<String>> {
        self.desc().aws().map(|aws| {
            let mut from = aws.network.allow_cidrs.clone();
            from.push("self".into());
            from
        })
    }
}
