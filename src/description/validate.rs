//! Checks that need the whole description: references between resources, dependency
//! cycles, referenced files and templates. (What each provider requires is checked as
//! the description is decoded: [`super::decode`].)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tera::Tera;

use super::decode::Positions;
use super::model::*;
use super::template::{self, Outputs, Scope};
use crate::diag::{did_you_mean, Diagnostic};

/// The result of the cross-checks: templates parsed, dependencies resolved.
pub struct Checked {
    pub tera: Tera,
    /// For every service and suite: the databases and services it needs first
    /// (explicit `depends_on`/`uses` plus what its templates reference).
    pub deps: BTreeMap<String, BTreeSet<String>>,
}

pub struct Validator<'a> {
    desc: &'a Description,
    pos: &'a Positions,
    dir: &'a Path,
    pub diags: Vec<Diagnostic>,
}

impl<'a> Validator<'a> {
    pub fn new(desc: &'a Description, pos: &'a Positions, dir: &'a Path) -> Self {
        Validator { desc, pos, dir, diags: Vec::new() }
    }

    fn err(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.pos.get(path);
        self.diags.push(Diagnostic::new(pos, message));
        self.diags.last_mut().expect("just pushed")
    }

    fn key_err(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.pos.key(path);
        self.diags.push(Diagnostic::new(pos, message));
        self.diags.last_mut().expect("just pushed")
    }

    pub fn run(mut self, release_version: &str) -> (Option<Checked>, Vec<Diagnostic>) {
        self.names();
        self.chaos();
        self.files();
        let (tera, implicit, sources) = self.templates(release_version);
        let deps = self.dependencies(implicit);
        self.cycles(&deps, &sources);
        let ok = self.diags.is_empty();
        (ok.then_some(Checked { tera, deps }), self.diags)
    }

    /// Names shared by databases and services, and every reference to them.
    fn names(&mut self) {
        let d = self.desc;
        for name in d.services.keys() {
            if d.databases.contains_key(name) {
                self.key_err(&format!("services.{name}"), format!("`{name}` names both a database and a service"))
                    .help = Some("`depends_on` and `uses` refer to either by name: give them different names".into());
            }
        }
        let known: Vec<&str> = d.databases.keys().chain(d.services.keys()).map(String::as_str).collect();
        for (name, s) in &d.services {
            for (i, dep) in s.depends_on.iter().enumerate() {
                let p = format!("services.{name}.depends_on[{i}]");
                if dep == name {
                    self.err(&p, format!("service `{name}` depends on itself"));
                } else if !known.contains(&dep.as_str()) {
                    self.dangling(&p, dep, &known, "a database or service");
                }
            }
        }
        for (name, s) in &d.suites {
            for (i, used) in s.uses.iter().enumerate() {
                let p = format!("suites.{name}.uses[{i}]");
                if !known.contains(&used.as_str()) {
                    self.dangling(&p, used, &known, "a database or service");
                }
            }
        }
    }

    /// What a game day's faults name: services (and their instances), databases, the
    /// two ends of a path, the suite a fault starts after.
    fn chaos(&mut self) {
        let d = self.desc;
        let Some(chaos) = &d.chaos else { return };
        let services: Vec<&str> = d.services.keys().map(String::as_str).collect();
        let databases: Vec<&str> = d.databases.keys().map(String::as_str).collect();
        let suites: Vec<&str> = d.suites.keys().map(String::as_str).collect();
        for (name, f) in &chaos.faults {
            let at = format!("chaos.faults.{name}");
            if let Some(s) = &f.service {
                match d.services.get(s) {
                    None => self.unknown(&format!("{at}.service"), s, &services, "service"),
                    Some(svc) => {
                        if let Some(i) = f.instance.filter(|i| *i >= svc.count) {
                            self.err(
                                &format!("{at}.instance"),
                                format!("`{at}.instance` is {i}, but service `{s}` runs {} instance(s)", svc.count),
                            )
                            .expected = Some(format!("an instance from 0 to {}", svc.count.saturating_sub(1)));
                        }
                    }
                }
            }
            if let Some(db) = &f.database {
                if !d.databases.contains_key(db) {
                    self.unknown(&format!("{at}.database"), db, &databases, "database");
                }
            }
            if let Some((from, to)) = f.path_ends() {
                let p = format!("{at}.path");
                if from == "client" {
                    if !d.services.contains_key(to) {
                        self.unknown(&p, to, &services, "service (the client's path goes to one)");
                    }
                } else if !d.services.contains_key(from) {
                    self.unknown(&p, from, &services, "service, or `client`");
                } else if !d.databases.contains_key(to) {
                    self.unknown(&p, to, &databases, "database (a service's path goes to one)");
                } else if !d.services[from].depends_on.iter().any(|x| x == to) {
                    self.err(&p, format!("`{from} -> {to}`: service `{from}` does not depend on database `{to}`"))
                        .help = Some(format!(
                        "the fault sits where `{from}` reaches `{to}`: add `{to}` to `services.{from}.depends_on`"
                    ));
                }
            }
            if let Some(suite) = f.after.strip_prefix("suite.") {
                if !d.suites.contains_key(suite) {
                    self.unknown(&format!("{at}.after"), suite, &suites, "suite");
                }
            }
        }
    }

    /// `name` at `path` names no `what` of `known`.
    fn unknown(&mut self, path: &str, name: &str, known: &[&str], what: &str) {
        let list = if known.is_empty() {
            "none is defined".to_string()
        } else {
            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        };
        let d = self.err(path, format!("`{name}` is not a defined {}", what.split([',', ' ']).next().unwrap_or(what)));
        d.expected = Some(format!("a {what}: {list}"));
        if let Some(m) = did_you_mean(name, known.iter().copied()) {
            d.help = Some(format!("did you mean `{m}`?"));
        }
    }

    fn dangling(&mut self, path: &str, name: &str, known: &[&str], what: &str) {
        let list = if known.is_empty() {
            "none is defined".to_string()
        } else {
            known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        };
        let d = self.err(path, format!("`{name}` is not a defined database or service"));
        d.expected = Some(format!("{what}: {list}"));
        if let Some(m) = did_you_mean(name, known.iter().copied()) {
            d.help = Some(format!("did you mean `{m}`?"));
        }
    }

    fn files(&mut self) {
        let d = self.desc;
        let check = |v: &mut Self, path: String, file: &Path, what: &str| {
            let full = v.dir.join(file);
            if !full.is_file() {
                v.err(&path, format!("{what} `{}` does not exist (looked for {})", file.display(), full.display()))
                    .expected = Some("a path relative to the description's directory".into());
            }
        };
        for (name, db) in &d.databases {
            if let Some(m) = &db.masking {
                check(self, format!("databases.{name}.masking"), m, "masking SQL file");
            }
        }
        for (name, s) in &d.services {
            if let Some(u) = s.user_data() {
                check(self, format!("services.{name}.user_data"), u, "user-data template");
            }
            for (i, t) in s.templates.iter().enumerate() {
                check(self, format!("services.{name}.templates[{i}].source"), &t.source, "template");
            }
        }
        // On aws instances fetch the release themselves: from S3 or over HTTP(S), never
        // from a path on this machine.
        if d.aws().is_some() && d.services.values().any(|s| s.user_data().is_some()) {
            let a = d.release.artifact.trim_start();
            let fetchable = ["s3://", "https://", "http://", "{{"].iter().any(|p| a.starts_with(p));
            if !fetchable {
                self.err("release.artifact", format!("`{a}` is not a URL the instances can fetch")).expected =
                    Some("`s3://BUCKET/KEY` (presigned for the instances) or an `https://` URL".into());
            }
        }
        // On aws every install runs before any instance starts: its environment (the
        // service's `env`) cannot use another service's address yet.
        if d.aws().is_some() {
            for (name, s) in d.services.iter().filter(|(_, s)| s.install.is_some()) {
                for (k, v) in &s.env {
                    let templated = v.contains("{{") || v.contains("{%");
                    if templated && v.contains("services.") {
                        self.err(
                            &format!("services.{name}.env.{k}"),
                            format!(
                                "`services.{name}.env.{k}` uses a service's address, but on aws `{name}`'s install runs \
                                 (with this environment) before any instance starts"
                            ),
                        )
                        .help = Some("pass the address at run time from user-data instead, or drop the install".into());
                    }
                }
            }
        }
        if let Some(c) = &d.compare {
            if let Some(r) = &c.load.requests {
                check(self, "compare.load.requests".into(), r, "request file");
            }
        }
        // A deploy's own load (one taken from `compare` is checked there).
        if let Some(r) = d.deploy.as_ref().and_then(|x| x.load.as_ref()).and_then(|l| l.requests.as_ref()) {
            if d.compare.as_ref().and_then(|c| c.load.requests.as_ref()) != Some(r) {
                check(self, "deploy.load.requests".into(), r, "request file");
            }
        }
        for (i, p) in d.bundle.iter().flatten().enumerate() {
            let full = crate::description::clean_path(&self.dir.join(p));
            if !full.exists() {
                self.err(
                    &format!("bundle[{i}]"),
                    format!("`{}` does not exist (looked for {})", p.display(), full.display()),
                )
                .expected = Some("a file or directory the suites need, relative to the description's directory".into());
            }
        }
        if let Some(crate::description::Runner::Ssm(r)) = &d.runner {
            if let Some(b) = &r.bundle {
                let full = self.dir.join(b);
                if !full.is_dir() {
                    self.err(
                        "runner.ssm.bundle",
                        format!(
                            "the runner's bundle `{}` is not a directory (looked for {})",
                            b.display(),
                            full.display()
                        ),
                    )
                    .expected = Some("a directory relative to the description's, holding the suites' files".into());
                }
            }
        }
    }

    /// Parses every template, checks what it references, and returns the implicit
    /// dependencies they create.
    /// Also returns, for each implicit dependency (owner, target), the template that
    /// created it, for error positions.
    #[allow(clippy::type_complexity)]
    fn templates(
        &mut self,
        release_version: &str,
    ) -> (Tera, BTreeMap<String, BTreeSet<String>>, BTreeMap<(String, String), String>) {
        let d = self.desc;
        let mut tera = template::new_tera();
        let mut implicit: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut sources: BTreeMap<(String, String), String> = BTreeMap::new();
        let outputs = Outputs::placeholders(d, release_version, "r-validate");
        let static_ctx = template::context(d, None, &outputs, Scope::Static);
        let full_ctx = template::context(d, Some(&d.release.artifact), &outputs, Scope::Full);

        // (template name = yaml path, text, scope, owner resource)
        let mut items: Vec<(String, String, Scope, Option<String>)> = Vec::new();
        items.push(("release.artifact".into(), d.release.artifact.clone(), Scope::Static, None));
        for (name, db) in &d.databases {
            items.push((format!("databases.{name}.name"), db.name.clone(), Scope::Static, None));
        }
        for (name, s) in &d.services {
            let owner = Some(name.clone());
            let base = format!("services.{name}");
            for (k, v) in &s.env {
                items.push((format!("{base}.env.{k}"), v.clone(), Scope::Full, owner.clone()));
            }
            if let Some(c) = s.command() {
                items.push((format!("{base}.command"), c.to_string(), Scope::Full, owner.clone()));
            }
            if let Some(c) = &s.install {
                items.push((format!("{base}.install"), c.clone(), Scope::Full, owner.clone()));
            }
            if let Some(u) = s.user_data() {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(u)) {
                    items.push((format!("{base}.user_data"), text, Scope::Full, owner.clone()));
                }
            }
            for (i, t) in s.templates.iter().enumerate() {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(&t.source)) {
                    items.push((format!("{base}.templates[{i}].source"), text, Scope::Full, owner.clone()));
                }
            }
        }
        for (name, s) in &d.suites {
            let owner = Some(format!("suite:{name}"));
            let base = format!("suites.{name}");
            items.push((format!("{base}.command"), s.command.clone(), Scope::Full, owner.clone()));
            for (k, v) in &s.env {
                items.push((format!("{base}.env.{k}"), v.clone(), Scope::Full, owner.clone()));
            }
        }

        for (name, text, scope, owner) in items {
            if let Err(e) = template::parse(&mut tera, &name, &text) {
                let (at, what) = template_error_parts(&e.to_string());
                let file = self.template_file(&name);
                let message = match (file, at) {
                    (Some(f), Some((l, c))) => {
                        format!("template {}:{l}:{c} (`{name}`) does not parse: {what}", f.display())
                    }
                    (None, Some((l, c))) if text.contains('\n') => {
                        format!("template in `{name}` does not parse at its line {l}, column {c}: {what}")
                    }
                    (None, Some((_, c))) => format!("template in `{name}` does not parse at character {c}: {what}"),
                    (_, None) => format!("template in `{name}` does not parse: {what}"),
                };
                self.err(&name, message).expected = Some("tera syntax, e.g. `{{ databases.db.url }}`".into());
                continue;
            }
            let mut bad_reference = false;
            for r in template::references(&tera, &name) {
                if let Some(msg) = self.check_reference(&r, scope) {
                    let d = self.err(&name, format!("template in `{name}` references `{r}`: {}", msg.0));
                    d.expected = msg.1;
                    d.help = msg.2;
                    bad_reference = true;
                    continue;
                }
                if let Some((kind, target)) = template::resource_of(&r) {
                    let exists = match kind {
                        "databases" => d.databases.contains_key(target),
                        _ => d.services.contains_key(target),
                    };
                    if !exists {
                        let known: Vec<&str> = match kind {
                            "databases" => d.databases.keys().map(String::as_str).collect(),
                            _ => d.services.keys().map(String::as_str).collect(),
                        };
                        let what = if kind == "databases" { "database" } else { "service" };
                        let diag = self.err(
                            &name,
                            format!("template in `{name}` references `{r}`, but there is no {what} `{target}`"),
                        );
                        if let Some(m) = did_you_mean(target, known.iter().copied()) {
                            diag.help = Some(format!("did you mean `{kind}.{m}`?"));
                        }
                        continue;
                    }
                    if scope == Scope::Static {
                        self.err(
                            &name,
                            format!("`{name}` cannot reference `{r}`: it is resolved before any resource exists"),
                        )
                        .expected = Some("only `release.version`, `run`, `env` and `vars` here".into());
                        continue;
                    }
                    if let Some(owner) = &owner {
                        if kind == "services" && owner == target {
                            self.err(&name, format!("service `{target}` references its own outputs in `{name}`"));
                            continue;
                        }
                        implicit.entry(owner.clone()).or_default().insert(target.to_string());
                        sources.entry((owner.clone(), target.to_string())).or_insert_with(|| name.clone());
                    }
                }
            }
            let ctx = if scope == Scope::Static { &static_ctx } else { &full_ctx };
            if bad_reference {
                continue;
            }
            if let Err(e) = template::render(&tera, &name, ctx) {
                if !self.diags.iter().any(|d| d.pos == self.pos.get(&name)) {
                    self.err(&name, format!("template in `{name}` cannot be resolved: {e}")).expected = Some(
                        "variables from `release`, `run`, `env`, `vars`, `databases.NAME` or `services.NAME`".into(),
                    );
                }
            }
        }
        (tera, implicit, sources)
    }

    /// The file behind a template name, for file templates.
    fn template_file(&self, name: &str) -> Option<std::path::PathBuf> {
        let d = self.desc;
        let (svc, rest) = name.strip_prefix("services.")?.split_once('.')?;
        let s = d.services.get(svc)?;
        if rest == "user_data" {
            return s.user_data().map(|p| crate::description::clean_path(&self.dir.join(p)));
        }
        let i: usize = rest.strip_prefix("templates[")?.split(']').next()?.parse().ok()?;
        s.templates.get(i).map(|t| crate::description::clean_path(&self.dir.join(&t.source)))
    }

    /// Checks one variable reference against what exists: (message, expected, help).
    fn check_reference(&self, r: &str, scope: Scope) -> Option<(String, Option<String>, Option<String>)> {
        let d = self.desc;
        let parts: Vec<&str> =
            r.split(['.', '[']).map(|p| p.trim_matches(|c| c == '"' || c == '\'' || c == ']')).collect();
        let fields_of = |root: &str| -> &'static [&'static str] {
            match (root, scope) {
                ("databases", _) => &["host", "port", "name", "user", "password", "url", "endpoint"],
                ("services", _) => &["address", "port", "url", "addresses", "urls"],
                ("release", Scope::Static) => &["version"],
                ("release", Scope::Full) => &["version", "artifact", "url", "dir"],
                ("run", _) => &["id", "expires_at"],
                ("env", _) => &["name", "owner", "provider", "region"],
                _ => &[],
            }
        };
        let unknown_field = |what: &str, field: &str, fields: &[&str]| {
            let list = fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
            (
                format!("{what} has no `{field}`"),
                Some(format!("one of {list}")),
                did_you_mean(field, fields.iter().copied()).map(|m| format!("did you mean `{m}`?")),
            )
        };
        match parts.as_slice() {
            ["vars", var, ..] => {
                if d.variables.contains_key(*var) {
                    None
                } else {
                    let known: Vec<&str> = d.variables.keys().map(String::as_str).collect();
                    let list = if known.is_empty() {
                        "none is defined".to_string()
                    } else {
                        known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    };
                    Some((
                        format!("there is no variable `{var}` in `variables`"),
                        Some(format!("a defined variable: {list}")),
                        did_you_mean(var, known.iter().copied()).map(|m| format!("did you mean `vars.{m}`?")),
                    ))
                }
            }
            [root @ ("databases" | "services"), target, field, ..] => {
                let exists = if *root == "databases" {
                    d.databases.contains_key(*target)
                } else {
                    d.services.contains_key(*target)
                };
                let fields = fields_of(root);
                (exists && !fields.contains(field)).then(|| unknown_field(&format!("{root}.{target}"), field, fields))
            }
            [root @ ("release" | "run" | "env"), field, ..] => {
                let fields = fields_of(root);
                (!fields.contains(field)).then(|| unknown_field(root, field, fields))
            }
            _ => None,
        }
    }

    fn dependencies(&self, implicit: BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
        let d = self.desc;
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, s) in &d.services {
            let set = deps.entry(name.clone()).or_default();
            set.extend(s.depends_on.iter().cloned());
            if let Some(i) = implicit.get(name) {
                set.extend(i.iter().cloned());
            }
        }
        for (name, s) in &d.suites {
            let key = format!("suite:{name}");
            let set = deps.entry(key.clone()).or_default();
            if s.uses.is_empty() {
                set.extend(d.services.keys().cloned());
            } else {
                set.extend(s.uses.iter().cloned());
            }
            if let Some(i) = implicit.get(&key) {
                set.extend(i.iter().cloned());
            }
        }
        deps
    }

    fn cycles(&mut self, deps: &BTreeMap<String, BTreeSet<String>>, sources: &BTreeMap<(String, String), String>) {
        // Depth-first search over services; databases have no dependencies.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
        let mut reported: BTreeSet<Vec<String>> = BTreeSet::new();
        fn visit<'a>(
            node: &'a str,
            deps: &'a BTreeMap<String, BTreeSet<String>>,
            marks: &mut BTreeMap<&'a str, Mark>,
            stack: &mut Vec<&'a str>,
            found: &mut Vec<Vec<String>>,
        ) {
            match marks.get(node) {
                Some(Mark::Done) => return,
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|n| *n == node).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(node.to_string());
                    found.push(cycle);
                    return;
                }
                None => {}
            }
            marks.insert(node, Mark::Visiting);
            stack.push(node);
            if let Some(next) = deps.get(node) {
                for n in next {
                    visit(n, deps, marks, stack, found);
                }
            }
            stack.pop();
            marks.insert(node, Mark::Done);
        }
        let mut found = Vec::new();
        for name in self.desc.services.keys() {
            let mut stack = Vec::new();
            visit(name, deps, &mut marks, &mut stack, &mut found);
        }
        for cycle in found {
            // A self-dependency is reported by `names` already.
            if cycle.len() == 2 && cycle[0] == cycle[1] {
                continue;
            }
            // Report each cycle once, at the edge that closes it.
            let mut key = cycle[..cycle.len() - 1].to_vec();
            key.sort();
            if !reported.insert(key) {
                continue;
            }
            let from = &cycle[cycle.len() - 2];
            let to = &cycle[cycle.len() - 1];
            let path = self.desc.services[from.as_str()]
                .depends_on
                .iter()
                .position(|d| d == to)
                .map(|i| format!("services.{from}.depends_on[{i}]"))
                .or_else(|| sources.get(&(from.clone(), to.clone())).cloned())
                .unwrap_or_else(|| format!("services.{from}"));
            self.err(&path, format!("dependency cycle: {}", cycle.join(" → ")))
                .help = Some("a service cannot wait for something that waits for it; remove one of these dependencies (or template references)".into());
        }
    }
}

/// tera's parse error as (line, column) and the "expected ..." part.
fn template_error_parts(e: &str) -> (Option<(u32, u32)>, String) {
    let at = e.split("-->").nth(1).and_then(|rest| {
        let loc = rest.split_whitespace().next()?;
        let (l, c) = loc.split_once(':')?;
        Some((l.parse().ok()?, c.parse().ok()?))
    });
    let what = e.rsplit("= ").next().map(str::trim).filter(|w| !w.is_empty() && at.is_some()).unwrap_or(e).to_string();
    (at, what)
}
