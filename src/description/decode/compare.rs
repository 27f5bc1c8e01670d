//! Decoding `compare:`: the load both environments get and the judge's settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::Decoder;
use crate::description::model::*;
use crate::description::yaml::Node;
use crate::diag::did_you_mean;

impl Decoder {
    /// `compare:` — `load` (requests, target, rate, duration, timeout) and `judge`.
    pub(super) fn compare(&mut self, node: &Node, services: Option<&BTreeMap<String, Service>>) -> Option<Compare> {
        let mut obj = self.obj("compare", node, "a mapping with `load` and optionally `judge`")?;
        let load =
            self.require(&mut obj, "load", "the load both environments get: `{requests: FILE, target: SERVICE}`");
        let judge = self.get(&mut obj, "judge");
        self.finish(obj);
        let load = self.load("compare.load", load?, services);
        let judge = match judge {
            Some(n) => self.judge(n),
            None => Some(JudgeSettings::default()),
        };
        Some(Compare { load: load?, judge: judge? })
    }

    /// A load (`compare.load`, `deploy.load`) at `path`.
    pub(super) fn load(
        &mut self,
        path: &str,
        node: &Node,
        services: Option<&BTreeMap<String, Service>>,
    ) -> Option<Load> {
        let mut obj = self.obj(path, node, "a mapping with `requests` (or `command`) and `target`")?;
        let requests = self.opt_string(&mut obj, "requests").map(PathBuf::from);
        let command = self.opt_string(&mut obj, "command");
        let format = match self.get(&mut obj, "format") {
            Some(n) => self.enum_value(
                &format!("{path}.format"),
                n,
                &[("samples", LoadFormat::Samples), ("k6", LoadFormat::K6), ("vegeta", LoadFormat::Vegeta)],
            ),
            None => Some(LoadFormat::Samples),
        };
        let target = self.req_string(&mut obj, "target", "the service the requests go to, e.g. `web`");
        let rate = match self.get(&mut obj, "rate") {
            Some(n) => self.number(&format!("{path}.rate"), n, 0.1, 1000.0),
            None => Some(default_load_rate()),
        };
        let duration = match self.get(&mut obj, "duration") {
            Some(n) => self.duration(&format!("{path}.duration"), n, Duration::from_secs(1), Duration::from_secs(3600)),
            None => Some(default_load_duration()),
        };
        let timeout = match self.get(&mut obj, "timeout") {
            Some(n) => {
                self.duration(&format!("{path}.timeout"), n, Duration::from_millis(100), Duration::from_secs(300))
            }
            None => Some(default_load_timeout()),
        };
        self.finish(obj);
        // A key's position, or (not there) the section's.
        let pos = |d: &Self, key: &str| d.positions.get(&format!("{path}.{key}"));
        match (&requests, &command) {
            (Some(_), Some(_)) => {
                let p = pos(self, "command");
                self.err(p, format!("`{path}` has both `requests` and `command`: the load is one or the other")).help =
                    Some("keep `requests` to have rehearse replay the file, or `command` to run your own tool".into());
            }
            (None, None) => {
                let p = self.positions.get(path);
                self.err(p, format!("`{path}` needs `requests` (a request file) or `command` (your load tool)"));
            }
            _ => {}
        }
        if requests.is_some() && format.is_some_and(|f| f != LoadFormat::Samples) {
            let p = pos(self, "format");
            self.err(
                p,
                format!("`{path}.format` is for a `command`'s results; a request file is replayed by rehearse"),
            );
        }
        if let (Some(t), Some(services)) = (&target, services) {
            if !services.contains_key(t) {
                let pos = self.positions.get(&format!("{path}.target"));
                let d = self.err(pos, format!("`{path}.target` names `{t}`, which is no service"));
                if let Some(m) = did_you_mean(t, services.keys().map(String::as_str)) {
                    d.help = Some(format!("did you mean `{m}`?"));
                }
            }
        }
        Some(Load {
            requests,
            command,
            format: format?,
            target: target?,
            rate: rate?,
            duration: duration?,
            timeout: timeout?,
        })
    }

    fn judge(&mut self, node: &Node) -> Option<JudgeSettings> {
        let mut obj = self.obj("compare.judge", node, "a mapping of the judge's settings")?;
        let d = JudgeSettings::default();
        let num =
            |this: &mut Self, obj: &mut super::reader::Obj<'_>, key: &'static str, lo: f64, hi: f64, dflt: f64| {
                match this.get(obj, key) {
                    Some(n) => this.number(&format!("compare.judge.{key}"), n, lo, hi),
                    None => Some(dflt),
                }
            };
        let confidence = num(self, &mut obj, "confidence", 0.5, 0.9999, d.confidence);
        let tolerance = num(self, &mut obj, "tolerance", 0.0, 1.0, d.tolerance);
        let pass = num(self, &mut obj, "pass", 0.0, 100.0, d.pass);
        let marginal = num(self, &mut obj, "marginal", 0.0, 100.0, d.marginal);
        let min_samples = match self.get(&mut obj, "min_samples") {
            Some(n) => self.integer("compare.judge.min_samples", n, 2, 100_000).map(|n| n as u32),
            None => Some(d.min_samples),
        };
        let critical = match self.get(&mut obj, "critical") {
            Some(n) => self.string_list("compare.judge.critical", n),
            None => Vec::new(),
        };
        self.finish(obj);
        if let (Some(p), Some(m)) = (pass, marginal) {
            if m > p {
                let pos = self.positions.get("compare.judge.marginal");
                self.err(pos, format!("`compare.judge.marginal` ({m}) is above `pass` ({p})"));
            }
        }
        Some(JudgeSettings {
            confidence: confidence?,
            tolerance: tolerance?,
            min_samples: min_samples?,
            pass: pass?,
            marginal: marginal?,
            critical,
        })
    }
}
