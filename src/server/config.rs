//! The server's configuration file (`rehearse serve --config FILE`, YAML): where the
//! descriptions are, how many rehearsals run at once, who is who (the authenticating
//! proxy's header and its addresses, personal API tokens by their SHA-256) and who may
//! do what on which environment.
//!
//! ```yaml
//! listen: 127.0.0.1:8080          # the default
//! environments: ../environments   # relative to this file
//! # or a checkout the server keeps, `environments` then a directory in it:
//! # git: { url: https://git.example.com/ops/descriptions.git, branch: main, every: 5m }
//! max_running: 2                  # rehearsals at once; the rest wait in the queue
//! changes_per_minute: 30          # requests one user may make in a minute
//! proxy:
//!   header: X-Forwarded-User      # oauth2-proxy's; an ALB's is X-Amzn-Oidc-Identity
//!   trusted: [127.0.0.1]          # the header is believed from these addresses only
//! tokens:                         # `rehearse serve --new-token USER` prints an entry
//!   - user: ci
//!     sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! admins: [alice]
//! store: s3://team-state/rehearse  # replicas share it (else the state directory)
//! lease: 60s                      # a dead replica's runs are taken over after it
//! csrf_key_file: /etc/rehearse/csrf.key  # replicas share it (else made in the state dir)
//! rules:                          # per environment; `"*"` is every environment
//!   "*": { rehearse: ["*"], max_per_user: 3 }
//!   shop-aws: { rehearse: [alice, ci], keep: [alice], compare: [alice], max_ttl: 4h }
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::requests::{valid_environment, valid_user};

/// The most bytes of a configuration file read.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The directory of descriptions offered (`NAME.yaml` is the environment NAME); with
    /// `git`, the directory in its checkout (default: its top).
    #[serde(default)]
    pub environments: PathBuf,
    /// A Git repository whose checkout the server keeps (cloned at start, pulled every
    /// `every`) and offers the descriptions of, instead of a directory of its own.
    #[serde(default)]
    pub git: Option<Git>,
    #[serde(default = "default_max_running")]
    pub max_running: usize,
    /// The most changes (requests for a rehearsal) one user may ask for in a minute.
    #[serde(default = "default_changes_per_minute")]
    pub changes_per_minute: usize,
    #[serde(default)]
    pub proxy: Option<Proxy>,
    #[serde(default)]
    pub tokens: Vec<Token>,
    #[serde(default)]
    pub admins: Vec<String>,
    #[serde(default)]
    pub rules: BTreeMap<String, Rule>,
    /// A state store the server's replicas share (`s3://BUCKET/PREFIX`): requests, the
    /// audit log, the runs' journals and leases. Without it, the server's own state
    /// directory (one server).
    #[serde(default)]
    pub store: Option<String>,
    /// How long a run's lease in the shared store lasts unrenewed: a replica that dies
    /// has its runs torn down by another this long after (default 60s).
    #[serde(default, deserialize_with = "lease")]
    pub lease: Option<std::time::Duration>,
    /// The key of the CSRF tokens, a file of at least 32 random bytes (mode 0600), the
    /// same for every replica so that a page from one is accepted by another. Without
    /// it, a key made in the state directory (one server).
    #[serde(default)]
    pub csrf_key_file: Option<PathBuf>,
    /// The server's address as its users reach it (through the proxy): the links in
    /// callbacks, comments and messages (default: `http://` and `listen`).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Generic webhooks: `POST /hooks/NAME`, signed with the hook's secret.
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// Pull requests: GitHub's webhook at `POST /hooks/github`, and the API it reports
    /// back through.
    #[serde(default)]
    pub github: Option<GitHub>,
    /// Chat: Slack's slash command at `POST /hooks/slack`, its buttons at
    /// `POST /hooks/slack/actions`.
    #[serde(default)]
    pub slack: Option<Slack>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slack {
    /// The app's signing secret (its requests' `v0` signatures), a file (0600).
    pub signing_secret_file: PathBuf,
    /// Slack user id → the rehearse user whose rules apply; anyone else is refused.
    pub users: BTreeMap<String, String>,
    /// Where a command's `response_url` may point (default `https://hooks.slack.com/`).
    #[serde(default = "default_slack_responses")]
    pub response_urls: String,
}

fn default_slack_responses() -> String {
    "https://hooks.slack.com/".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHub {
    /// The REST API's base (GitHub Enterprise: `https://HOST/api/v3`).
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// The webhook's secret (`X-Hub-Signature-256`), a file (0600).
    pub webhook_secret_file: PathBuf,
    /// A token's file (a fine-grained personal or bot token), or else `app`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A GitHub App: its id and private key (PEM, 0600); the installation from the
    /// event, unless named.
    #[serde(default)]
    pub app: Option<GitHubApp>,
    /// `OWNER/NAME` → what its pull requests rehearse.
    pub repositories: BTreeMap<String, Repository>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubApp {
    pub id: u64,
    pub private_key_file: PathBuf,
    #[serde(default)]
    pub installation_id: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// The environment its pull requests rehearse.
    pub environment: String,
    /// The label that asks for a rehearsal (default `rehearse`).
    #[serde(default = "default_label")]
    pub label: String,
    /// The release a pull request is: `{head_ref}` (its branch, the default),
    /// `{head_sha}`, `{number}`, or text around them (`pr-{number}`).
    #[serde(default = "default_release_template")]
    pub release: String,
    /// What `/rehearse compare` compares against, unless the comment names it.
    #[serde(default)]
    pub baseline: Option<String>,
    /// Who may ask, by login or team (`@ORG/TEAM`); the environment's rules apply too.
    #[serde(default)]
    pub users: Vec<String>,
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

fn default_label() -> String {
    "rehearse".into()
}

fn default_release_template() -> String {
    "{head_ref}".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Its name: its URL is `/hooks/NAME`.
    pub name: String,
    /// A file of the hook's secret (at least 32 bytes, mode 0600; relative to this
    /// file): the HMAC-SHA256 key of its deliveries' signatures and its callbacks'.
    pub secret_file: PathBuf,
    /// Whose rules its requests follow (the audit log names it).
    pub user: String,
    /// How far a delivery's timestamp may be from now (default 5m).
    #[serde(default, deserialize_with = "tolerance")]
    pub tolerance: Option<std::time::Duration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Git {
    /// What `git clone` takes (`https://…`, `git@…:…`, `file:///…`).
    pub url: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// How often it is pulled (default 5m).
    #[serde(default, deserialize_with = "every")]
    pub every: Option<std::time::Duration>,
}

fn default_branch() -> String {
    "main".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    pub header: String,
    pub trusted: Vec<IpAddr>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub user: String,
    /// The token's SHA-256, lowercase hex: the token itself is never stored.
    pub sha256: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Who may rehearse a release here: user names, or `"*"` for everyone identified.
    #[serde(default)]
    pub rehearse: Option<Vec<String>>,
    /// Who may keep a dry run here (default: who may rehearse).
    #[serde(default)]
    pub keep: Option<Vec<String>>,
    /// Who may compare two releases here (default: who may rehearse).
    #[serde(default)]
    pub compare: Option<Vec<String>>,
    /// The longest a dry run may be kept here, from its start, extensions included
    /// (`2h`, `1d`; default: the description's `max_ttl`).
    #[serde(default, deserialize_with = "max_ttl")]
    pub max_ttl: Option<std::time::Duration>,
    /// The most environments of one user at once: requests queued or running, and dry
    /// runs kept.
    #[serde(default)]
    pub max_per_user: Option<usize>,
}

/// A duration of the file (`2h`, `5m`) within its bounds, refused with them named.
fn bounded<'de, D: serde::Deserializer<'de>>(
    d: D,
    what: &str,
    min: Duration,
    max: Duration,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    crate::description::bounded_duration(what, &text, min, max).map(Some).map_err(serde::de::Error::custom)
}

fn tolerance<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    bounded(d, "tolerance", Duration::from_secs(1), Duration::from_secs(3600))
}

fn lease<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    use crate::engine::store::lock::{MAX_LEASE, MIN_LEASE};
    bounded(d, "lease", MIN_LEASE, MAX_LEASE)
}

fn every<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    bounded(d, "git.every", Duration::from_secs(1), Duration::from_secs(86400))
}

fn max_ttl<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    bounded(d, "max_ttl", Duration::from_secs(60), crate::description::MAX_MAX_TTL)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_running() -> usize {
    2
}

fn default_changes_per_minute() -> usize {
    30
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: larger than 1 MiB, the most rehearse reads of a server's configuration", .path.display())]
    TooLarge { path: PathBuf },
    #[error("{}{}: {message}", .path.display(), .at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Invalid { path: PathBuf, at: Option<(u64, u64)>, message: String },
}

impl Config {
    /// Reads and checks `path`; `environments` becomes absolute (relative to the file).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read = |source| ConfigError::Read { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_BYTES + 1), &mut text).map_err(read)?;
        if text.len() as u64 > MAX_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_path_buf() });
        }
        let invalid = |at, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            at,
            message: crate::sys::text::printable(&message),
        };
        let mut config: Config = serde_saphyr::from_str(&text).map_err(|e| {
            use serde_saphyr::MessageFormatter;
            let at = e.location().map(|l| (l.line(), l.column()));
            // The message without its position (said once, as FILE:LINE:COLUMN).
            let mut inner = &e;
            while let serde_saphyr::Error::WithSnippet { error, .. } = inner {
                inner = error;
            }
            let message = serde_saphyr::DefaultMessageFormatter.format_message(inner);
            invalid(at, message.lines().next().unwrap_or_default().to_string())
        })?;
        config.check().map_err(|m| invalid(None, m))?;
        let base = path.parent().unwrap_or(Path::new("."));
        // With `git`, `environments` is a path in the checkout (made absolute at start).
        if config.git.is_none() && config.environments.is_relative() {
            config.environments = base.join(&config.environments);
        }
        if let Some(key) = config.csrf_key_file.as_mut().filter(|k| k.is_relative()) {
            *key = base.join(&*key);
        }
        if let Some(g) = config.github.as_mut() {
            for f in [
                Some(&mut g.webhook_secret_file),
                g.token_file.as_mut(),
                g.app.as_mut().map(|a| &mut a.private_key_file),
            ]
            .into_iter()
            .flatten()
            {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
        if let Some(sl) = config.slack.as_mut() {
            if sl.signing_secret_file.is_relative() {
                sl.signing_secret_file = base.join(&sl.signing_secret_file);
            }
        }
        for h in &mut config.hooks {
            if h.secret_file.is_relative() {
                h.secret_file = base.join(&h.secret_file);
            }
        }
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        match &self.git {
            None if self.environments.as_os_str().is_empty() => {
                return Err("environments: name the directory of descriptions offered (or a `git:` repository)".into())
            }
            Some(g) => {
                if g.url.is_empty() || g.url.starts_with('-') || g.url.chars().any(char::is_control) {
                    return Err(format!("git.url: {:?} is not a repository's URL", g.url));
                }
                let ok = |c: char| c.is_ascii_alphanumeric() || "._/-".contains(c);
                if g.branch.is_empty() || g.branch.starts_with('-') || !g.branch.chars().all(ok) {
                    return Err(format!("git.branch: {:?} is not a branch name", g.branch));
                }
                if self.environments.is_absolute()
                    || self.environments.components().any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(
                        "environments: with `git`, a directory inside the checkout (like `environments`)".into()
                    );
                }
            }
            None => {}
        }
        if self.max_running == 0 || self.max_running > 256 {
            return Err(format!("max_running: {} is not between 1 and 256", self.max_running));
        }
        if let Some(p) = &self.proxy {
            if axum::http::HeaderName::from_bytes(p.header.as_bytes()).is_err() {
                return Err(format!("proxy.header: {:?} is not a header name", p.header));
            }
            if p.trusted.is_empty() {
                return Err("proxy.trusted: name the proxy's addresses (the header is believed from them only)".into());
            }
        }
        for t in &self.tokens {
            if !valid_user(&t.user) {
                return Err(format!("tokens: {:?} is not a user name", t.user));
            }
            if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
                return Err(format!("tokens: the sha256 of {} is not 64 lowercase hex digits", t.user));
            }
        }
        if let Some(url) = &self.store {
            match crate::sys::state::StateUrl::parse(url) {
                Ok(crate::sys::state::StateUrl::S3 { .. }) if self.csrf_key_file.is_none() => {
                    return Err(
                        "store: replicas share their CSRF key: name a csrf_key_file (`head -c 32 /dev/urandom`, mode 0600) \
                         that every replica reads"
                            .into(),
                    )
                }
                Ok(crate::sys::state::StateUrl::S3 { .. }) => {}
                Ok(_) => {
                    return Err(format!("store: {url:?}: replicas share an s3:// store; without one, leave it out"))
                }
                Err(e) => return Err(format!("store: {e}")),
            }
        }
        if let Some(u) = &self.public_url {
            if !crate::engine::requests::valid_url(u) {
                return Err(format!("public_url: {u:?} is not an http(s) URL"));
            }
        }
        for (i, h) in self.hooks.iter().enumerate() {
            if !valid_environment(&h.name) || h.name == "github" || h.name == "slack" {
                return Err(format!(
                    "hooks[{i}].name: {:?} is not a hook's name (a-z, 0-9, - and _; not github or slack)",
                    h.name
                ));
            }
            if !valid_user(&h.user) {
                return Err(format!("hooks[{i}].user: {:?} is not a user name", h.user));
            }
            if self.hooks[..i].iter().any(|o| o.name == h.name) {
                return Err(format!("hooks[{i}].name: {} is named twice", h.name));
            }
        }
        if let Some(g) = &self.github {
            if !crate::engine::requests::valid_url(&g.api_url) {
                return Err(format!("github.api_url: {:?} is not an http(s) URL", g.api_url));
            }
            if g.token_file.is_some() == g.app.is_some() {
                return Err("github: name either a token_file or an app (id, private_key_file)".into());
            }
            for (repo, r) in &g.repositories {
                if !super::github::valid_repo(repo) {
                    return Err(format!("github.repositories: {repo:?} is not OWNER/NAME"));
                }
                if !valid_environment(&r.environment) {
                    return Err(format!(
                        "github.repositories.{repo}.environment: {:?} is not an environment's name",
                        r.environment
                    ));
                }
                for u in &r.users {
                    let team = u.strip_prefix('@').and_then(|t| t.split_once('/'));
                    let ok = match team {
                        Some((org, slug)) => valid_user(org) && valid_user(slug),
                        None => valid_user(u),
                    };
                    if !ok {
                        return Err(format!("github.repositories.{repo}.users: {u:?} is not a login or @ORG/TEAM"));
                    }
                }
            }
        }
        if let Some(sl) = &self.slack {
            if !crate::engine::requests::valid_url(&sl.response_urls) || !sl.response_urls.ends_with('/') {
                return Err(format!("slack.response_urls: {:?} is not an http(s) URL ending in /", sl.response_urls));
            }
            for (id, user) in &sl.users {
                if !super::slack::valid_slack_id(id) || !valid_user(user) {
                    return Err(format!("slack.users: {id:?}: {user:?} is not a Slack user id and a user name"));
                }
            }
        }
        for a in &self.admins {
            if !valid_user(a) {
                return Err(format!("admins: {a:?} is not a user name"));
            }
        }
        for (env, rule) in &self.rules {
            if env != "*" && !valid_environment(env) {
                return Err(format!("rules: {env:?} is not an environment's name"));
            }
            for (what, users) in [("rehearse", &rule.rehearse), ("keep", &rule.keep), ("compare", &rule.compare)] {
                for u in users.iter().flatten() {
                    if u != "*" && !valid_user(u) {
                        return Err(format!("rules.{env}.{what}: {u:?} is not a user name"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The rule for `environment`: its own, else `"*"`'s, else nobody may.
    pub fn rule(&self, environment: &str) -> Rule {
        let own = self.rules.get(environment);
        let any = self.rules.get("*");
        let rehearse = own.and_then(|r| r.rehearse.clone()).or_else(|| any.and_then(|r| r.rehearse.clone()));
        Rule {
            keep: own.and_then(|r| r.keep.clone()).or_else(|| any.and_then(|r| r.keep.clone())).or(rehearse.clone()),
            compare: own
                .and_then(|r| r.compare.clone())
                .or_else(|| any.and_then(|r| r.compare.clone()))
                .or(rehearse.clone()),
            rehearse,
            max_ttl: own.and_then(|r| r.max_ttl).or_else(|| any.and_then(|r| r.max_ttl)),
            max_per_user: own.and_then(|r| r.max_per_user).or_else(|| any.and_then(|r| r.max_per_user)),
        }
    }
}

impl Rule {
    /// Whether `user` may rehearse a release, and if not, why.
    pub fn may_rehearse(&self, user: &str, environment: &str) -> Result<(), String> {
        may(&self.rehearse, "rehearse", user, environment)
    }

    /// Whether `user` may keep a dry run, and if not, why.
    pub fn may_keep(&self, user: &str, environment: &str) -> Result<(), String> {
        may(&self.keep, "keep", user, environment)
            .map_err(|why| why.replace("may not keep on", "may not keep a dry run on"))
    }
}

impl Rule {
    /// Whether `user` may compare two releases, and if not, why.
    pub fn may_compare(&self, user: &str, environment: &str) -> Result<(), String> {
        may(&self.compare, "compare", user, environment)
    }
}

fn may(users: &Option<Vec<String>>, what: &str, user: &str, environment: &str) -> Result<(), String> {
    match users {
        Some(users) if users.iter().any(|u| u == "*" || u == user) => Ok(()),
        Some(_) => Err(format!("{user} may not {what} on {environment} (rules.{environment}.{what})")),
        None => Err(format!("nobody may {what} on {environment}: no rule names it")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.yaml");
        std::fs::write(&p, yaml).unwrap();
        Config::load(&p)
    }

    #[test]
    fn a_bad_configuration_says_where_and_why_once() {
        let e = load("environments: envs\nmax_runing: 3\n").unwrap_err().to_string();
        assert!(e.ends_with("serve.yaml:2:1: unknown field `max_runing`, expected one of listen, environments, git, max_running, changes_per_minute, proxy, tokens, admins, rules, store, lease, csrf_key_file, public_url, hooks, github, slack"), "{e}");
        let e = load("environments: envs\nproxy:\n  header: X-User\n  trusted: []\n").unwrap_err().to_string();
        assert!(e.contains("proxy.trusted: name the proxy's addresses"), "{e}");
        let e = load("environments: envs\nrules:\n  \"../x\": { rehearse: [\"*\"] }\n").unwrap_err().to_string();
        assert!(e.contains("is not an environment's name"), "{e}");
        let e = load("environments: envs\nlease: 0s\n").unwrap_err().to_string();
        assert!(e.contains("serve.yaml:2:8: lease 0s: out of range"), "{e}");
        let e = load("environments: envs\ntokens:\n  - user: ci\n    sha256: abc\n").unwrap_err().to_string();
        assert!(e.contains("not 64 lowercase hex digits"), "{e}");
    }

    #[test]
    fn rules_fall_back_to_the_star_and_nobody_may_without_one() {
        let c = load("environments: envs\nrules:\n  \"*\": { rehearse: [\"*\"], max_per_user: 2 }\n  demo: { rehearse: [alice] }\n").unwrap();
        assert!(c.rule("demo").may_rehearse("alice", "demo").is_ok());
        assert!(c.rule("demo").may_rehearse("bob", "demo").is_err());
        assert_eq!(c.rule("demo").max_per_user, Some(2));
        assert!(c.rule("other").may_rehearse("bob", "other").is_ok());
        let none = load("environments: envs\n").unwrap();
        assert!(none.rule("demo").may_rehearse("alice", "demo").unwrap_err().contains("no rule names it"));
        assert!(
            none.environments.ends_with("envs") && none.environments.is_absolute()
                || none.environments.starts_with("/")
        );
    }
}
