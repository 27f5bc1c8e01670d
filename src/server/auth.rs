//! Who is asking: the authenticating proxy's identity header, believed only from the
//! proxy's configured addresses, or a personal API token (`Authorization: Bearer`),
//! compared by its SHA-256 (the configuration holds no token). And the CSRF token a
//! page sends back with every change it asks for: HMAC-SHA256 of the user under the
//! server's secret, so that another site cannot make a signed-in browser ask.

use std::net::SocketAddr;
use std::path::Path;

use axum::http::HeaderMap;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::config::Config;
use crate::engine::requests::valid_user;
use crate::sys::secure_fs::FsError;

/// The header a page sends its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-rehearse-csrf";

/// How a user was identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// The proxy's header: a browser, whose cookies another site can make it send.
    Proxy,
    /// A token: a script; nothing ambient, so no CSRF token is needed.
    Token,
}

#[derive(Clone, Debug)]
pub(crate) struct Who {
    pub user: String,
    pub via: Via,
}

/// Identifies the request from `peer` with `headers`, or says why not.
pub(crate) fn identify(config: &Config, peer: SocketAddr, headers: &HeaderMap) -> Result<Who, String> {
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("the Authorization header is not `Bearer TOKEN`")?;
        let hash = hex(&Sha256::digest(token.trim().as_bytes()));
        return match config.tokens.iter().find(|t| t.sha256 == hash) {
            Some(t) => Ok(Who { user: t.user.clone(), via: Via::Token }),
            None => Err("the API token is not one this server knows".into()),
        };
    }
    let Some(proxy) = &config.proxy else {
        return Err("no identity: send an API token (Authorization: Bearer)".into());
    };
    let Some(value) = headers.get(proxy.header.as_str()) else {
        return Err(format!("no identity: no {} header from the proxy and no API token", proxy.header));
    };
    if !proxy.trusted.contains(&peer.ip().to_canonical()) {
        return Err(format!(
            "the identity header {} came from {}, which is not a trusted proxy",
            proxy.header,
            peer.ip()
        ));
    }
    let user = value.to_str().unwrap_or_default().trim();
    if !valid_user(user) {
        return Err(format!("the identity header {} does not hold a user name", proxy.header));
    }
    Ok(Who { user: user.to_string(), via: Via::Proxy })
}

/// The CSRF token of `user` under `secret`.
pub(crate) fn csrf_token(secret: &[u8], user: &str) -> String {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"csrf\0");
    mac.update(user.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Whether a change asked by `who` carries what it must: nothing for a token, the
/// user's CSRF token for a browser (compared in constant time).
pub(crate) fn check_csrf(secret: &[u8], who: &Who, headers: &HeaderMap) -> Result<(), String> {
    if who.via == Via::Token {
        return Ok(());
    }
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(b"csrf\0");
    mac.update(who.user.as_bytes());
    let Some(bytes) = unhex(sent) else {
        return Err("no CSRF token (the X-Rehearse-CSRF header) with a change asked through the proxy".into());
    };
    mac.verify_slice(&bytes).map_err(|_| "the CSRF token is not this user's".to_string())
}

/// The server's secret: read from `path`, or made (32 random bytes, mode 0600).
/// The CSRF key the operator gives every replica (`csrf_key_file`), or a hook's secret:
/// at least 32 bytes.
pub(crate) fn read_key_file(path: &Path) -> Result<Vec<u8>, FsError> {
    read_secret_file(path, 32)
}

/// A secret the operator gives in a file (a key, a token, a private key): readable by
/// its owner alone, `min` bytes to 16 KiB.
pub(crate) fn read_secret_file(path: &Path, min: usize) -> Result<Vec<u8>, FsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| FsError::io("read", path, e))?;
    let refuse = |why: String| FsError::io("use", path, std::io::Error::other(why));
    if meta.mode() & 0o077 != 0 {
        return Err(refuse("a secret's file is readable by others than its owner (chmod 0600 it)".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| FsError::io("read", path, e))?;
    if bytes.len() < min || bytes.len() > 16 * 1024 {
        return Err(refuse(format!("a secret's file here holds {min} bytes to 16 KiB (`head -c 32 /dev/urandom`)")));
    }
    Ok(bytes)
}

pub(crate) fn load_or_make_secret(path: &Path) -> Result<Vec<u8>, FsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == 32 => return Ok(bytes),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FsError::io("read", path, e)),
    }
    let mut bytes = vec![0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| FsError::io("make", path, std::io::Error::other(e.to_string())))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| FsError::io("write", path, e))?;
    f.write_all(&bytes).map_err(|e| FsError::io("write", path, e))?;
    Ok(bytes)
}

/// A new API token and the configuration entry that lets it in.
pub fn new_token(user: &str) -> (String, String) {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the system has randomness");
    let token = format!("rht_{}", hex(&bytes));
    let entry = format!("  - user: {user}\n    sha256: {}\n", hex(&Sha256::digest(token.as_bytes())));
    (token, entry)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.yaml");
        std::fs::write(&p, yaml).unwrap();
        Config::load(&p).unwrap()
    }

    #[test]
    fn the_header_is_believed_from_the_proxy_only_and_tokens_by_their_hash() {
        let (token, entry) = new_token("ci");
        let c = config(&format!(
            "environments: .\nproxy:\n  header: X-Forwarded-User\n  trusted: [127.0.0.1]\ntokens:\n{entry}"
        ));
        let proxy: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-user", "alice".parse().unwrap());
        assert_eq!(identify(&c, proxy, &h).unwrap().user, "alice");
        let e = identify(&c, other, &h).unwrap_err();
        assert!(e.contains("not a trusted proxy"), "{e}");
        h.insert("x-forwarded-user", "al ice".parse().unwrap());
        assert!(identify(&c, proxy, &h).is_err());
        let mut t = HeaderMap::new();
        t.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let who = identify(&c, other, &t).unwrap();
        assert_eq!((who.user.as_str(), who.via), ("ci", Via::Token));
        t.insert("authorization", "Bearer rht_nope".parse().unwrap());
        assert!(identify(&c, other, &t).unwrap_err().contains("not one this server knows"));
        assert!(identify(&c, proxy, &HeaderMap::new()).unwrap_err().starts_with("no identity"));
    }

    #[test]
    fn a_browser_change_needs_its_users_csrf_token() {
        let secret = vec![7u8; 32];
        let alice = Who { user: "alice".into(), via: Via::Proxy };
        let mut h = HeaderMap::new();
        assert!(check_csrf(&secret, &alice, &h).is_err());
        h.insert(CSRF_HEADER, csrf_token(&secret, "bob").parse().unwrap());
        assert!(check_csrf(&secret, &alice, &h).is_err());
        h.insert(CSRF_HEADER, csrf_token(&secret, "alice").parse().unwrap());
        assert!(check_csrf(&secret, &alice, &h).is_ok());
        let script = Who { user: "ci".into(), via: Via::Token };
        assert!(check_csrf(&secret, &script, &HeaderMap::new()).is_ok());
    }
}
