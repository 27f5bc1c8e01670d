//! Providers turn plan resources into real things and remove them again: `aws` (EC2 and
//! RDS through the SDK) and `local` (a throwaway PostgreSQL cluster and processes on this
//! machine). Each implements [`crate::engine::provider::Provider`]; the engine drives the
//! lifecycle and keeps the journal.
//!
//! Both install the release the same way, from this machine: [`release`] unpacks and
//! checks the artifact, [`install`] runs the service's install (migrations) against the
//! copy once, before any of its instances or processes start.

pub mod aws;
pub(crate) mod install;
pub mod local;
pub(crate) mod release;
