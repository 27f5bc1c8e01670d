//! A stage's switch on the fakes with Route 53's and S3's timings, on tokio's paused
//! clock: from a generation's acceptance passed to every stable name switched — the
//! promotion written to the store (compare-and-swap), the names' change batch sent,
//! applied, and waited for until `INSYNC` — split into rehearse's own part and Route
//! 53's propagation, over 50 seeded rebuilds. The generations are instant (their
//! build is not what is measured).
//! Run with `cargo bench --bench stage_switch` (part of `make bench`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rehearse::description::template::{DatabaseOutputs, ServiceOutputs};
use rehearse::engine::connection::Connection;
use rehearse::engine::events::Silent;
use rehearse::engine::rebuild::{
    fresh_record, rebuild, Built, Generations, LocalFuture, Outcome, Plan, Spec, Stagehand, TearDownError,
};
use rehearse::engine::stage::{NamesFuture, StableNames};
use rehearse::providers::aws::dns::Route53Names;
use rehearse::report::model::Verdict;
use rehearse::sys::signals::Signals;
use rehearse::testkit::fake_dns::{DnsFaults, FakeDns};
use rehearse::testkit::fake_s3::{FakeS3, S3Faults};
use tokio::time::Instant;

/// Generations that pass at once, each with its own addresses.
struct Instant_;

impl Generations for Instant_ {
    fn build<'a>(&'a self, spec: &'a Spec) -> LocalFuture<'a, Built> {
        let (number, run_id, password) = (spec.number, spec.run_id.as_str(), spec.password.as_str());
        Box::pin(async move {
            let db = DatabaseOutputs {
                host: format!("rh-gen{number}-db.fake.invalid"),
                port: "5432".into(),
                name: "shop".into(),
                user: "app".into(),
                password: password.into(),
                url: String::new(),
                endpoint: format!("rh-gen{number}-db.fake.invalid:5432"),
            };
            let ip = format!("10.20.1.{number}");
            let web = ServiceOutputs {
                address: ip.clone(),
                port: "8080".into(),
                url: format!("http://{ip}:8080"),
                addresses: vec![ip.clone()],
                urls: vec![format!("http://{ip}:8080")],
            };
            let connection = Connection {
                run_id: run_id.into(),
                databases: BTreeMap::from([("db".to_string(), db)]),
                services: BTreeMap::from([("web".to_string(), web)]),
            };
            Built {
                verdict: Verdict::Passed,
                reason: None,
                backups: Vec::new(),
                connection: Some(connection),
                kept: true,
            }
        })
    }

    fn tear_down<'a>(&'a self, _run_id: &'a str, _number: u64) -> LocalFuture<'a, Result<(), TearDownError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The names, with the instants their last switch began and ended.
struct Timed<N> {
    inner: N,
    switch: Mutex<Option<(Instant, Instant)>>,
}

impl<N: StableNames> StableNames for Timed<N> {
    fn switch<'a>(&'a self, number: u64, targets: &'a BTreeMap<String, Vec<String>>) -> NamesFuture<'a, ()> {
        Box::pin(async move {
            let began = Instant::now();
            let r = self.inner.switch(number, targets).await;
            *self.switch.lock().unwrap() = Some((began, Instant::now()));
            r
        })
    }
    fn pointing_at(&self) -> NamesFuture<'_, Option<u64>> {
        self.inner.pointing_at()
    }
    fn remove(&self) -> NamesFuture<'_, ()> {
        self.inner.remove()
    }
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("environments/staging-aws.yaml")).unwrap();
    let text = rehearse::testkit::scenarios::unreachable_hosts_variant(&text, root, "");
    let path = dir.path().join("staging-aws.yaml");
    std::fs::write(&path, text).unwrap();
    let loaded = rehearse::description::load(&path, Some("v2")).unwrap_or_else(|d| panic!("{}", d.render()));
    let stage = loaded.desc.stage.clone().unwrap();
    let ttl = stage.record_ttl;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let (mut total, mut before, mut applying, mut propagation) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut calls = BTreeMap::<&'static str, u64>::new();
    const SEEDS: u64 = 50;
    for seed in 0..SEEDS {
        rt.block_on(async {
            let s3 = Arc::new(FakeS3::new(seed, S3Faults::realistic()));
            let dns = Arc::new(FakeDns::new(seed, DnsFaults::realistic()));
            let names = Timed {
                inner: Route53Names {
                    api: dns.clone(),
                    zone: stage.zone.clone().unwrap(),
                    ttl: ttl.as_secs(),
                    names: stage.names.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
                    databases: vec!["db".into()],
                },
                switch: Mutex::new(None),
            };
            let now = || chrono::Utc::now();
            let hand = Stagehand { store: s3.as_ref(), names: &names, gens: &Instant_, reporter: &Silent, now: &now };
            let signals = Signals::none();
            let mut applied_at = None;
            for generation in 1..=2u64 {
                let plan = Plan {
                    stage: &stage,
                    fresh: fresh_record(&stage, "staging", "aws", &loaded.desc.databases, Duration::ZERO),
                    release: "v2".into(),
                    run_id: format!("r-20261127-00000{generation}-{seed:06x}"),
                    drain: Duration::ZERO,
                };
                let mut applied = dns.applied();
                let watch = async {
                    loop {
                        if applied.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                        applied_at = Some(Instant::now());
                    }
                };
                let outcome = tokio::select! {
                    biased;
                    o = rebuild(&hand, plan, "bench-password-0123456789", &signals) => o.unwrap(),
                    () = watch => unreachable!(),
                };
                let Outcome::Promoted { switched_in, .. } = outcome else { panic!("not promoted") };
                // The second promotion is the nightly case: names exist, the record too.
                if generation == 2 {
                    let (began, ended) = names.switch.lock().unwrap().unwrap();
                    let batch = applied_at.unwrap();
                    total.push(switched_in.as_secs_f64());
                    before.push(switched_in.as_secs_f64() - (ended - began).as_secs_f64());
                    applying.push((batch - began).as_secs_f64());
                    propagation.push((ended - batch).as_secs_f64());
                }
            }
            for (op, n) in dns.calls() {
                *calls.entry(op).or_default() += n;
            }
        });
    }
    let (tmin, tmed, tmax) = stats(total.clone());
    println!("## A stage's switch on the fakes (Route 53's propagation, S3's latency)\n");
    println!("`cargo bench --bench stage_switch`: {SEEDS} seeded rebuilds promoting a second generation, on tokio's paused clock;");
    println!("Route 53 fake: 50–150 ms a call, `INSYNC` 1–60 s after a batch is applied (uniform; AWS: \"generally within 60 seconds\");");
    println!("S3 fake: 15–60 ms a call. Seconds, min / median / max.\n");
    println!("| | min | median | max |\n|---|--:|--:|--:|");
    println!("| acceptance passed → every name switched (`INSYNC`) | {tmin:.2} | {tmed:.2} | {tmax:.2} |");
    for (what, v) in [
        ("of which rehearse's: the promotion written, where the names point read", before),
        ("of which the change batch: sent → applied", applying),
        ("of which Route 53's propagation: applied → `INSYNC` seen", propagation),
    ] {
        let (a, b, c) = stats(v);
        println!("| {what} | {a:.2} | {b:.2} | {c:.2} |");
    }
    let within = total.iter().filter(|t| **t <= ttl.as_secs_f64() + 5.0).count();
    println!(
        "\nTarget ≤ record TTL + 5 s = {:.0} s: met in {within} of {SEEDS}. Route 53 calls over all seeds: {calls:?}",
        ttl.as_secs_f64() + 5.0
    );
}
