//! PostgreSQL URLs: their passwords redacted, split out for libpq's environment, listed
//! as secrets.

/// Query parameters of a PostgreSQL URL that carry a secret.
const SECRET_PARAMS: [&str; 2] = ["password", "sslpassword"];

/// `postgres://USER:PASSWORD@HOST:PORT/NAME`, the user, password and database name
/// percent-encoded where a URL needs it (generated passwords need nothing).
pub fn postgres_url(user: &str, password: &str, host: &str, port: &str, name: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    // Everything but RFC 3986's unreserved characters.
    const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    let enc = |s| utf8_percent_encode(s, COMPONENT);
    format!("postgres://{}:{}@{host}:{port}/{}", enc(user), enc(password), enc(name))
}

/// A URL with its password (in the user info, or a `password` / `sslpassword`
/// parameter) replaced by `***`. A URL that does not parse loses everything between
/// `://` and its last `@`.
pub fn redact_url(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        return match (url.split_once("://"), url.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
            _ => url.to_string(),
        };
    };
    if u.password().is_some() {
        // Best effort: a URL that cannot carry a password has none to hide.
        #[allow(clippy::let_underscore_must_use)]
        let _ = u.set_password(Some("***"));
    }
    if u.query_pairs().any(|(k, _)| SECRET_PARAMS.contains(&k.as_ref())) {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if SECRET_PARAMS.contains(&k.as_ref()) { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    u.to_string()
}

/// Why a URL's password cannot be taken out of it.
#[derive(Debug, thiserror::Error)]
pub enum SplitPasswordError {
    #[error("does not parse: {0}")]
    Parse(#[source] url::ParseError),
    #[error("cannot carry a password")]
    CannotCarryPassword,
}

/// A URL without its password, and the password (from the user info or a `password=`
/// parameter), percent-decoded, for `PGPASSWORD`; or why the URL cannot be split.
pub fn split_password(url: &str) -> Result<(String, Option<String>), SplitPasswordError> {
    let mut u = url::Url::parse(url).map_err(SplitPasswordError::Parse)?;
    let decode = |p: &str| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned();
    let mut password = u.password().map(decode);
    if u.password().is_some() {
        u.set_password(None).map_err(|()| SplitPasswordError::CannotCarryPassword)?;
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (k, v) in u.query_pairs() {
        if k == "password" {
            password = Some(v.into_owned());
        } else {
            pairs.push((k.into_owned(), v.into_owned()));
        }
    }
    if pairs.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    Ok((u.to_string(), password.filter(|p| !p.is_empty())))
}

/// The secrets a URL carries, as written and percent-decoded (both forms can end up
/// in a log): the user info's password and `password` / `sslpassword` parameters.
pub fn url_secrets(url: &str) -> Vec<String> {
    let Ok(u) = url::Url::parse(url) else { return Vec::new() };
    let mut out = Vec::new();
    if let Some(p) = u.password() {
        out.push(p.to_string());
        out.push(percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned());
    }
    for (k, v) in u.query_pairs() {
        if SECRET_PARAMS.contains(&k.as_ref()) {
            out.push(v.into_owned());
        }
    }
    if let Some(q) = u.query() {
        for raw in q.split('&') {
            if let Some((k, v)) = raw.split_once('=') {
                if SECRET_PARAMS.contains(&k) {
                    out.push(v.to_string());
                }
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_url_reads_back_as_its_parts() {
        assert_eq!(
            postgres_url("app", "Ab3xY", "127.0.0.1", "5432", "shop"),
            "postgres://app:Ab3xY@127.0.0.1:5432/shop"
        );
        let url = postgres_url("app", "p@ss:/w?#%", "db.internal", "5433", "shop db");
        let (bare, p) = split_password(&url).unwrap();
        assert_eq!(p.as_deref(), Some("p@ss:/w?#%"));
        assert_eq!(bare, "postgres://app@db.internal:5433/shop%20db");
    }

    #[test]
    fn urls_lose_every_password_they_carry() {
        let url = "postgres://reader:p%40ss@replica:5432/shop?sslmode=require&password=S3cr%40t&sslpassword=k3y";
        let shown = redact_url(url);
        assert!(!shown.contains("p%40ss") && !shown.contains("S3cr") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("reader:***@replica") && shown.contains("sslmode=require"), "{shown}");
        let secrets = url_secrets(url);
        for s in ["p%40ss", "p@ss", "S3cr%40t", "S3cr@t", "k3y"] {
            assert!(secrets.iter().any(|x| x == s), "{s} not in {secrets:?}");
        }
        // Not a URL the parser takes: everything before the last `@` goes.
        assert_eq!(redact_url("postgres://u:p@ss@h[/db"), "postgres://***@h[/db");
    }

    #[test]
    fn a_password_leaves_the_url_for_the_environment() {
        let (bare, p) = split_password("postgres://reader:p%40ss@replica:5432/shop?sslmode=require").unwrap();
        assert_eq!(
            (bare.as_str(), p.as_deref()),
            ("postgres://reader@replica:5432/shop?sslmode=require", Some("p@ss"))
        );
        let (bare, p) = split_password("postgres://reader@replica/shop?password=S3cr%40t").unwrap();
        assert_eq!((bare.as_str(), p.as_deref()), ("postgres://reader@replica/shop", Some("S3cr@t")));
        assert_eq!(split_password("postgres://replica/shop").unwrap().1, None);
        assert!(split_password("not a url").is_err());
    }
}
