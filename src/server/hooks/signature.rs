//! The signatures of what a hook receives and of what it sends back, each by its
//! documented algorithm, compared in constant time:
//! - rehearse's own (a generic webhook and its callback): `X-Rehearse-Signature:
//!   t=UNIX_SECONDS,v1=HEX`, HMAC-SHA256 under the hook's secret of `"{t}.{body}"`, the
//!   timestamp within the hook's tolerance of now (as Stripe's webhooks sign);
//! - GitHub's: `X-Hub-Signature-256: sha256=HEX`, HMAC-SHA256 of the body under the
//!   webhook's secret;
//! - Slack's (version 0): `X-Slack-Signature: v0=HEX`, HMAC-SHA256 of
//!   `"v0:{X-Slack-Request-Timestamp}:{body}"` under the app's signing secret, the
//!   timestamp within five minutes.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

/// Why a signature is not believed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureError {
    #[error("no signature ({0} header)")]
    Missing(&'static str),
    #[error("the signature header is not `{0}`")]
    Malformed(&'static str),
    #[error("the signature's timestamp is {age} s from now, outside the {tolerance} s allowed (a replay, or a clock that is off)")]
    Stale { age: i64, tolerance: i64 },
    #[error("the signature does not match the body under this hook's secret")]
    Mismatch,
}

fn mac(secret: &[u8], parts: &[&[u8]]) -> hmac::Hmac<Sha256> {
    let mut m = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    for p in parts {
        m.update(p);
    }
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// rehearse's signature header for `body` at `t`.
pub(crate) fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let m = mac(secret, &[t.to_string().as_bytes(), b".", body]);
    format!("t={t},v1={}", hex(&m.finalize().into_bytes()))
}

/// Checks rehearse's signature `header` on `body` at `now` (seconds), `tolerance` seconds
/// either way.
pub(crate) fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), SignatureError> {
    const SHAPE: &str = "t=UNIX_SECONDS,v1=HEX";
    let header = header.ok_or(SignatureError::Missing("X-Rehearse-Signature"))?;
    let (mut t, mut v1) = (None, None);
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = unhex(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return Err(SignatureError::Malformed(SHAPE)) };
    let age = now.saturating_sub(t);
    if age.abs() > tolerance {
        return Err(SignatureError::Stale { age, tolerance });
    }
    mac(secret, &[t.to_string().as_bytes(), b".", body]).verify_slice(&v1).map_err(|_| SignatureError::Mismatch)
}

/// Checks GitHub's `X-Hub-Signature-256` on `body`.
pub(crate) fn verify_github(secret: &[u8], header: Option<&str>, body: &[u8]) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing("X-Hub-Signature-256"))?;
    let sig = header.strip_prefix("sha256=").and_then(unhex).ok_or(SignatureError::Malformed("sha256=HEX"))?;
    mac(secret, &[body]).verify_slice(&sig).map_err(|_| SignatureError::Mismatch)
}

/// GitHub's signature header for `body` (the tests' fake GitHub sends it).
#[cfg(test)]
pub(crate) fn sign_github(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex(&mac(secret, &[body]).finalize().into_bytes()))
}

/// Checks Slack's version-0 signature on `body` sent at `timestamp`, at `now`.
pub(crate) fn verify_slack(
    secret: &[u8],
    signature: Option<&str>,
    timestamp: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let sig = signature.ok_or(SignatureError::Missing("X-Slack-Signature"))?;
    let ts = timestamp.ok_or(SignatureError::Missing("X-Slack-Request-Timestamp"))?;
    let t =
        ts.trim().parse::<i64>().map_err(|_| SignatureError::Malformed("X-Slack-Request-Timestamp: UNIX_SECONDS"))?;
    let age = now.saturating_sub(t);
    if age.abs() > 300 {
        return Err(SignatureError::Stale { age, tolerance: 300 });
    }
    let v0 = sig.strip_prefix("v0=").and_then(unhex).ok_or(SignatureError::Malformed("v0=HEX"))?;
    mac(secret, &[b"v0:", ts.trim().as_bytes(), b":", body]).verify_slice(&v0).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rehearse_signatures_are_checked_for_body_secret_and_time() {
        let body = br#"{"environment":"demo","release":"v3"}"#;
        let h = sign(b"s3cret", 1_700_000_000, body);
        assert_eq!(verify(b"s3cret", Some(&h), body, 1_700_000_010, 300), Ok(()));
        assert_eq!(verify(b"other", Some(&h), body, 1_700_000_010, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(b"s3cret", Some(&h), b"{}", 1_700_000_010, 300), Err(SignatureError::Mismatch));
        assert!(matches!(verify(b"s3cret", Some(&h), body, 1_700_001_000, 300), Err(SignatureError::Stale { .. })));
        assert!(matches!(verify(b"s3cret", None, body, 0, 300), Err(SignatureError::Missing(_))));
        assert!(matches!(verify(b"s3cret", Some("v1=zz"), body, 0, 300), Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn githubs_example_signature_verifies() {
        // GitHub's documentation, "Validating webhook deliveries": secret "It's a Secret
        // to Everybody", payload "Hello, World!".
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign_github(b"It's a Secret to Everybody", b"Hello, World!"), expected);
        assert_eq!(verify_github(b"It's a Secret to Everybody", Some(expected), b"Hello, World!"), Ok(()));
        assert_eq!(verify_github(b"wrong", Some(expected), b"Hello, World!"), Err(SignatureError::Mismatch));
    }

    #[test]
    fn slacks_example_signature_verifies() {
        // Slack's documentation, "Verifying requests from Slack": its example secret,
        // timestamp and body, and the signature it shows.
        let secret = b"8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(verify_slack(secret, Some(sig), Some("1531420618"), body, 1_531_420_618), Ok(()));
        assert!(matches!(
            verify_slack(secret, Some(sig), Some("1531420618"), body, 1_531_430_000),
            Err(SignatureError::Stale { .. })
        ));
    }
}
