//! A small built-in price table for the plan's cost estimate.
//!
//! On-demand list prices (USD per hour, Linux / PostgreSQL single-AZ) in us-east-1,
//! scaled by a per-region factor. It is an estimate for a person deciding whether a
//! rehearsal is worth it, not a bill: unknown types show no price rather than a guess.

const EC2: &[(&str, f64)] = &[
    ("t3.nano", 0.0052),
    ("t3.micro", 0.0104),
    ("t3.small", 0.0208),
    ("t3.medium", 0.0416),
    ("t3.large", 0.0832),
    ("t3.xlarge", 0.1664),
    ("t3.2xlarge", 0.3328),
    ("t4g.micro", 0.0084),
    ("t4g.small", 0.0168),
    ("t4g.medium", 0.0336),
    ("t4g.large", 0.0672),
    ("m5.large", 0.096),
    ("m5.xlarge", 0.192),
    ("m6i.large", 0.096),
    ("m6i.xlarge", 0.192),
    ("m7g.large", 0.0816),
    ("c5.large", 0.085),
    ("c6i.large", 0.085),
    ("r5.large", 0.126),
    ("r6i.large", 0.126),
];

const RDS_POSTGRES: &[(&str, f64)] = &[
    ("db.t3.micro", 0.018),
    ("db.t3.small", 0.036),
    ("db.t3.medium", 0.072),
    ("db.t3.large", 0.145),
    ("db.t4g.micro", 0.016),
    ("db.t4g.small", 0.032),
    ("db.t4g.medium", 0.065),
    ("db.t4g.large", 0.129),
    ("db.m5.large", 0.178),
    ("db.m6g.large", 0.159),
    ("db.m6i.large", 0.178),
    ("db.r5.large", 0.25),
    ("db.r6g.large", 0.225),
    ("db.r6i.large", 0.25),
];

/// Approximate regional price factors relative to us-east-1.
const REGION_FACTOR: &[(&str, f64)] = &[
    ("us-east-1", 1.0),
    ("us-east-2", 1.0),
    ("us-west-2", 1.0),
    ("us-west-1", 1.17),
    ("ca-central-1", 1.08),
    ("eu-west-1", 1.09),
    ("eu-west-2", 1.14),
    ("eu-west-3", 1.15),
    ("eu-central-1", 1.15),
    ("eu-north-1", 1.04),
    ("ap-southeast-1", 1.25),
    ("ap-southeast-2", 1.25),
    ("ap-northeast-1", 1.29),
    ("ap-south-1", 1.05),
    ("sa-east-1", 1.55),
];

fn factor(region: &str) -> f64 {
    REGION_FACTOR.iter().find(|(r, _)| *r == region).map(|(_, f)| *f).unwrap_or(1.0)
}

/// Hourly price of an EC2 instance type in a region, if the table knows it.
pub fn ec2_hourly(instance_type: &str, region: &str) -> Option<f64> {
    EC2.iter().find(|(t, _)| *t == instance_type).map(|(_, p)| round(p * factor(region)))
}

/// Hourly price of an RDS PostgreSQL instance class in a region, if known.
pub fn rds_hourly(class: &str, region: &str) -> Option<f64> {
    RDS_POSTGRES.iter().find(|(t, _)| *t == class).map(|(_, p)| round(p * factor(region)))
}

fn round(p: f64) -> f64 {
    (p * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types_have_prices_and_unknown_ones_do_not() {
        assert_eq!(ec2_hourly("t3.small", "us-east-1"), Some(0.0208));
        assert!(ec2_hourly("t3.small", "eu-west-1").unwrap() > 0.0208);
        assert_eq!(rds_hourly("db.t3.medium", "us-east-1"), Some(0.072));
        assert_eq!(ec2_hourly("x9.huge", "us-east-1"), None);
    }
}
