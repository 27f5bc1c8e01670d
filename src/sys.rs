//! What the engine and the providers both stand on: the operating system's side of a
//! run. Nothing here knows about plans, providers or reports.
//!
//! - [`bundle`]: the suites' files, copied for the user the suites run as;
//! - [`process`]: commands run as the right user, logged, timed, killed by group;
//! - [`secure_fs`]: directories and files other local users can neither read nor steer;
//! - [`text`]: what reaches a terminal, without its control sequences; log tails;
//! - [`state`]: where runs keep their files (state and work directories, run ids);
//! - [`signals`]: the first SIGINT/SIGTERM asks for teardown, the second stops it;
//! - [`timing`]: the clock that tells the tool's own time from time spent waiting;
//! - [`health`]: HTTP health checks of a service, on this machine or across a network;
//! - [`fault_proxy`]: a TCP proxy on loopback that adds latency, limits bandwidth,
//!   resets or blackholes the path it carries (a game day's network faults).

pub mod bundle;
pub mod fault_proxy;
pub mod health;
pub mod process;
pub mod secure_fs;
pub mod signals;
pub mod state;
pub mod text;
pub mod timing;
