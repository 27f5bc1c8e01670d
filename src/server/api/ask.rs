//! The API's asks: a rehearsal, a dry run, a comparison — each checked (CSRF, rate,
//! the environment's rules, the user's limit), recorded in the store, then accepted
//! (202 and the request). What decides an ask ([`decide`]) is the same for a webhook's
//! delivery (src/server/hooks.rs), which is authenticated by its signature instead.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::{offered, App, Asked, Caller};
use crate::engine::requests::{self, Ask, Request};
use crate::server::audit::Decision;
use crate::server::auth::Who;

/// What is asked, before it is checked: the operation and its releases.
pub(crate) enum Wanted<'a> {
    Rehearse { release: &'a str, from: Option<&'a str>, chaos: Option<&'a [String]> },
    DryRun { release: &'a str, ttl: Option<&'a str> },
    Compare { baseline: &'a str, candidate: &'a str, deploy: bool },
}

/// Decides whether `user` may have `wanted` on `environment`: the environment offered,
/// the releases by grammar, the environment's rule for the operation, a dry run's ttl
/// within the rule's and the description's `max_ttl`. The ask, or the refusal's status
/// and why.
pub(crate) fn decide(
    app: &App,
    user: &str,
    environment: &str,
    wanted: Wanted<'_>,
) -> Result<Ask, (StatusCode, String)> {
    let releases: Vec<&str> = match &wanted {
        Wanted::Rehearse { release, from: None, .. } | Wanted::DryRun { release, .. } => vec![release],
        Wanted::Rehearse { release, from: Some(from), .. } => vec![from, release],
        Wanted::Compare { baseline, candidate, .. } => vec![baseline, candidate],
    };
    offered_with(app, environment, &releases)?;
    let rule = app.shared.config.rule(environment);
    let forbidden = |why: String| (StatusCode::FORBIDDEN, why);
    match wanted {
        Wanted::Rehearse { release, from, chaos } => {
            rule.may_rehearse(user, environment).map_err(forbidden)?;
            if let Some(names) = chaos {
                playable(app, environment, release, names, from.is_some())?;
            }
            if let Some(from) = from {
                deployable(app, environment, from, release)?;
            }
            let chaos = chaos.map(<[String]>::to_vec);
            Ok(Ask::Rehearse { release: release.to_string(), from: from.map(str::to_string), chaos })
        }
        Wanted::Compare { baseline, candidate, deploy } => {
            rule.may_compare(user, environment).map_err(forbidden)?;
            if deploy {
                deployable(app, environment, baseline, candidate)?;
            }
            Ok(Ask::Compare { baseline: baseline.to_string(), candidate: candidate.to_string(), deploy })
        }
        Wanted::DryRun { release, ttl } => {
            rule.may_keep(user, environment).map_err(forbidden)?;
            // The description's ttl and max_ttl: the default, and a bound the rule cannot raise.
            let path = app.shared.config.environments.join(format!("{environment}.yaml"));
            let desc = crate::description::load(&path, Some(release)).map_err(|d| {
                let why = format!("the description of {environment} does not load: {}", d.render());
                (StatusCode::INTERNAL_SERVER_ERROR, crate::sys::text::printable(&why))
            })?;
            let desc = desc.desc;
            let ttl = match ttl {
                None => desc.ttl,
                Some(text) => crate::description::bounded_duration(
                    "ttl",
                    text,
                    std::time::Duration::from_secs(60),
                    crate::description::MAX_MAX_TTL,
                )
                .map_err(|e| (StatusCode::BAD_REQUEST, crate::sys::text::printable(&e.to_string())))?,
            };
            let fmt = crate::description::format_duration;
            let (max, whose) = match rule.max_ttl {
                Some(m) if m < desc.max_ttl => (m, format!("rules.{environment}.max_ttl")),
                _ => (desc.max_ttl, "the description's max_ttl".to_string()),
            };
            if ttl > max {
                let why = format!(
                    "ttl {} is over the maximum {} for dry runs of {environment} ({whose})",
                    fmt(ttl),
                    fmt(max)
                );
                return Err(forbidden(why));
            }
            Ok(Ask::DryRun { release: release.to_string(), ttl_secs: ttl.as_secs() })
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RehearseBody {
    environment: String,
    release: String,
    /// Rehearse the deploy of `release` over this release, under the description's
    /// load (`rehearse run --from`).
    #[serde(default)]
    from: Option<String>,
    /// A game day (`rehearse run --chaos`): the description's faults by name, every
    /// one of them when empty.
    #[serde(default)]
    chaos: Option<Vec<String>>,
    /// The change it rehearses (commit, author, pull request, title, URL).
    #[serde(default)]
    change: Option<requests::Change>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DryRunBody {
    environment: String,
    release: String,
    /// How long to keep it (`2h`; default: the description's `ttl`).
    #[serde(default)]
    ttl: Option<String>,
    /// The change it rehearses (commit, author, pull request, title, URL).
    #[serde(default)]
    change: Option<requests::Change>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CompareBody {
    environment: String,
    baseline: String,
    candidate: String,
    /// Rehearse the candidate's deploy over the baseline, the baseline's twin getting
    /// the same load without it (`rehearse compare --deploy`).
    #[serde(default)]
    deploy: bool,
    /// The change it rehearses (commit, author, pull request, title, URL).
    #[serde(default)]
    change: Option<requests::Change>,
}

/// A change asked through the API: its body, its decision, then [`accept`].
async fn asked<T>(
    app: &App,
    asked: &Asked,
    who: &Who,
    headers: &HeaderMap,
    body: Result<Json<T>, axum::extract::rejection::JsonRejection>,
    wanted: impl FnOnce(&T) -> (String, Wanted<'_>, Option<requests::Change>),
) -> Response {
    let body = match app.change_body(asked, who, headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (environment, w, change) = wanted(&body);
    if let Some(Err(why)) = change.as_ref().map(requests::Change::check) {
        return app.refuse(asked, who, StatusCode::BAD_REQUEST, why.replace("its change's", "the change's")).await;
    }
    match decide(app, &who.user, &environment, w) {
        Ok(ask) => {
            let mut request = Request::new(&who.user, &environment, ask);
            request.change = change;
            accept(app, asked, who, request, false).await
        }
        Err((status, why)) => app.refuse(asked, who, status, why).await,
    }
}

pub(super) async fn rehearse(
    State(app): State<App>,
    Caller { who, asked: a }: Caller,
    headers: HeaderMap,
    body: Result<Json<RehearseBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    asked(&app, &a, &who, &headers, body, |b| {
        let wanted = Wanted::Rehearse { release: &b.release, from: b.from.as_deref(), chaos: b.chaos.as_deref() };
        (b.environment.clone(), wanted, b.change.clone())
    })
    .await
}

pub(super) async fn dry_run(
    State(app): State<App>,
    Caller { who, asked: a }: Caller,
    headers: HeaderMap,
    body: Result<Json<DryRunBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    asked(&app, &a, &who, &headers, body, |b| {
        (b.environment.clone(), Wanted::DryRun { release: &b.release, ttl: b.ttl.as_deref() }, b.change.clone())
    })
    .await
}

pub(super) async fn comparison(
    State(app): State<App>,
    Caller { who, asked: a }: Caller,
    headers: HeaderMap,
    body: Result<Json<CompareBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    asked(&app, &a, &who, &headers, body, |b| {
        let wanted = Wanted::Compare { baseline: &b.baseline, candidate: &b.candidate, deploy: b.deploy };
        (b.environment.clone(), wanted, b.change.clone())
    })
    .await
}

/// Whether the deploy of `release` over `from` can be rehearsed on `environment` (as
/// `run --from` checks): 400 when the description cannot rehearse a deploy, 422 when
/// the release serving first cannot be built (missing, the release itself).
fn deployable(app: &App, environment: &str, from: &str, release: &str) -> Result<(), (StatusCode, String)> {
    let path = app.shared.config.environments.join(format!("{environment}.yaml"));
    let loaded = crate::description::load(&path, Some(from)).map_err(|d| {
        let why = format!("the description of {environment} does not load: {}", d.render());
        (StatusCode::INTERNAL_SERVER_ERROR, crate::sys::text::printable(&why))
    })?;
    crate::engine::deploy::refusal(&loaded, from, release).map_err(|(code, why)| {
        let status =
            if code == crate::exit::BUILD_FAILED { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::BAD_REQUEST };
        (status, crate::sys::text::printable(&why))
    })
}

/// Whether a game day of `names` (all when empty) can be run on `environment` (as
/// `run --chaos` decides it before anything is built): 400 for a fault that is not a
/// name, too many, or what `run --chaos` refuses (no `chaos:`, a fault it lacks, with
/// `--from`, a kind or provider not run yet).
fn playable(
    app: &App,
    environment: &str,
    release: &str,
    names: &[String],
    from: bool,
) -> Result<(), (StatusCode, String)> {
    if names.len() > requests::MAX_FAULTS {
        return Err((StatusCode::BAD_REQUEST, format!("a game day names at most {} faults", requests::MAX_FAULTS)));
    }
    if let Some(n) = names.iter().find(|n| !requests::valid_fault(n)) {
        return Err((StatusCode::BAD_REQUEST, format!("{:?} is not a fault's name", crate::sys::text::printable(n))));
    }
    let path = app.shared.config.environments.join(format!("{environment}.yaml"));
    let loaded = crate::description::load(&path, Some(release)).map_err(|d| {
        let why = format!("the description of {environment} does not load: {}", d.render());
        (StatusCode::INTERNAL_SERVER_ERROR, crate::sys::text::printable(&why))
    })?;
    crate::engine::chaos::refusal(&loaded, names, from, false)
        .map_err(|(_, why)| (StatusCode::BAD_REQUEST, crate::sys::text::printable(&why)))
}

/// Whether `environment` is offered and each of `releases` a release version; the
/// refusal's status and why when not.
fn offered_with(app: &App, environment: &str, releases: &[&str]) -> Result<(), (StatusCode, String)> {
    if !requests::valid_environment(environment) || !offered(&app.shared).iter().any(|e| e == environment) {
        return Err((StatusCode::NOT_FOUND, "no such environment".into()));
    }
    match releases.iter().find(|r| !requests::valid_release(r)) {
        Some(r) => {
            Err((StatusCode::BAD_REQUEST, format!("{:?} is not a release version", crate::sys::text::printable(r))))
        }
        None => Ok(()),
    }
}

/// Whether `who` may have one more environment (`max_per_user`); the refusal when not.
pub(crate) async fn within_limit(app: &App, asked: &Asked, who: &Who, environment: &str) -> Result<(), Response> {
    let Some(max) = app.shared.config.rule(environment).max_per_user else { return Ok(()) };
    let open = match requests::list_known(app.shared.store.as_ref(), &app.shared.finished).await {
        Ok((found, _)) => found.iter().filter(|r| r.request.user == who.user && !r.request.finished()).count(),
        Err(e) => {
            return Err(app
                .refuse(asked, who, StatusCode::SERVICE_UNAVAILABLE, format!("cannot read the queue: {e}"))
                .await)
        }
    };
    if open >= max {
        let why =
            format!("{} has {open} requests queued, running or kept; at most {max} (rules.max_per_user)", who.user);
        return Err(app.refuse(asked, who, StatusCode::TOO_MANY_REQUESTS, why).await);
    }
    Ok(())
}

/// Records an allowed `request` (within its user's limit, unless `limit_checked` says that was
/// done) and answers 202 with it.
pub(crate) async fn accept(app: &App, asked: &Asked, who: &Who, request: Request, limit_checked: bool) -> Response {
    if !limit_checked {
        if let Err(r) = within_limit(app, asked, who, &request.environment).await {
            return r;
        }
    }
    if let Err(why) = request.valid() {
        let why = why.replace("its ", "the request's ");
        return app.refuse(asked, who, StatusCode::BAD_REQUEST, why).await;
    }
    // Recorded before it is accepted: a restart loses nothing that was answered 202.
    if let Err(e) = requests::record(app.shared.store.as_ref(), &request).await {
        return app
            .refuse(asked, who, StatusCode::SERVICE_UNAVAILABLE, format!("cannot record the request: {e}"))
            .await;
    }
    let what = match &request.ask {
        Ask::Rehearse { release, from: None, chaos: None } => {
            format!("rehearse {} release {release}", request.environment)
        }
        Ask::Rehearse { release, from: Some(from), .. } => {
            format!("rehearse {} release {release} deployed over {from}", request.environment)
        }
        Ask::Rehearse { release, from: None, chaos: Some(names) } => {
            let which = if names.is_empty() { "every fault".to_string() } else { names.join(", ") };
            format!("rehearse {} release {release} on a game day ({which})", request.environment)
        }
        Ask::Compare { baseline, candidate, deploy } => {
            let how = if *deploy { " (its deploy under load)" } else { "" };
            format!("compare {} release {candidate} against {baseline}{how}", request.environment)
        }
        Ask::DryRun { release, ttl_secs } => format!(
            "dry run of {} release {release} for {}",
            request.environment,
            crate::description::format_duration(std::time::Duration::from_secs(*ttl_secs))
        ),
    };
    let why = format!("{what}: request {}", request.id);
    app.audit(asked, Some(&who.user), Decision::Allowed, &why).await;
    app.shared.queue.poke();
    let url = format!("/api/v1/requests/{}", request.id);
    (StatusCode::ACCEPTED, [(header::LOCATION, url)], Json(request)).into_response()
}
