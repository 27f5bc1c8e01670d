//! Providers turn plan resources into real things and remove them again: `aws` (EC2 and
//! RDS through the SDK) and `local` (a throwaway PostgreSQL cluster and processes on this
//! machine). Each implements [`crate::engine::provider::Provider`]; the engine drives the
//! lifecycle and keeps the journal.

pub mod aws;
pub mod local;
