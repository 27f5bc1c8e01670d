//! A moto server for the tests that talk to an AWS API (`tests/aws_emulator.rs`,
//! `tests/state_store.rs`), and a proxy that gives its S3 the atomicity S3 has.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;

use super::common::{root, Sandbox};

pub const REGION: &str = "eu-west-1";

/// A moto server on a free loopback port, stopped (by PID) when dropped.
pub struct Emulator {
    child: Child,
    pub url: String,
    _log: tempfile::NamedTempFile,
}

impl Emulator {
    pub fn start(validation: bool) -> Emulator {
        let bin = root().join(".venv/bin/moto_server");
        assert!(bin.is_file(), "{} is missing: run `make test-deps` (make test does)", bin.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::from(log.reopen().unwrap()))
            .stderr(Stdio::from(log.reopen().unwrap()));
        if validation {
            cmd.env("MOTO_ENABLE_AMI_VALIDATION", "true").env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true");
        }
        let child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start: {}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Emulator { child, url: format!("http://127.0.0.1:{port}"), _log: log }
    }

    /// The rehearse binary pointed at this emulator, with dummy credentials.
    pub fn rehearse(&self, sb: &Sandbox) -> Command {
        let mut c = sb.cmd();
        self.env(&mut c, sb.dir.path());
        c
    }

    pub fn env(&self, c: &mut Command, dir: &Path) {
        c.env("AWS_ENDPOINT_URL", &self.url)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials"))
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
    }

    /// The SDK's configuration for the emulator, with dummy credentials.
    pub fn conf(&self, rt: &tokio::runtime::Runtime) -> aws_config::SdkConfig {
        rt.block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .http_client(rehearse::providers::aws::sdk::Sdk::http_client())
                .endpoint_url(&self.url)
                .region(Region::new(REGION))
                .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
                .load(),
        )
    }

    pub fn clients(&self, rt: &tokio::runtime::Runtime) -> (aws_sdk_ec2::Client, aws_sdk_rds::Client) {
        let conf = self.conf(rt);
        (aws_sdk_ec2::Client::new(&conf), aws_sdk_rds::Client::new(&conf))
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Production's network on the emulator: a VPC (10.20.0.0/16) with a subnet in each of
/// two zones; its id and the subnets'.
pub async fn production_network(ec2: &aws_sdk_ec2::Client) -> (String, Vec<String>) {
    let vpc = ec2.create_vpc().cidr_block("10.20.0.0/16").send().await.unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let mut subnets = Vec::new();
    for (i, az) in ["eu-west-1a", "eu-west-1b"].iter().enumerate() {
        let s = ec2
            .create_subnet()
            .vpc_id(&vpc)
            .cidr_block(format!("10.20.{}.0/24", i + 1))
            .availability_zone(*az)
            .send()
            .await
            .unwrap();
        subnets.push(s.subnet().unwrap().subnet_id().unwrap().to_string());
    }
    (vpc, subnets)
}

/// The emulator with a team's state store: the bucket `team-state`, a runtime for the
/// test's own calls, and an S3 client for them.
pub fn with_team_store() -> (Emulator, tokio::runtime::Runtime, aws_sdk_s3::Client) {
    let emu = Emulator::start(false);
    let rt = rt();
    let s3 = emu.bucket(&rt, "team-state");
    (emu, rt, s3)
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

impl Emulator {
    /// An S3 client of the emulator, and `bucket` created in it.
    pub fn bucket(&self, rt: &tokio::runtime::Runtime, bucket: &str) -> aws_sdk_s3::Client {
        let conf = self.conf(rt);
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&conf).force_path_style(true).build());
        rt.block_on(
            s3.create_bucket()
                .bucket(bucket)
                .create_bucket_configuration(
                    aws_sdk_s3::types::CreateBucketConfiguration::builder()
                        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(REGION))
                        .build(),
                )
                .send(),
        )
        .unwrap();
        s3
    }

    /// Every key in `bucket` under `prefix`.
    pub fn keys(
        &self,
        rt: &tokio::runtime::Runtime,
        s3: &aws_sdk_s3::Client,
        bucket: &str,
        prefix: &str,
    ) -> Vec<String> {
        let out = rt.block_on(s3.list_objects_v2().bucket(bucket).prefix(prefix).send()).unwrap();
        out.contents().iter().filter_map(|o| o.key().map(str::to_string)).collect()
    }
}

/// One HTTP request from `client`: the head, then Content-Length bytes of body (the
/// emulator closes the connection after each answer, so there is one per connection);
/// the bytes and the head in lower case. `None` when the client went away.
pub fn read_request(client: &mut std::net::TcpStream) -> Option<(Vec<u8>, String)> {
    use std::io::Read;
    let mut req = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut buf).ok().filter(|n| *n > 0)?;
        req.extend_from_slice(&buf[..n]);
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).to_lowercase();
    let len: usize =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    while req.len() < head_end + len {
        let n = client.read(&mut buf).ok().filter(|n| *n > 0)?;
        req.extend_from_slice(&buf[..n]);
    }
    Some((req, head))
}

/// A proxy in front of the emulator that passes one request at a time.
///
/// moto checks an S3 write's condition (`If-None-Match: *`, `If-Match`) and stores the
/// object in two steps with nothing held between them, so two conditional puts of one
/// key that arrive together can both succeed — seen here in about one round in ten of
/// twenty processes taking one lock. S3 applies a conditional write atomically. Letting
/// one request through at a time gives moto that atomicity and changes nothing else.
pub struct OneAtATime {
    pub url: String,
}

pub fn one_at_a_time(upstream: &str) -> OneAtATime {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let upstream = upstream.trim_start_matches("http://").to_string();
    let turn = Arc::new(Mutex::new(()));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (upstream, turn) = (upstream.clone(), turn.clone());
            std::thread::spawn(move || {
                let mut client = client;
                let Some((req, head)) = read_request(&mut client) else { return };
                assert!(!head.contains("transfer-encoding: chunked"), "the proxy reads bodies by Content-Length");
                // One request, one connection: the answer says `Connection: close`.
                let answer = {
                    let _one = turn.lock().unwrap_or_else(|p| p.into_inner());
                    let mut up = std::net::TcpStream::connect(&upstream).unwrap();
                    up.write_all(&req).unwrap();
                    let mut answer = Vec::new();
                    let _ = up.read_to_end(&mut answer);
                    answer
                };
                let _ = client.write_all(&answer);
            });
        }
    });
    OneAtATime { url }
}
