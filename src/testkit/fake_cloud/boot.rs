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

    /// Puts a release artifact into the fake's S3.
    pub fn put_artifact(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        self.state.lock().expect("fake lock").artifacts.insert((bucket.into(), key.into()), bytes);
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

impl S3Api for FakeCloud {
    /// A link of the shape S3 signs (SigV4 query parameters), its signature a hash of
    /// what it grants: no secret in it, as on S3.
    async fn presign_get(&self, bucket: &str, key: &str, expires_in: Duration) -> ApiResult<String> {
        use sha2::Digest;
        let signature = sha2::Sha256::digest(format!("{bucket}/{key}/{}", expires_in.as_secs()).as_bytes());
        let hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!(
            "https://{bucket}.s3.amazonaws.com/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAFAKEFAKEFAKEFAKE%2F20261127%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Expires={}&X-Amz-SignedHeaders=host&X-Amz-Signature={hex}",
            expires_in.as_secs()
        ))
    }

    async fn download(&self, bucket: &str, key: &str, dest: &std::path::Path) -> ApiResult<u64> {
        self.enter("GetObject", &format!("{bucket}/{key}"), false)?;
        let bytes = self.state.lock().expect("fake lock").artifacts.get(&(bucket.into(), key.into())).cloned();
        let bytes = bytes.ok_or_else(|| fail("NoSuchKey", ErrorKind::NotFound))?;
        std::fs::write(dest, &bytes).map_err(|e| ApiError {
            code: None,
            message: e.to_string(),
            kind: ErrorKind::Refused,
        })?;
        Ok(bytes.len() as u64)
    }
}
