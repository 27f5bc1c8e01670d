//! `network:`: the VPC, subnets and the CIDRs let in (aws only).

use super::super::rules::is_aws_id;
use super::super::Decoder;
use super::*;
use crate::description::yaml::{Node, Value};

impl Decoder {
    pub(super) fn network(&mut self, node: &Node) -> Option<Network> {
        let mut obj =
            self.obj("network", node, "a mapping with `vpc`, `subnets`, `allow_cidrs` and optionally `allow_public`")?;
        let vpc = self.req_string(&mut obj, "vpc", "the VPC id, e.g. `vpc-0a1b2c3d4e5f60718`");
        if let Some(v) = &vpc {
            if !is_aws_id(v, "vpc-") {
                let pos = self.positions.get("network.vpc");
                self.err(pos, format!("`network.vpc` is not a VPC id: `{v}`")).expected =
                    Some("`vpc-` followed by 8 or 17 hex digits".into());
            }
        }
        let subnets = match self.require(&mut obj, "subnets", "a list of subnet ids") {
            Some(n) => self.string_list("network.subnets", n),
            None => Vec::new(),
        };
        for (i, s) in subnets.iter().enumerate() {
            if !is_aws_id(s, "subnet-") {
                let pos = self.positions.get(&format!("network.subnets[{i}]"));
                self.err(pos, format!("`{s}` is not a subnet id")).expected =
                    Some("`subnet-` followed by 8 or 17 hex digits".into());
            }
        }
        if subnets.is_empty() && obj.entries.iter().any(|(k, _)| k.name == "subnets") {
            let pos = self.positions.get("network.subnets");
            self.err(pos, "`network.subnets` is empty").expected =
                Some("at least one subnet id (two in different zones for databases)".into());
        }
        let allow_cidrs = match self.get(&mut obj, "allow_cidrs") {
            Some(n) => self.string_list("network.allow_cidrs", n),
            None => Vec::new(),
        };
        let allow_public = match self.get(&mut obj, "allow_public") {
            Some(n) => match n.value {
                Value::Bool(b) => b,
                _ => {
                    let kind = n.value.kind();
                    self.err(n.pos, format!("`network.allow_public` must be true or false, found {kind}"));
                    false
                }
            },
            None => false,
        };
        for (i, c) in allow_cidrs.iter().enumerate() {
            let pos = self.positions.get(&format!("network.allow_cidrs[{i}]"));
            match c.parse::<ipnet::IpNet>() {
                Err(_) => {
                    self.err(pos, format!("`{c}` is not a CIDR block")).expected =
                        Some("an address and prefix length, e.g. `10.20.0.0/16`".into());
                }
                Ok(net) if net.prefix_len() == 0 => {
                    self.err(pos, format!("`{c}` would open the copy of production to the whole internet")).expected =
                        Some("the CIDR of your office, VPN or CI runners, e.g. `10.20.0.0/16`".into());
                }
                Ok(net) if net.trunc() != net => {
                    self.err(pos, format!("`{c}` has host bits set")).help =
                        Some(format!("did you mean `{}`?", net.trunc()));
                }
                Ok(net) if !allow_public && !is_private_net(&net) => {
                    let d = self.err(
                        pos,
                        format!(
                            "`{c}` is not a private range: the copy of production would be reachable from the internet"
                        ),
                    );
                    d.expected =
                        Some("a range inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10".into());
                    d.help = Some(
                        "if the copy must be reachable from it (an office's public address), say so with \
                         `allow_public: true` under `network`"
                            .into(),
                    );
                }
                Ok(_) => {}
            }
        }
        self.finish(obj);
        Some(Network { vpc: vpc?, subnets, allow_cidrs, allow_public })
    }
}
