//! What the engine tells the outside world while it works. The engine only emits
//! typed events; how they look (progress spinners on a terminal, plain lines in CI
//! logs, nothing with `-q`) is the reporter's business.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::style::{paint, Styles};

#[derive(Clone, Debug)]
pub enum Event {
    /// A step on a resource began (`restore` of `database.db`).
    Started { resource: String, action: String, detail: Option<String> },
    /// A step ended.
    Finished { resource: String, action: String, ok: bool, elapsed: Duration, detail: Option<String> },
    /// A line for the person watching (phase changes, warnings, hints).
    Note(String),
}

impl Event {
    /// The event with `f` applied to each of its texts (the resource, the detail, the note).
    pub fn map_text(self, f: impl Fn(String) -> String) -> Event {
        match self {
            Event::Started { resource, action, detail } => {
                Event::Started { resource: f(resource), action, detail: detail.map(&f) }
            }
            Event::Finished { resource, action, ok, elapsed, detail } => {
                Event::Finished { resource: f(resource), action, ok, elapsed, detail: detail.map(&f) }
            }
            Event::Note(n) => Event::Note(f(n)),
        }
    }

    /// The event as a terminal may show it: its texts made printable. The terminal
    /// reporters apply it themselves, whoever sends them events (the engine through
    /// [`Redacting`], a stage's rebuild with names read from the store).
    fn printable(self) -> Event {
        self.map_text(|s| crate::sys::process::printable(&s))
    }
}

pub trait Reporter: Send + Sync {
    fn event(&self, ev: Event);
}

/// Discards everything (`-q`, tests).
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _ev: Event) {}
}

/// One line per finished step, for CI logs and pipes.
pub struct Lines {
    pub start: std::time::Instant,
    pub styles: Styles,
}

impl Reporter for Lines {
    fn event(&self, ev: Event) {
        let t = self.start.elapsed().as_secs_f64();
        let line = match ev.printable() {
            Event::Started { .. } => return,
            Event::Finished { resource, action, ok, elapsed, detail } => format!(
                "[{t:7.2}s] {} {resource} {action}{} ({:.2}s)",
                if ok { paint(self.styles.pass, "ok  ") } else { paint(self.styles.fail, "FAIL") },
                detail.map(|d| format!(": {d}")).unwrap_or_default(),
                elapsed.as_secs_f64()
            ),
            Event::Note(n) => format!("[{t:7.2}s] {n}"),
        };
        // Best effort: progress on a closed terminal: nowhere else to show it.
        #[allow(clippy::let_underscore_must_use)]
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// Spinners for the steps under way, finished steps printed above them.
pub struct Progress {
    multi: MultiProgress,
    bars: Mutex<Vec<(String, ProgressBar)>>,
    start: std::time::Instant,
    styles: Styles,
}

impl Progress {
    pub fn new(styles: Styles) -> Self {
        Progress { multi: MultiProgress::new(), bars: Mutex::new(Vec::new()), start: std::time::Instant::now(), styles }
    }
}

impl Reporter for Progress {
    fn event(&self, ev: Event) {
        let Ok(mut bars) = self.bars.lock() else { return };
        match ev.printable() {
            Event::Started { resource, action, detail } => {
                let pb = self.multi.add(ProgressBar::new_spinner());
                pb.set_style(
                    ProgressStyle::with_template("  {spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                pb.set_message(format!("{resource} {action}{}", detail.map(|d| format!(" ({d})")).unwrap_or_default()));
                pb.enable_steady_tick(Duration::from_millis(100));
                bars.push((format!("{resource}/{action}"), pb));
            }
            Event::Finished { resource, action, ok, elapsed, detail } => {
                let key = format!("{resource}/{action}");
                if let Some(i) = bars.iter().position(|(k, _)| *k == key) {
                    let (_, pb) = bars.remove(i);
                    pb.finish_and_clear();
                    self.multi.remove(&pb);
                }
                let s = &self.styles;
                let mark = if ok { paint(s.pass, "✔") } else { paint(s.fail, "✘") };
                // Best effort: progress on a closed terminal: nowhere else to show it.
                #[allow(clippy::let_underscore_must_use)]
                let _ = self.multi.println(format!(
                    "  {mark} {resource} {action}{} {}",
                    detail.map(|d| format!(": {d}")).unwrap_or_default(),
                    paint(s.dim, format_args!("{:.2}s", elapsed.as_secs_f64()))
                ));
            }
            Event::Note(n) => {
                let at = paint(self.styles.dim, format_args!("[{:6.2}s]", self.start.elapsed().as_secs_f64()));
                // Best effort: progress on a closed terminal: nowhere else to show it.
                #[allow(clippy::let_underscore_must_use)]
                let _ = self.multi.println(format!("{at} {n}"));
            }
        }
    }
}

/// Passes events on with every registered secret redacted and terminal control
/// sequences removed from their text (details carry commands and program output).
pub struct Redacting<'a>(pub &'a dyn Reporter);

impl Reporter for Redacting<'_> {
    fn event(&self, ev: Event) {
        self.0.event(ev.map_text(|s| crate::secrets::redact(&crate::sys::process::printable(&s)).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events may carry names read from a shared store (a stage's generations): the
    /// terminal reporters show them printable, whoever sent them.
    #[test]
    fn a_terminal_reporter_shows_every_text_of_an_event_printable() {
        let evil = "gen\u{1b}]0;pwned\u{7}\u{9b}2J r-1";
        let ev = Event::Finished {
            resource: evil.into(),
            action: "retire".into(),
            ok: true,
            elapsed: Duration::ZERO,
            detail: Some(evil.into()),
        };
        let Event::Finished { resource, detail, .. } = ev.printable() else { panic!("still a Finished") };
        assert_eq!((resource.as_str(), detail.as_deref()), ("gen r-1", Some("gen r-1")));
        let Event::Note(n) = Event::Note(evil.into()).printable() else { panic!("still a Note") };
        assert_eq!(n, "gen r-1");
    }
}
