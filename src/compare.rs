//! Baseline versus candidate (`rehearse compare`): two copies of production from the
//! same backup, the baseline release on one and the candidate on the other, the same
//! load on both, and a judge with known semantics over what was measured.
//!
//! - [`stats`]: the Mann-Whitney U test, the Hodges-Lehmann estimate and its interval
//!   (R's `wilcox.test`, as Kayenta ported it);
//! - [`judge`]: per-metric classification and the score (Kayenta's NetflixACAJudge);
//! - [`database`]: each copy's size and its statements' times over the load;
//! - [`deploy`]: what a rehearsed deploy did to the traffic: windows, limits, headline;
//! - [`locks`]: who waits on whose lock while a migration runs, sampled every 100 ms;
//! - [`load`]: a request file replayed at a fixed rate against both at once;
//! - [`tool`]: the results of a load tool of your own (k6, vegeta, samples);
//! - [`page`]: `compare.html`, the two side by side.

pub mod chaos;
pub mod database;
pub mod deploy;
pub mod judge;
pub mod lint;
pub mod load;
pub mod locks;
pub mod page;
pub mod stats;
pub mod tool;
