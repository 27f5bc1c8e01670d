//! The typed values of the command line: each argument is parsed once, here, by the
//! `value_parser` clap calls, so a bad value is a usage error (exit 2) that names the
//! argument, and the commands receive durations within their bounds and checked names.

use std::ffi::OsStr;
use std::fmt;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

use crate::description::decode::{FormatError, KeyRule};
use crate::description::{bounded_duration, DurationError, MAX_DRAIN, MAX_MAX_TTL};

/// A value parser from a function; its error is said as the function words it, after
/// clap's `error: ` and before clap's usage line.
pub struct Said<T, E>(pub fn(&str) -> Result<T, E>);

// By hand: a derive would ask `T` and `E` to be `Clone` too.
impl<T, E> Clone for Said<T, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, E> Copy for Said<T, E> {}

impl<T, E> TypedValueParser for Said<T, E>
where
    T: Clone + Send + Sync + 'static,
    E: fmt::Display + 'static,
{
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, _arg: Option<&clap::Arg>, value: &OsStr) -> Result<T, clap::Error> {
        let Some(text) = value.to_str() else {
            return Err(clap::Error::new(ErrorKind::InvalidUtf8).with_cmd(cmd));
        };
        (self.0)(text).map_err(|e| clap::Error::raw(ErrorKind::ValueValidation, e).format(&mut cmd.clone()))
    }
}

/// A name as a description's names are (letters, digits, `-`, `_`): a lock's, a
/// stage's, a run's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a name was refused, said with what it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("lock name `{0}`: {1}")]
    Lock(String, FormatError),
    #[error("`{0}` is not a stage name: {1}")]
    Stage(String, FormatError),
    #[error("--name `{0}`: {1}")]
    Run(String, FormatError),
}

fn name(text: &str, refused: fn(String, FormatError) -> NameError) -> Result<Name, NameError> {
    match KeyRule::Identifier.check(text) {
        Ok(()) => Ok(Name(text.to_string())),
        Err(why) => Err(refused(text.to_string(), why)),
    }
}

/// `lock NAME`, `unlock NAME`.
pub fn lock_name(text: &str) -> Result<Name, NameError> {
    name(text, NameError::Lock)
}

/// `stage status|rollback|destroy|env STAGE`.
pub fn stage_name(text: &str) -> Result<Name, NameError> {
    name(text, NameError::Stage)
}

/// `run|up --name NAME`.
pub fn run_name(text: &str) -> Result<Name, NameError> {
    name(text, NameError::Run)
}

/// What a run is called on the command line: its id, or the name of a live run (`up
/// --name`), resolved among the runs the store has. A name is not checked here: one
/// no run claims is said as such when it is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunRef {
    Id(String),
    Name(String),
}

/// A run id (the generated shape) or else a name; never refused.
pub fn run_ref(text: &str) -> Result<RunRef, std::convert::Infallible> {
    Ok(match crate::sys::state::valid_run_id(text) {
        true => RunRef::Id(text.to_string()),
        false => RunRef::Name(text.to_string()),
    })
}

/// `lock --lease`: from [`crate::engine::store::lock::MIN_LEASE`] to `MAX_LEASE`.
pub fn lease(text: &str) -> Result<Duration, DurationError> {
    use crate::engine::store::lock::{MAX_LEASE, MIN_LEASE};
    bounded_duration("--lease", text, MIN_LEASE, MAX_LEASE)
}

/// `sweep --older-than`: from nothing to ten years (older is older than rehearse).
pub fn older_than(text: &str) -> Result<Duration, DurationError> {
    bounded_duration("--older-than", text, Duration::ZERO, Duration::from_secs(3650 * 86400))
}

/// `extend RUN DURATION`: at most the longest `max_ttl` a description may set (more
/// could never be allowed).
pub fn extension(text: &str) -> Result<Duration, DurationError> {
    bounded_duration("extend", text, Duration::from_secs(1), MAX_MAX_TTL)
}

/// `rebuild --drain`: up to the longest drain a stage may set.
pub fn drain(text: &str) -> Result<Duration, DurationError> {
    bounded_duration("--drain", text, Duration::ZERO, MAX_DRAIN)
}

/// Why `--change` was refused.
#[derive(Debug, thiserror::Error)]
#[error("--change {0}: {1}")]
pub struct ChangeFieldError(String, String);

/// `--change KEY=VALUE`: one field of the change rehearsed, checked by its grammar.
pub fn change_field(text: &str) -> Result<(String, String), ChangeFieldError> {
    use crate::report::model::Change;
    let err = |why: &str| ChangeFieldError(text.to_string(), why.to_string());
    let (k, v) = text.split_once('=').ok_or_else(|| err("not KEY=VALUE (commit, author, pr, title or url)"))?;
    let mut c = Change::default();
    match k {
        "commit" => c.commit = Some(v.to_string()),
        "author" => c.author = Some(v.to_string()),
        "pr" => c.pull_request = Some(v.parse().map_err(|_| err("pr is a pull request's number"))?),
        "title" => c.title = Some(v.to_string()),
        "url" => c.url = Some(v.to_string()),
        _ => return Err(err("the keys are commit, author, pr, title and url")),
    }
    c.check().map_err(|why| err(&why.replace("its change's ", "the ")))?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_or_refused_with_their_argument_named() {
        assert_eq!(lease("90s").unwrap(), Duration::from_secs(90));
        assert!(lease("300000y").unwrap_err().to_string().starts_with("--lease 300000y: out of range"));
        assert_eq!(lock_name("ci").unwrap().as_str(), "ci");
        assert!(lock_name("Bad!").unwrap_err().to_string().starts_with("lock name `Bad!`: "));
        assert!(stage_name("x/y").unwrap_err().to_string().starts_with("`x/y` is not a stage name: "));
        assert_eq!(run_ref("r-20261125-164001-7f3a9c").unwrap(), RunRef::Id("r-20261125-164001-7f3a9c".into()));
        assert_eq!(run_ref("shop").unwrap(), RunRef::Name("shop".into()));
    }
}
