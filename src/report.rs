//! Reports: one [`model::RunReport`] per run, written as JSON, JUnit XML, Markdown and
//! a self-contained HTML page into the run's report directory, and summed up in a few
//! lines on the terminal.
//!
//! One file per output: [`files`] writes and reads the report directory, [`junit`],
//! [`markdown`] and [`html`] render a format each ([`view`] is what their templates
//! see, [`timeline`] the HTML page's chart of steps), [`terminal`] prints the summary.
//! The templates are compiled into the binary so it renders the same from any
//! working directory.

mod chaos;
mod deploy;
pub mod files;
pub mod html;
pub mod junit;
pub mod markdown;
pub mod model;
pub mod terminal;
pub mod text;
mod timeline;
mod view;

pub use files::{read_report, write_all, ReadReportError, ReportFiles};
pub use terminal::terminal_summary;
pub use view::change_line;

#[cfg(test)]
mod tests;
