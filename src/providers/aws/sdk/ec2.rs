//! [`Ec2Api`] over the SDK's EC2 client: instances and security groups.

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types as ec2t;

use super::{err, Sdk};
use crate::providers::aws::api::*;

fn ec2_tags(tags: &[Tag]) -> Vec<ec2t::Tag> {
    tags.iter().map(|t| ec2t::Tag::builder().key(&t.key).value(&t.value).build()).collect()
}

fn from_ec2_tags(tags: &[ec2t::Tag]) -> Vec<Tag> {
    tags.iter()
        .map(|t| Tag { key: t.key().unwrap_or_default().into(), value: t.value().unwrap_or_default().into() })
        .collect()
}

fn spec(kind: ec2t::ResourceType, tags: &[Tag]) -> ec2t::TagSpecification {
    ec2t::TagSpecification::builder().resource_type(kind).set_tags(Some(ec2_tags(tags))).build()
}

fn instance(i: &ec2t::Instance) -> Instance {
    Instance {
        id: i.instance_id().unwrap_or_default().into(),
        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
        private_ip: i.private_ip_address().map(str::to_string),
        image_id: i.image_id().map(str::to_string),
        instance_type: i.instance_type().map(|t| t.as_str().to_string()),
        client_token: i.client_token().filter(|t| !t.is_empty()).map(str::to_string),
        tags: from_ec2_tags(i.tags()),
    }
}

fn group(g: &ec2t::SecurityGroup) -> SecurityGroup {
    SecurityGroup {
        id: g.group_id().unwrap_or_default().into(),
        name: g.group_name().unwrap_or_default().into(),
        vpc_id: g.vpc_id().map(str::to_string),
        tags: from_ec2_tags(g.tags()),
    }
}

impl Ec2Api for Sdk {
    async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc_id: &str,
        tags: &[Tag],
    ) -> ApiResult<String> {
        let out = self
            .ec2
            .create_security_group()
            .group_name(name)
            .description(description)
            .vpc_id(vpc_id)
            .tag_specifications(spec(ec2t::ResourceType::SecurityGroup, tags))
            .send()
            .await
            .map_err(err)?;
        Ok(out.group_id().unwrap_or_default().to_string())
    }

    async fn authorize_ingress(&self, group_id: &str, cidrs: &[String], ports: &[u16]) -> ApiResult<()> {
        let perms: Vec<ec2t::IpPermission> = ports
            .iter()
            .map(|p| {
                let mut perm = ec2t::IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(i32::from(*p))
                    .to_port(i32::from(*p))
                    .user_id_group_pairs(ec2t::UserIdGroupPair::builder().group_id(group_id).build());
                for c in cidrs {
                    perm =
                        perm.ip_ranges(ec2t::IpRange::builder().cidr_ip(c).description("rehearse: allowed in").build());
                }
                perm.build()
            })
            .collect();
        self.ec2
            .authorize_security_group_ingress()
            .group_id(group_id)
            .set_ip_permissions(Some(perms))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn describe_security_groups(&self, ids: &[String]) -> ApiResult<Vec<SecurityGroup>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.ec2.describe_security_groups().set_group_ids(Some(ids.to_vec())).send().await.map_err(err)?;
        Ok(out.security_groups().iter().map(group).collect())
    }

    async fn security_groups_tagged(&self, tag_key: &str) -> ApiResult<Vec<SecurityGroup>> {
        let filter = ec2t::Filter::builder().name("tag-key").values(tag_key).build();
        let pages = self.ec2.describe_security_groups().filters(filter).into_paginator().send();
        Ok(all_pages!(pages, |page| page.security_groups().iter().map(group)))
    }

    async fn delete_security_group(&self, id: &str) -> ApiResult<()> {
        self.ec2.delete_security_group().group_id(id).send().await.map_err(err)?;
        Ok(())
    }

    async fn run_instances(&self, req: &RunInstances) -> ApiResult<Vec<String>> {
        let out = self
            .ec2
            .run_instances()
            .image_id(&req.image_id)
            .instance_type(ec2t::InstanceType::from(req.instance_type.as_str()))
            .min_count(req.count as i32)
            .max_count(req.count as i32)
            .subnet_id(&req.subnet_id)
            .security_group_ids(&req.security_group_id)
            .set_user_data(req.user_data.clone())
            .client_token(&req.client_token)
            .set_iam_instance_profile(req.instance_profile.as_deref().map(|p| {
                let spec = ec2t::IamInstanceProfileSpecification::builder();
                if p.starts_with("arn:") {
                    spec.arn(p).build()
                } else {
                    spec.name(p).build()
                }
            }))
            // Everything the launch creates carries the run tag from its first instant:
            // the policy refuses a launch whose network interface does not (an existing
            // production interface, which would bring its security groups along).
            .tag_specifications(spec(ec2t::ResourceType::Instance, &req.tags))
            .tag_specifications(spec(ec2t::ResourceType::Volume, &req.tags))
            .tag_specifications(spec(ec2t::ResourceType::NetworkInterface, &req.tags))
            .send()
            .await
            .map_err(err)?;
        Ok(out.instances().iter().filter_map(|i| i.instance_id().map(str::to_string)).collect())
    }

    async fn describe_instances(&self, ids: &[String]) -> ApiResult<Vec<Instance>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(all_pages!(
            self.ec2.describe_instances().set_instance_ids(Some(ids.to_vec())).into_paginator().send(),
            |page| page.reservations().iter().flat_map(|r| r.instances()).map(instance).collect::<Vec<_>>()
        ))
    }

    async fn instances_tagged(&self, tag_key: &str) -> ApiResult<Vec<Instance>> {
        let filter = ec2t::Filter::builder().name("tag-key").values(tag_key).build();
        let pages = self.ec2.describe_instances().filters(filter).into_paginator().send();
        Ok(all_pages!(pages, |page| page
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(instance)
            .collect::<Vec<_>>()))
    }

    async fn terminate_instances(&self, ids: &[String]) -> ApiResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ec2.terminate_instances().set_instance_ids(Some(ids.to_vec())).send().await.map_err(err)?;
        Ok(())
    }

    async fn instance_action(&self, ids: &[String], action: InstanceAction) -> ApiResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = Some(ids.to_vec());
        match action {
            InstanceAction::Stop => self.ec2.stop_instances().set_instance_ids(ids).send().await.map(drop).map_err(err),
            InstanceAction::Start => {
                self.ec2.start_instances().set_instance_ids(ids).send().await.map(drop).map_err(err)
            }
            InstanceAction::Reboot => {
                self.ec2.reboot_instances().set_instance_ids(ids).send().await.map(drop).map_err(err)
            }
        }
    }

    async fn create_tags(&self, ids: &[String], tags: &[Tag]) -> ApiResult<()> {
        self.ec2
            .create_tags()
            .set_resources(Some(ids.to_vec()))
            .set_tags(Some(ec2_tags(tags)))
            .send()
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn console_output(&self, id: &str) -> ApiResult<Option<String>> {
        // `latest`: the newest text on instances that keep it (Nitro), instead of the
        // copy AWS posts a while after boot.
        let out = match self.ec2.get_console_output().instance_id(id).latest(true).send().await {
            Ok(out) => out,
            // `latest` is for Nitro instances; others have the copy AWS posts after boot.
            Err(e) if e.code() == Some("UnsupportedOperation") => {
                self.ec2.get_console_output().instance_id(id).send().await.map_err(err)?
            }
            Err(e) => return Err(err(e)),
        };
        let Some(text) = out.output().filter(|o| !o.is_empty()) else { return Ok(None) };
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text.trim()).map_err(|e| ApiError {
                code: None,
                message: format!("console output of {id} is not base64: {e}"),
                kind: ErrorKind::Refused,
            })?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}
