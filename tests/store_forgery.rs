//! The shared state store is a stranger's input (issue 23, part 2, findings 3–6).
//!
//! Anyone with the shipped IAM policy — another team's CI job, a compromised one, a
//! colleague's laptop — can append journal records (`If-None-Match`) and overwrite
//! `runs/*/connection.json`. Each test here writes such forged objects for real, into
//! the emulator's S3 (or the local state directory, where the attack is on a journal
//! this machine wrote), and runs the real binary against them:
//!
//! - 3: a forged `connection.json` whose database name carries shell, evaluated as
//!   `eval "$(rehearse env RUN)"`; a forged run claiming the name of a real
//!   `up --name shopdb`;
//! - 4: the removal commands printed after the guard refused: for an untagged
//!   production RDS instance, and for a directory outside the run;
//! - 5: a runner-prefix handle naming another bucket, under `sweep --yes`;
//! - 6: a second `run` record (`provider: local`), `deleted` for everything and an
//!   unbounded `extended` appended to a real AWS run's journal; `deleted` appended to a
//!   real local run's journal.

use crate::common;
use crate::emulator;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use chrono::{Duration, Utc};
use common::*;
use emulator::*;
use serde_json::{json, Value};

const STORE: &str = "s3://team-state/rehearse";

/// The binary pointed at the emulator and the shared store, as machine `host`.
fn shared(emu: &Emulator, sb: &Sandbox, host: &str) -> Command {
    let mut c = emu.rehearse(sb);
    c.env("REHEARSE_STATE", STORE).env("REHEARSE_HOST", host);
    c
}

fn run(mut c: Command) -> (i32, String, String) {
    let Output { status, stdout, stderr } = c.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Writes `body` at `rehearse/KEY` in the store's bucket, as the policy lets anyone.
fn put(rt: &tokio::runtime::Runtime, s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: Vec<u8>) {
    rt.block_on(s3.put_object().bucket(bucket).key(key).body(body.into()).send()).unwrap();
}

/// The records of a run's journal in the store.
fn store_journal(rt: &tokio::runtime::Runtime, emu: &Emulator, s3: &aws_sdk_s3::Client, run_id: &str) -> Vec<Value> {
    let keys = emu.keys(rt, s3, "team-state", &format!("rehearse/runs/{run_id}/journal/"));
    keys.iter()
        .map(|k| {
            let o = rt.block_on(s3.get_object().bucket("team-state").key(k).send()).unwrap();
            serde_json::from_slice(&rt.block_on(o.body.collect()).unwrap().into_bytes()).unwrap()
        })
        .collect()
}

/// Appends `records` to a run's journal in the store, after what is there (as a
/// stranger's writer does: the next numbers, each created once).
fn append(rt: &tokio::runtime::Runtime, emu: &Emulator, s3: &aws_sdk_s3::Client, run_id: &str, records: &[Value]) {
    let have = store_journal(rt, emu, s3, run_id).len();
    for (i, r) in records.iter().enumerate() {
        let key = format!("rehearse/runs/{run_id}/journal/{:010}.json", have + i + 1);
        put(rt, s3, "team-state", &key, serde_json::to_vec(r).unwrap());
    }
}

/// A run record as rehearse writes one.
fn run_record(run_id: &str, provider: &str, name: Option<&str>, description: &str) -> Value {
    json!({
        "type": "run", "run_id": run_id, "environment": "shop", "provider": provider,
        "description": description, "release": "v2", "owner": "ci@example.com",
        "started_at": (Utc::now() - Duration::hours(1)).to_rfc3339(),
        "expires_at": (Utc::now() - Duration::minutes(5)).to_rfc3339(),
        "destroy": "never", "work_dir": null, "region": REGION, "pid": 4242, "pid_start": 7,
        "name": name, "user": "ci", "max_ttl_secs": 86400, "host": "ci-7",
    })
}

fn at() -> String {
    Utc::now().to_rfc3339()
}

/// Production on the emulator: a VPC with two subnets, and an RDS instance (untagged,
/// as production is) with a snapshot to restore copies from.
struct Prod {
    vpc: String,
    subnets: Vec<String>,
}

fn seed(rt: &tokio::runtime::Runtime, emu: &Emulator) -> Prod {
    let (ec2, rds) = emu.clients(rt);
    rt.block_on(async {
        let (vpc, subnets) = production_network(&ec2).await;
        rds.create_db_instance()
            .db_instance_identifier("shop-prod-db")
            .engine("postgres")
            .db_instance_class("db.t3.medium")
            .allocated_storage(20)
            .master_username("shop")
            .master_user_password("production-secret")
            .deletion_protection(false)
            .tags(aws_sdk_rds::types::Tag::builder().key("env").value("production").build())
            .send()
            .await
            .unwrap();
        rds.create_db_snapshot()
            .db_instance_identifier("shop-prod-db")
            .db_snapshot_identifier("shop-prod-db-2026-11-25")
            .send()
            .await
            .unwrap();
        Prod { vpc, subnets }
    })
}

/// A description of the shop on AWS: the copy of production's database in the run's
/// group and subnet group (no instances: nothing here needs them); with `runner`, an
/// SSM runner whose outputs go to `runner`.
fn aws_description(sb: &Sandbox, prod: &Prod, runner: Option<&str>) -> std::path::PathBuf {
    let mut text = format!(
        "name: shop\nprovider: aws\nregion: {REGION}\nowner: t@example.com\nnetwork:\n  vpc: {}\n  subnets: [{}, {}]\n  \
         allow_cidrs: [10.20.0.0/16]\nrelease:\n  version: v2\n  artifact: \"s3://shop-releases/shop-v2.tar.gz\"\n\
         databases:\n  db:\n    engine: postgres\n    name: shop\n    source:\n      rds_instance: shop-prod-db\n    \
         restore: newest-snapshot\n    instance_class: db.t3.medium\n",
        prod.vpc, prod.subnets[0], prod.subnets[1]
    );
    if let Some(outputs) = runner {
        text.push_str(&format!(
            "runner:\n  ssm:\n    image: ami-0abcdef1234567890\n    instance_profile: rehearse-runner\n    outputs: \"{outputs}\"\n"
        ));
    }
    write_description(sb, "shop-aws.yaml", &text)
}

/// The RDS instances, DB subnet groups and security groups tagged with `run_id`.
fn tagged_with(rt: &tokio::runtime::Runtime, emu: &Emulator, run_id: &str) -> Vec<String> {
    let (ec2, rds) = emu.clients(rt);
    rt.block_on(async {
        let mut out = Vec::new();
        let mine = |k: Option<&str>, v: Option<&str>| k == Some("rehearse:run-id") && v == Some(run_id);
        for d in rds.describe_db_instances().send().await.unwrap().db_instances() {
            if d.tag_list().iter().any(|t| mine(t.key(), t.value())) {
                out.push(format!("db {}", d.db_instance_identifier().unwrap_or_default()));
            }
        }
        for g in ec2.describe_security_groups().send().await.unwrap().security_groups() {
            if g.tags().iter().any(|t| mine(t.key(), t.value())) {
                out.push(format!("security group {}", g.group_id().unwrap_or_default()));
            }
        }
        for g in rds.describe_db_subnet_groups().send().await.unwrap().db_subnet_groups() {
            if g.db_subnet_group_name() == Some(&format!("rehearse-{run_id}")) {
                out.push(format!("subnet group {}", g.db_subnet_group_name().unwrap_or_default()));
            }
        }
        out
    })
}

/// The RDS instance identifiers there are.
fn db_instances(rt: &tokio::runtime::Runtime, emu: &Emulator) -> Vec<String> {
    let (_, rds) = emu.clients(rt);
    let out = rt.block_on(rds.describe_db_instances().send()).unwrap();
    out.db_instances().iter().filter_map(|d| d.db_instance_identifier().map(str::to_string)).collect()
}

/// `up` of the shop on AWS through the shared store on machine A: its run id.
fn aws_up(emu: &Emulator, sb: &Sandbox, file: &Path, name: Option<&str>) -> String {
    let mut c = shared(emu, sb, "machine-a");
    c.args(["up", file.to_str().unwrap(), "--release", "v2"]);
    if let Some(n) = name {
        c.args(["--name", n]);
    }
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "up failed: {err}");
    sb.run_ids().pop().unwrap()
}

// ---------------------------------------------------------------------------------
// 3. Identifiers from the store
// ---------------------------------------------------------------------------------

/// A forged kept run whose `connection.json` has a database named `x;PWN;y`: `rehearse
/// env` printed `export REHEARSE_DB_X;PWN;Y_URL=…`, and `eval "$(rehearse env RUN)"`
/// ran `PWN` (names are uppercased; any command on the PATH in capitals will do, and
/// the test puts one there). It must be refused, the store key named, nothing printed.
#[test]
fn env_refuses_a_forged_connection_whose_names_carry_shell() {
    let (emu, rt, s3) = with_team_store();
    let sb = Sandbox::new();
    let id = "r-20261127-101500-c0ffee";
    append(
        &rt,
        &emu,
        &s3,
        id,
        &[
            run_record(id, "aws", None, ""),
            json!({"type": "finished", "verdict": "passed", "exit_code": 0, "kept": true, "at": at()}),
        ],
    );
    let db = json!({"host": "db.example.com", "port": "5432", "name": "shop", "user": "app", "password": "pw",
                    "url": "postgres://app:pw@db.example.com:5432/shop", "endpoint": "db.example.com:5432"});
    let conn = json!({"run_id": id, "databases": {"x;PWN;y": db}, "services": {}});
    put(&rt, &s3, "team-state", &format!("rehearse/runs/{id}/connection.json"), serde_json::to_vec(&conn).unwrap());
    // The command the payload runs, on the shell's PATH.
    let bin = sb.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = sb.dir.path().join("pwned");
    std::fs::write(bin.join("PWN"), format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(bin.join("PWN"), std::fs::Permissions::from_mode(0o755)).unwrap();

    for format in ["shell", "dotenv"] {
        let mut c = shared(&emu, &sb, "operator");
        c.args(["--format", format, "env", id]);
        let (code, out, err) = run(c);
        let evaluated = Command::new("sh")
            .args(["-c", "eval \"$1\"", "sh", &out])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output()
            .unwrap();
        assert!(
            !marker.exists(),
            "--format {format}: `eval \"$(rehearse env {id})\"` ran the forged name's command; env printed:\n{out}\n{}",
            String::from_utf8_lossy(&evaluated.stderr)
        );
        assert_eq!(code, 2, "--format {format}: {out}{err}");
        assert!(out.is_empty(), "--format {format}: printed {out}");
        assert!(
            err.contains(&format!("runs/{id}/connection.json")) && err.contains("database name `x;PWN;y`"),
            "--format {format}: {err}"
        );
    }
}

/// A real `up --name shopdb`, and a forged kept run in the store claiming the same name
/// (its id sorting first): `rehearse env shopdb` handed out the forger's connection.
/// A name two live runs claim is refused, naming both; the real run by its id still works.
#[test]
fn a_name_claimed_by_a_forged_run_is_refused_naming_both_runs() {
    let (emu, rt, s3) = with_team_store();
    let prod = seed(&rt, &emu);
    let a = Sandbox::new();
    let real = aws_up(&emu, &a, &aws_description(&a, &prod, None), Some("shopdb"));
    let forged = "r-20000101-000000-aaaaaa";
    append(
        &rt,
        &emu,
        &s3,
        forged,
        &[
            run_record(forged, "aws", Some("shopdb"), ""),
            json!({"type": "finished", "verdict": "passed", "exit_code": 0, "kept": true, "at": at()}),
        ],
    );
    let evil = json!({"host": "evil.example.net", "port": "5432", "name": "shop", "user": "app", "password": "x",
                      "url": "postgres://app:x@evil.example.net:5432/shop", "endpoint": "evil.example.net:5432"});
    let conn = json!({"run_id": forged, "databases": {"db": evil}, "services": {}});
    put(&rt, &s3, "team-state", &format!("rehearse/runs/{forged}/connection.json"), serde_json::to_vec(&conn).unwrap());

    let b = Sandbox::new();
    let mut c = shared(&emu, &b, "machine-b");
    c.args(["env", "shopdb"]);
    let (code, out, err) = run(c);
    assert!(!out.contains("evil.example.net"), "`rehearse env shopdb` handed out the forged run's connection:\n{out}");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("the name `shopdb` is claimed by 2 live runs"), "{err}");
    assert!(err.contains(&real) && err.contains(forged), "{err}");
    // `down shopdb` does not guess either; the real run by its id is torn down.
    let (code, _, err) = run({
        let mut c = shared(&emu, &b, "machine-b");
        c.args(["down", "shopdb"]);
        c
    });
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = run({
        let mut c = shared(&emu, &b, "machine-b");
        c.args(["down", &real]);
        c
    });
    assert_eq!(code, 0, "{out}{err}");
    assert!(tagged_with(&rt, &emu, &real).is_empty());
}

// ---------------------------------------------------------------------------------
// 4. No removal command for what the guard refused
// ---------------------------------------------------------------------------------

/// A forged journal whose copy is production's untagged `shop-prod-db`: the guard
/// refused it (rightly), and rehearse then printed `aws rds delete-db-instance …
/// shop-prod-db --skip-final-snapshot --delete-automated-backups` as the command that
/// removes it. It must say "not rehearse's: left alone" and print no such command.
#[test]
fn the_guard_refusing_production_prints_no_command_that_deletes_it() {
    let (emu, rt, s3) = with_team_store();
    seed(&rt, &emu);
    let id = "r-20261127-102000-d00d00";
    append(
        &rt,
        &emu,
        &s3,
        id,
        &[
            run_record(id, "aws", None, ""),
            json!({"type": "created", "id": "database.db", "kind": "aws.rds.db-instance",
               "handle": {"db_instance_id": "shop-prod-db"}, "at": at()}),
        ],
    );
    let sb = Sandbox::new();
    let (code, out, err) = run({
        let mut c = shared(&emu, &sb, "operator");
        c.args(["down", id]);
        c
    });
    let text = format!("{out}{err}");
    assert!(db_instances(&rt, &emu).contains(&"shop-prod-db".to_string()), "production's database is gone: {text}");
    assert!(
        !text.contains("delete-db-instance"),
        "rehearse printed a command that deletes production's database:\n{text}"
    );
    assert!(text.contains("database.db (aws.rds.db-instance") && text.contains("not rehearse's: left alone"), "{text}");
    assert!(text.contains("does not carry the tag rehearse:run-id="), "{text}");
    assert_eq!(code, 4, "{text}");
}

/// A journal of this machine's own (in the local state directory, a `file://` store)
/// whose release directory was made to name a directory outside the run: teardown
/// refused it, and then printed `rm -rf -- DIR` as the command that removes it.
#[test]
fn a_directory_outside_the_run_gets_no_removal_command() {
    let sb = Sandbox::new();
    let id = "r-20261127-102500-beefed";
    let victim = sb.dir.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("canary"), "must survive").unwrap();
    let dir = sb.state().join("runs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    for d in [sb.state(), sb.state().join("runs"), dir.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut record = run_record(id, "local", None, "");
    record["host"] = json!(null);
    record["region"] = json!(null);
    record["pid"] = json!(0x3fff_fff0);
    record["work_dir"] = json!(sb.work().join("runs").join(id));
    let created =
        json!({"type": "created", "id": "release", "kind": "local.release", "handle": {"dir": victim}, "at": at()});
    let text: String = [record, created].iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.join("journal.jsonl"), text).unwrap();
    rehearse::engine::journal::mark_here(&dir, id).unwrap();
    let (code, out, err) = run({
        let mut c = sb.cmd();
        c.args(["--state", &format!("file://{}", sb.state().display()), "down", id]);
        c
    });
    let text = format!("{out}{err}");
    assert!(victim.join("canary").exists(), "the victim was removed: {text}");
    assert!(!text.contains("rm -rf"), "rehearse printed a command that removes {}:\n{text}", victim.display());
    assert!(text.contains("release (local.release") && text.contains("not rehearse's: left alone"), "{text}");
    assert!(text.contains("refusing to remove"), "{text}");
    assert_eq!(code, 4, "{text}");
}

// ---------------------------------------------------------------------------------
// 5. S3 locations come from the description
// ---------------------------------------------------------------------------------

/// Two buckets: the team's store and production's assets. A forged crashed run whose
/// runner-prefix handle names `s3://prod-assets/images/r-us/`: `sweep --yes` deleted
/// production's images (only the last path segment was checked). The bucket and
/// prefix come from the description: without it at hand the keys are left (said), and
/// with it, a handle naming anything else is left alone — while a journal from before
/// that names exactly the description's location still has its keys removed.
#[test]
fn sweep_never_deletes_keys_of_a_bucket_the_description_does_not_name() {
    let (emu, rt, s3) = with_team_store();
    emu.bucket(&rt, "prod-assets");
    emu.bucket(&rt, "rehearse-runner");
    let prod = seed(&rt, &emu);
    let sb = Sandbox::new();
    let description = aws_description(&sb, &prod, Some("s3://rehearse-runner/out"));
    let images = ["images/r-us/logo.png", "images/r-us/banner.png", "images/r-20261127-103000-abcdef/hero.png"];
    for k in images {
        put(&rt, &s3, "prod-assets", k, b"production".to_vec());
    }
    // Without a description at hand (its path names nothing on this machine); with
    // this machine's description, but a handle naming production's bucket.
    let (no_desc, other_bucket, old_style) = ("r-us", "r-20261127-103000-abcdef", "r-20261127-103100-abcdef");
    let crashed = |id: &str, description: &str, handle: Value| {
        vec![
            run_record(id, "aws", None, description),
            json!({"type": "created", "id": "runner.data", "kind": "aws.s3.prefix", "handle": handle, "at": at()}),
        ]
    };
    let desc = description.to_str().unwrap();
    append(
        &rt,
        &emu,
        &s3,
        no_desc,
        &crashed(no_desc, "/nowhere/shop-aws.yaml", json!({"bucket": "prod-assets", "prefix": "images/r-us/"})),
    );
    append(
        &rt,
        &emu,
        &s3,
        other_bucket,
        &crashed(other_bucket, desc, json!({"bucket": "prod-assets", "prefix": format!("images/{other_bucket}/")})),
    );
    // A journal written before the journal kept only the run's part of the prefix,
    // naming exactly what the description says.
    put(&rt, &s3, "rehearse-runner", &format!("out/{old_style}/out/mask.db/stdout"), b"output".to_vec());
    append(
        &rt,
        &emu,
        &s3,
        old_style,
        &crashed(old_style, desc, json!({"bucket": "rehearse-runner", "prefix": format!("out/{old_style}/")})),
    );

    let (code, out, err) = run({
        let mut c = shared(&emu, &sb, "operator");
        c.args(["sweep", "--yes"]);
        c
    });
    let text = format!("{out}{err}");
    let left = emu.keys(&rt, &s3, "prod-assets", "images/");
    assert_eq!(left.len(), images.len(), "`sweep --yes` deleted production's keys: left {left:?}\n{text}");
    assert!(text.contains("no description at hand names the bucket"), "{text}");
    assert!(
        text.contains(&format!("s3://prod-assets/images/{other_bucket}/"))
            && text.contains("not rehearse's: left alone"),
        "{text}"
    );
    assert!(!text.contains("aws s3 rm"), "{text}");
    assert!(emu.keys(&rt, &s3, "rehearse-runner", "out/").is_empty(), "the run's own keys are left: {text}");
    assert_eq!(code, 4, "{text}");
}

// ---------------------------------------------------------------------------------
// 6. A run's records: the first run record rules, and "gone" is checked
// ---------------------------------------------------------------------------------

/// A real AWS run kept through the store; then appended to its journal there: a
/// second `run` record saying `provider: local`, `deleted` for every resource and an
/// extension by a year. `down` from another machine skipped every AWS resource and
/// said "torn down, nothing left". The second run record is refused (named), and
/// teardown confirms by the run's tags, removing what still carries them.
#[test]
fn forged_run_deleted_and_extended_records_do_not_stop_an_aws_teardown() {
    let (emu, rt, s3) = with_team_store();
    let prod = seed(&rt, &emu);
    let a = Sandbox::new();
    let id = aws_up(&emu, &a, &aws_description(&a, &prod, None), None);
    assert!(tagged_with(&rt, &emu, &id).len() >= 3, "{:?}", tagged_with(&rt, &emu, &id));
    let journal = store_journal(&rt, &emu, &s3, &id);
    let first = journal[0].clone();
    let mut second = first.clone();
    second["provider"] = json!("local");
    second["region"] = json!(null);
    let mut forged = vec![second];
    for r in journal.iter().filter(|r| r["type"] == "created") {
        forged.push(json!({"type": "deleted", "id": r["id"], "at": at()}));
    }
    let year = (Utc::now() + Duration::days(365)).to_rfc3339();
    forged.push(json!({"type": "extended", "expires_at": year, "at": at()}));
    let second_key = format!("runs/{id}/journal/{:010}.json", journal.len() + 1);
    append(&rt, &emu, &s3, &id, &forged);

    let b = Sandbox::new();
    let (code, out, err) = run({
        let mut c = shared(&emu, &b, "machine-b");
        c.args(["down", &id]);
        c
    });
    let text = format!("{out}{err}");
    let left = tagged_with(&rt, &emu, &id);
    assert!(left.is_empty(), "`down` left {left:?} and said:\n{text}");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&second_key) && text.contains("second run record"), "{text}");
    assert!(text.contains("still tagged rehearse:run-id="), "{text}");
    // The extension beyond the run's max_ttl is not believed either.
    let (_, out, _) = run({
        let mut c = shared(&emu, &b, "machine-b");
        c.args(["--format", "json", "list", "--all"]);
        c
    });
    let rows: Value = serde_json::from_str(&out).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["run_id"] == id.as_str()).unwrap().clone();
    assert_eq!(row["provider"], "aws", "{row}");
    assert_ne!(row["expires_at"].as_str().map(|e| &e[..10]), Some(&year[..10]), "{row}");
}

/// A real local run kept through the store (its copy's PostgreSQL running here); then
/// `deleted` appended for everything in the store. `down` on this machine took the
/// store's journal over its own, skipped every resource, and said "torn down, nothing
/// left" with the cluster still running. This machine's own journal of a local run is
/// not replaced by what others appended.
#[test]
fn a_forged_deletion_in_the_store_does_not_stop_a_local_teardown() {
    let (emu, rt, s3) = with_team_store();
    let sb = Sandbox::new();
    let backups = demo_backups();
    let file = write_description(
        &sb,
        "db.yaml",
        &format!(
            "name: dbonly\nprovider: local\nowner: t\nrelease:\n  version: v2\n  artifact: /nonexistent/v2\n\
             databases:\n  db:\n    name: shop\n    source:\n      backup_dir: {}\n",
            backups.display()
        ),
    );
    let (code, _, err) = run({
        let mut c = shared(&emu, &sb, "here");
        c.args(["up", file.to_str().unwrap(), "--release", "v2"]);
        c
    });
    assert_eq!(code, 0, "up failed: {err}");
    let id = sb.run_ids().pop().unwrap();
    assert!(!postgres_under(&sb.work()).is_empty(), "the copy should run");
    let journal = store_journal(&rt, &emu, &s3, &id);
    let forged: Vec<Value> = journal
        .iter()
        .filter(|r| r["type"] == "created")
        .map(|r| json!({"type": "deleted", "id": r["id"], "at": at()}))
        .collect();
    append(&rt, &emu, &s3, &id, &forged);
    let (code, out, err) = run({
        let mut c = shared(&emu, &sb, "here");
        c.args(["down", &id]);
        c
    });
    let pg = postgres_under(&sb.work());
    for pid in &pg {
        // The test's own copy, stopped so that a failure leaves no server behind.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGQUIT);
    }
    assert!(pg.is_empty(), "PostgreSQL still runs ({pg:?}) after `down` said:\n{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert_nothing_left(&sb, &id);
}
