//! What a pull request is told as its request moves: a check run on its head commit
//! (queued → in progress → completed, the report's summary as its output and the report
//! as its details) and the one comment rehearse keeps on it, edited in place — the
//! verdict, the failing step, the migration's time on production's data, the compare
//! page.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::client::Failed;
use crate::engine::requests::{self, Notify, Read, Request, State as RequestState};
use crate::engine::store::{self, Condition};
use crate::server::Shared;

/// Where one pull request's comment is (`github/OWNER/NAME/PR.json`).
fn comment_key(repo: &str, number: u64) -> String {
    format!("github/{repo}/{number}.json")
}

/// Brings the request's check run and the pull request's comment to `state`; the check
/// run's id, or why not now (with the check run's id, when it was made: a retry edits it,
/// never makes another).
pub(crate) async fn tell(
    shared: &Shared,
    read: &Read,
    target: &Notify,
    state: &str,
    check_run: Option<u64>,
) -> Result<Option<u64>, (Option<u64>, Failed)> {
    let Notify::GitHub { repo, pull_request, head_sha, installation } = target else { return Ok(check_run) };
    let Some(gh) = shared.github.as_ref() else { return Err((check_run, Failed::Refused(StatusCode::NOT_FOUND))) };
    // What the store says is checked against the configuration: only its repositories.
    if !super::valid_repo(repo) || !gh.config.repositories.contains_key(repo) {
        return Err((check_run, Failed::Refused(StatusCode::FORBIDDEN)));
    }
    let r = &read.request;
    let base = shared.public_url.trim_end_matches('/');
    let page = format!("{base}/requests/{}", r.id);
    let report = crate::server::notify::report_of(shared, r);
    // The check run.
    let (status, conclusion) = match (&r.state, state) {
        (_, "queued") => ("queued", None),
        (_, "running") => ("in_progress", None),
        (RequestState::Kept { verdict, .. }, _) | (RequestState::Finished { verdict: Some(verdict), .. }, _) => {
            ("completed", Some(if *verdict == crate::report::model::Verdict::Passed { "success" } else { "failure" }))
        }
        _ => ("completed", Some("failure")),
    };
    let details = report.as_ref().map(|(url, _)| url.clone()).unwrap_or_else(|| page.clone());
    let mut body = json!({ "name": "rehearse", "head_sha": head_sha, "status": status, "details_url": details, "external_id": r.id });
    if let Some(c) = conclusion {
        body["conclusion"] = json!(c);
        body["completed_at"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let summary = report.as_ref().and_then(|(_, s)| s.clone()).unwrap_or_else(|| comment(shared, r, state));
        let title = headline(r);
        body["output"] = json!({ "title": title, "summary": summary.chars().take(60_000).collect::<String>() });
    }
    let what = format!("github: check run of request {} on {repo}", r.id);
    let check_run = match check_run {
        None => {
            let v = gh
                .api(shared, *installation, Method::POST, &format!("/repos/{repo}/check-runs"), Some(&body), &what)
                .await
                .map_err(|f| (None, f))?;
            v["id"].as_u64()
        }
        Some(id) => {
            gh.api(shared, *installation, Method::PATCH, &format!("/repos/{repo}/check-runs/{id}"), Some(&body), &what)
                .await
                .map_err(|f| (Some(id), f))?;
            Some(id)
        }
    };
    comment_on(shared, gh, r, repo, *pull_request, *installation, state).await.map_err(|f| (check_run, f))?;
    Ok(check_run)
}

/// The pull request's one comment, brought to `state`: edited in place, or posted (and
/// its id kept) when there is none yet or it was deleted.
async fn comment_on(
    shared: &Shared,
    gh: &super::GitHub,
    r: &Request,
    repo: &str,
    pull_request: u64,
    installation: Option<u64>,
    state: &str,
) -> Result<(), Failed> {
    // The one comment of the pull request, edited in place.
    let text = comment(shared, r, state);
    let key = comment_key(repo, pull_request);
    let known = store::retrying(|| shared.store.get(&key)).await.ok().flatten();
    let comment_id =
        known.as_ref().and_then(|o| serde_json::from_slice::<Value>(&o.body).ok()).and_then(|v| v["comment"].as_u64());
    let what = format!("github: the comment on {repo}#{pull_request}");
    match comment_id {
        Some(id) => {
            let edited = gh
                .api(
                    shared,
                    installation,
                    Method::PATCH,
                    &format!("/repos/{repo}/issues/comments/{id}"),
                    Some(&json!({ "body": text })),
                    &what,
                )
                .await;
            match edited {
                Ok(_) => {}
                // Deleted by someone: forgotten, and posted anew next time.
                Err(Failed::Refused(StatusCode::NOT_FOUND)) => {
                    let _forgotten = store::delete_current(shared.store.as_ref(), &key).await;
                    return Err(Failed::Later(std::time::Duration::from_secs(1), "the comment was deleted".into()));
                }
                Err(f) => return Err(f),
            }
        }
        None => {
            let v = gh
                .api(
                    shared,
                    installation,
                    Method::POST,
                    &format!("/repos/{repo}/issues/{pull_request}/comments"),
                    Some(&json!({ "body": text })),
                    &what,
                )
                .await?;
            if let Some(id) = v["id"].as_u64() {
                let record = serde_json::to_vec(&json!({ "comment": id })).expect("serializes");
                // Two posts at once: the second's comment is edited from now on by nobody.
                let _kept = store::put_checked(shared.store.as_ref(), &key, &record, Condition::Absent).await;
            }
        }
    }
    Ok(())
}

/// "demo · v3 — failed".
fn headline(r: &Request) -> String {
    let what = match &r.ask {
        requests::Ask::Compare { baseline, candidate, .. } => {
            format!("{} · {candidate} against {baseline}", r.environment)
        }
        requests::Ask::DryRun { release, .. } => format!("{} · {release} (dry run)", r.environment),
        requests::Ask::Rehearse { release, .. } => format!("{} · {release}", r.environment),
    };
    let state = match &r.state {
        RequestState::Queued => "queued".to_string(),
        RequestState::Running { .. } => "building…".to_string(),
        RequestState::Kept { verdict, .. } => format!("{}, kept", verdict.as_str()),
        RequestState::Finished { verdict: Some(v), .. } => v.as_str().to_string(),
        RequestState::Finished { .. } => "error".to_string(),
    };
    format!("{what} — {state}")
}

/// The pull request's comment for `r` at `state`.
fn comment(shared: &Shared, r: &Request, state: &str) -> String {
    let base = shared.public_url.trim_end_matches('/');
    let mut out = format!("### rehearse: {}\n\n", headline(r));
    out.push_str(&format!("Request [{}]({base}/requests/{})", r.id, r.id));
    if let Some(c) = r.change.as_ref().and_then(|c| c.commit.as_ref()) {
        out.push_str(&format!(" · commit `{}`", &c[..c.len().min(12)]));
    }
    out.push('\n');
    if state == "queued" || state == "running" {
        out.push_str("\nBuilding a copy of production and rehearsing the release…\n");
        return out;
    }
    if let Some(report) = crate::server::notify::report_json(shared, r) {
        if let Some(f) = &report.failure {
            out.push_str(&format!("\n**Failed:** {} — {}\n", f.resource.as_deref().unwrap_or(&f.phase), f.message));
        } else if let Some(reason) = &report.reason {
            out.push_str(&format!("\n**Why:** {reason}\n"));
        }
        let migration: u64 = report.steps.iter().filter(|s| s.action == "install").map(|s| s.duration_ms).sum();
        if migration > 0 {
            out.push_str(&format!("\n**Migration on production's data:** {migration} ms\n"));
        }
        out.push_str(&format!("\n[report]({base}/runs/{}/report.html)\n", report.run_id));
    } else if let RequestState::Finished { error: Some(e), .. } = &r.state {
        out.push_str(&format!("\n**Why:** {e}\n"));
    }
    if let RequestState::Finished { comparison: Some(c), .. } = &r.state {
        out.push_str(&format!("\n**Compare:** [{base}/compares/{c}/compare.html]({base}/compares/{c}/compare.html)\n"));
    }
    if let RequestState::Kept { expires_at, .. } = &r.state {
        out.push_str(&format!(
            "\nKept until {} for @{}; closing the pull request (or `/rehearse down`) destroys it.\n",
            expires_at.format("%Y-%m-%d %H:%M UTC"),
            r.user
        ));
    }
    out
}
