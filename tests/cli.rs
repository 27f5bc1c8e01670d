//! The command line as users meet it: validate, plan, schema, help.

use crate::common;

use std::process::Command;

use common::{bin, root};

fn rehearse(args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).current_dir(root()).env("NO_COLOR", "1").output().unwrap()
}

#[test]
fn every_example_description_validates() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("environments"))
        .unwrap()
        .flatten()
        .map(|e| format!("environments/{}", e.file_name().to_string_lossy()))
        .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = rehearse(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for f in &files {
        assert!(stdout.contains(&format!("{f}: valid")), "{stdout}");
    }
}

/// Every file of the corpus exits 2, leads with FILE:LINE:COL, never panics; the
/// messages are pinned by a snapshot.
#[test]
fn invalid_corpus_is_rejected_with_positions() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("tests/invalid"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "only {} invalid descriptions", files.len());
    let mut all = String::new();
    for f in &files {
        let rel = format!("tests/invalid/{f}");
        let out = rehearse(&["validate", &rel]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{rel} should be invalid:\n{stderr}");
        assert!(!stderr.contains("panicked"), "{rel} panicked:\n{stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        let prefix = format!("{rel}:");
        let pos: Vec<&str> = first.strip_prefix(&prefix).unwrap_or("").splitn(3, ':').collect();
        assert!(
            pos.len() == 3
                && pos[0].parse::<u32>().is_ok()
                && pos[1].parse::<u32>().is_ok()
                && pos[2].starts_with(" error:"),
            "{rel}: first line is not FILE:LINE:COL: error: ...\n{stderr}"
        );
        // JSON output never panics either and carries the same positions.
        let json = rehearse(&["validate", "--format", "json", &rel]);
        assert_eq!(json.status.code(), Some(2));
        let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
        assert!(v[0]["problems"][0]["line"].as_u64().is_some(), "{v}");
        all.push_str(&stderr);
        all.push('\n');
    }
    // Named as when this file was a test binary of its own (tests/all.rs).
    insta::with_settings!({ prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!("cli__invalid_corpus", all);
    });
}

#[test]
fn ten_megabyte_file_is_refused_without_reading_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let line = "# padding padding padding padding padding padding padding padding padding\n";
    std::fs::write(&path, line.repeat(10 * 1024 * 1024 / line.len() + 1)).unwrap();
    let out = rehearse(&["validate", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.starts_with(&format!("{}:1:1: error: the file is larger than", path.display())), "{stderr}");
}

#[test]
fn plan_json_is_a_graph_that_never_depends_on_production() {
    let out = rehearse(&["plan", "environments/shop-aws.yaml", "--release", "v2", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan is JSON");
    assert_eq!(plan["schema_version"], 2);
    assert_eq!(plan["release"]["version"], "v2");
    let resources = plan["resources"].as_array().unwrap();
    let ids: Vec<&str> = resources.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let kind = |id: &str| resources.iter().find(|r| r["id"] == id).unwrap()["kind"].as_str().unwrap().to_string();
    for r in resources {
        assert!(r["id"].is_string() && r["kind"].is_string() && r["depends_on"].is_array(), "{r}");
        for dep in r["depends_on"].as_array().unwrap() {
            let dep = dep.as_str().unwrap();
            assert!(ids.contains(&dep), "{} depends on {dep}, which is not in the plan (production?)", r["id"]);
            assert_ne!(kind(dep), "suite", "{} depends on a suite", r["id"]);
        }
    }
    // Instances and the database restore depend on the run's security group.
    let sg = "network.security-group";
    assert_eq!(kind(sg), "aws.ec2.security-group");
    for r in resources.iter().filter(|r| r["kind"] == "aws.ec2.instance" || r["kind"] == "aws.rds.db-instance") {
        assert!(r["depends_on"].as_array().unwrap().iter().any(|d| d == sg), "{} must depend on {sg}", r["id"]);
    }
    let instances = resources.iter().filter(|r| r["kind"] == "aws.ec2.instance").count();
    assert_eq!(instances, 3, "2 web + 1 worker");
    // The database is restored from production, which is only a source.
    let db = resources.iter().find(|r| r["id"] == "database.db").unwrap();
    assert_eq!(db["source"]["identifier"], "shop-prod-db");
    assert_eq!(db["attributes"]["publicly_accessible"], false);
    assert_eq!(db["attributes"]["deletion_protection"], false);
    // Suites depend on every instance of the services they exercise.
    let smoke = resources.iter().find(|r| r["id"] == "suite.smoke").unwrap();
    let deps: Vec<&str> = smoke["depends_on"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(deps.contains(&"service.web.0") && deps.contains(&"service.web.1"), "{deps:?}");
    let migrations = resources.iter().find(|r| r["id"] == "suite.migrations").unwrap();
    let deps: Vec<&str> = migrations["depends_on"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(deps.contains(&"service.worker.0"), "{deps:?}");
    // The cost estimate adds up the known prices.
    let total = plan["estimated_cost_per_hour_usd"].as_f64().unwrap();
    let sum: f64 = resources.iter().filter_map(|r| r["cost_per_hour_usd"].as_f64()).sum();
    assert!((total - sum).abs() < 1e-6 && total > 0.0);
}

#[test]
fn plan_text_reads_like_terraform() {
    let out = rehearse(&["plan", "environments/shop-aws.yaml", "--release", "v2"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("+ network.security-group"), "{text}");
    assert!(text.contains("newest available snapshot of RDS instance shop-prod-db (read-only)"), "{text}");
    assert!(text.contains("Plan: 9 resources to create, 2 suites to run, estimated $"), "{text}");
    // Masking runs once the copy's port is open, and what uses the copy waits for it.
    assert!(text.contains("depends on: database.db, network.ingress.databases\n"), "{text}");
    assert!(text.contains("depends on: network.security-group, database.db, mask.db,"), "{text}");
    // The copies' port opens only after the copies exist (and are secured).
    let ingress = text.find("+ network.ingress.databases").expect("the databases' ingress is planned");
    assert!(text.find("+ database.db").unwrap() < ingress, "{text}");
    assert!(text.contains("depends on: network.security-group, database.db\n"), "{text}");
    assert!(text.contains("REHEARSE_RELEASE=v2"), "user-data is rendered:\n{text}");
}

#[test]
fn plan_without_a_release_version_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("norelease.yaml");
    std::fs::write(&path, "name: x\nprovider: local\nowner: me\nrelease:\n  artifact: a.tar.gz\n").unwrap();
    let out = rehearse(&["plan", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no release version"));
}

#[test]
fn schema_covers_every_key_the_examples_use() {
    let out = rehearse(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let props = schema["properties"].as_object().unwrap();
    for key in [
        "name",
        "provider",
        "region",
        "ttl",
        "owner",
        "tags",
        "network",
        "variables",
        "release",
        "databases",
        "services",
        "suites",
        "destroy",
    ] {
        assert!(props.contains_key(key), "schema lacks `{key}`");
    }
    let defs = schema["$defs"].as_object().unwrap();
    let service = defs["Service"]["properties"].as_object().unwrap();
    for key in [
        "count",
        "depends_on",
        "image",
        "instance_type",
        "user_data",
        "command",
        "install",
        "templates",
        "env",
        "port",
        "health",
    ] {
        assert!(service.contains_key(key), "Service schema lacks `{key}`");
    }
    assert_eq!(defs["Service"]["additionalProperties"], false);
}

#[test]
fn help_lists_exit_codes_and_completions_and_man_page_render() {
    let out = rehearse(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Exit codes:") && text.contains("130"), "{text}");
    let out = rehearse(&["completions", "bash"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("rehearse"));
    let out = rehearse(&["man"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(".TH rehearse"));
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let out = rehearse(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A public CIDR is accepted only when the description says so, and the plan says
/// what it means.
#[test]
fn a_public_cidr_needs_allow_public_and_the_plan_warns_about_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("environments/shop-aws.yaml"))
        .unwrap()
        .replace("../", &format!("{}/", root().display()))
        .replace("allow_cidrs: [10.20.0.0/16]", "allow_cidrs: [10.20.0.0/16, 203.0.113.0/24]");
    assert!(text.contains("203.0.113.0/24"), "the example's allow_cidrs line changed");
    let refused = dir.path().join("public.yaml");
    std::fs::write(&refused, &text).unwrap();
    let out = rehearse(&["validate", refused.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`203.0.113.0/24` is not a private range"));
    let allowed = dir.path().join("allowed.yaml");
    std::fs::write(&allowed, text.replace("  allow_cidrs:", "  allow_public: true\n  allow_cidrs:")).unwrap();
    let out = rehearse(&["plan", allowed.to_str().unwrap(), "--release", "v2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("warning: 203.0.113.0/24 is not a private range"), "{stdout}");
    assert!(!stdout.contains("warning: 10.20.0.0/16"), "{stdout}");
}
