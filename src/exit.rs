//! Exit codes, documented in README.md and `rehearse --help`.
//!
//! Every way a command can end maps to exactly one of these; CI gates read them.

/// The rehearsal passed (or the command did what was asked).
pub(crate) const PASSED: i32 = 0;
/// The environment was built but suites failed (or a suite could not run).
pub(crate) const SUITES_FAILED: i32 = 1;
/// Bad usage or an invalid description; nothing was created.
pub(crate) const USAGE: i32 = 2;
/// The environment could not be built (missing backup, refused API call, timeout);
/// whatever was created was torn down.
pub(crate) const BUILD_FAILED: i32 = 3;
/// Teardown left resources behind; they are listed with the command that removes them.
pub(crate) const LEFTOVERS: i32 = 4;
/// A lock (`rehearse lock`, `up --name`) is held by someone else; nothing was done.
pub(crate) const LOCKED: i32 = 5;
/// Interrupted (SIGINT/SIGTERM) and torn down.
pub(crate) const INTERRUPTED: i32 = 130;

pub(crate) const HELP: &str = "\
Exit codes:
  0    passed (or the command succeeded)
  1    suites failed, or a suite could not run or reported no tests
  2    usage error or invalid description (nothing was created)
  3    the environment could not be built (whatever was created was torn down)
  4    teardown left resources behind (listed, with the command that removes them)
  5    a lock is held by someone else (said: who, since when, until when); nothing was done
  130  interrupted (SIGINT/SIGTERM); torn down";
