//! Text that reaches a terminal: what a release printed, what a stranger wrote into the
//! state store. Whatever its source, it is shown without the terminal's control
//! sequences — no window title, clipboard write (OSC 52), hyperlink (OSC 8), screen
//! clear, cursor move or colour of its own — and without bidirectional overrides; a
//! log's tail is read from its end and redacted of the run's secrets. Text that goes
//! to a shell is quoted here too ([`shell_quote`]).

use std::path::Path;

/// How much of a log's end is read for its tail: enough for 20 long lines.
const TAIL_BYTES: u64 = 64 * 1024;

/// `s` as one shell word that `sh` takes literally (`shlex`'s quoting). A shell word
/// cannot hold a NUL: NULs are dropped, so that quoting never fails.
pub(crate) fn shell_quote(s: &str) -> String {
    let text = s.replace('\0', "");
    match shlex::try_quote(&text) {
        Ok(q) => q.into_owned(),
        // Unreachable without a NUL; quoted by hand all the same, never unquoted.
        Err(_) => format!("'{}'", text.replace('\'', "'\\''")),
    }
}

/// The last `n` non-empty lines of a log file, for error messages and reports, read
/// from its end (a log may be gigabytes), each cut to 400 characters, with terminal
/// control and escape sequences removed and secrets redacted: a log is the output
/// of a program rehearse does not control.
pub(crate) fn tail(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    // Some logs are written by the cluster's user: never through a link, never a FIFO.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| if f.metadata()?.is_file() { Ok(f) } else { Err(std::io::Error::other("not a file")) });
    let Ok(mut f) = opened else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_BYTES);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if f.take(TAIL_BYTES).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let bytes = crate::secrets::redact_bytes(&bytes);
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        // The first line read is most likely cut.
        lines.remove(0);
    }
    let lines: Vec<&str> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| printable(l).chars().take(400).collect()).collect()
}

/// `text` on one line, made safe for a terminal: escape and control sequences removed
/// (see [`printable_text`]), line breaks and tabs as spaces. For log tails, table cells
/// and messages that quote what a release printed or the state store holds.
pub(crate) fn printable(text: &str) -> String {
    clean(text, false)
}

/// `text` made safe for a terminal, its lines and tabs kept: what a program printed or
/// a stranger wrote into the state store cannot retitle the terminal, set the
/// clipboard (OSC 52), plant a hyperlink (OSC 8), clear or scroll the screen, move the
/// cursor, recolor, or overwrite a line it is shown on. Removed: CSI sequences (`ESC [`
/// or the 8-bit U+009B, up to the final byte), the string controls OSC, DCS, SOS, PM and
/// APC (`ESC ] P X ^ _` or U+009D U+0090 U+0098 U+009E U+009F, up to BEL or ST — `ESC \`
/// or U+009C — or the end of the line), every other `ESC` sequence, every other C0 and
/// C1 control (backspace, DEL, …), and the bidirectional overrides and isolates
/// (U+202A–U+202E, U+2066–U+2069) that make text read differently from what it is.
/// A carriage return ends a line (`\r\n` is one line break): it never overwrites one.
/// Ordinary Unicode is kept.
pub(crate) fn printable_text(text: &str) -> String {
    clean(text, true)
}

/// JSON text with what JSON leaves raw but a terminal acts on — DEL, the C1 controls
/// U+0080–U+009F (U+009B is CSI, U+009D OSC on some terminals), the bidirectional
/// controls — written as `\uXXXX` escapes: the same JSON value, inert on a terminal.
/// (serde_json escapes the C0 controls, ESC among them, itself; valid JSON holds these
/// characters only inside strings, where an escape means the same character.)
pub(crate) fn terminal_safe_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if matches!(c, '\u{7f}'..='\u{9f}') || is_bidi_control(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `c` reorders the text around it (an embedding, override or isolate).
pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn clean(text: &str, keep_lines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let line_break = if keep_lines { '\n' } else { ' ' };
    // An escape that ended a string control and begins a sequence of its own.
    let mut pending = None;
    while let Some(c) = pending.take().or_else(|| chars.next()) {
        match c {
            '\u{1b}' => match chars.peek() {
                Some('[') => {
                    chars.next();
                    skip_csi(&mut chars);
                }
                Some(']' | 'P' | 'X' | '^' | '_') => {
                    chars.next();
                    pending = skip_string(&mut chars);
                }
                // Another escape: its intermediates (SP to `/`), then its final character.
                _ => {
                    while chars.next_if(|c| matches!(c, ' '..='/')).is_some() {}
                    chars.next_if(|c| !c.is_control());
                }
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => pending = skip_string(&mut chars),
            '\n' => out.push(line_break),
            // `\r\n` is one break; a lone `\r` would overwrite the line: a break too.
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push(line_break);
                }
            }
            '\t' => out.push(if keep_lines { '\t' } else { ' ' }),
            c if c.is_control() || is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Past a CSI's parameters and intermediates (`0`..`?`, SP..`/`) and its final byte
/// (`@`..`~`); anything else ends it unconsumed (a terminal would abort it there too).
fn skip_csi(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| matches!(c, ' '..='?')).is_some() {}
    chars.next_if(|c| matches!(c, '@'..='~'));
}

/// Past a string control's text, up to and with its terminator (BEL, `ESC \`, U+009C);
/// a line break ends it too, unconsumed: with its introducer gone, what follows is
/// text again, and one bad line does not swallow a whole log. An `ESC` that is not
/// `ESC \` aborts the string (as in a terminal) and starts a sequence of its own: it is
/// returned, to be read again.
fn skip_string(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    while let Some(c) = chars.next_if(|c| !matches!(c, '\n' | '\r')) {
        match c {
            '\u{7}' | '\u{9c}' => return None,
            '\u{1b}' => return chars.next_if_eq(&'\\').is_none().then_some('\u{1b}'),
            _ => {}
        }
    }
    None
}

/// A user's name as a proxy or a token gives it: letters, digits and `._@+-`, at most
/// 128 (an e-mail address fits; a space, a quote or a control character does not).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 128
        && user.chars().all(|c| c.is_ascii_alphanumeric() || "._@+-".contains(c))
        && !user.starts_with(['.', '-'])
}

/// An http(s) URL a server may call or link: at most 2 KiB, no control character, no
/// space.
pub fn valid_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() <= 2048
        && !u.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_makes_one_literal_word_even_of_quotes_and_nuls() {
        assert_eq!(shell_quote("plain"), "plain");
        for s in ["a b", "it's", "$(rm -rf /)", "'; echo x '", "a\0b", ""] {
            let q = shell_quote(s);
            assert_eq!(shlex::split(&q), Some(vec![s.replace('\0', "")]), "{s:?} quoted as {q}");
        }
    }

    #[test]
    fn printable_strips_escapes_and_controls() {
        let s = "a\u{1b}[31mred\u{1b}[0m b\u{1b}]0;title\u{7}c\u{8}\u{1b}]8;;http://x\u{1b}\\link\r\tend";
        assert_eq!(printable(s), "ared bclink  end");
    }

    #[test]
    fn every_kind_of_terminal_sequence_is_removed_and_text_is_kept() {
        let cases = [
            // CSI: colours, screen clear, cursor moves, private modes; 7-bit and 8-bit.
            ("\u{1b}[2J\u{1b}[H\u{1b}[?1049hx\u{1b}[1;31;4my", "xy"),
            ("\u{9b}2J\u{9b}31mx", "x"),
            // OSC ended by BEL, by ST, by the 8-bit ST; OSC 52 (clipboard) and OSC 8 (links).
            ("a\u{1b}]0;pwned\u{7}b", "ab"),
            ("a\u{1b}]52;c;ZWNobyBwd25lZA==\u{1b}\\b", "ab"),
            ("\u{1b}]8;;https://evil.example\u{1b}\\click\u{1b}]8;;\u{1b}\\", "click"),
            ("a\u{9d}0;title\u{9c}b", "ab"),
            ("a\u{9d}52;c;AAAA\u{7}b", "ab"),
            // DCS, SOS, PM, APC: 7-bit and 8-bit.
            ("a\u{1b}P+q544e\u{1b}\\b\u{1b}Xsos\u{1b}\\c\u{1b}^pm\u{1b}\\d\u{1b}_apc\u{1b}\\e", "abcde"),
            ("a\u{90}dcs\u{9c}b\u{98}sos\u{9c}c\u{9e}pm\u{9c}d\u{9f}apc\u{9c}e", "abcde"),
            // An escape inside a string control aborts it and is a sequence of its own.
            ("a\u{1b}]0;t\u{1b}[2Jb", "ab"),
            // Other escapes: charset designations, reset, keypad, DECALN.
            ("a\u{1b}(0b\u{1b}cc\u{1b}=d\u{1b}#8e", "abcde"),
            // Backspace overprinting, DEL, bell, other C0 and C1 controls.
            ("ok\u{8}\u{8}NO\u{7f}\u{7}\u{0}\u{85}\u{84}!", "okNO!"),
            // Bidirectional overrides that would make `exe.txt` read as `txt.exe`.
            ("evil\u{202e}txt.exe\u{2066}x\u{2069}", "eviltxt.exex"),
            // Ordinary Unicode stays.
            ("héllo wörld — ✔ 日本語 🚀", "héllo wörld — ✔ 日本語 🚀"),
        ];
        for (input, want) in cases {
            assert_eq!(printable(input), want, "{input:?}");
            assert_eq!(printable_text(input), want, "{input:?}");
        }
        // An unterminated string control ends with its line, not with the log.
        assert_eq!(printable_text("a\u{1b}]0;never ended\nnext line"), "a\nnext line");
    }

    #[test]
    fn json_for_a_terminal_escapes_what_serde_leaves_raw_and_means_the_same() {
        let value = serde_json::json!({"name": "a\u{1b}]52;c;AAAA\u{7}\u{9b}2J\u{9d}0;t\u{9c}\u{7f}\u{202e}b ✔"});
        let text = terminal_safe_json(&serde_json::to_string_pretty(&value).unwrap());
        assert!(text.chars().all(|c| !c.is_control() || c == '\n'), "{text:?}");
        assert!(!text.chars().any(is_bidi_control), "{text:?}");
        assert!(text.contains(r"\u001b]52") && text.contains(r"\u009b2J") && text.contains('✔'), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), value);
    }

    #[test]
    fn line_breaks_and_tabs_are_kept_or_flattened_and_a_carriage_return_never_overwrites() {
        let s = "one\ttwo\r\nthree\rFAKE\nfour";
        assert_eq!(printable_text(s), "one\ttwo\nthree\nFAKE\nfour");
        assert_eq!(printable(s), "one two three FAKE four");
    }

    #[test]
    fn tail_reads_the_end_of_a_big_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nsecond to last\nlast \u{1b}[1mline\u{1b}[0m\n");
        std::fs::write(&p, text).unwrap();
        assert_eq!(tail(&p, 2), vec!["second to last".to_string(), "last line".to_string()]);
    }
}
