//! `suites:`: each suite and how its results are read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::super::rules::KeyRule;
use super::super::Decoder;
use super::*;
use crate::description::yaml::{Node, Value};
use crate::diag::did_you_mean;

impl Decoder {
    pub(super) fn suite(&mut self, path: &str, node: &Node) -> Option<Suite> {
        let mut obj = self.obj(path, node, "a mapping with `command`, `timeout`, `results`")?;
        let command = self.req_string(&mut obj, "command", "the command that runs the suite");
        let timeout = self.require(&mut obj, "timeout", "a duration such as `5m`").and_then(|n| {
            self.duration(&format!("{path}.timeout"), n, Duration::from_secs(1), Duration::from_secs(24 * 3600))
        });
        let uses = match self.get(&mut obj, "uses") {
            Some(n) => self.string_list(&format!("{path}.uses"), n),
            None => Vec::new(),
        };
        let results = self
            .require(&mut obj, "results", "`exit-code` or `{junit: PATH}`")
            .and_then(|n| self.suite_results(&format!("{path}.results"), n));
        let env = match self.get(&mut obj, "env") {
            Some(n) => self.string_map(&format!("{path}.env"), n, KeyRule::EnvVar),
            None => BTreeMap::new(),
        };
        self.finish(obj);
        Some(Suite { command: command?, timeout: timeout?, uses, results: results?, env })
    }

    fn suite_results(&mut self, path: &str, node: &Node) -> Option<SuiteResults> {
        match &node.value {
            Value::Str(s) if s == "exit-code" => Some(SuiteResults::ExitCode),
            Value::Str(s) if s == "junit" => {
                self.err(node.pos, format!("`{path}: junit` needs the file the suite writes")).expected =
                    Some("`{junit: results.xml}`".into());
                None
            }
            Value::Map(_) => {
                let mut obj = self.obj(path, node, "")?;
                let junit = self.req_string(&mut obj, "junit", "the JUnit XML file the suite writes");
                self.finish(obj);
                Some(SuiteResults::Junit(PathBuf::from(junit?)))
            }
            other => {
                let shown = match other {
                    Value::Str(s) => format!("`{s}`"),
                    v => v.kind().to_string(),
                };
                let d = self.err(node.pos, format!("`{path}` must be `exit-code` or `{{junit: PATH}}`, found {shown}"));
                if let Value::Str(s) = other {
                    if let Some(m) = did_you_mean(s, ["exit-code"]) {
                        d.help = Some(format!("did you mean `{m}`?"));
                    }
                }
                None
            }
        }
    }
}
