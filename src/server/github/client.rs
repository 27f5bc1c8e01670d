//! GitHub's REST API, authenticated with a token or as a GitHub App (a JWT signed RS256
//! with the App's private key, exchanged for an installation token, kept until a little
//! before it expires), every call through the server's one outbound client.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

use crate::server::config::GitHub as Config;
use crate::server::outbound::{Call, Outcome};
use crate::server::Shared;

/// How the server authenticates to GitHub.
enum Auth {
    Token(String),
    App { id: u64, key: jsonwebtoken::EncodingKey, installation: Option<u64> },
}

/// GitHub, configured and authenticated.
pub(crate) struct GitHub {
    pub(crate) config: Config,
    pub(crate) webhook_secret: Vec<u8>,
    auth: Auth,
    /// An App's installation tokens, until a little before they expire.
    tokens: Mutex<HashMap<u64, (String, Instant)>>,
}

/// Why the GitHub section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    #[error("{0}")]
    File(#[from] crate::sys::secure_fs::FsError),
    #[error("the GitHub App's private key {}: {why}", .path.display())]
    Key { path: std::path::PathBuf, why: String },
}

impl GitHub {
    pub(crate) fn load(config: &Config) -> Result<GitHub, GitHubError> {
        let webhook_secret = crate::server::auth::read_secret_file(&config.webhook_secret_file, 16)?;
        let auth = match (&config.token_file, &config.app) {
            (Some(t), _) => {
                let token = crate::server::auth::read_secret_file(t, 8)?;
                Auth::Token(String::from_utf8_lossy(&token).trim().to_string())
            }
            (None, Some(app)) => {
                let pem = crate::server::auth::read_secret_file(&app.private_key_file, 64)?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem)
                    .map_err(|e| GitHubError::Key { path: app.private_key_file.clone(), why: e.to_string() })?;
                Auth::App { id: app.id, key, installation: app.installation_id }
            }
            (None, None) => unreachable!("the configuration's check names one"),
        };
        Ok(GitHub { config: config.clone(), webhook_secret, auth, tokens: Mutex::default() })
    }

    /// The `Authorization` header's value for the installation `installation`.
    async fn authorization(&self, shared: &Shared, installation: Option<u64>) -> Result<String, String> {
        let (id, key, configured) = match &self.auth {
            Auth::Token(t) => return Ok(format!("Bearer {t}")),
            Auth::App { id, key, installation } => (*id, key, *installation),
        };
        let Some(inst) = configured.or(installation) else {
            return Err("no installation: the event names none and github.app.installation_id is not set".into());
        };
        if let Some((t, until)) = self.tokens.lock().expect("not poisoned").get(&inst) {
            if Instant::now() < *until {
                return Ok(format!("Bearer {t}"));
            }
        }
        // The App's JWT: issued a minute back (clock drift), valid nine minutes.
        let now = chrono::Utc::now().timestamp();
        let claims = json!({ "iat": now - 60, "exp": now + 540, "iss": id.to_string() });
        let jwt = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, key)
            .map_err(|e| format!("cannot sign the App's JWT: {e}"))?;
        let call = self.call(
            Method::POST,
            &format!("/app/installations/{inst}/access_tokens"),
            None,
            &format!("Bearer {jwt}"),
            "github: an installation token",
        );
        match shared.outbound.send(shared.store.as_ref(), &call).await {
            Outcome::Done { body, .. } => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let Some(token) = v["token"].as_str().filter(|t| !t.is_empty() && t.len() < 1024) else {
                    return Err("GitHub's answer has no installation token".into());
                };
                // An hour, as GitHub gives them; renewed five minutes early.
                let until = Instant::now() + Duration::from_secs(55 * 60);
                self.tokens.lock().expect("not poisoned").insert(inst, (token.to_string(), until));
                Ok(format!("Bearer {token}"))
            }
            Outcome::Refused { status, .. } => Err(format!("GitHub refused the installation token ({status})")),
            Outcome::Later { why, .. } => Err(format!("no installation token now: {why}")),
        }
    }

    fn call<'a>(&self, method: Method, path: &str, body: Option<&Value>, auth: &str, what: &'a str) -> Call<'a> {
        let value = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("-"));
        let mut headers = vec![
            (header::ACCEPT, HeaderValue::from_static("application/vnd.github+json")),
            (HeaderName::from_static("x-github-api-version"), HeaderValue::from_static("2022-11-28")),
            (header::AUTHORIZATION, value(auth)),
        ];
        if body.is_some() {
            headers.push((header::CONTENT_TYPE, HeaderValue::from_static("application/json")));
        }
        Call {
            method,
            url: format!("{}{path}", self.config.api_url.trim_end_matches('/')),
            headers,
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            what,
        }
    }

    /// One API call, authenticated.
    pub(crate) async fn api(
        &self,
        shared: &Shared,
        installation: Option<u64>,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, Failed> {
        let auth = self
            .authorization(shared, installation)
            .await
            .map_err(|why| Failed::Later(Duration::from_secs(30), why))?;
        match shared.outbound.send(shared.store.as_ref(), &self.call(method, path, body, &auth, what)).await {
            Outcome::Done { body, .. } => Ok(serde_json::from_slice(&body).unwrap_or(Value::Null)),
            Outcome::Refused { status, .. } => Err(Failed::Refused(status)),
            Outcome::Later { after, why } => Err(Failed::Later(after, why)),
        }
    }
}

/// Why an API call did not do its work.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Try again after this.
    Later(Duration, String),
    /// GitHub refused it (a 4xx): not worth trying again.
    Refused(StatusCode),
}
