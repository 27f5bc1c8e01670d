//! Reports: one [`model::RunReport`] per run, written as JSON, JUnit XML, Markdown and
//! a self-contained HTML page into the run's report directory.

pub mod junit;
pub mod model;
pub mod render;

pub use render::{read_report, terminal_summary, write_all, ReadReportError, ReportFiles};

#[cfg(test)]
mod tests;
