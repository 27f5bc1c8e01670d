//! `report.html`: one self-contained page (no scripts, fonts, images or requests),
//! readable on a phone and in a browser without emoji fonts. Rendered from the
//! [`view`](super::view) and the [`timeline`](super::timeline) by
//! `templates/report.html.tera`, with tera's autoescaping on for everything, the
//! SVG drawings included.

use std::io;

use tera::Tera;

use super::model::RunReport;
use super::timeline::timeline;
use super::view;

const TEMPLATE: &str = include_str!("../../templates/report.html.tera");

/// `report.html`.
pub(crate) fn html(report: &RunReport) -> io::Result<String> {
    let ctx = view::context(report).and_then(|mut ctx| {
        ctx.try_insert("timeline", &timeline(report))?;
        Ok(ctx)
    });
    view::render("report.html", templates(), ctx)
}

fn templates() -> tera::Result<Tera> {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![".html"]);
    tera.add_raw_template("report.html", TEMPLATE)?;
    Ok(tera)
}
