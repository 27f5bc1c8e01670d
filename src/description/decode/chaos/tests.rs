use super::*;

const BASE: &str = "name: shop\nprovider: local\nowner: a@example.com\nrelease:\n  version: v2\n  artifact: r\n\
    databases:\n  db:\n    engine: postgres\n    name: shop\n    source:\n      backup_dir: b\n\
    services:\n  web:\n    count: 2\n    depends_on: [db]\n    command: python3 app.py\n    health:\n      path: /health\n\
    suites:\n  smoke:\n    command: ./smoke\n    timeout: 1m\n    results: exit-code\n";

fn loaded(extra: &str) -> Result<crate::description::Loaded, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    std::fs::write(dir.path().join("l.requests"), "GET /products\n").unwrap();
    let text = format!("{BASE}{extra}");
    crate::description::load_str(&dir.path().join("d.yaml"), text, None)
        .map_err(|d| d.items.iter().map(|i| i.message.clone()).collect())
}

fn chaos(extra: &str) -> Chaos {
    loaded(extra).unwrap_or_else(|e| panic!("{e:?}")).desc.chaos.expect("a chaos section")
}

/// The one message refusing `extra`.
fn refused(extra: &str) -> String {
    match loaded(extra) {
        Ok(_) => panic!("accepted:\n{extra}"),
        Err(msgs) => msgs.join("\n"),
    }
}

#[test]
fn a_game_day_takes_its_faults_expectations_and_defaults() {
    let c = chaos(
        "compare:\n  load:\n    requests: l.requests\n    target: web\n    rate: 15\n\
         chaos:\n  faults:\n    db-restart:\n      database: db\n      kind: restart\n      mode: immediate\n      \
         at: 5s\n      duration: 2s\n    slow-db:\n      path: web -> db\n      kind: latency\n      delay: 300ms\n      \
         jitter: 50ms\n      duration: 20s\n      after: suite.smoke\n    one-web:\n      service: web\n      \
         instance: 1\n      kind: kill\n  expect:\n    max_error_rate: 5\n    latency:\n      GET /products: 800ms\n    \
         recover_within: 10s\n",
    );
    assert_eq!(c.load.as_ref().map(|l| l.rate), Some(15.0), "the comparison's load");
    assert_eq!((c.steady, c.settle), (default_chaos_steady(), default_chaos_settle()));
    let r = &c.faults["db-restart"];
    assert_eq!(
        (r.kind, r.mode, r.at, r.duration),
        (FaultKind::Restart, Some(RestartMode::Immediate), Duration::from_secs(5), Some(Duration::from_secs(2)))
    );
    assert_eq!((r.database.as_deref(), r.after.as_str()), (Some("db"), "load"));
    let l = &c.faults["slow-db"];
    assert_eq!(l.path_ends(), Some(("web", "db")));
    assert_eq!((l.delay, l.jitter), (Some(Duration::from_millis(300)), Some(Duration::from_millis(50))));
    assert_eq!(l.after, "suite.smoke");
    let k = &c.faults["one-web"];
    assert_eq!((k.kind, k.instance, k.duration), (FaultKind::Kill, Some(1), None));
    assert_eq!(c.expect.max_error_rate, Some(5.0));
    assert_eq!(c.expect.latency["GET /products"], Duration::from_millis(800));
    assert_eq!((c.expect.recover_within, c.expect.suites_pass), (Some(Duration::from_secs(10)), true));
}

#[test]
fn a_fault_of_its_own_expectations_is_judged_by_them() {
    let c = chaos(
        "chaos:\n  faults:\n    r:\n      database: db\n      kind: restart\n      expect:\n        recover_within: 5s\n\
         \x20   l:\n      path: web -> db\n      kind: reset\n      duration: 1s\n  expect:\n    max_error_rate: 1\n",
    );
    let r = c.faults["r"].expectations(&c.expect);
    assert_eq!((r.max_error_rate, r.recover_within), (None, Some(Duration::from_secs(5))));
    let l = c.faults["l"].expectations(&c.expect);
    assert_eq!((l.max_error_rate, l.recover_within), (Some(1.0), None));
    let msg = refused(
        "chaos:\n  faults:\n    r:\n      database: db\n      kind: restart\n      expect:\n        suites_pass: false\n",
    );
    assert!(msg.contains("unknown key `suites_pass` in `chaos.faults.r.expect`"), "{msg}");
}

#[test]
fn a_game_day_without_a_load_is_accepted_its_traffic_expectations_to_fail_closed() {
    let c =
        chaos("chaos:\n  faults:\n    r:\n      database: db\n      kind: restart\n  expect:\n    max_error_rate: 1\n");
    assert!(c.load.is_none());
    assert_eq!(c.expect.max_error_rate, Some(1.0));
}

#[test]
fn a_fault_of_the_wrong_shape_is_refused_with_what_it_takes() {
    let cases = [
        // No target, two targets, the wrong one for the kind.
        ("      kind: restart\n", "needs a `service`, a `database` or a `path`"),
        ("      database: db\n      service: web\n      kind: restart\n", "exactly one"),
        ("      service: web\n      kind: restart\n", "a `restart` fault must be on a `database`, not a `service`"),
        // A key of another kind; a required one missing; an instant fault with a duration.
        (
            "      service: web\n      kind: kill\n      delay: 1s\n",
            "unknown key `delay` in `chaos.faults.f` for a `kill` fault",
        ),
        ("      path: web -> db\n      kind: latency\n      duration: 5s\n", "missing required key `delay`"),
        ("      service: web\n      kind: kill\n      duration: 5s\n", "unknown key `duration`"),
        // Another provider's kind.
        ("      service: web\n      kind: terminate\n", "is for the aws provider"),
        // Values.
        ("      path: web db\n      kind: reset\n      duration: 1s\n", "must be `FROM -> TO`"),
        ("      database: db\n      kind: restart\n      mode: slow\n", "has an unknown value `slow`"),
        ("      database: db\n      kind: restart\n      after: deploy\n", "must be `load` or `suite.NAME`"),
        ("      database: db\n      kind: bogus\n", "has an unknown value `bogus`"),
        // What it names.
        ("      service: api\n      kind: kill\n", "`api` is not a defined service"),
        ("      service: web\n      instance: 2\n      kind: kill\n", "runs 2 instance(s)"),
        ("      path: client -> db\n      kind: reset\n      duration: 1s\n", "`db` is not a defined service"),
        ("      path: web -> web\n      kind: reset\n      duration: 1s\n", "`web` is not a defined database"),
        ("      database: db\n      kind: restart\n      after: suite.load\n", "`load` is not a defined suite"),
    ];
    for (fault, said) in cases {
        let msg = refused(&format!("chaos:\n  faults:\n    f:\n{fault}"));
        assert!(msg.contains(said), "{fault:?}: {msg}");
    }
    let msg = refused("chaos:\n  faults: {}\n");
    assert!(msg.contains("names no fault"), "{msg}");
    let msg = refused("chaos:\n  faults:\n    r:\n      database: db\n      kind: restart\n  expect:\n    latency:\n      products: 1s\n");
    assert!(msg.contains("`chaos.expect.latency` has `products`, which is no endpoint"), "{msg}");
}

#[test]
fn a_path_needs_the_dependency_it_sits_on() {
    let text = BASE.replace("    depends_on: [db]\n", "");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    let text =
        format!("{text}chaos:\n  faults:\n    f:\n      path: web -> db\n      kind: blackhole\n      duration: 3s\n");
    let Err(e) = crate::description::load_str(&dir.path().join("d.yaml"), text, None) else {
        panic!("a path on no dependency was accepted")
    };
    let msg: Vec<String> = e.items.iter().map(|i| i.message.clone()).collect();
    assert!(msg.iter().any(|m| m.contains("service `web` does not depend on database `db`")), "{msg:?}");
}
