//! Secrets the run holds (the copy's generated passwords, a live source's password),
//! and their redaction from everything rehearse writes or prints.
//!
//! A secret is registered the moment it exists, before it is used. From then on the
//! reports, the logs of the commands rehearse runs, the journal and the terminal show
//! `***` in its place. The registry is process-wide on purpose: one process runs one
//! rehearsal, and whatever it prints — a step's event, an error from a command, a log
//! tail — passes through the same redaction, however it got there. (Tests that run
//! many rehearsals in one process only redact more.)
//!
//! Secrets never appear on a command line: PostgreSQL tools get them in `PGPASSWORD`
//! (the environment of a process is readable only by its owner and root, its argv by
//! every local user).

use std::borrow::Cow;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// What a secret is replaced with.
pub(crate) const MASK: &str = "***";

/// Shorter strings are not treated as secrets: redacting a 3-letter password would
/// garble every log it happens to occur in. Descriptions may not carry a shorter one.
pub(crate) const MIN_LEN: usize = 4;

/// Registers a secret for redaction.
pub(crate) fn register(secret: &str) {
    if secret.len() < MIN_LEN {
        return;
    }
    let mut s = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !s.iter().any(|x| x == secret) {
        s.push(secret.to_string());
        // Longest first, so a secret that contains another is masked whole.
        s.sort_by_key(|x| std::cmp::Reverse(x.len()));
    }
}

/// The longest registered secret, in bytes (0 when there is none).
pub(crate) fn longest() -> usize {
    SECRETS.read().unwrap_or_else(|p| p.into_inner()).first().map_or(0, String::len)
}

/// `text` with every registered secret replaced by [`MASK`].
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    let s = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    if !s.iter().any(|x| text.contains(x.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for x in s.iter() {
        out = out.replace(x.as_str(), MASK);
    }
    Cow::Owned(out)
}

/// Bytes with every registered secret replaced by [`MASK`] (for logs, which need not
/// be UTF-8).
pub(crate) fn redact_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    let s = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out: Cow<[u8]> = Cow::Borrowed(bytes);
    for x in s.iter() {
        let needle = x.as_bytes();
        if memchr::memmem::find(&out, needle).is_none() {
            continue;
        }
        let mut next = Vec::with_capacity(out.len());
        let mut from = 0;
        for i in memchr::memmem::find_iter(&out, needle) {
            next.extend_from_slice(&out[from..i]);
            next.extend_from_slice(MASK.as_bytes());
            from = i + needle.len();
        }
        next.extend_from_slice(&out[from..]);
        out = Cow::Owned(next);
    }
    out
}

/// Rewrites a file with its secrets redacted (a log whose writer has stopped).
pub(crate) fn redact_file(path: &std::path::Path) -> std::io::Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Cow::Owned(clean) = redact_bytes(&bytes) {
        std::fs::write(path, clean)?;
    }
    Ok(())
}

/// A generated secret (database passwords): 32 characters from a URL- and
/// shell-safe alphabet, from the OS's random source; registered for redaction.
pub(crate) fn generate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    // Rejection sampling keeps every character equally likely.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut bytes = [0u8; 64];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        for b in bytes.iter().filter(|b| **b < limit) {
            if out.len() < 32 {
                out.push(ALPHABET[*b as usize % ALPHABET.len()] as char);
            }
        }
    }
    register(&out);
    out
}

/// Redacts every string inside a JSON value (reports are redacted as a whole before
/// they are written).
pub(crate) fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let Cow::Owned(r) = redact(s) {
                *s = r;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_json),
        serde_json::Value::Object(o) => o.values_mut().for_each(redact_json),
        _ => {}
    }
}

/// Copies `reader` to `out`, redacting secrets. Works line by line (secrets hold no
/// newline); a line longer than the buffer is passed on in pieces, keeping back enough
/// bytes that a secret cut in two is still seen whole.
pub(crate) fn redacting_copy(mut reader: impl std::io::Read, out: &mut impl std::io::Write) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        if let Some(i) = pending.iter().rposition(|b| *b == b'\n') {
            // Whole lines: no secret spans a newline.
            out.write_all(&redact_bytes(&pending[..=i]))?;
            out.flush()?;
            pending.drain(..=i);
        } else if pending.len() > CHUNK {
            // A long line: mask what is whole in it, pass it on but for the last
            // (longest secret - 1) bytes, where a secret may have only begun.
            if let Cow::Owned(r) = redact_bytes(&pending) {
                pending = r;
            }
            let cut = pending.len() - longest().saturating_sub(1).min(pending.len());
            out.write_all(&pending[..cut])?;
            out.flush()?;
            pending.drain(..cut);
        }
    }
    out.write_all(&redact_bytes(&pending))?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_are_masked_in_text_bytes_json_and_streams() {
        let s = generate();
        let text = format!("postgres://app:{s}@127.0.0.1:5432/shop");
        assert_eq!(redact(&text), "postgres://app:***@127.0.0.1:5432/shop");
        assert_eq!(&*redact_bytes(text.as_bytes()), b"postgres://app:***@127.0.0.1:5432/shop");
        let mut v = serde_json::json!({"a": [text.clone(), 1], "b": {"c": s.clone()}});
        redact_json(&mut v);
        assert!(!v.to_string().contains(&s), "{v}");
        // A stream cut in the middle of the secret, and a long line without newline.
        let long = format!("{}{s}{}", "x".repeat(100_000), "y".repeat(100_000));
        let input = format!("one {s}\n{long}\nlast {s}");
        let mut out = Vec::new();
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len()).min(7_001);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        redacting_copy(Trickle(input.as_bytes()), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains(&s));
        assert_eq!(out.matches(MASK).count(), 3);
        assert_eq!(out.len(), input.len() - 3 * (s.len() - MASK.len()));
    }

    #[test]
    fn short_strings_are_not_secrets() {
        register("abc");
        assert_eq!(redact("abc abc"), "abc abc");
    }
}
