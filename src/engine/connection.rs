//! How to connect to a kept environment, secrets included: `runs/RUN_ID/connection.json`
//! in the run's private state directory, mode 0600, written through a descriptor that
//! follows no link. Only `rehearse env` and `rehearse psql` read the passwords from it;
//! every other output (the report, `up`'s summary, the journal) carries none.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::description::template::{DatabaseOutputs, ServiceOutputs};
use crate::sys::secure_fs::{Dir, FsError};

const FILE: &str = "connection.json";

/// A kept environment's connection details.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Connection {
    pub run_id: String,
    pub databases: BTreeMap<String, DatabaseOutputs>,
    pub services: BTreeMap<String, ServiceOutputs>,
}

/// Why a run's connection details cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("{0}")]
    File(#[from] FsError),
    #[error("run {0} keeps no connection details: only a kept environment (`rehearse up`, or --keep) has them")]
    Missing(String),
    #[error("the connection details of run {run_id} are damaged: {source}")]
    Damaged {
        run_id: String,
        #[source]
        source: serde_json::Error,
    },
    /// What they say cannot be the run's: names that become variable names, or
    /// values that would not stay one value, refused whole (a shared store's
    /// `runs/RUN_ID/connection.json` can be written by anyone with its policy).
    #[error("the connection details of run {run_id} ({key}) are refused: {why}")]
    Refused { run_id: String, key: String, why: Unbelieved },
}

/// What in a run's connection details cannot be the run's.
#[derive(Debug, thiserror::Error)]
pub enum Unbelieved {
    #[error("they are for run `{}`", .0.escape_debug())]
    OtherRun(String),
    #[error("the {what} name `{}` is not a name ({rule})", .name.escape_debug())]
    NotAName { what: &'static str, name: String, rule: String },
    #[error("a value of `{0}` holds a control character")]
    ControlCharacter(String),
}

impl Connection {
    /// Writes the details into the run's state directory `run_state`, private to its
    /// owner (0600).
    pub(crate) fn write(&self, run_state: &Path) -> Result<(), ConnectionError> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|source| ConnectionError::Damaged { run_id: self.run_id.clone(), source })?;
        Dir::open(run_state)?.write_file(Path::new(FILE), &bytes, None)?;
        Ok(())
    }

    /// Reads the details of the run whose state directory is `run_state`.
    pub fn read(run_state: &Path, run_id: &str) -> Result<Connection, ConnectionError> {
        let bytes = match Dir::open(run_state)?.read_file(OsStr::new(FILE), 1 << 20) {
            Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConnectionError::Missing(run_id.to_string()))
            }
            other => other?,
        };
        let c: Connection = serde_json::from_slice(&bytes)
            .map_err(|source| ConnectionError::Damaged { run_id: run_id.to_string(), source })?;
        c.check(run_id).map_err(|why| ConnectionError::Refused {
            run_id: run_id.to_string(),
            key: crate::engine::store::connection_key(run_id),
            why,
        })?;
        Ok(c)
    }

    /// Checks what was read as a stranger's input: the run it is for, the database and
    /// service names (they become variable names, `REHEARSE_DB_<NAME>_URL`, in
    /// `rehearse env`) against the description's grammar for names, and every value
    /// free of control characters (a newline would end a line of `env`'s output).
    pub fn check(&self, run_id: &str) -> Result<(), Unbelieved> {
        use crate::description::decode::KeyRule;
        if self.run_id != run_id {
            return Err(Unbelieved::OtherRun(self.run_id.clone()));
        }
        for (what, name) in
            self.databases.keys().map(|n| ("database", n)).chain(self.services.keys().map(|n| ("service", n)))
        {
            KeyRule::Identifier.check(name).map_err(|e| Unbelieved::NotAName {
                what,
                name: name.to_string(),
                rule: e.to_string(),
            })?;
        }
        let values = self.databases.iter().flat_map(|(n, d)| {
            [&d.host, &d.port, &d.name, &d.user, &d.password, &d.url, &d.endpoint].map(move |v| (n, v))
        });
        let services = self.services.iter().flat_map(|(n, s)| {
            [&s.address, &s.port, &s.url]
                .into_iter()
                .chain(s.addresses.iter())
                .chain(s.urls.iter())
                .map(move |v| (n, v))
        });
        for (name, v) in values.chain(services) {
            if v.chars().any(char::is_control) {
                return Err(Unbelieved::ControlCharacter(name.to_string()));
            }
        }
        Ok(())
    }

    /// Forgets the details once the environment is gone (gone already is fine).
    pub fn remove(run_state: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(run_state.join(FILE)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
