//! What a value may be: the formats of names, identifiers and versions.

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

/// An AWS resource id: the prefix (`ami-`, `vpc-`, `subnet-`) and 8 or 17 hex digits.
pub(super) fn is_aws_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// An EC2 instance type, FAMILY.SIZE (`t3.small`); RDS classes are `db.` and one.
pub(crate) fn is_instance_type(s: &str) -> bool {
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
