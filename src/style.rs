//! Colour for terminal output: one [`Styles`] value, built once per output stream from
//! `--color` and the environment, and passed to whatever prints to that stream (the
//! progress reporter, the end-of-run summary, the plan).
//!
//! Each field is a role (passed, failed, a warning, secondary text), not a colour, so
//! the printing code says what a piece of text *is* and this file alone says how it
//! looks. When colour is off every role is [`Style::new`], which renders as nothing:
//! callers paint unconditionally and never test a flag.

use anstyle::{AnsiColor, Style};

use crate::cli::ColorChoice;

/// How each role of terminal text is painted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Styles {
    /// Something passed or was done (`✔`, `PASSED`).
    pub(crate) pass: Style,
    /// Something failed or was left behind (`✘`, `FAILED`, `INCOMPLETE`).
    pub(crate) fail: Style,
    /// Neither passed nor failed: not run, kept, interrupted.
    pub(crate) warn: Style,
    /// Secondary text: run ids, timings, log excerpts' gutters.
    pub(crate) dim: Style,
    /// What the eye should find first: names, the verdict line.
    pub(crate) bold: Style,
}

impl Styles {
    /// No colour at all: every role renders as nothing.
    pub(crate) const fn plain() -> Self {
        Styles { pass: Style::new(), fail: Style::new(), warn: Style::new(), dim: Style::new(), bold: Style::new() }
    }

    /// ANSI colours, whatever the stream is.
    pub(crate) const fn colored() -> Self {
        Styles {
            pass: Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Green))),
            fail: Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Red))),
            warn: Style::new().fg_color(Some(anstyle::Color::Ansi(AnsiColor::Yellow))),
            dim: Style::new().dimmed(),
            bold: Style::new().bold(),
        }
    }

    /// The styles for a stream: `--color always` or `never` as asked; `auto` colours a
    /// terminal unless `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
    pub(crate) fn new(choice: ColorChoice, is_terminal: bool) -> Self {
        Self::when(use_color(choice, is_terminal))
    }

    /// The styles for standard error (progress, the end-of-run summary).
    pub(crate) fn stderr(choice: ColorChoice) -> Self {
        Self::new(choice, std::io::IsTerminal::is_terminal(&std::io::stderr()))
    }

    /// The styles for standard output (`rehearse report`, `rehearse plan`).
    pub(crate) fn stdout(choice: ColorChoice) -> Self {
        Self::new(choice, std::io::IsTerminal::is_terminal(&std::io::stdout()))
    }

    /// [`Styles::colored`] when `color`, else [`Styles::plain`].
    pub(crate) const fn when(color: bool) -> Self {
        if color {
            Self::colored()
        } else {
            Self::plain()
        }
    }

    /// Whether anything is painted at all (a progress display with spinners, say,
    /// only makes sense where colour does).
    pub(crate) fn is_colored(&self) -> bool {
        *self != Self::plain()
    }

    /// `role` in bold too (the verdict, `INCOMPLETE`); stays plain when styles are.
    pub(crate) fn strong(&self, role: Style) -> Style {
        role.effects(role.get_effects() | self.bold.get_effects())
    }
}

/// `true` paints, `false` does not: what `--color` used to be passed as.
impl From<bool> for Styles {
    fn from(color: bool) -> Self {
        Styles::when(color)
    }
}

impl Default for Styles {
    fn default() -> Self {
        Self::plain()
    }
}

/// Whether to colour a stream: `always`, `never`, or (`auto`) when the stream is a
/// terminal and `NO_COLOR` is unset or empty.
pub fn use_color(choice: ColorChoice, is_terminal: bool) -> bool {
    decide(choice, is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

fn decide(choice: ColorChoice, is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && no_color.is_none_or(|v| v.is_empty()),
    }
}

/// `text` between `style` and its reset; nothing added when `style` is plain.
pub fn paint(style: Style, text: impl std::fmt::Display) -> String {
    if style.is_plain() {
        text.to_string()
    } else {
        format!("{style}{text}{style:#}")
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn auto_colours_only_a_terminal_without_no_color() {
        assert!(decide(ColorChoice::Auto, true, None));
        assert!(!decide(ColorChoice::Auto, false, None));
        assert!(!decide(ColorChoice::Auto, true, Some(OsStr::new("1"))));
        // An empty NO_COLOR is unset, as no-color.org says.
        assert!(decide(ColorChoice::Auto, true, Some(OsStr::new(""))));
    }

    #[test]
    fn always_and_never_win_over_the_stream_and_no_color() {
        assert!(decide(ColorChoice::Always, false, Some(OsStr::new("1"))));
        assert!(!decide(ColorChoice::Never, true, None));
    }

    #[test]
    fn plain_styles_paint_nothing() {
        let s = Styles::plain();
        assert!(!s.is_colored());
        for role in [s.pass, s.fail, s.warn, s.dim, s.bold, s.strong(s.fail)] {
            assert_eq!(paint(role, "x"), "x");
        }
        assert_eq!(Styles::from(false), s);
        assert_eq!(Styles::new(ColorChoice::Never, true), s);
    }

    #[test]
    fn colored_styles_paint_each_role_and_reset() {
        let s = Styles::colored();
        assert!(s.is_colored());
        assert_eq!(paint(s.pass, "ok"), "\x1b[32mok\x1b[0m");
        assert_eq!(paint(s.fail, "no"), "\x1b[31mno\x1b[0m");
        assert_eq!(paint(s.warn, "hm"), "\x1b[33mhm\x1b[0m");
        assert_eq!(paint(s.dim, "id"), "\x1b[2mid\x1b[0m");
        assert_eq!(paint(s.bold, "b"), "\x1b[1mb\x1b[0m");
        let strong = paint(s.strong(s.fail), "FAILED");
        assert!(strong.contains("\x1b[1m") && strong.contains("\x1b[31m"), "{strong:?}");
        assert_eq!(Styles::new(ColorChoice::Always, false), s);
    }
}
