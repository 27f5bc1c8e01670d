//! What a test sets on the fake and reads back from it: an outage window, the
//! longest drawn delays, the calls made, rehearse's resources left, the mutating calls
//! on untagged resources, and production as seeded.

use tokio::time::Instant;

use super::*;

impl FakeCloud {
    /// An outage (every call throttled) from `after` from now, for `len`.
    pub fn with_outage(self, after: Duration, len: Duration) -> Self {
        let start = Instant::now() + after;
        self.state.lock().expect("fake lock").outage = Some((start, start + len));
        self
    }

    /// Whether this scenario has an outage.
    pub fn has_outage(&self) -> bool {
        self.state.lock().expect("fake lock").outage.is_some()
    }

    /// The longest time drawn for (kind, "create" | "delete"): with no faults, the
    /// plan's critical path is restore + slowest boot + slowest of (terminate, delete).
    pub fn longest(&self, kind: &str, what: &str) -> Duration {
        let st = self.state.lock().expect("fake lock");
        st.drawn.iter().filter(|(k, w, _)| *k == kind && *w == what).map(|(_, _, d)| *d).max().unwrap_or_default()
    }

    /// Creates whose answer is still on its way (the caller waits for it).
    pub fn creates_in_flight(&self) -> u64 {
        self.state.lock().expect("fake lock").creates_in_flight
    }

    /// Calls refused by the rate limits so far.
    pub fn throttled(&self) -> u64 {
        self.state.lock().expect("fake lock").throttled
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state.lock().expect("fake lock").injected
    }

    /// Every restore and clone asked for: (new id, snapshot or source, point in time).
    pub fn restores(&self) -> Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>)> {
        self.state.lock().expect("fake lock").restores.clone()
    }

    /// A new available snapshot of `instance`, taken now (a backup landing mid-run).
    pub fn take_snapshot(&self, id: &str, instance: &str) {
        let mut st = self.state.lock().expect("fake lock");
        let Some(prod) = st.res.get(instance).cloned() else { return };
        let now = Instant::now();
        st.res.insert(
            id.into(),
            Res {
                kind: "snapshot",
                snapshot_of: Some(instance.into()),
                created: chrono::Utc::now(),
                visible_at: now,
                ready_at: now,
                ..prod
            },
        );
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().expect("fake lock").calls.clone()
    }

    /// Mutating calls made on resources without a `rehearse:run-id` tag.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().expect("fake lock").violations.clone()
    }

    /// Resources rehearse created that still exist (or are still being deleted).
    pub fn leftovers(&self) -> Vec<String> {
        let now = Instant::now();
        let st = self.state.lock().expect("fake lock");
        st.res
            .iter()
            .filter(|(_, r)| tag_value(&r.tags, "rehearse:run-id").is_some())
            .filter(|(_, r)| r.gone_at.is_none_or(|g| g > now))
            .map(|(id, r)| format!("{} {id}", r.kind))
            .collect()
    }

    /// [`FakeCloud::leftovers`] by run id.
    pub fn leftovers_by_run(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let now = Instant::now();
        let st = self.state.lock().expect("fake lock");
        let mut out: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
        for (id, r) in st.res.iter().filter(|(_, r)| r.gone_at.is_none_or(|g| g > now)) {
            if let Some(run) = tag_value(&r.tags, "rehearse:run-id") {
                out.entry(run.to_string()).or_default().push(format!("{} {id}", r.kind));
            }
        }
        out
    }

    /// Production as it was seeded, field by field (tags, protection, presence).
    pub fn production(&self) -> Vec<String> {
        let st = self.state.lock().expect("fake lock");
        st.res
            .iter()
            .filter(|(_, r)| tag_value(&r.tags, PROD_TAG).is_some())
            .map(|(id, r)| format!("{id} {} {:?} {} {} {:?}", r.kind, r.tags, r.private, r.protected, r.gone_at))
            .collect()
    }
}
