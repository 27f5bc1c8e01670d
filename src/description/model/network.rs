//! `network:`: the existing network an AWS copy is placed in, and what counts as private.

use schemars::JsonSchema;
use serde::Serialize;

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
