//! The shipped least-privilege policy, `docs/iam-policy.json`, keeps a rehearse role off
//! production: every change it allows is confined to what rehearse itself creates
//! (`rh-*` / `rehearse-*` names, the `rehearse:run-id` tag), tags are written only in
//! the call that creates a resource, production is only ever the source of a copy, and
//! the policy grants exactly the calls `src/providers/aws/sdk.rs` (and `sdk/`) makes — a new call
//! without a policy line, or a grant the code no longer needs, fails here. The state store
//! on S3 (`--state s3://BUCKET/PREFIX`) is confined to its bucket and prefix, journal
//! records there can only be created, never overwritten or deleted, and locks, stage
//! records and connection details are written and deleted only with a condition
//! (`If-None-Match`/`If-Match`, evaluated here as IAM does). A launch uses only the
//! network interface it creates, tagged; everything a create makes is tagged in the call
//! by the code too. parliament (the IAM policy linter `make test-deps` installs) must find
//! nothing in it.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const RUN_TAG_IN_REQUEST: &str = "aws:RequestTag/rehearse:run-id";
const RUN_TAG_ON_RESOURCE: &str = "aws:ResourceTag/rehearse:run-id";

/// The state bucket and the objects under the state prefix, as the policy spells them:
/// placeholders the user replaces with the bucket and prefix of `--state s3://BUCKET/PREFIX`.
const STAGE_ZONE: &str = "arn:aws:route53:::hostedzone/REHEARSE_STAGE_ZONE";
const STATE_BUCKET: &str = "arn:aws:s3:::REHEARSE_STATE_BUCKET";
const STATE_OBJECTS: &str = "arn:aws:s3:::REHEARSE_STATE_BUCKET/REHEARSE_STATE_PREFIX/";
const STATE_PREFIX: &str = "REHEARSE_STATE_PREFIX/";
/// The release artifacts (`release.artifact: s3://BUCKET/PREFIX…`): read, to presign a
/// link for the instances and to download the release for an install run here.
const ARTIFACTS: &str = "arn:aws:s3:::REHEARSE_ARTIFACT_BUCKET/REHEARSE_ARTIFACT_PREFIX*";
/// The SSM runner's bucket and the objects under its prefix (`runner.ssm.outputs`): its
/// inputs, written by rehearse, and the commands' output, written by SSM.
const RUNNER_BUCKET: &str = "arn:aws:s3:::REHEARSE_RUNNER_BUCKET";
const RUNNER_OBJECTS: &str = "arn:aws:s3:::REHEARSE_RUNNER_BUCKET/REHEARSE_RUNNER_PREFIX/*";
/// The one document rehearse sends: a shell script.
const SHELL_DOCUMENT: &str = "arn:aws:ssm:*:*:document/AWS-RunShellScript";
/// The one role rehearse may hand to its instances (a service's `instance_profile`).
const INSTANCE_ROLE: &str = "arn:aws:iam::*:role/REHEARSE_INSTANCE_ROLE";
/// S3's condition key for the `If-None-Match` header of a write (`*`: create only).
const IF_NONE_MATCH: &str = "s3:if-none-match";
/// S3's condition key for the `If-Match` header of a write or delete (this version only).
const IF_MATCH: &str = "s3:if-match";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn policy_path() -> PathBuf {
    root().join("docs/iam-policy.json")
}

struct Statement {
    sid: String,
    effect: String,
    actions: Vec<String>,
    resources: Vec<String>,
    /// (operator, key, values), e.g. ("StringLike", "aws:RequestTag/rehearse:run-id", ["r-*"]).
    conditions: Vec<(String, String, Vec<String>)>,
}

impl Statement {
    fn allows(&self) -> bool {
        self.effect == "Allow"
    }

    fn has_action(&self, action: &str) -> bool {
        self.actions.iter().any(|a| a.eq_ignore_ascii_case(action))
    }

    /// The statement applies only when `key` is present and matches (a positive operator).
    fn requires(&self, key: &str) -> bool {
        self.conditions.iter().any(|(op, k, _)| {
            // Multivalued keys (a change batch's names and types) with `ForAllValues:`:
            // every value must match.
            let op = op.strip_prefix("ForAllValues:").unwrap_or(op);
            matches!(op, "StringEquals" | "StringLike") && k.eq_ignore_ascii_case(key)
        })
    }

    /// The statement applies when `key` is absent or does not match (a negated operator):
    /// as a Deny, it refuses whatever lacks the tag.
    fn applies_without(&self, key: &str) -> bool {
        self.conditions
            .iter()
            .any(|(op, k, _)| matches!(op.as_str(), "StringNotEquals" | "StringNotLike") && k.eq_ignore_ascii_case(key))
    }

    /// Tagged by the run: in the request (creation) or on the resource (change).
    fn requires_run_tag(&self) -> bool {
        self.requires(RUN_TAG_IN_REQUEST) || self.requires(RUN_TAG_ON_RESOURCE)
    }

    /// The statement applies only when `key` is in the request (`"Null": {key: "false"}`), or,
    /// with `present` false, only when it is not (`"Null": {key: "true"}`).
    fn requires_null(&self, key: &str, present: bool) -> bool {
        let want = if present { "false" } else { "true" };
        self.conditions
            .iter()
            .any(|(op, k, v)| op == "Null" && k.eq_ignore_ascii_case(key) && v.len() == 1 && v[0] == want)
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().map(|i| i.as_str().expect("a string").to_string()).collect(),
        Some(Value::Bool(b)) => vec![b.to_string()],
        None => vec![],
        Some(other) => panic!("expected a string or a list of strings, got {other}"),
    }
}

fn policy_json() -> Value {
    let text = std::fs::read_to_string(policy_path()).expect("docs/iam-policy.json is readable");
    serde_json::from_str(&text).expect("docs/iam-policy.json is valid JSON")
}

fn policy() -> Vec<Statement> {
    let json = policy_json();
    let statements = json["Statement"].as_array().expect("Statement is a list");
    statements
        .iter()
        .map(|s| {
            let mut conditions = Vec::new();
            if let Some(ops) = s.get("Condition").and_then(Value::as_object) {
                for (op, keys) in ops {
                    for (key, values) in keys.as_object().expect("a condition maps keys to values") {
                        conditions.push((op.clone(), key.clone(), strings(Some(values))));
                    }
                }
            }
            Statement {
                sid: s["Sid"].as_str().unwrap_or_default().to_string(),
                effect: s["Effect"].as_str().unwrap_or_default().to_string(),
                actions: strings(s.get("Action")),
                resources: strings(s.get("Resource")),
                conditions,
            }
        })
        .collect()
}

fn allows() -> Vec<Statement> {
    policy().into_iter().filter(Statement::allows).collect()
}

/// `Describe*`, `List*`, `Get*`: reads, allowed anywhere.
fn is_read(action: &str) -> bool {
    let name = action.split_once(':').map_or(action, |(_, n)| n);
    ["Describe", "List", "Get"].iter().any(|p| name.starts_with(p))
}

/// (service, kind, name) of an ARN: `arn:aws:rds:*:*:db:rh-*` → (rds, db, rh-*),
/// `arn:aws:ec2:*:*:instance/*` → (ec2, instance, *). `*` → ("", "*", "").
fn arn(resource: &str) -> (String, String, String) {
    let fields: Vec<&str> = resource.splitn(6, ':').collect();
    if fields.len() < 6 {
        return (String::new(), resource.to_string(), String::new());
    }
    let (kind, name) = fields[5].split_once([':', '/']).unwrap_or((fields[5], ""));
    (fields[2].to_string(), kind.to_string(), name.to_string())
}

/// An object (or object pattern) under the state prefix of the state bucket.
fn is_state_object(resource: &str) -> bool {
    resource.strip_prefix(STATE_OBJECTS).is_some_and(|rest| !rest.is_empty())
}

/// IAM's matching of a resource pattern: `*` any run of characters (`/` included), `?` one.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // matches[j]: pattern[..i] matches text[..j], row by row.
    let mut matches = vec![false; t.len() + 1];
    matches[0] = true;
    for c in p {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match c {
                '*' => matches[j] || (j > 0 && next[j - 1]),
                '?' => j > 0 && matches[j - 1],
                c => j > 0 && matches[j - 1] && t[j - 1] == c,
            };
        }
        matches = next;
    }
    matches[t.len()]
}

/// A name only rehearse gives: `rh-…` DB instances, clusters (and a cluster's final
/// snapshot, which rehearse skips), `rehearse-…` DB subnet groups.
fn is_rehearse_name(resource: &str) -> bool {
    let (service, kind, name) = arn(resource);
    service == "rds"
        && match kind.as_str() {
            "db" | "cluster" | "cluster-snapshot" => name.starts_with("rh-"),
            "subgrp" => name.starts_with("rehearse-"),
            _ => false,
        }
}

/// What an action only reads or attaches to what it creates, never changes: the
/// production snapshot a copy is restored from, the parameter and option groups it is
/// created with; the image and subnet of a launch; the VPC a new security group goes
/// into. (Not a launch's network interface: an existing one would bring its security
/// groups along, so the one a launch may use is the one it creates, tagged: CREATED.)
fn is_input(action: &str, resource: &str) -> bool {
    let (_, kind, _) = arn(resource);
    match (action, kind.as_str()) {
        ("rds:RestoreDBInstanceFromDBSnapshot", "snapshot") => true,
        (a, "og" | "pg" | "cluster-pg") => a.starts_with("rds:Restore") || a == "rds:CreateDBInstance",
        ("ec2:RunInstances", "image" | "subnet") => true,
        ("ec2:CreateSecurityGroup", "vpc") => true,
        // The document it runs is AWS's shell script; the bucket is where output goes.
        ("ssm:SendCommand", "document") => resource == SHELL_DOCUMENT,
        ("ssm:SendCommand", _) => resource == RUNNER_BUCKET,
        _ => false,
    }
}

/// A Deny statement refuses `action` on `resource` unless `tag_key` carries the run tag.
fn denied_without(policy: &[Statement], action: &str, resource: &str, tag_key: &str) -> bool {
    policy.iter().any(|d| {
        d.effect == "Deny"
            && d.has_action(action)
            && d.resources.iter().any(|r| r == resource)
            && d.applies_without(tag_key)
    })
}

fn denied_without_run_tag(policy: &[Statement], action: &str, resource: &str) -> bool {
    denied_without(policy, action, resource, RUN_TAG_IN_REQUEST)
        || denied_without(policy, action, resource, RUN_TAG_ON_RESOURCE)
}

/// What each creating call brings into existence, which must carry the run tag from
/// its first instant (`aws:RequestTag`). Everything else it names already exists.
const CREATED: &[(&str, &[&str])] = &[
    ("ec2:CreateSecurityGroup", &["security-group"]),
    ("ec2:RunInstances", &["instance", "volume", "network-interface"]),
    ("rds:CreateDBSubnetGroup", &["subgrp"]),
    ("rds:RestoreDBInstanceFromDBSnapshot", &["db"]),
    ("rds:RestoreDBInstanceToPointInTime", &["db"]),
    ("rds:RestoreDBClusterToPointInTime", &["cluster"]),
    ("rds:CreateDBInstance", &["db"]),
];

fn is_create(action: &str) -> bool {
    let (service, name) = action.split_once(':').unwrap_or(("", action));
    service != "kms"
        && ((name.starts_with("Create") && name != "CreateTags")
            || name.starts_with("Restore")
            || name == "RunInstances")
}

/// The production resources a copy is made from: a restore's source, and nothing else.
const SOURCES: &[(&str, &str)] = &[
    ("rds:RestoreDBInstanceFromDBSnapshot", "snapshot"),
    ("rds:RestoreDBInstanceToPointInTime", "db"),
    ("rds:RestoreDBClusterToPointInTime", "cluster"),
];

/// IAM's spelling of the words the SDK's snake_case method names lower.
const IRREGULAR: &[(&str, &str)] = &[("db", "DB")];

/// S3's IAM actions are not the SDK's method names spelled differently: a listing is
/// authorized as `ListBucket`. Every S3 method the code calls must be here.
const S3_ACTIONS: &[(&str, &str)] = &[
    ("get_object", "GetObject"),
    ("put_object", "PutObject"),
    ("delete_object", "DeleteObject"),
    ("list_objects_v2", "ListBucket"),
];

/// `restore_db_instance_from_db_snapshot` → `RestoreDBInstanceFromDBSnapshot`.
fn iam_name(method: &str) -> String {
    method
        .split('_')
        .map(|word| match IRREGULAR.iter().find(|(w, _)| *w == word) {
            Some((_, spelled)) => spelled.to_string(),
            None => {
                let mut chars = word.chars();
                chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
            }
        })
        .collect()
}

/// The SDK adapter: `src/providers/aws/sdk.rs` and its EC2, RDS and S3 parts in `sdk/`.
fn sdk_source() -> String {
    let mut files = vec![root().join("src/providers/aws/sdk.rs")];
    let dir = std::fs::read_dir(root().join("src/providers/aws/sdk")).expect("src/providers/aws/sdk/ is readable");
    files.extend(dir.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "rs")));
    files.sort();
    files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))).collect()
}

/// Every AWS operation the code calls: the fluent `self.ec2.op()` / `self.rds.op()` /
/// `self.s3.op()` calls of `sdk.rs` and `sdk/` (whitespace removed, so a call split over
/// lines counts).
fn sdk_calls() -> BTreeSet<String> {
    let flat: String = sdk_source().chars().filter(|c| !c.is_whitespace()).collect();
    let mut calls = BTreeSet::new();
    for (client, service) in
        [(".ec2.", "ec2"), (".rds.", "rds"), (".s3.", "s3"), (".r53.", "route53"), (".ssm.", "ssm")]
    {
        for (at, _) in flat.match_indices(client) {
            let rest = &flat[at + client.len()..];
            let method: String =
                rest.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            if method.is_empty() || !rest[method.len()..].starts_with("()") {
                continue;
            }
            let action = if service == "s3" {
                let (_, action) = S3_ACTIONS.iter().find(|(m, _)| *m == method).unwrap_or_else(|| {
                    panic!("sdk/ calls s3 {method}(): add its IAM action to S3_ACTIONS in this test")
                });
                action.to_string()
            } else {
                iam_name(&method)
            };
            calls.insert(format!("{service}:{action}"));
        }
    }
    // If this finds nothing the extraction broke, and every check below would pass vacuously.
    for expected in [
        "ec2:RunInstances",
        "rds:RestoreDBInstanceFromDBSnapshot",
        "rds:DescribeDBInstances",
        "s3:PutObject",
        "s3:ListBucket",
        "route53:ChangeResourceRecordSets",
    ] {
        assert!(
            calls.contains(expected),
            "no `{expected}` found in sdk.rs: did the call syntax change? found {calls:?}"
        );
    }
    calls
}

/// Actions AWS authorizes inside a call rehearse makes: tags passed to a create or restore
/// are checked as a tagging action of their own (RDS `Tags`, EC2 `TagSpecifications`).
fn implied_actions() -> BTreeSet<String> {
    let src = sdk_source();
    let mut implied = BTreeSet::new();
    if src.contains(".set_tags(") {
        implied.insert("rds:AddTagsToResource".to_string());
    }
    if src.contains(".tag_specifications(") {
        implied.insert("ec2:CreateTags".to_string());
    }
    // Launching with an instance profile passes its role.
    if src.contains(".set_iam_instance_profile(") {
        implied.insert("iam:PassRole".to_string());
    }
    implied
}

#[test]
fn policy_is_well_formed() {
    let json = policy_json();
    assert_eq!(json["Version"], "2012-10-17", "the policy language version that allows variables and conditions");
    let statements = policy();
    assert!(!statements.is_empty());
    let mut sids = BTreeSet::new();
    for (i, s) in json["Statement"].as_array().unwrap().iter().zip(&statements) {
        assert!(
            !s.sid.is_empty() && s.sid.chars().all(|c| c.is_ascii_alphanumeric()),
            "every statement needs an alphanumeric Sid saying what it is for: {i}"
        );
        assert!(sids.insert(s.sid.clone()), "Sid {} is used twice", s.sid);
        assert!(s.effect == "Allow" || s.effect == "Deny", "{}: Effect is {:?}", s.sid, s.effect);
        assert!(!s.actions.is_empty() && !s.resources.is_empty(), "{}: needs Action and Resource", s.sid);
        for element in ["NotAction", "NotResource", "Principal", "NotPrincipal"] {
            assert!(
                i.get(element).is_none(),
                "{}: {element} is not used in this policy (it inverts the checks)",
                s.sid
            );
        }
        for a in &s.actions {
            assert!(!a.contains('*'), "{}: wildcard action {a}: name each action so it can be reviewed", s.sid);
        }
    }
}

#[test]
fn every_change_is_confined_to_what_rehearse_creates() {
    let policy = policy();
    for s in policy.iter().filter(|s| s.allows()) {
        for action in s.actions.iter().filter(|a| !is_read(a)) {
            if action.starts_with("kms:") {
                assert!(s.requires("kms:ViaService"), "{}: {action} must be limited to use through RDS", s.sid);
                continue;
            }
            // A stage's names: the stage's zone, names under its domain, nothing else.
            if action.starts_with("route53:") {
                assert_eq!(s.resources, [STAGE_ZONE], "{}: {action} outside the stage's zone", s.sid);
                assert!(
                    s.requires("route53:ChangeResourceRecordSetsNormalizedRecordNames")
                        && s.requires("route53:ChangeResourceRecordSetsRecordTypes"),
                    "{}: {action} without conditions on the names and types it may change",
                    s.sid
                );
                continue;
            }
            // The one role rehearse passes, and only to EC2.
            if action == "iam:PassRole" {
                assert_eq!(s.resources, [INSTANCE_ROLE], "{}: iam:PassRole names the instance role only", s.sid);
                assert!(s.requires("iam:PassedToService"), "{}: iam:PassRole without iam:PassedToService", s.sid);
                continue;
            }
            // Cancelling a command takes no resource (IAM has none for it): it can only
            // stop a command, never start, change or read one.
            if action == "ssm:CancelCommand" {
                assert_eq!(s.actions, ["ssm:CancelCommand"], "{}: CancelCommand shares its statement", s.sid);
                continue;
            }
            // The runner's inputs and output, under its prefix only.
            if s.resources == [RUNNER_OBJECTS] || (s.resources == [RUNNER_BUCKET] && action == "s3:ListBucket") {
                continue;
            }
            // The release artifacts: read only.
            if s.resources == [ARTIFACTS] {
                assert_eq!(action, "s3:GetObject", "{}: the release artifacts are only read", s.sid);
                continue;
            }
            // The state store: rehearse's own objects are those under the state prefix.
            if action.starts_with("s3:") {
                for resource in &s.resources {
                    assert!(
                        is_state_object(resource),
                        "{}: {action} on {resource}, not an object under {STATE_OBJECTS}",
                        s.sid
                    );
                }
                continue;
            }
            assert!(
                !s.resources.iter().any(|r| r == "*") || s.requires_run_tag(),
                "{}: {action} on Resource \"*\" without a rehearse:run-id tag condition",
                s.sid
            );
            for resource in &s.resources {
                let confined = is_rehearse_name(resource)
                    || s.requires_run_tag()
                    || s.requires("ec2:CreateAction")
                    || is_input(action, resource)
                    || denied_without_run_tag(&policy, action, resource);
                assert!(
                    confined,
                    "{}: {action} on {resource} is neither a rehearse name (rh-*, rehearse-*), nor conditioned on the \
                     rehearse:run-id tag, nor only an input of the call, nor refused by a Deny without the tag",
                    s.sid
                );
            }
        }
    }
}

#[test]
fn changes_to_existing_resources_need_the_run_tag_on_them() {
    for s in allows() {
        for action in &s.actions {
            let name = action.split_once(':').map_or(action.as_str(), |(_, n)| n);
            // S3 objects carry no run tag: the state store has its own test below.
            if action.starts_with("s3:")
                || !["Modify", "Delete", "Terminate", "Authorize", "Stop", "Start", "Reboot", "Failover"]
                    .iter()
                    .any(|verb| name.starts_with(verb))
            {
                continue;
            }
            assert!(s.requires(RUN_TAG_ON_RESOURCE), "{}: {action} without an {RUN_TAG_ON_RESOURCE} condition", s.sid);
            if action.starts_with("rds:") {
                for resource in &s.resources {
                    assert!(
                        is_rehearse_name(resource),
                        "{}: {action} on {resource}, not a rh-*/rehearse-* name",
                        s.sid
                    );
                }
            }
        }
    }
}

#[test]
fn every_creation_requires_the_run_tag() {
    let policy = policy();
    for s in policy.iter().filter(|s| s.allows()) {
        for action in s.actions.iter().filter(|a| is_create(a)) {
            let created =
                CREATED.iter().find(|(a, _)| a == action).map(|(_, kinds)| *kinds).unwrap_or_else(|| {
                    panic!("{}: {action} creates something: add what to CREATED in this test", s.sid)
                });
            for resource in &s.resources {
                let (_, kind, _) = arn(resource);
                let ok = if created.contains(&kind.as_str()) {
                    // The new resource: tagged in the request, or refused.
                    s.requires(RUN_TAG_IN_REQUEST) || denied_without(&policy, action, resource, RUN_TAG_IN_REQUEST)
                } else {
                    // What it uses: an input, or something of the run's own (its security group).
                    s.requires(RUN_TAG_IN_REQUEST)
                        || is_input(action, resource)
                        || denied_without(&policy, action, resource, RUN_TAG_ON_RESOURCE)
                };
                assert!(ok, "{}: {action} on {resource} is allowed without the rehearse:run-id tag", s.sid);
            }
        }
    }
}

/// Whether a statement allows tagging only what already carries the run tag, and only
/// the run's own keys (`rehearse extend` moving an expiry): nothing can be adopted, no
/// other tag changed.
fn only_moves_the_run_tags(s: &Statement) -> bool {
    let on_tagged = s.conditions.iter().any(|(op, k, v)| {
        op == "StringLike" && k.eq_ignore_ascii_case("aws:ResourceTag/rehearse:run-id") && v == &["r-*".to_string()]
    });
    let keys: Vec<&String> = s
        .conditions
        .iter()
        .filter(|(op, k, _)| op == "ForAllValues:StringEquals" && k.eq_ignore_ascii_case("aws:TagKeys"))
        .flat_map(|(_, _, values)| values)
        .collect();
    on_tagged && !keys.is_empty() && keys.iter().all(|k| *k == "rehearse:run-id" || *k == "rehearse:expires-at")
}

#[test]
fn tags_are_written_only_at_creation_or_moved_on_what_is_the_runs_already() {
    for s in allows() {
        if s.has_action("ec2:CreateTags") {
            let create_actions: Vec<&String> = s
                .conditions
                .iter()
                .filter(|(op, k, _)| op == "StringEquals" && k.eq_ignore_ascii_case("ec2:CreateAction"))
                .flat_map(|(_, _, values)| values)
                .collect();
            assert!(
                !create_actions.is_empty() || only_moves_the_run_tags(&s),
                "{}: ec2:CreateTags without StringEquals ec2:CreateAction, or a run tag on the resource and only \
                 the run's keys, could tag (and so adopt) any instance",
                s.sid
            );
            for a in create_actions {
                assert!(
                    a == "RunInstances" || a == "CreateSecurityGroup",
                    "{}: ec2:CreateTags allowed in {a}, not a call rehearse creates with",
                    s.sid
                );
            }
        }
        if s.has_action("rds:AddTagsToResource") {
            for resource in &s.resources {
                assert!(
                    is_rehearse_name(resource),
                    "{}: rds:AddTagsToResource on {resource}: it could tag a production database as rehearse's",
                    s.sid
                );
            }
            assert!(s.requires(RUN_TAG_IN_REQUEST), "{}: rds:AddTagsToResource without the run tag", s.sid);
        }
    }
}

#[test]
fn production_is_only_a_source_of_restores() {
    for s in allows() {
        let changes: Vec<&String> = s.actions.iter().filter(|a| a.starts_with("rds:") && !is_read(a)).collect();
        for resource in &s.resources {
            let (service, kind, _) = arn(resource);
            let production = service == "rds"
                && matches!(kind.as_str(), "db" | "cluster" | "snapshot" | "cluster-snapshot")
                && !is_rehearse_name(resource);
            if !production {
                continue;
            }
            for action in &changes {
                assert!(
                    SOURCES.contains(&(action.as_str(), kind.as_str())),
                    "{}: {action} on {resource}: a production {kind} may only be the source of a restore",
                    s.sid
                );
            }
            if !changes.is_empty() {
                assert!(s.requires(RUN_TAG_IN_REQUEST), "{}: a restore from {resource} must tag its copy", s.sid);
            }
        }
    }
}

/// Keys rehearse writes in the state store (`src/engine/store.rs`), under the prefix.
const RUN: &str = "runs/r-20261125-164001-7f3a9c";
const JOURNAL_RECORD: &str = "runs/r-20261125-164001-7f3a9c/journal/0000000001.json";

fn state_object(key: &str) -> String {
    format!("{STATE_OBJECTS}{key}")
}

/// The statements of `effect` that name `action` on a resource matching `object`.
fn covering<'a>(policy: &'a [Statement], effect: &str, action: &str, object: &str) -> Vec<&'a Statement> {
    policy
        .iter()
        .filter(|s| s.effect == effect && s.has_action(action) && s.resources.iter().any(|r| glob(r, object)))
        .collect()
}

#[test]
fn the_state_store_is_confined_to_its_bucket_and_prefix() {
    let policy = policy();
    let s3: Vec<&Statement> = policy.iter().filter(|s| s.actions.iter().any(|a| a.starts_with("s3:"))).collect();
    assert!(!s3.is_empty(), "no s3 statement: the state store on S3 needs some");
    for s in s3 {
        for action in &s.actions {
            assert!(action.starts_with("s3:"), "{}: {action} shares a statement with the state store's", s.sid);
        }
        // The runner's prefix (inputs, output) is its own; listing only under it.
        if s.resources == [RUNNER_OBJECTS] {
            continue;
        }
        if s.resources == [RUNNER_BUCKET] {
            assert!(s.requires("s3:prefix"), "{}: listing the runner's bucket without s3:prefix", s.sid);
            continue;
        }
        // The release artifacts' statement reads them, nothing else (checked above).
        if s.resources == [ARTIFACTS] {
            assert_eq!(s.actions, ["s3:GetObject"], "{}: the release artifacts are only read", s.sid);
            continue;
        }
        for resource in &s.resources {
            assert!(resource != "*", "{}: an s3 action on Resource \"*\": any bucket of the account", s.sid);
            if s.has_action("s3:ListBucket") {
                assert_eq!(resource, STATE_BUCKET, "{}: s3:ListBucket names the state bucket only", s.sid);
            } else {
                assert!(is_state_object(resource), "{}: {resource} is not an object under {STATE_OBJECTS}", s.sid);
            }
        }
        if s.allows() && s.has_action("s3:ListBucket") {
            let prefixes: Vec<&String> = s
                .conditions
                .iter()
                .filter(|(op, k, _)| op == "StringLike" && k.eq_ignore_ascii_case("s3:prefix"))
                .flat_map(|(_, _, values)| values)
                .collect();
            assert!(
                !prefixes.is_empty() && prefixes.iter().all(|p| p.starts_with(STATE_PREFIX)),
                "{}: s3:ListBucket without a StringLike s3:prefix under {STATE_PREFIX}: it lists the whole bucket",
                s.sid
            );
        }
    }
}

#[test]
fn journal_records_in_the_state_store_can_only_be_created() {
    let policy = policy();
    let record = state_object(JOURNAL_RECORD);
    let puts = covering(&policy, "Allow", "s3:PutObject", &record);
    assert!(!puts.is_empty(), "nothing allows s3:PutObject of a journal record ({record})");
    for s in puts {
        assert!(
            s.requires_null(IF_NONE_MATCH, true),
            "{}: s3:PutObject of a journal record without \"Null\": {{\"{IF_NONE_MATCH}\": \"false\"}}: it could \
             overwrite a record",
            s.sid
        );
    }
    assert!(
        covering(&policy, "Deny", "s3:PutObject", &record).iter().any(|d| d.requires_null(IF_NONE_MATCH, false)),
        "no Deny of s3:PutObject of a journal record without If-None-Match (\"Null\": {{\"{IF_NONE_MATCH}\": \"true\"}})"
    );
    let deletes: Vec<&str> =
        covering(&policy, "Allow", "s3:DeleteObject", &record).iter().map(|s| s.sid.as_str()).collect();
    assert!(deletes.is_empty(), "{deletes:?}: s3:DeleteObject of a journal record: rehearse never deletes one");
    assert!(
        covering(&policy, "Deny", "s3:DeleteObject", &record).iter().any(|d| d.conditions.is_empty()),
        "no unconditional Deny of s3:DeleteObject of a journal record"
    );
}

#[test]
fn the_state_store_allows_what_rehearse_does_there() {
    let policy = policy();
    // Written again as they grow, with no condition.
    let rewritten = [format!("{RUN}/report/report.html"), format!("{RUN}/logs/app/output.log")];
    // Created with If-None-Match, replaced with If-Match, deleted with If-Match.
    let conditional = [
        format!("{RUN}/connection.json"),
        "locks/staging.json".to_string(),
        "locks/run.r-20261125-164001-7f3a9c.json".to_string(),
        "stages/staging/stage.json".to_string(),
        "stages/staging/secret.json".to_string(),
        "pool/shop/db/r-20261125-164001-7f3a9c.json".to_string(),
    ];
    for key in rewritten.iter().chain(&conditional).chain([&JOURNAL_RECORD.to_string()]) {
        assert!(allowed(&policy, "s3:GetObject", &state_object(key), &[]), "{key} cannot be read");
    }
    for key in &rewritten {
        assert!(
            allowed(&policy, "s3:PutObject", &state_object(key), &[]),
            "{key} cannot be written (reports and logs are written again as they grow)"
        );
    }
    for key in &conditional {
        let object = state_object(key);
        assert!(allowed(&policy, "s3:PutObject", &object, &[IF_NONE_MATCH]), "{key} cannot be created");
        assert!(allowed(&policy, "s3:PutObject", &object, &[IF_MATCH]), "{key} cannot be replaced with If-Match");
        assert!(allowed(&policy, "s3:DeleteObject", &object, &[IF_MATCH]), "{key} cannot be deleted with If-Match");
    }
    // `runs/` to find the runs (with delimiter `/`), a run's `report/` and `logs/` to fetch them.
    let listed = ["runs/".to_string(), format!("{RUN}/report/"), format!("{RUN}/logs/"), "pool/shop/db/".to_string()];
    for prefix in listed {
        let full = format!("{STATE_PREFIX}{prefix}");
        let allowed = policy.iter().any(|s| {
            s.allows()
                && s.has_action("s3:ListBucket")
                && s.conditions.iter().any(|(op, k, values)| {
                    op == "StringLike" && k.eq_ignore_ascii_case("s3:prefix") && values.iter().any(|v| glob(v, &full))
                })
        });
        assert!(allowed, "listing {full} is not allowed (s3:ListBucket with s3:prefix)");
    }
}

/// IAM's decision on `action` on the S3 object `object` by a request carrying the
/// condition keys `present` (the headers S3 maps to `s3:if-none-match`, `s3:if-match`):
/// an explicit Deny wins, then any Allow. S3 object statements here condition only on
/// `Null` (which this evaluates); anything else is a test to extend.
fn allowed(policy: &[Statement], action: &str, object: &str, present: &[&str]) -> bool {
    let applies = |s: &Statement| {
        s.has_action(action)
            && s.resources.iter().any(|r| glob(r, object))
            && s.conditions.iter().all(|(op, key, values)| {
                assert_eq!(op, "Null", "{}: evaluate {op} on {key} for {action} here", s.sid);
                // `"Null": {key: "true"}` holds when the key is absent, `"false"` when present.
                let absent = !present.iter().any(|p| p.eq_ignore_ascii_case(key));
                values.len() == 1 && (values[0] == "true") == absent
            })
    };
    let denied = policy.iter().any(|s| s.effect == "Deny" && applies(s));
    !denied && policy.iter().any(|s| s.allows() && applies(s))
}

/// Attack 10 of issue 23: PutObject of `stages/*`, `locks/*` and `runs/*/connection.json`
/// was unconditional — the policy document said records are "replaced only with
/// If-Match", and nothing enforced it — and so was DeleteObject of them.
#[test]
fn locks_stages_and_connection_details_are_written_and_deleted_only_with_a_condition() {
    let policy = policy();
    for key in [
        format!("{RUN}/connection.json"),
        "locks/staging.json".to_string(),
        "stages/staging/stage.json".to_string(),
        "stages/staging/secret.json".to_string(),
        "pool/shop/db/r-20261125-164001-7f3a9c.json".to_string(),
    ] {
        let object = state_object(&key);
        assert!(
            !allowed(&policy, "s3:PutObject", &object, &[]),
            "{key}: s3:PutObject without If-None-Match or If-Match is allowed: a blind overwrite"
        );
        assert!(
            !allowed(&policy, "s3:DeleteObject", &object, &[]),
            "{key}: s3:DeleteObject without If-Match is allowed: a blind delete"
        );
        assert!(
            !allowed(&policy, "s3:DeleteObject", &object, &[IF_NONE_MATCH]),
            "{key}: only If-Match makes a delete conditional"
        );
        // Refused by a Deny too, which holds whatever else is attached to the role.
        for (action, headers) in [("s3:PutObject", vec![]), ("s3:DeleteObject", vec![IF_NONE_MATCH])] {
            let denied = covering(&policy, "Deny", action, &object).iter().any(|d| {
                d.conditions.iter().all(|(op, k, v)| {
                    op == "Null" && v == &["true".to_string()] && !headers.iter().any(|h| h.eq_ignore_ascii_case(k))
                })
            });
            assert!(denied, "{key}: no Deny of an unconditional {action}");
        }
    }
    // The journal: created only, If-Match included.
    let record = state_object(JOURNAL_RECORD);
    assert!(allowed(&policy, "s3:PutObject", &record, &[IF_NONE_MATCH]));
    assert!(!allowed(&policy, "s3:PutObject", &record, &[IF_MATCH]), "a journal record can be replaced");
    assert!(!allowed(&policy, "s3:PutObject", &record, &[]));
    assert!(!allowed(&policy, "s3:DeleteObject", &record, &[IF_MATCH]));
}

/// Attack 10 of issue 23: `RunInstances` on `network-interface/*` had no condition, and
/// an instance launched onto an existing production interface joins its security
/// groups. The interface a launch may use is the one it creates, with the run tag in
/// the request; an existing one has no request tag and is refused.
#[test]
fn a_launch_onto_a_network_interface_without_the_run_tag_is_refused() {
    let policy = policy();
    let interface = "arn:aws:ec2:*:*:network-interface/*";
    assert!(
        denied_without(&policy, "ec2:RunInstances", interface, RUN_TAG_IN_REQUEST),
        "no Deny of ec2:RunInstances on {interface} without {RUN_TAG_IN_REQUEST}"
    );
    assert!(
        allows().iter().any(|s| s.has_action("ec2:CreateTags")
            && s.resources.iter().any(|r| r == interface)
            && s.requires("ec2:CreateAction")),
        "the tags of the interface a launch creates (authorized as ec2:CreateTags) are not allowed"
    );
}

/// What the policy requires to be tagged at creation, the code tags in the call: every
/// kind `CREATED` lists for EC2 is in a `TagSpecifications` of the SDK adapter.
#[test]
fn everything_an_ec2_create_makes_is_tagged_in_the_call() {
    let src = sdk_source();
    for (action, kinds) in CREATED.iter().filter(|(a, _)| a.starts_with("ec2:")) {
        for kind in *kinds {
            let variant: String = kind.split('-').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            assert!(
                src.contains(&format!("ResourceType::{variant}")),
                "{action} creates a {kind}, which the policy requires tagged in the request, but sdk/ never tags a \
                 ResourceType::{variant}"
            );
        }
    }
}

/// `ssm:GetCommandInvocation` and `ssm:CancelCommand` take no resource and no condition
/// key of their own (the Service Authorization Reference lists none; parliament's copy
/// agrees), so IAM cannot narrow them below `*`. What keeps them to rehearse's own
/// commands: each names a command by its id, a UUID only `SendCommand` returns to its
/// caller, and the role has nothing that lists or describes other commands.
#[test]
fn ssm_reads_and_cancels_stand_alone_and_nothing_reveals_other_commands() {
    for s in allows() {
        for action in ["ssm:GetCommandInvocation", "ssm:CancelCommand"] {
            if s.has_action(action) {
                assert_eq!(s.actions, [action], "{}: {action} shares its statement", s.sid);
                assert_eq!(s.resources, ["*"], "{}: {action} takes no resource: \"*\" is what IAM evaluates", s.sid);
            }
        }
        for action in &s.actions {
            let name = action.strip_prefix("ssm:").unwrap_or_default();
            assert!(
                !(name.starts_with("List") || name.starts_with("Describe")),
                "{}: {action} would let the role learn the ids of commands it did not send",
                s.sid
            );
        }
    }
}

#[test]
fn every_aws_call_in_the_code_is_allowed() {
    let allows = allows();
    for action in sdk_calls().iter().chain(&implied_actions()) {
        assert!(
            allows.iter().any(|s| s.has_action(action)),
            "src/providers/aws/sdk.rs calls {action} but docs/iam-policy.json does not allow it: add it, constrained \
             to what rehearse creates, and a row in docs/iam-policy.md"
        );
    }
}

#[test]
fn nothing_is_granted_that_the_code_does_not_use() {
    let used: BTreeSet<String> = sdk_calls().into_iter().chain(implied_actions()).collect();
    for s in allows() {
        for action in &s.actions {
            // rehearse never creates a snapshot, so it never deletes one.
            assert!(
                !action.eq_ignore_ascii_case("rds:DeleteDBSnapshot")
                    && !action.eq_ignore_ascii_case("rds:DeleteDBClusterSnapshot"),
                "{}: {action} is granted: rehearse deletes with SkipFinalSnapshot and never deletes a snapshot",
                s.sid
            );
            // Reads are granted where EC2 and RDS need no resource; the state store's are not.
            if action.starts_with("kms:") || (is_read(action) && !action.starts_with("s3:")) {
                continue;
            }
            assert!(
                used.iter().any(|u| u.eq_ignore_ascii_case(action)),
                "{}: {action} is granted but src/providers/aws/sdk.rs never calls it: remove it",
                s.sid
            );
        }
    }
}

#[test]
fn the_permissions_table_covers_every_action() {
    let doc = std::fs::read_to_string(root().join("docs/iam-policy.md")).expect("docs/iam-policy.md is readable");
    for s in policy() {
        for action in &s.actions {
            assert!(doc.contains(&format!("`{action}`")), "docs/iam-policy.md has no row for `{action}` ({})", s.sid);
        }
    }
}

#[test]
fn parliament_reports_nothing() {
    let parliament = root().join(".venv/bin/parliament");
    assert!(
        parliament.exists(),
        "parliament (the IAM policy linter) is not installed at {}: run `make test-deps`",
        parliament.display()
    );
    // The policy on stdin: `--file` is refused whenever stdin is not a terminal.
    let out = Command::new(&parliament)
        .stdin(File::open(policy_path()).expect("docs/iam-policy.json opens"))
        .output()
        .expect("parliament runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "parliament finds something in docs/iam-policy.json ({}):\n{stdout}{stderr}",
        out.status
    );
}
