//! What several commands do alike at the edge, shared here so that no command calls
//! another: a rehearsal run and said ([`run`]), a named lock taken and given back
//! ([`lock`]), a connection printed ([`connection`]), a run torn down and said
//! ([`down`]). Each calls the engine and renders its outcome; none decides anything the
//! engine should (`scripts/check-layers.sh` lets the commands import `edge` and
//! `store`, and no other command module).

pub(crate) mod connection;
pub(crate) mod down;
pub(crate) mod lock;
pub(crate) mod run;
