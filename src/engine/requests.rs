//! Requests to the self-service server (`rehearse serve`): what a user asked for,
//! recorded in the state store before the server says it is accepted, so that a
//! restart loses nothing; claimed by one server with a compare-and-swap on the record
//! (two replicas on one store never both run it); finished with how the run ended.
//!
//! Keys: `requests/REQUEST_ID.json`, one object a request, rewritten only with
//! `If-Match` on the version that was read. Everything read back is checked by grammar
//! and size as the store's other records are: another server (or anyone who may write
//! the store) may have written it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::store::{self, Condition, Etag, ObjectStore, StoreError};
pub use crate::report::model::Change;
use crate::report::model::Verdict;
pub use crate::sys::text::{valid_url, valid_user};

/// Where the requests live in the store.
pub const PREFIX: &str = "requests/";

/// The most faults a game day asked of a server names.
pub const MAX_FAULTS: usize = 32;

/// A fault's name as a description has it (`chaos.faults.NAME`).
pub fn valid_fault(name: &str) -> bool {
    crate::description::decode::KeyRule::Identifier.check(name).is_ok()
}

/// The most requests one listing reads (the store's listing cap is far above).
pub const MAX_LISTED: usize = 10_000;

/// What a user asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Ask {
    /// A one-shot rehearsal of `release` (`rehearse run`); with `from`, its deploy over
    /// the release `from` rehearsed under the description's load (`run --from`).
    Rehearse {
        release: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// A game day (`run --chaos`): the description's faults by name, all of them
        /// when empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chaos: Option<Vec<String>>,
    },
    /// A dry run kept for the one who asked (`rehearse up`): built, `release` installed,
    /// and kept `ttl_secs` from its start, until its owner destroys it or it expires.
    DryRun { release: String, ttl_secs: u64 },
    /// Baseline against candidate on twin copies (`rehearse compare`); with `deploy`,
    /// the candidate deployed over the baseline under the load (`compare --deploy`).
    Compare {
        baseline: String,
        candidate: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deploy: bool,
    },
}

impl Ask {
    /// The release it installs.
    pub fn release(&self) -> &str {
        match self {
            Ask::Rehearse { release, .. } | Ask::DryRun { release, .. } => release,
            Ask::Compare { candidate, .. } => candidate,
        }
    }

    /// What it is, in a word (`rehearse`, `dry_run`).
    pub fn kind(&self) -> &'static str {
        match self {
            Ask::Rehearse { .. } => "rehearse",
            Ask::DryRun { .. } => "dry_run",
            Ask::Compare { .. } => "compare",
        }
    }
}

/// Where a request is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum State {
    /// Recorded, waiting for a slot.
    Queued,
    /// Claimed by `server`, which runs it as `run_id`.
    Running { run_id: String, server: String, since: DateTime<Utc> },
    /// A dry run's environment, built and kept for its owner until `expires_at` (as
    /// its journal says when extended), its destroy, or its expiry.
    Kept { run_id: String, server: String, started_at: DateTime<Utc>, expires_at: DateTime<Utc>, verdict: Verdict },
    /// Ended: the run's verdict and exit code, or why it has none.
    Finished {
        run_id: Option<String>,
        /// When its run started (`None`: it never did).
        started_at: Option<DateTime<Utc>>,
        verdict: Option<Verdict>,
        exit_code: i32,
        error: Option<String>,
        ended_at: DateTime<Utc>,
        /// A comparison's id (its compare.html), for a comparison.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comparison: Option<String>,
    },
}

/// Where a request's outcome is told, besides its page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Notify {
    /// A webhook's callback: the verdict and the links POSTed to `url` when the run
    /// ends (or its dry run is kept), signed with the hook `hook`'s secret.
    Callback { hook: String, url: String },
    /// A pull request: a check run on `head_sha` and the one comment rehearse keeps on
    /// the pull request, each brought up to date as the request moves.
    #[serde(rename = "github")]
    GitHub {
        repo: String,
        pull_request: u64,
        head_sha: String,
        /// The GitHub App's installation the event came from (an App's token is its).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        installation: Option<u64>,
    },
    /// A Slack command: its message (through `response_url`) replaced as the request
    /// moves, for the channel to see.
    Slack { response_url: String },
}

/// One request, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: String,
    /// Who asked (the proxy's identity or a token's owner).
    pub user: String,
    /// The description's name in the server's directory.
    pub environment: String,
    pub ask: Ask,
    pub requested_at: DateTime<Utc>,
    pub state: State,
    /// Where its outcome is told, besides its page.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notify>,
    /// The change it rehearses, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

/// A request read from the store, with the version a change must match.
#[derive(Clone, Debug)]
pub struct Read {
    pub request: Request,
    pub etag: Etag,
}

/// Why a request could not be read, recorded or changed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the state store {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: StoreError,
    },
    /// The record is not one a server writes: refused, not believed.
    #[error("the request record {key} in {url} is refused: {why}")]
    Refused { key: String, url: String, why: String },
    /// Another server changed the record first (it claimed or finished it).
    #[error("the request {id} was changed by another server first")]
    Lost { id: String },
}

impl Request {
    /// A new request, queued, with a fresh id.
    pub fn new(user: &str, environment: &str, ask: Ask) -> Request {
        Request {
            id: new_id(),
            user: user.to_string(),
            environment: environment.to_string(),
            ask,
            requested_at: Utc::now(),
            state: State::Queued,
            notify: Vec::new(),
            change: None,
        }
    }

    /// Whether it would be read back: what [`read`] checks of a stranger's record, checked
    /// before it is recorded (a record the server could not read would never run).
    pub fn valid(&self) -> Result<(), String> {
        self.check(&self.id)
    }

    /// Whether it has ended.
    pub fn finished(&self) -> bool {
        matches!(self.state, State::Finished { .. })
    }

    /// The run it started, if it did.
    pub fn run_id(&self) -> Option<&str> {
        match &self.state {
            State::Queued => None,
            State::Running { run_id, .. } | State::Kept { run_id, .. } => Some(run_id),
            State::Finished { run_id, .. } => run_id.as_deref(),
        }
    }

    /// Checks what a stranger may have written: the id, the user, the environment, the
    /// release and the run id by their grammar.
    fn check(&self, key_id: &str) -> Result<(), String> {
        if self.id != key_id {
            return Err(format!("it says it is request {:?}", crate::sys::text::printable(&self.id)));
        }
        if !valid_user(&self.user) {
            return Err("its user is not a user name".into());
        }
        if !valid_environment(&self.environment) {
            return Err("its environment is not an environment's name".into());
        }
        if !valid_release(self.ask.release()) {
            return Err("its release is not a release version".into());
        }
        // The release a deploy starts from, a comparison's baseline: release versions too.
        let other = match &self.ask {
            Ask::Rehearse { from, .. } => from.as_deref(),
            Ask::Compare { baseline, .. } => Some(baseline.as_str()),
            Ask::DryRun { .. } => None,
        };
        if other.is_some_and(|r| !valid_release(r)) {
            return Err("its baseline is not a release version".into());
        }
        // A game day's faults: names from a description, a few.
        if let Ask::Rehearse { chaos: Some(names), .. } = &self.ask {
            if names.len() > MAX_FAULTS || names.iter().any(|n| !valid_fault(n)) {
                return Err(format!("its game day names more than {MAX_FAULTS} faults, or one that is not a name"));
            }
        }
        if let Some(c) = &self.change {
            c.check()?;
        }
        if self.notify.len() > 8 {
            return Err("it names more than 8 places to tell".into());
        }
        for n in &self.notify {
            match n {
                Notify::Callback { hook, url } => {
                    if !valid_environment(hook) || !valid_url(url) {
                        return Err("its callback is not a hook's name and an http(s) URL".into());
                    }
                }
                Notify::Slack { response_url } => {
                    if !valid_url(response_url) {
                        return Err("its Slack response URL is not an http(s) URL".into());
                    }
                }
                Notify::GitHub { repo, head_sha, .. } => {
                    let owner_name = repo.split_once('/');
                    let part = |p: &str| {
                        !p.is_empty()
                            && p.len() <= 100
                            && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    };
                    if !owner_name.is_some_and(|(o, n)| part(o) && part(n) && !n.contains('/'))
                        || head_sha.len() != 40
                        || !head_sha.chars().all(|c| c.is_ascii_hexdigit())
                    {
                        return Err("its pull request is not OWNER/NAME and a commit".into());
                    }
                }
            }
        }
        if let Ask::Compare { baseline, .. } = &self.ask {
            if !valid_release(baseline) {
                return Err("its baseline is not a release version".into());
            }
        }
        if let Ask::DryRun { ttl_secs, .. } = &self.ask {
            if *ttl_secs == 0 || *ttl_secs > crate::description::MAX_MAX_TTL.as_secs() {
                return Err("its ttl is out of range".into());
            }
        }
        let run_id = match &self.state {
            State::Queued => None,
            State::Running { run_id, server, .. } | State::Kept { run_id, server, .. } => {
                if !valid_user(server) {
                    return Err("its server is not a server's name".into());
                }
                Some(run_id)
            }
            State::Finished { run_id, error, comparison, .. } => {
                if error.as_ref().is_some_and(|e| e.len() > 4096) {
                    return Err("its error is longer than 4 KiB".into());
                }
                if comparison.as_ref().is_some_and(|c| !valid_comparison_id(c)) {
                    return Err("its comparison is not a comparison's id".into());
                }
                run_id.as_ref()
            }
        };
        if run_id.is_some_and(|r| !crate::sys::state::valid_run_id(r)) {
            return Err("its run id is not a run id".into());
        }
        Ok(())
    }
}

/// A new request id: time-sortable and unique (`q-20261207-101500-3fa2c1d0`).
pub fn new_id() -> String {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        let n = u64::from(std::process::id()) ^ u64::from(Utc::now().timestamp_subsec_nanos());
        bytes = (n as u32).to_be_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("q-{}-{hex}", Utc::now().format("%Y%m%d-%H%M%S"))
}

/// Request ids are used in keys and URLs: the generated shape only.
pub fn valid_id(id: &str) -> bool {
    id.len() <= 64 && id.starts_with("q-") && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// A comparison's id (`c-20261207-101500-3fa2c1`): a run id's shape after `c-`.
pub fn valid_comparison_id(id: &str) -> bool {
    id.strip_prefix("c-").is_some_and(|rest| crate::sys::state::valid_run_id(&format!("r-{rest}")))
}

/// An environment's name: its description's file name without `.yaml`.
pub fn valid_environment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && !name.starts_with(['-', '_'])
}

/// A release version, as `--release` takes it.
pub fn valid_release(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
        && !v.starts_with(['.', '-'])
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}.json")
}

fn store_error(store: &dyn ObjectStore, source: StoreError) -> RequestError {
    RequestError::Store { url: store.url(), source }
}

/// Records a new request; it exists in the store when this returns `Ok`.
pub async fn record(store: &dyn ObjectStore, request: &Request) -> Result<Etag, RequestError> {
    let body = serde_json::to_vec_pretty(request).expect("a request serializes");
    store::put_checked(store, &key(&request.id), &body, Condition::Absent).await.map_err(|e| store_error(store, e))
}

/// The request `id` and its version, `None` when there is none.
pub async fn read(store: &dyn ObjectStore, id: &str) -> Result<Option<Read>, RequestError> {
    let k = key(id);
    let Some(object) = store::retrying(|| store.get(&k)).await.map_err(|e| store_error(store, e))? else {
        return Ok(None);
    };
    let refused = |why: String| RequestError::Refused { key: k.clone(), url: store.url(), why };
    let request: Request =
        serde_json::from_slice(&object.body).map_err(|e| refused(format!("it is not a request record: {e}")))?;
    request.check(id).map_err(refused)?;
    Ok(Some(Read { request, etag: object.etag }))
}

/// The finished requests already read: a finished request's record is never changed
/// again, so a server that lists the requests often reads each of them once (a listing
/// then costs the store one LIST and a GET per open request, not one per request ever
/// made).
#[derive(Default)]
pub struct Finished {
    read: std::sync::Mutex<std::collections::HashMap<String, Read>>,
}

impl Finished {
    fn get(&self, id: &str) -> Option<Read> {
        self.read.lock().expect("not poisoned").get(id).cloned()
    }

    fn keep(&self, r: &Read) {
        if r.request.finished() {
            self.read.lock().expect("not poisoned").insert(r.request.id.clone(), r.clone());
        }
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.read.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every request in the store, oldest first; records that are refused are returned
/// apart, with why.
pub async fn list(store: &dyn ObjectStore) -> Result<(Vec<Read>, Vec<RequestError>), RequestError> {
    list_known(store, &Finished::default()).await
}

/// As [`list`], the finished requests `known` holds taken from it, and those newly
/// read finished kept in it.
pub async fn list_known(
    store: &dyn ObjectStore,
    known: &Finished,
) -> Result<(Vec<Read>, Vec<RequestError>), RequestError> {
    let keys = store::retrying(|| store.list(PREFIX)).await.map_err(|e| store_error(store, e))?;
    let mut ids: Vec<&str> = keys.iter().filter_map(|k| k.strip_suffix(".json")).filter(|id| valid_id(id)).collect();
    ids.sort_unstable();
    if ids.len() > MAX_LISTED {
        ids.drain(..ids.len() - MAX_LISTED);
    }
    let (mut found, mut refused) = (Vec::new(), Vec::new());
    // Forgotten when gone from the store (their ids are not listed any more).
    known.read.lock().expect("not poisoned").retain(|id, _| ids.binary_search(&id.as_str()).is_ok());
    for id in ids {
        if let Some(r) = known.get(id) {
            found.push(r);
            continue;
        }
        match read(store, id).await {
            Ok(Some(r)) => {
                known.keep(&r);
                found.push(r)
            }
            Ok(None) => {}
            Err(e @ RequestError::Refused { .. }) => refused.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok((found, refused))
}

/// Moves a request to `state`, if it is still the version `read` (another server's
/// change first is [`RequestError::Lost`]); the new version.
pub async fn change(store: &dyn ObjectStore, read: &Read, state: State) -> Result<Read, RequestError> {
    let request = Request { state, ..read.request.clone() };
    let body = serde_json::to_vec_pretty(&request).expect("a request serializes");
    match store::put_checked(store, &key(&request.id), &body, Condition::Matches(read.etag.clone())).await {
        Ok(etag) => Ok(Read { request, etag }),
        Err(StoreError::PreconditionFailed) => Err(RequestError::Lost { id: request.id }),
        Err(e) => Err(store_error(store, e)),
    }
}

/// Claims a queued request for a server: the compare-and-swap of [`change`], then the
/// record read back, which must be the version written. On S3 the conditional write is
/// atomic and the read changes nothing; on a store whose conditional writes are not
/// (an emulator's), two claims that both "succeeded" leave one version, and the server
/// whose version is not it backs off ([`RequestError::Lost`]).
pub async fn claim(store: &dyn ObjectStore, read: &Read, running: State) -> Result<Read, RequestError> {
    let mine = change(store, read, running).await?;
    match self::read(store, &mine.request.id).await? {
        Some(now) if now.etag == mine.etag && now.request == mine.request => Ok(now),
        _ => Err(RequestError::Lost { id: mine.request.id }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::file::FileStore;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn a_request_is_recorded_claimed_once_and_finished() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        rt().block_on(async {
            let r = Request::new(
                "alice@example.com",
                "demo",
                Ask::Rehearse { release: "v2".into(), from: None, chaos: None },
            );
            record(&store, &r).await.unwrap();
            // A second record under the same id is refused by the store.
            assert!(record(&store, &r).await.is_err());
            let read1 = read(&store, &r.id).await.unwrap().unwrap();
            let running =
                State::Running { run_id: "r-20261207-000000-abcdef".into(), server: "a".into(), since: Utc::now() };
            let claimed = change(&store, &read1, running).await.unwrap();
            // Another server that read the queued version loses.
            let theirs =
                State::Running { run_id: "r-20261207-000000-123456".into(), server: "b".into(), since: Utc::now() };
            let lost = change(&store, &read1, theirs).await;
            assert!(matches!(lost, Err(RequestError::Lost { .. })), "{lost:?}");
            let done = State::Finished {
                run_id: Some("r-20261207-000000-abcdef".into()),
                started_at: Some(Utc::now()),
                verdict: Some(Verdict::Passed),
                exit_code: 0,
                error: None,
                ended_at: Utc::now(),
                comparison: None,
            };
            change(&store, &claimed, done).await.unwrap();
            let (all, refused) = list(&store).await.unwrap();
            assert!(refused.is_empty());
            assert_eq!(all.len(), 1);
            assert!(all[0].request.finished());
        });
    }

    #[test]
    fn a_finished_request_is_read_once_an_open_one_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        rt().block_on(async {
            let open = Request::new("alice", "demo", Ask::Rehearse { release: "v2".into(), from: None, chaos: None });
            let mut done = Request::new("bob", "demo", Ask::Rehearse { release: "v1".into(), from: None, chaos: None });
            done.id = format!("{}0", done.id);
            done.state = State::Finished {
                run_id: None,
                started_at: None,
                verdict: Some(Verdict::Passed),
                exit_code: 0,
                error: None,
                ended_at: Utc::now(),
                comparison: None,
            };
            record(&store, &open).await.unwrap();
            record(&store, &done).await.unwrap();
            let known = Finished::default();
            assert_eq!(list_known(&store, &known).await.unwrap().0.len(), 2);
            assert_eq!(known.len(), 1);
            // Both records changed behind the server's back: the open one is read again,
            // the finished one is not.
            let etag = read(&store, &open.id).await.unwrap().unwrap().etag;
            let moved =
                State::Running { run_id: "r-20261207-000000-abcdef".into(), server: "b".into(), since: Utc::now() };
            change(&store, &Read { request: open.clone(), etag }, moved).await.unwrap();
            std::fs::write(dir.path().join(key(&done.id)), b"garbage").unwrap();
            let (found, refused) = list_known(&store, &known).await.unwrap();
            assert!(refused.is_empty(), "{refused:?}");
            assert!(
                matches!(found[0].request.state, State::Running { .. })
                    || matches!(found[1].request.state, State::Running { .. })
            );
            assert!(found.iter().any(|r| r.request.id == done.id && r.request.finished()));
            // Read afresh, the damaged record is refused: the cache is what kept it.
            assert_eq!(list(&store).await.unwrap().1.len(), 1);
        });
    }

    #[test]
    fn a_forged_record_is_refused_with_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        rt().block_on(async {
            let mut r = Request::new("bob", "demo", Ask::Rehearse { release: "v2".into(), from: None, chaos: None });
            r.user = "bob; rm -rf /".into();
            let body = serde_json::to_vec(&r).unwrap();
            store.put(&key(&r.id), body, Condition::Absent).await.unwrap();
            let e = read(&store, &r.id).await.unwrap_err();
            assert!(e.to_string().contains("its user is not a user name"), "{e}");
            let (found, refused) = list(&store).await.unwrap();
            assert!(found.is_empty() && refused.len() == 1);
            // A deploy's baseline builds paths and commands too: by grammar as well.
            let forged = Request::new(
                "bob",
                "demo",
                Ask::Rehearse { release: "v2".into(), from: Some("../x".into()), chaos: None },
            );
            store.put(&key(&forged.id), serde_json::to_vec(&forged).unwrap(), Condition::Absent).await.unwrap();
            let e = read(&store, &forged.id).await.unwrap_err();
            assert!(e.to_string().contains("its baseline is not a release version"), "{e}");
        });
    }

    #[test]
    fn names_by_grammar() {
        assert!(valid_user("alice@example.com") && valid_user("ci-bot"));
        for bad in ["", "a b", "x\u{1b}[2J", "-x", "a\"b"] {
            assert!(!valid_user(bad), "{bad:?}");
        }
        assert!(valid_environment("demo") && valid_environment("shop-aws"));
        assert!(!valid_environment("../x") && !valid_environment("Demo"));
        assert!(valid_release("v2") && valid_release("1.2.3-rc1") && !valid_release("../v2"));
        assert!(valid_id(&new_id()));
    }
}
