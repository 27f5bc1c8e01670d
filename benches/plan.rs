//! `rehearse plan` on a 200-resource description: load + validate + compile in
//! process, and the whole command as a user runs it. Target: under 50 ms.
//! Run with `cargo bench --bench plan` (or `make bench`).

use std::path::Path;
use std::time::{Duration, Instant};

/// An AWS description that compiles to exactly 200 resources: the security group and
/// its two ingress steps (services' ports, copies' ports), the DB subnet group, 10
/// database restores, 20 services of 9 instances (180), and 6 suites.
fn description() -> String {
    let mut s = String::from(
        "name: big\nprovider: aws\nregion: us-east-1\nowner: bench@example.com\nttl: 4h\n\
         network:\n  vpc: vpc-0a1b2c3d4e5f60718\n  subnets: [subnet-0a1b2c3d4e5f60001, subnet-0a1b2c3d4e5f60002]\n  allow_cidrs: [10.0.0.0/8]\n\
         release:\n  version: v1\n  artifact: \"s3://releases/big-{{ release.version }}.tar.gz\"\ndatabases:\n",
    );
    for d in 0..10 {
        s += &format!("  db{d}:\n    name: app{d}\n    source:\n      rds_instance: prod-db-{d}\n    instance_class: db.t3.medium\n");
    }
    s += "services:\n";
    for i in 0..20 {
        s += &format!(
            "  svc{i}:\n    count: 9\n    image: ami-0abcdef1234567890\n    instance_type: t3.small\n    depends_on: [db{}]\n    user_data: user-data.sh.tera\n    port: 8080\n    env:\n      DATABASE_URL: \"{{{{ databases.db{}.url }}}}\"\n    health:\n      path: /health\n      timeout: 5m\n",
            i % 10,
            i % 10
        );
    }
    s += "suites:\n";
    for t in 0..6 {
        s += &format!(
            "  suite{t}:\n    command: ./run-suite {t}\n    timeout: 10m\n    uses: [svc{}, svc{}]\n    results:\n      junit: out{t}.xml\n    env:\n      TARGET: \"{{{{ services.svc{}.url }}}}\"\n",
            t,
            t + 8,
            t
        );
    }
    s
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() * 9 / 10])
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, description()).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/user-data.sh.tera"),
        dir.path().join("user-data.sh.tera"),
    )
    .unwrap();

    let loaded = rehearse::description::load(&path, None).unwrap_or_else(|d| panic!("{}", d.render()));
    let plan = rehearse::plan::build(&loaded, None, None).unwrap();
    assert_eq!(plan.resources.len(), 200, "the benchmark description must have 200 resources");

    // In process: load + validate + plan + JSON, 50 times.
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let loaded = rehearse::description::load(&path, None).unwrap_or_else(|d| panic!("{}", d.render()));
        let plan = rehearse::plan::build(&loaded, None, None).unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        std::hint::black_box(json);
        times.push(t.elapsed());
    }
    let (min, med, p90) = stats(times);
    println!(
        "plan (in process, load+validate+compile+json), 200 resources: min {min:.2?}  median {med:.2?}  p90 {p90:.2?}"
    );

    // The whole command, as a user runs it (process start included).
    let exe = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/rehearse");
    if exe.is_file() {
        let mut times = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let out =
                std::process::Command::new(&exe).arg("plan").arg(&path).args(["--format", "json"]).output().unwrap();
            assert!(out.status.success());
            times.push(t.elapsed());
        }
        let (min, med, p90) = stats(times);
        println!("`rehearse plan --format json` (release binary, whole process), 200 resources: min {min:.2?}  median {med:.2?}  p90 {p90:.2?}");
    } else {
        println!("(build the release binary to also time the whole command: cargo build --release)");
    }
}
