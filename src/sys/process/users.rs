//! Who the run's processes run as: the PostgreSQL copies' user and the release's user
//! when rehearse runs as root, and the names of this machine and its users.

use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// Who a command runs as: a user id and its primary group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl RunAs {
    /// Runs `cmd` as this user (std drops the supplementary groups too).
    pub(crate) fn apply(self, cmd: &mut Command) {
        cmd.uid(self.uid).gid(self.gid);
    }

    fn lookup(name: &str) -> Result<Option<RunAs>, UsersError> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(Some(RunAs { uid: u.uid.as_raw(), gid: u.gid.as_raw() })),
            Ok(None) => Ok(None),
            Err(source) => Err(UsersError::Lookup { name: name.to_string(), source }),
        }
    }
}

/// Why the users a run's processes run as cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot look up the user `{name}`: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("--run-as {0} needs root: only root can run the release as another user")]
    NeedsRoot(String),
    /// Rehearse runs as root and a user it runs something as does not exist: `what`
    /// says what runs as whom.
    #[error(
        "rehearse runs as root, so it runs {what}; the user `{name}` does not exist — create it with `make deps` \
         (scripts/install-deps.sh), or by hand: \
         `useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {name}`"
    )]
    NoSuchUser { name: String, what: String },
    #[error("--run-as {0}: the release must not run as root")]
    Root(String),
    #[error(
        "--run-as {0}: `nobody` is shared by other daemons, which could then read the release's files; \
         use a user of rehearse's own (`{RELEASE_USER}`)"
    )]
    Nobody(String),
    #[error(
        "--run-as {0}: the release must not run as the PostgreSQL copies' user `{CLUSTER_USER}` \
         (it could read every copy's files)"
    )]
    ClusterUser(String),
}

/// The user the PostgreSQL copies run as when rehearse runs as root (PostgreSQL
/// refuses root). `scripts/install-deps.sh` creates it.
pub(crate) const CLUSTER_USER: &str = "rehearse-db";
/// The user the release runs as — its install, its services and the suites — when
/// rehearse runs as root, unless `--run-as` names another. `scripts/install-deps.sh`
/// creates it.
pub(crate) const RELEASE_USER: &str = "rehearse";

/// Who the run's processes run as. Both `None` when rehearse does not run as root:
/// then everything runs as the invoking user, who owns the copy anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Users {
    pub(crate) cluster: Option<RunAs>,
    pub(crate) release: Option<RunAs>,
}

impl Users {
    /// As root: the cluster user (`with_cluster`: the local provider) and the release
    /// user (`run_as`, else [`RELEASE_USER`]), two different unprivileged users, so the
    /// release can neither read the copy's files nor signal its server. Not root:
    /// nobody to switch to.
    pub(crate) fn resolve(run_as: Option<&str>, with_cluster: bool) -> Result<Users, UsersError> {
        if !nix::unistd::geteuid().is_root() {
            if let Some(u) = run_as {
                return Err(UsersError::NeedsRoot(u.to_string()));
            }
            return Ok(Users::default());
        }
        let missing = |name: &str| {
            no_such_user(
                name,
                &format!(
                    "the PostgreSQL copies as the unprivileged user `{CLUSTER_USER}` and the release, its services \
                     and the suites as `{RELEASE_USER}` (or the user given with --run-as)"
                ),
            )
        };
        let cluster =
            if with_cluster { Some(RunAs::lookup(CLUSTER_USER)?.ok_or_else(|| missing(CLUSTER_USER))?) } else { None };
        let name = run_as.unwrap_or(RELEASE_USER);
        let release = RunAs::lookup(name)?.ok_or_else(|| missing(name))?;
        if release.uid == 0 {
            return Err(UsersError::Root(name.to_string()));
        }
        if name == "nobody" || release.uid == 65534 {
            return Err(UsersError::Nobody(name.to_string()));
        }
        if cluster.is_some_and(|c| c.uid == release.uid) {
            return Err(UsersError::ClusterUser(name.to_string()));
        }
        Ok(Users { cluster, release: Some(release) })
    }

    /// Only the cluster user (`rehearse warm`: no release code runs).
    pub(crate) fn cluster_only() -> Result<Option<RunAs>, String> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let missing = || no_such_user(CLUSTER_USER, &format!("PostgreSQL as the unprivileged user `{CLUSTER_USER}`"));
        // Its callers say it as text.
        RunAs::lookup(CLUSTER_USER).map_err(|e| e.to_string())?.map(Some).ok_or_else(|| missing().to_string())
    }
}

/// Why a run as root cannot start: `name`, a user it runs `what` as, does not exist.
fn no_such_user(name: &str, what: &str) -> UsersError {
    UsersError::NoSuchUser { name: name.to_string(), what: what.to_string() }
}

/// A user's name, for messages (the number when it has none).
pub(crate) fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// This machine's name, for journals and locks (`REHEARSE_HOST` stands in for it, so a
/// test can play a second machine).
pub(crate) fn host_name() -> String {
    if let Some(h) = std::env::var("REHEARSE_HOST").ok().filter(|h| !h.is_empty()) {
        return h;
    }
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

/// What tells this machine from every other: `/etc/machine-id` (systemd's, also
/// `/var/lib/dbus/machine-id`), else the kernel's host name. Unlike [`host_name`], no
/// variable stands in for it: it says where a journal was written, not who claims to be
/// which host.
pub(crate) fn machine_id() -> String {
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Some(id) = std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
            return id;
        }
    }
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok());
    format!("host:{}", host.unwrap_or_else(|| "unknown".into()))
}
