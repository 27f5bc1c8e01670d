//! `report.html`: one self-contained page (no scripts, fonts, images or requests),
//! readable on a phone and in a browser without emoji fonts. Rendered from the
//! [`view`](super::view) by `templates/report.html.tera`, with tera's autoescaping
//! on for everything.

use std::io;

use tera::Tera;

use super::model::RunReport;
use super::view;

const TEMPLATE: &str = include_str!("../../templates/report.html.tera");

/// `report.html`.
pub fn html(report: &RunReport) -> io::Result<String> {
    view::render("report.html", templates(), view::context(report))
}

fn templates() -> tera::Result<Tera> {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![".html"]);
    tera.add_raw_template("report.html", TEMPLATE)?;
    Ok(tera)
}
