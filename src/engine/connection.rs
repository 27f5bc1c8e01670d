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
        serde_json::from_slice(&bytes).map_err(|source| ConnectionError::Damaged { run_id: run_id.to_string(), source })
    }

    /// Forgets the details once the environment is gone (gone already is fine).
    pub fn remove(run_state: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(run_state.join(FILE)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}
