//! The suites: run after what they use, on this machine or the runner.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Builder, Kind, PlanError, Resource};
use crate::description::{format_duration, SuiteResults};

impl Builder<'_> {
    pub(super) fn suites(&mut self) -> Result<(), PlanError> {
        let d = self.desc();
        for (name, s) in &d.suites {
            let mut r = Resource::new(format!("suite.{name}"), Kind::Suite, name);
            r.depends_on.extend(self.runner.iter().cloned());
            for dep in self.loaded.deps.get(&format!("suite:{name}")).into_iter().flatten() {
                if let Some(v) = self.svc_ids.get(dep.as_str()).or_else(|| self.db_ids.get(dep.as_str())) {
                    r.depends_on.extend(v.iter().cloned());
                }
            }
            r.attributes.insert("command".into(), json!(self.render_full(&format!("suites.{name}.command"))?));
            r.attributes.insert("timeout".into(), json!(format_duration(s.timeout)));
            r.attributes.insert(
                "results".into(),
                match &s.results {
                    SuiteResults::ExitCode => json!("exit-code"),
                    SuiteResults::Junit(p) => json!({"junit": p.display().to_string()}),
                },
            );
            let env: BTreeMap<String, String> = s
                .env
                .keys()
                .map(|k| Ok((k.clone(), self.render_full(&format!("suites.{name}.env.{k}"))?)))
                .collect::<Result<_, PlanError>>()?;
            r.attributes.insert("env".into(), json!(env));
            self.resources.push(r);
        }
        Ok(())
    }
}
