//! Templates in a description: `{{ }}` interpolation through tera.
//!
//! Every templated string (artifact, environment values, database names) and template
//! file (user-data, config files) is parsed once at load time, so a template that does
//! not parse or names something that does not exist is a validation error, never a
//! surprise halfway through a run. The variables a template references also give the
//! plan its implicit dependencies: a service whose environment reads
//! `{{ databases.db.url }}` waits for `db` even without `depends_on`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tera::ast::{Expr, ExprVal, Node as TNode};
use tera::{Context, Tera};

use super::model::Description;

/// What a database exposes to templates and suites once it exists.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DatabaseOutputs {
    pub host: String,
    pub port: String,
    pub name: String,
    pub user: String,
    pub password: String,
    /// `postgres://user:password@host:port/name`.
    pub url: String,
    /// `host:port`.
    pub endpoint: String,
}

impl DatabaseOutputs {
    /// A copy's connection from its parts: its `url` and `endpoint` built from them.
    pub fn new(host: String, port: String, name: String, user: String, password: String) -> DatabaseOutputs {
        DatabaseOutputs {
            url: super::postgres_url(&user, &password, &host, &port, &name),
            endpoint: format!("{host}:{port}"),
            host,
            port,
            name,
            user,
            password,
        }
    }

    /// libpq's environment for this database (`psql` and every libpq client read it),
    /// so that no password has to go on a command line.
    pub fn libpq_env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.host.clone()),
            ("PGPORT".into(), self.port.clone()),
            ("PGUSER".into(), self.user.clone()),
            ("PGPASSWORD".into(), self.password.clone()),
            ("PGDATABASE".into(), self.name.clone()),
        ]
    }
}

/// What a service exposes once it runs: the first instance's address and all of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceOutputs {
    pub address: String,
    pub port: String,
    pub url: String,
    pub addresses: Vec<String>,
    pub urls: Vec<String>,
}

impl ServiceOutputs {
    /// One instance's outputs: its address and `http://ADDRESS[:PORT]` (a service
    /// without a port has none).
    pub fn instance(address: String, port: Option<u16>) -> ServiceOutputs {
        let url = match port {
            Some(p) => format!("http://{address}:{p}"),
            None => format!("http://{address}"),
        };
        ServiceOutputs {
            address: address.clone(),
            port: port.map(|p| p.to_string()).unwrap_or_default(),
            url: url.clone(),
            addresses: vec![address],
            urls: vec![url],
        }
    }
}

/// Everything templates can read besides the description's own values.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outputs {
    pub run_id: String,
    pub expires_at: String,
    pub release_version: String,
    pub release_dir: String,
    /// Where an instance fetches the release: a presigned HTTPS link for an `s3://`
    /// artifact on aws; empty for the artifact as written.
    pub release_url: String,
    pub databases: BTreeMap<String, DatabaseOutputs>,
    pub services: BTreeMap<String, ServiceOutputs>,
}

impl Outputs {
    /// Outputs not known before the environment exists, shown as `(known after up)`
    /// markers: what `validate` checks against and what `plan` displays.
    pub fn placeholders(desc: &Description, release_version: &str, run_id: &str) -> Outputs {
        let known_after = |what: String| format!("(known after up: {what})");
        let databases = desc
            .databases
            .keys()
            .map(|name| {
                let p = |f: &str| known_after(format!("databases.{name}.{f}"));
                (
                    name.clone(),
                    DatabaseOutputs {
                        host: p("host"),
                        port: p("port"),
                        name: p("name"),
                        user: p("user"),
                        password: "(generated secret)".into(),
                        url: p("url"),
                        endpoint: p("endpoint"),
                    },
                )
            })
            .collect();
        let services = desc
            .services
            .keys()
            .map(|name| {
                let p = |f: &str| known_after(format!("services.{name}.{f}"));
                (
                    name.clone(),
                    ServiceOutputs {
                        address: p("address"),
                        port: p("port"),
                        url: p("url"),
                        addresses: vec![p("addresses")],
                        urls: vec![p("urls")],
                    },
                )
            })
            .collect();
        Outputs {
            run_id: run_id.to_string(),
            expires_at: known_after("run.expires_at".into()),
            release_version: release_version.to_string(),
            release_dir: known_after("release.dir".into()),
            release_url: known_after("release.url".into()),
            databases,
            services,
        }
    }
}

/// Which variables a template may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Resolved before anything exists (the artifact, database names): `release.version`,
    /// `run`, `env`, `vars`.
    Static,
    /// Resolved once dependencies exist: everything, including `databases` and
    /// `services` outputs and `release.dir`.
    Full,
}

/// The template context: `release`, `run`, `env`, `vars`, and in the full scope
/// `databases` and `services`.
pub fn context(desc: &Description, artifact: Option<&str>, outputs: &Outputs, scope: Scope) -> Context {
    let mut ctx = Context::new();
    let mut release = serde_json::Map::new();
    release.insert("version".into(), outputs.release_version.clone().into());
    if scope == Scope::Full {
        if let Some(a) = artifact {
            release.insert("artifact".into(), a.into());
            let url = if outputs.release_url.is_empty() { a } else { outputs.release_url.as_str() };
            release.insert("url".into(), url.into());
        }
        release.insert("dir".into(), outputs.release_dir.clone().into());
    }
    ctx.insert("release", &release);
    ctx.insert("run", &serde_json::json!({"id": outputs.run_id, "expires_at": outputs.expires_at}));
    ctx.insert(
        "env",
        &serde_json::json!({
            "name": desc.name,
            "owner": desc.owner,
            "provider": desc.provider().as_str(),
            "region": desc.region().unwrap_or_default(),
        }),
    );
    ctx.insert("vars", &desc.variables);
    if scope == Scope::Full {
        ctx.insert("databases", &outputs.databases);
        ctx.insert("services", &outputs.services);
    }
    ctx
}

/// A template that does not parse, or cannot be rendered.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    /// tera's message chain on one line, without its "Failed to render" wrappers.
    message: String,
    #[source]
    source: tera::Error,
}

impl From<tera::Error> for TemplateError {
    fn from(source: tera::Error) -> Self {
        TemplateError { message: error_chain(&source), source }
    }
}

/// Parses a template.
pub fn parse(tera: &mut Tera, name: &str, text: &str) -> Result<(), TemplateError> {
    Ok(tera.add_raw_template(name, text)?)
}

/// Renders a parsed template.
pub fn render(tera: &Tera, name: &str, ctx: &Context) -> Result<String, TemplateError> {
    Ok(tera.render(name, ctx)?)
}

/// A template engine for descriptions: no HTML autoescaping (templates make shell
/// commands, URLs and config files), and the `shell_quote` filter.
pub fn new_tera() -> Tera {
    let mut tera = Tera::default();
    tera.autoescape_on(vec![]);
    tera.register_filter("shell_quote", shell_quote);
    tera
}

/// `{{ value | shell_quote }}`: the value as one shell word, quoted so that `sh`
/// takes it literally (commands in a description run through `sh -c`).
fn shell_quote(value: &tera::Value, _: &std::collections::HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    let text = match value {
        tera::Value::String(s) => s.clone(),
        tera::Value::Null => String::new(),
        other => other.to_string(),
    };
    shlex::try_quote(&text)
        .map(|q| tera::Value::String(q.into_owned()))
        .map_err(|e| tera::Error::msg(format!("shell_quote: {e}")))
}

/// Renders a one-off string template (no file), with tera's autoescaping off.
pub fn render_str(text: &str, ctx: &Context) -> Result<String, TemplateError> {
    let mut tera = new_tera();
    parse(&mut tera, "inline", text)?;
    render(&tera, "inline", ctx)
}

/// tera nests the useful message inside "Failed to render" wrappers; keep the most
/// specific parts, one line.
pub fn error_chain(err: &tera::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    let parts: Vec<String> = parts
        .into_iter()
        .filter(|p| !p.starts_with("Failed to render") && !p.starts_with("Failed to parse"))
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if parts.is_empty() {
        err.to_string()
    } else {
        parts.join(": ")
    }
}

/// The dotted variable paths a template reads (`databases.db.url`), in order.
pub fn references(tera: &Tera, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(t) = tera.get_template(name) {
        walk_nodes(&t.ast, &mut out);
    }
    out
}

fn walk_nodes(nodes: &[TNode], out: &mut Vec<String>) {
    for node in nodes {
        match node {
            TNode::VariableBlock(_, e) => walk_expr(e, out),
            TNode::Set(_, s) => walk_expr(&s.value, out),
            TNode::FilterSection(_, f, _) => walk_nodes(&f.body, out),
            TNode::Block(_, b, _) => walk_nodes(&b.body, out),
            TNode::Forloop(_, f, _) => {
                walk_expr(&f.container, out);
                walk_nodes(&f.body, out);
                if let Some(e) = &f.empty_body {
                    walk_nodes(e, out);
                }
            }
            TNode::If(i, _) => {
                for (_, cond, body) in &i.conditions {
                    walk_expr(cond, out);
                    walk_nodes(body, out);
                }
                if let Some((_, body)) = &i.otherwise {
                    walk_nodes(body, out);
                }
            }
            _ => {}
        }
    }
}

fn walk_expr(e: &Expr, out: &mut Vec<String>) {
    match &e.val {
        ExprVal::Ident(id) => out.push(id.clone()),
        ExprVal::Math(m) => {
            walk_expr(&m.lhs, out);
            walk_expr(&m.rhs, out);
        }
        ExprVal::Logic(l) => {
            walk_expr(&l.lhs, out);
            walk_expr(&l.rhs, out);
        }
        ExprVal::Test(t) => {
            out.push(t.ident.clone());
            t.args.iter().for_each(|a| walk_expr(a, out));
        }
        ExprVal::FunctionCall(f) => f.args.values().for_each(|a| walk_expr(a, out)),
        ExprVal::MacroCall(m) => m.args.values().for_each(|a| walk_expr(a, out)),
        ExprVal::Array(items) => items.iter().for_each(|a| walk_expr(a, out)),
        ExprVal::StringConcat(s) => {
            for v in &s.values {
                if let ExprVal::Ident(id) = v {
                    out.push(id.clone());
                }
            }
        }
        ExprVal::In(i) => {
            walk_expr(&i.lhs, out);
            walk_expr(&i.rhs, out);
        }
        ExprVal::String(_) | ExprVal::Int(_) | ExprVal::Float(_) | ExprVal::Bool(_) => {}
    }
    for f in &e.filters {
        f.args.values().for_each(|a| walk_expr(a, out));
    }
}

/// The resource a variable path points at: `databases.db.url` → `("databases", "db")`.
pub fn resource_of(reference: &str) -> Option<(&str, &str)> {
    let mut parts = reference.split(['.', '[']);
    let root = parts.next()?;
    if root != "databases" && root != "services" {
        return None;
    }
    let name = parts.next()?.trim_matches(|c| c == '"' || c == '\'' || c == ']');
    Some((root, name))
}

#[cfg(test)]
mod shell_quote_tests {
    use super::*;

    #[test]
    fn shell_quote_makes_one_literal_word() {
        let mut ctx = Context::new();
        ctx.insert("v", "a b'c $(rm -rf /) `x`; y");
        let quoted = render_str("echo {{ v | shell_quote }}", &ctx).unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(&quoted).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a b'c $(rm -rf /) `x`; y\n", "{quoted}");
    }
}
