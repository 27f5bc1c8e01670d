//! What a value may be, and which values fit together: the formats of names,
//! identifiers and versions, and what each provider requires of a description and
//! refuses in it.
//!
//! The provider rules are where a description gets its typed [`Target`]s: an aws
//! service has an AMI and an instance type, a local one a command. A required key that
//! is missing is reported, and an empty value stands in for it, so that the checks
//! needing the whole description still run and every problem of the file is reported
//! at once; a description with a problem never leaves [`crate::description::load`].
//! These problems are held back until every part of the description decoded (see
//! [`Decoder::description`]).

use std::path::PathBuf;

use super::Decoder;
use crate::description::model::*;
use crate::diag::Diagnostic;

/// The keys of a service that belong to one provider, as read.
pub(super) struct ServiceKeys {
    pub image: Option<String>,
    pub instance_type: Option<String>,
    pub user_data: Option<PathBuf>,
    pub instance_profile: Option<String>,
    pub bootstrap_timeout: Option<std::time::Duration>,
    pub command: Option<String>,
    pub restart: Option<RestartPolicy>,
    pub has_health: bool,
    pub port: Option<u16>,
}

impl Decoder {
    pub(super) fn rule_err(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.positions.get(path);
        self.held_back.push(Diagnostic::new(pos, message));
        self.held_back.last_mut().expect("just pushed")
    }

    /// A problem with a key as a whole (that it is there, or what it lacks), at the key.
    fn rule_key_err(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.positions.key(path);
        self.held_back.push(Diagnostic::new(pos, message));
        self.held_back.last_mut().expect("just pushed")
    }

    /// The description's target: the region and network an aws copy needs, or the
    /// refusal of both on the local provider.
    pub(super) fn target(
        &mut self,
        provider: ProviderKind,
        region: Option<String>,
        network: Option<Network>,
    ) -> Target {
        match provider {
            ProviderKind::Aws => {
                let region = match region {
                    None => {
                        self.rule_err("provider", "the aws provider needs a `region`").expected =
                            Some("e.g. `region: eu-west-1`".into());
                        String::new()
                    }
                    Some(r) => {
                        if !is_region(&r) {
                            self.rule_err("region", format!("`{r}` is not an AWS region name")).expected =
                                Some("e.g. `eu-west-1` or `us-east-1`".into());
                        }
                        r
                    }
                };
                let network = network.unwrap_or_else(|| {
                    self.rule_err(
                        "provider",
                        "the aws provider needs a `network` (the VPC and subnets to place the copy in)",
                    )
                    .expected = Some("`network: {vpc: vpc-..., subnets: [subnet-..., subnet-...]}`".into());
                    Network { vpc: String::new(), subnets: Vec::new(), allow_cidrs: Vec::new(), allow_public: false }
                });
                Target::Aws(AwsTarget { region, network })
            }
            ProviderKind::Local => {
                for (key, set) in [("region", region.is_some()), ("network", network.is_some())] {
                    if set {
                        self.rule_key_err(key, format!("`{key}` has no meaning for the local provider")).help =
                            Some("remove it, or use `provider: aws`".into());
                    }
                }
                Target::Local
            }
        }
    }

    /// What service `name` runs on: an AMI and an instance type on aws, a command on
    /// the local provider.
    pub(super) fn service_target(&mut self, provider: ProviderKind, name: &str, keys: ServiceKeys) -> ServiceTarget {
        let p = format!("services.{name}");
        match provider {
            ProviderKind::Aws => {
                let image = keys.image.unwrap_or_else(|| {
                    self.rule_key_err(&p, format!("service `{name}` needs an `image` (AMI id) on aws")).expected =
                        Some("e.g. `image: ami-0abcdef1234567890`".into());
                    String::new()
                });
                let instance_type = keys.instance_type.unwrap_or_else(|| {
                    self.rule_key_err(&p, format!("service `{name}` needs an `instance_type` on aws")).expected =
                        Some("e.g. `instance_type: t3.small`".into());
                    String::new()
                });
                if keys.command.is_some() {
                    self.rule_key_err(&format!("{p}.command"), "`command` is for the local provider").help =
                        Some("on aws the instance starts the service from its `user_data`".into());
                }
                if keys.restart.is_some() {
                    self.rule_key_err(&format!("{p}.restart"), "`restart` is for the local provider").help =
                        Some("on aws the instance's own init (its `user_data`) restarts its service".into());
                }
                if keys.has_health && keys.port.is_none() {
                    self.rule_key_err(
                        &format!("{p}.health"),
                        format!("service `{name}` has a health check but no `port`"),
                    )
                    .expected = Some("the port the service listens on, e.g. `port: 8080`".into());
                }
                ServiceTarget::Aws(AwsService {
                    image,
                    instance_type,
                    user_data: keys.user_data,
                    instance_profile: keys.instance_profile,
                    bootstrap_timeout: keys.bootstrap_timeout,
                })
            }
            ProviderKind::Local => {
                let command = keys.command.unwrap_or_else(|| {
                    self.rule_key_err(&p, format!("service `{name}` needs a `command` on the local provider"))
                        .expected = Some("the command that starts it, e.g. `command: python3 app.py`".into());
                    String::new()
                });
                for (key, set) in [
                    ("image", keys.image.is_some()),
                    ("instance_type", keys.instance_type.is_some()),
                    ("user_data", keys.user_data.is_some()),
                    ("instance_profile", keys.instance_profile.is_some()),
                    ("bootstrap_timeout", keys.bootstrap_timeout.is_some()),
                ] {
                    if set {
                        self.rule_key_err(&format!("{p}.{key}"), format!("`{key}` is for the aws provider")).help =
                            Some("on the local provider a service runs `command` in the unpacked release".into());
                    }
                }
                ServiceTarget::Local(LocalService { command, restart: keys.restart.unwrap_or_default() })
            }
        }
    }

    /// What database `name` is restored into, and whether its source and restore mode
    /// fit the provider and each other.
    pub(super) fn database_target(
        &mut self,
        provider: ProviderKind,
        name: &str,
        source: &DatabaseSource,
        restore: RestoreMode,
        instance_class: Option<String>,
        pool: Option<Pool>,
    ) -> DatabaseTarget {
        let p = format!("databases.{name}");
        let aws_source = source.provider() == ProviderKind::Aws;
        let target = match provider {
            ProviderKind::Aws => {
                if !aws_source {
                    let key = source.key();
                    self.rule_key_err(
                        &format!("{p}.source.{key}"),
                        format!("`{key}` is a local source; on aws a database is restored from `rds_instance` or `aurora_cluster`"),
                    );
                }
                let instance_class = match instance_class {
                    None => {
                        self.rule_key_err(&p, format!("database `{name}` needs an `instance_class` on aws")).expected =
                            Some("e.g. `instance_class: db.t3.medium`".into());
                        String::new()
                    }
                    Some(c) => {
                        if !c.strip_prefix("db.").is_some_and(is_instance_type) {
                            self.rule_err(
                                &format!("{p}.instance_class"),
                                format!("`{c}` is not an RDS instance class"),
                            )
                            .expected = Some("`db.` FAMILY.SIZE, e.g. `db.t3.medium`".into());
                        }
                        c
                    }
                };
                if pool.is_some()
                    && !(restore == RestoreMode::NewestSnapshot && matches!(source, DatabaseSource::RdsInstance(_)))
                {
                    self.rule_key_err(
                        &format!("{p}.pool"),
                        "a pool holds copies of a snapshot: it needs an `rds_instance` source restored from its `newest-snapshot`",
                    );
                }
                DatabaseTarget::Aws(AwsDatabase { instance_class, pool })
            }
            ProviderKind::Local => {
                if aws_source {
                    let key = source.key();
                    self.rule_key_err(
                        &format!("{p}.source.{key}"),
                        format!("`{key}` is an AWS source; on the local provider a database is restored from `backup_dir` or `url`"),
                    );
                }
                if instance_class.is_some() {
                    self.rule_key_err(&format!("{p}.instance_class"), "`instance_class` is for the aws provider");
                }
                if pool.is_some() {
                    self.rule_key_err(&format!("{p}.pool"), "`pool` is for the aws provider").help =
                        Some("locally, `rehearse warm` keeps a golden copy that runs copy in constant time".into());
                }
                DatabaseTarget::Local
            }
        };
        let source_ok = match (restore, source) {
            (RestoreMode::AuroraClone, DatabaseSource::AuroraCluster(_)) => true,
            (RestoreMode::AuroraClone, _) => false,
            (_, DatabaseSource::AuroraCluster(_)) => false,
            (RestoreMode::LatestRestorableTime, DatabaseSource::RdsInstance(_)) => true,
            (RestoreMode::LatestRestorableTime, _) => false,
            (RestoreMode::NewestSnapshot, _) => true,
        };
        if !source_ok {
            let expected = match source {
                DatabaseSource::AuroraCluster(_) => "`aurora-clone` for an `aurora_cluster` source",
                DatabaseSource::RdsInstance(_) => {
                    "`newest-snapshot` or `latest-restorable-time` for an `rds_instance` source"
                }
                _ => "`newest-snapshot` for a local source",
            };
            self.rule_err(
                &format!("{p}.restore"),
                format!("restore mode `{}` does not fit a `{}` source", restore.as_str(), source.key()),
            )
            .expected = Some(expected.into());
        }
        target
    }
}

/// Why a value breaks the format its key requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("names are 1 to 32 lowercase letters, digits, `-` or `_`, starting with a letter")]
    Identifier,
    #[error("variable names are letters, digits and `_`, not starting with a digit")]
    Variable,
    #[error("environment variable names are letters, digits and `_`, not starting with a digit")]
    EnvVar,
    #[error("tag keys are 1 to 128 characters")]
    TagLength,
    #[error("the `aws:` and `rehearse:` prefixes are reserved")]
    ReservedTag,
    #[error("1 to 63 letters, digits or hyphens, starting with a letter, without `--` or a trailing `-`")]
    RdsIdentifier,
    #[error("versions are 1 to 64 letters, digits, `.`, `-`, `_` or `+`")]
    Version,
    #[error("`.` and `..` are not versions (they would name a directory, not a release)")]
    DotVersion,
}

/// Rules for names written by the user as mapping keys.
#[derive(Clone, Copy)]
pub enum KeyRule {
    /// Environment, service, database and suite names: they end up in resource names,
    /// tags and environment variable names.
    Identifier,
    /// Template variable names: usable as `{{ vars.NAME }}`.
    Variable,
    /// Environment variable names.
    EnvVar,
    /// AWS tag keys; `aws:` and `rehearse:` are reserved.
    Tag,
}

impl KeyRule {
    pub fn check(self, name: &str) -> Result<(), FormatError> {
        match self {
            KeyRule::Identifier => {
                let ok = name.len() <= 32
                    && name.starts_with(|c: char| c.is_ascii_lowercase())
                    && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
                    && !name.ends_with(['-', '_']);
                ok.then_some(()).ok_or(FormatError::Identifier)
            }
            KeyRule::Variable | KeyRule::EnvVar => {
                let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                let error = if matches!(self, KeyRule::Variable) { FormatError::Variable } else { FormatError::EnvVar };
                ok.then_some(()).ok_or(error)
            }
            KeyRule::Tag => {
                if name.is_empty() || name.chars().count() > 128 {
                    Err(FormatError::TagLength)
                } else if name.to_ascii_lowercase().starts_with("aws:") || name.starts_with("rehearse:") {
                    Err(FormatError::ReservedTag)
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// An IAM instance profile: its name (IAM's `[\w+=,.@-]{1,128}`), or its ARN
/// (`arn:PARTITION:iam::ACCOUNT:instance-profile/PATH/NAME`).
pub(super) fn is_instance_profile(s: &str) -> bool {
    let name_ok =
        |n: &str| (1..=128).contains(&n.len()) && n.chars().all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    match s.strip_prefix("arn:") {
        None => name_ok(s),
        Some(rest) => {
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            matches!(parts.as_slice(), [partition, "iam", "", account, resource]
                if partition.starts_with("aws")
                    && account.len() == 12
                    && account.chars().all(|c| c.is_ascii_digit())
                    && resource
                        .strip_prefix("instance-profile/")
                        .is_some_and(|p| p.split('/').all(|seg| !seg.is_empty() && name_ok(seg))))
        }
    }
}

/// An AWS resource id: the prefix (`ami-`, `vpc-`, `subnet-`) and 8 or 17 hex digits.
pub(super) fn is_aws_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// An EC2 instance type, FAMILY.SIZE (`t3.small`); RDS classes are `db.` and one.
pub(super) fn is_instance_type(s: &str) -> bool {
    let Some((family, size)) = s.split_once('.') else {
        return false;
    };
    !family.is_empty()
        && family.starts_with(|c: char| c.is_ascii_lowercase())
        && family.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && family.chars().any(|c| c.is_ascii_digit())
        && !size.is_empty()
        && size.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1..parts.len() - 1].iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok()
}

/// RDS identifiers: 1–63 letters, digits or hyphens, starting with a letter, no double
/// or trailing hyphen.
pub fn check_rds_identifier(s: &str) -> Result<(), FormatError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.ends_with('-')
        && !s.contains("--");
    ok.then_some(()).ok_or(FormatError::RdsIdentifier)
}

/// A release version ends up in tags, paths and user-data: keep it to a safe alphabet.
pub fn check_version(v: &str) -> Result<(), FormatError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if !ok {
        return Err(FormatError::Version);
    }
    // A version lands in paths (`releases/{{ release.version }}`): `.` or `..` there
    // would point at the releases directory or its parent.
    if v == "." || v == ".." {
        return Err(FormatError::DotVersion);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::description::decode::Decoder;
    use crate::description::model::*;
    use crate::description::yaml;

    fn decode(text: &str) -> (Option<Description>, Vec<String>) {
        let mut decoder = Decoder::new();
        let desc = decoder.description(&yaml::parse(text).unwrap());
        (desc, decoder.diags.into_iter().map(|d| d.message).collect())
    }

    const AWS: &str = "name: shop\nprovider: aws\nregion: eu-west-1\nowner: o\nrelease: {artifact: a}\n\
                       network: {vpc: vpc-0a1b2c3d, subnets: [subnet-0a1b2c3d]}\n\
                       databases: {db: {name: shop, source: {rds_instance: prod}, instance_class: db.t3.small}}\n\
                       services: {web: {image: ami-0a1b2c3d, instance_type: t3.small, user_data: u.sh}}\n";

    #[test]
    fn an_aws_description_has_its_aws_parts_typed() {
        let (desc, problems) = decode(AWS);
        assert!(problems.is_empty(), "{problems:?}");
        let desc = desc.unwrap();
        assert_eq!((desc.provider(), desc.region()), (ProviderKind::Aws, Some("eu-west-1")));
        assert_eq!(desc.network().map(|n| n.vpc.as_str()), Some("vpc-0a1b2c3d"));
        let web = desc.services["web"].aws().unwrap();
        assert_eq!((web.image.as_str(), web.instance_type.as_str()), ("ami-0a1b2c3d", "t3.small"));
        assert_eq!(desc.services["web"].command(), None);
        assert_eq!(desc.databases["db"].instance_class(), Some("db.t3.small"));
    }

    /// A missing provider key is reported and the description still comes back, so the
    /// checks that need all of it run too; but only once every part decoded.
    #[test]
    fn what_a_provider_requires_is_reported_once_the_rest_decoded() {
        let (desc, problems) = decode(&AWS.replace("region: eu-west-1\n", ""));
        assert!(desc.is_some_and(|d| d.region() == Some("")));
        assert_eq!(problems, ["the aws provider needs a `region`"]);

        let broken = AWS.replace("region: eu-west-1\n", "").replace("owner: o\n", "");
        let (desc, problems) = decode(&broken);
        assert!(desc.is_none());
        assert_eq!(problems, ["missing required key `owner` in the description"]);
    }
}
