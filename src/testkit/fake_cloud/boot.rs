//! What the fake's instances do once they run: their user-data bootstraps (for a
//! while, then writes its marker on the serial console, with a failure where a test
//! asked for one), `GetConsoleOutput` shows it; and the release artifacts the fake's
//! S3 holds, presigned and downloaded.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::providers::aws::BOOTSTRAP_MARKER;

/// How long an instance's bootstrap takes after it runs: 5–40 s, from its id (no draw
/// from the fake's generator, so seeds replay as before).
fn bootstrap_time(id: &str) -> Duration {
    let h = id.bytes().fold(7u64, |h, b| h.wrapping_mul(131).wrapping_add(b.into()));
    Duration::from_secs(5 + h % 36)
}

impl FakeCloud {
    /// Remembers what an instance was launched with.
    pub(super) fn launched_with(&self, id: &str, req: &RunInstances) {
        let user_data = req.user_data.as_deref().and_then(|u| {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, u)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        });
        if let Some(r) = self.state.lock().expect("fake lock").res.get_mut(id) {
            r.user_data = user_data;
            r.profile = req.instance_profile.clone();
        }
    }

    /// The bootstrap of every instance whose plan id starts with `prefix` ends with
    /// `exit`, after printing `lines`.
    pub fn fail_bootstrap(&self, prefix: &str, exit: i32, lines: &[&str]) {
        let lines = lines.iter().map(|l| l.to_string()).collect();
        self.state.lock().expect("fake lock").failing_boots.push((prefix.into(), exit, lines));
    }

    /// When an instance's bootstrap ends (its marker is on the console from then on).
    pub fn bootstrap_ends_at(&self, id: &str) -> Option<Instant> {
        let st = self.state.lock().expect("fake lock");
        st.res.get(id).filter(|r| r.kind == "instance").map(|r| r.ready_at + bootstrap_time(id))
    }

    /// What an instance was launched with: its user-data (decoded) and instance profile.
    pub fn launched(&self, id: &str) -> Option<(Option<String>, Option<String>)> {
        let st = self.state.lock().expect("fake lock");
        st.res.get(id).filter(|r| r.kind == "instance").map(|r| (r.user_data.clone(), r.profile.clone()))
    }

    /// Every instance ever launched, by plan id (`rehearse:resource`).
    pub fn instances_by_resource(&self) -> Vec<(String, String)> {
        let st = self.state.lock().expect("fake lock");
        st.res
            .iter()
            .filter(|(_, r)| r.kind == "instance")
            .filter_map(|(id, r)| Some((tag_value(&r.tags, "rehearse:resource")?.to_string(), id.clone())))
            .collect()
    }

    /// Puts an object (a release artifact) into the fake's S3.
    pub async fn put_object_now(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        use crate::engine::store::{Condition, ObjectStore};
        let full = format!("{bucket}/{key}");
        crate::engine::store::retrying(|| self.s3.put(&full, bytes.clone(), Condition::Always))
            .await
            .expect("the fake S3 takes the object");
    }

    /// Databases restored from now on answer at `host:port` (a real server the test
    /// started: masking, installs and suites then really reach a copy).
    pub fn databases_at(&self, host: &str, port: u16) {
        self.state.lock().expect("fake lock").db_endpoint = Some((host.into(), port));
    }

    /// Every key in the fake's S3 (as `BUCKET/KEY`).
    pub fn s3_keys(&self) -> Vec<String> {
        self.s3.keys()
    }

    /// SSM as the fake runs it: the commands sent, cancelled, and how often.
    pub fn ssm(&self) -> &crate::testkit::fake_ssm::FakeSsm {
        &self.ssm
    }

    /// Serves presigned links over HTTP on 127.0.0.1 from now on (a runner's `curl`
    /// fetches its inputs through them); its base URL. The server stops once the last
    /// handle of this cloud is gone.
    pub fn serving_links(&self) -> String {
        self.links
            .get_or_init(|| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
                let base = format!("http://{}", listener.local_addr().expect("its address"));
                listener.set_nonblocking(true).expect("non-blocking accept");
                let s3 = Arc::downgrade(&self.s3);
                std::thread::spawn(move || serve_links(listener, s3));
                base
            })
            .clone()
    }

    /// The console of a running instance: boot lines, then its user-data's output and
    /// marker once the bootstrap ended (only user-data that writes the marker does).
    fn console(&self, id: &str, r: &Res, failing: &[(String, i32, Vec<String>)], now: Instant) -> Option<String> {
        if r.ready_at > now {
            return None;
        }
        let mut out = String::from("[    0.000000] Linux version 6.1.0 (fake)\n[    2.100000] cloud-init[512]: Cloud-init v. 23.4 running 'modules:final'\n");
        let marks = r.user_data.as_deref().is_some_and(|u| u.contains(BOOTSTRAP_MARKER));
        if !marks || now < r.ready_at + bootstrap_time(id) {
            return Some(out);
        }
        let resource = tag_value(&r.tags, "rehearse:resource").unwrap_or_default();
        let (exit, lines) = failing
            .iter()
            .find(|(p, _, _)| resource.starts_with(p.as_str()))
            .map(|(_, e, l)| (*e, l.clone()))
            .unwrap_or((0, vec!["release installed".into(), "Started release.service.".into()]));
        for l in lines {
            out.push_str(&format!("[   31.000000] cloud-init[913]: {l}\n"));
        }
        out.push_str(&format!("[   31.500000] cloud-init[913]: {BOOTSTRAP_MARKER}{exit}\n"));
        Some(out)
    }

    pub(super) async fn console_of(&self, id: &str) -> ApiResult<Option<String>> {
        self.enter("GetConsoleOutput", id, false)?;
        let now = Instant::now();
        let st = self.state.lock().expect("fake lock");
        match st.res.get(id).filter(|r| r.kind == "instance" && r.visible_at <= now) {
            Some(r) => Ok(self.console(id, r, &st.failing_boots, now)),
            None => Err(fail("InvalidInstanceID.NotFound", ErrorKind::NotFound)),
        }
    }
}

/// Answers GET /BUCKET/KEY?… with the object, as S3 answers a presigned link (the
/// signature is not checked: the fake has no secret).
fn serve_links(listener: std::net::TcpListener, s3: std::sync::Weak<crate::testkit::fake_s3::FakeS3>) {
    use std::io::{BufRead, Write};
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if s3.strong_count() == 0 {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            Err(_) => return,
        };
        // Best effort: a client that goes away mid-answer is its own problem.
        #[allow(clippy::let_underscore_must_use)]
        let _ = (|| -> std::io::Result<()> {
            stream.set_nonblocking(false)?;
            let mut reader = std::io::BufReader::new(stream.try_clone()?);
            let mut line = String::new();
            reader.read_line(&mut line)?;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or("/").trim_start_matches('/');
            let key = percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned();
            let body = s3.upgrade().and_then(|s| s.peek(&key));
            let mut out = stream;
            match body {
                Some(b) => {
                    write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b.len())?;
                    out.write_all(&b)?;
                }
                None => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?,
            }
            out.flush()
        })();
    }
}

impl S3Api for FakeCloud {
    /// A link of the shape S3 signs (SigV4 query parameters), its signature a hash of
    /// what it grants: no secret in it, as on S3. Served on 127.0.0.1 once
    /// [`FakeCloud::serving_links`] was called.
    async fn presign_get(&self, bucket: &str, key: &str, expires_in: Duration) -> ApiResult<String> {
        use sha2::Digest;
        let signature = sha2::Sha256::digest(format!("{bucket}/{key}/{}", expires_in.as_secs()).as_bytes());
        let hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
        // Unresolvable unless served: a fake never names a real host.
        let base = self.links.get().cloned().unwrap_or_else(|| "https://s3.fake.invalid".into());
        Ok(format!(
            "{base}/{bucket}/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAFAKEFAKEFAKEFAKE%2F20261127%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Expires={}&X-Amz-SignedHeaders=host&X-Amz-Signature={hex}",
            expires_in.as_secs()
        ))
    }

    async fn download(&self, bucket: &str, key: &str, dest: &std::path::Path) -> ApiResult<u64> {
        let bytes = self.get_object(bucket, key).await?.ok_or_else(|| fail("NoSuchKey", ErrorKind::NotFound))?;
        std::fs::write(dest, &bytes).map_err(|e| ApiError {
            code: None,
            message: e.to_string(),
            kind: ErrorKind::Refused,
        })?;
        Ok(bytes.len() as u64)
    }

    async fn put_object(&self, bucket: &str, key: &str, body: Vec<u8>) -> ApiResult<()> {
        use crate::engine::store::{Condition, ObjectStore};
        self.enter("PutObject", &format!("{bucket}/{key}"), true)?;
        self.s3.put(&format!("{bucket}/{key}"), body, Condition::Always).await.map(|_| ()).map_err(s3_error)
    }

    async fn get_object(&self, bucket: &str, key: &str) -> ApiResult<Option<Vec<u8>>> {
        use crate::engine::store::ObjectStore;
        self.enter("GetObject", &format!("{bucket}/{key}"), false)?;
        Ok(self.s3.get(&format!("{bucket}/{key}")).await.map_err(s3_error)?.map(|o| o.body))
    }

    async fn get_object_tail(&self, bucket: &str, key: &str, max: u64) -> ApiResult<Option<(Vec<u8>, bool)>> {
        Ok(self.get_object(bucket, key).await?.map(|b| {
            let cut = b.len() as u64 > max;
            (b[b.len().saturating_sub(max as usize)..].to_vec(), cut)
        }))
    }

    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> ApiResult<u64> {
        use crate::engine::store::ObjectStore;
        self.enter("DeleteObject", &format!("{bucket}/{prefix}"), true)?;
        let keys =
            self.s3.keys().into_iter().filter(|k| k.starts_with(&format!("{bucket}/{prefix}"))).collect::<Vec<_>>();
        for k in &keys {
            self.s3.delete(k, None).await.map_err(s3_error)?;
        }
        Ok(keys.len() as u64)
    }
}

fn s3_error(e: crate::engine::store::StoreError) -> ApiError {
    let kind = if e.is_transient() { ErrorKind::ServerError } else { ErrorKind::Refused };
    ApiError { code: None, message: e.to_string(), kind }
}

impl crate::providers::aws::ssm::SsmApi for FakeCloud {
    /// Only to a running instance whose agent has registered (10 s after it runs).
    async fn send_command(&self, req: &crate::providers::aws::ssm::SendCommand) -> ApiResult<String> {
        let now = Instant::now();
        let registered = {
            let st = self.state.lock().expect("fake lock");
            st.res.get(&req.instance_id).is_some_and(|r| {
                r.kind == "instance" && r.gone_at.is_none() && r.ready_at + Duration::from_secs(10) <= now
            })
        };
        if !registered {
            self.audit("SendCommand", &req.instance_id);
            return Err(fail("InvalidInstanceId", ErrorKind::Refused));
        }
        self.audit("SendCommand", &req.instance_id);
        self.ssm.send_command(req).await
    }

    async fn get_command_invocation(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> ApiResult<crate::providers::aws::ssm::Invocation> {
        self.ssm.get_command_invocation(command_id, instance_id).await
    }

    async fn cancel_command(&self, command_id: &str, instance_ids: &[String]) -> ApiResult<()> {
        self.ssm.cancel_command(command_id, instance_ids).await
    }
}
