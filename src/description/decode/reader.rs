//! Reading one value of the spanned tree as what it should be — a string, a duration,
//! a list, a mapping whose unknown keys are reported — with its position recorded and
//! a diagnostic for anything else.
//!
//! Each mapping is read through an [`Obj`], which records the keys the decoder asks
//! for; whatever the file has beyond those is an unknown key, reported with the closest
//! known one. Positions of everything later checks point at (names, references,
//! templates) are kept in [`Positions`] by their dotted path.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::rules::KeyRule;
use super::Decoder;
use crate::description::model::format_duration;
use crate::description::yaml::{Key, Node, Pos, Value};
use crate::diag::{did_you_mean, Diagnostic};

/// Where each decoded item was written, by dotted path (`services.web.depends_on[0]`).
#[derive(Debug, Default, Clone)]
pub struct Positions(HashMap<String, Pos>);

impl Positions {
    pub fn get(&self, path: &str) -> Pos {
        // Fall back to the nearest recorded parent, then to the file's start.
        let mut p = path;
        loop {
            if let Some(pos) = self.0.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return Pos::START,
            }
        }
    }

    /// Where the key of `path` was written (`web:` for `services.web`), or its value
    /// when the key was not recorded: the place a problem with a whole item points at.
    pub fn key(&self, path: &str) -> Pos {
        let pos = self.get(&format!("{path}#key"));
        if pos == Pos::START {
            self.get(path)
        } else {
            pos
        }
    }

    fn set(&mut self, path: &str, pos: Pos) {
        self.0.entry(path.to_string()).or_insert(pos);
    }
}

/// A mapping being read: the keys asked for so far are the known ones.
pub(super) struct Obj<'a> {
    pub path: String,
    pub pos: Pos,
    pub entries: &'a [(Key, Node)],
    pub asked: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// Whether the file has a key that was not asked for (so far).
    pub fn has_unknown(&self) -> bool {
        self.entries.iter().any(|(k, _)| !self.asked.contains(&k.name.as_str()))
    }

    fn where_(&self) -> String {
        if self.path.is_empty() {
            "the description".to_string()
        } else {
            format!("`{}`", self.path)
        }
    }
}

impl Decoder {
    pub(super) fn err(&mut self, pos: Pos, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(pos, message));
        self.diags.last_mut().expect("just pushed")
    }

    pub(super) fn obj<'a>(&mut self, path: &str, node: &'a Node, what: &str) -> Option<Obj<'a>> {
        self.positions.set(path, node.pos);
        match &node.value {
            Value::Map(entries) => {
                for (k, v) in entries {
                    let child = if path.is_empty() { k.name.clone() } else { format!("{path}.{}", k.name) };
                    self.positions.set(&child, v.pos);
                    self.positions.set(&format!("{child}#key"), k.pos);
                }
                Some(Obj { path: path.to_string(), pos: node.pos, entries, asked: Vec::new() })
            }
            other => {
                let at = if path.is_empty() { "the file".to_string() } else { format!("`{path}`") };
                let kind = other.kind();
                self.err(node.pos, format!("{at} must be {what}, found {kind}"));
                None
            }
        }
    }

    pub(super) fn get<'a>(&mut self, obj: &mut Obj<'a>, key: &'static str) -> Option<&'a Node> {
        obj.asked.push(key);
        obj.entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
    }

    pub(super) fn require<'a>(&mut self, obj: &mut Obj<'a>, key: &'static str, what: &str) -> Option<&'a Node> {
        let found = self.get(obj, key);
        if found.is_none() {
            let at = obj.where_();
            // Point at the key that opens the mapping (`web:`), not its first entry.
            let pos = self.positions.0.get(&format!("{}#key", obj.path)).copied().unwrap_or(obj.pos);
            self.err(pos, format!("missing required key `{key}` in {at}")).expected = Some(what.to_string());
        }
        found
    }

    /// Reports every key of `obj` that was not asked for.
    pub(super) fn finish(&mut self, obj: Obj<'_>) {
        for (k, _) in obj.entries {
            if obj.asked.contains(&k.name.as_str()) {
                continue;
            }
            let at = obj.where_();
            let known = obj.asked.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
            let d = self.err(k.pos, format!("unknown key `{}` in {}", k.name, at));
            d.expected = Some(format!("one of {known}"));
            if let Some(m) = did_you_mean(&k.name, obj.asked.iter().copied()) {
                d.help = Some(format!("did you mean `{m}`?"));
            }
        }
    }

    pub(super) fn string(&mut self, path: &str, node: &Node) -> Option<String> {
        self.positions.set(path, node.pos);
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                let kind = node.value.kind();
                let shown = match &node.value {
                    Value::Int(n) => n.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => String::new(),
                };
                self.err(node.pos, format!("`{path}` must be a string, found {kind}")).help =
                    Some(format!("quote the value if you meant it as text: \"{shown}\""));
                None
            }
            other => {
                let kind = other.kind();
                self.err(node.pos, format!("`{path}` must be a string, found {kind}"));
                None
            }
        }
    }

    pub(super) fn nonempty_string(&mut self, path: &str, node: &Node) -> Option<String> {
        let s = self.string(path, node)?;
        if s.trim().is_empty() {
            self.err(node.pos, format!("`{path}` must not be empty"));
            return None;
        }
        Some(s)
    }

    pub(super) fn opt_string(&mut self, obj: &mut Obj<'_>, key: &'static str) -> Option<String> {
        let node = self.get(obj, key)?;
        let path = obj.child(key);
        self.nonempty_string(&path, node)
    }

    pub(super) fn req_string(&mut self, obj: &mut Obj<'_>, key: &'static str, what: &str) -> Option<String> {
        let node = self.require(obj, key, what)?;
        let path = obj.child(key);
        self.nonempty_string(&path, node)
    }

    pub(super) fn duration(&mut self, path: &str, node: &Node, min: Duration, max: Duration) -> Option<Duration> {
        self.positions.set(path, node.pos);
        let text = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(n) => {
                self.err(node.pos, format!("`{path}` is a bare number ({n}); durations need a unit")).help =
                    Some(format!("write `{n}s`, `{n}m` or `{n}h`"));
                return None;
            }
            other => {
                let kind = other.kind();
                self.err(node.pos, format!("`{path}` must be a duration, found {kind}")).expected =
                    Some("a duration such as `90s`, `5m`, `2h` or `1h30m`".into());
                return None;
            }
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d < min || d > max => {
                self.err(node.pos, format!("`{path}` is {}, outside the allowed range", format_duration(d))).expected =
                    Some(format!("a duration from {} to {}", format_duration(min), format_duration(max)));
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                self.err(node.pos, format!("`{path}` is not a valid duration: `{text}`")).expected =
                    Some("a duration such as `90s`, `5m`, `2h` or `1h30m`".into());
                None
            }
        }
    }

    pub(super) fn string_list(&mut self, path: &str, node: &Node) -> Vec<String> {
        self.positions.set(path, node.pos);
        match &node.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if let Some(s) = self.nonempty_string(&p, item) {
                        out.push(s);
                    }
                }
                out
            }
            Value::Str(s) => {
                self.err(node.pos, format!("`{path}` must be a list, found a string")).help =
                    Some(format!("write `[{s}]`"));
                Vec::new()
            }
            other => {
                let kind = other.kind();
                self.err(node.pos, format!("`{path}` must be a list of strings, found {kind}"));
                Vec::new()
            }
        }
    }

    pub(super) fn string_map(&mut self, path: &str, node: &Node, key_rule: KeyRule) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(obj) = self.obj(path, node, "a mapping of names to strings") else {
            return out;
        };
        for (k, v) in obj.entries {
            let p = format!("{path}.{}", k.name);
            if let Err(msg) = key_rule.check(&k.name) {
                self.err(k.pos, format!("invalid name `{}` in `{path}`: {msg}", k.name));
                continue;
            }
            let value = match &v.value {
                Value::Str(s) => Some(s.clone()),
                // Numbers and booleans in a string map are almost always meant as text
                // (`cost-center: 4711`); taking them as written is what users expect.
                Value::Int(n) => Some(n.to_string()),
                Value::Float(f) => Some(f.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => self.string(&p, v),
            };
            if let Some(value) = value {
                out.insert(k.name.clone(), value);
            }
        }
        out
    }

    pub(super) fn enum_value<T: Copy>(&mut self, path: &str, node: &Node, choices: &[(&'static str, T)]) -> Option<T> {
        let s = self.string(path, node)?;
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let d = self.err(node.pos, format!("`{path}` has an unknown value `{s}`"));
        d.expected = Some(format!("one of {}", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")));
        if let Some(m) = did_you_mean(&s, names.iter().copied()) {
            d.help = Some(format!("did you mean `{m}`?"));
        }
        None
    }

    /// A number (whole or not) within `min..=max`.
    pub(super) fn number(&mut self, path: &str, node: &Node, min: f64, max: f64) -> Option<f64> {
        self.positions.set(path, node.pos);
        let n = match &node.value {
            Value::Int(n) => *n as f64,
            Value::Float(f) => *f,
            other => {
                let kind = other.kind();
                self.err(node.pos, format!("`{path}` must be a number, found {kind}")).expected =
                    Some(format!("a number from {min} to {max}"));
                return None;
            }
        };
        if !(min..=max).contains(&n) {
            self.err(node.pos, format!("`{path}` is {n}, outside the allowed range")).expected =
                Some(format!("a number from {min} to {max}"));
            return None;
        }
        Some(n)
    }

    pub(super) fn integer(&mut self, path: &str, node: &Node, min: i64, max: i64) -> Option<i64> {
        self.positions.set(path, node.pos);
        match &node.value {
            Value::Int(n) if *n >= min && *n <= max => Some(*n),
            Value::Int(n) => {
                self.err(node.pos, format!("`{path}` is {n}, outside the allowed range")).expected =
                    Some(format!("a whole number from {min} to {max}"));
                None
            }
            other => {
                let kind = other.kind();
                self.err(node.pos, format!("`{path}` must be a whole number, found {kind}")).expected =
                    Some(format!("a whole number from {min} to {max}"));
                None
            }
        }
    }

    /// A mapping of user-named items (`services: {web: ..., worker: ...}`), each
    /// decoded by `decode(self, name, path, node)`.
    pub(super) fn named<T>(
        &mut self,
        key: &'static str,
        parent: &mut Obj<'_>,
        mut decode: impl FnMut(&mut Self, &str, &str, &Node) -> Option<T>,
    ) -> Option<BTreeMap<String, T>> {
        let mut out = BTreeMap::new();
        let Some(node) = self.get(parent, key) else {
            return Some(out);
        };
        if matches!(node.value, Value::Null) {
            return Some(out);
        }
        let obj = self.obj(key, node, "a mapping of names to definitions")?;
        let mut ok = true;
        for (k, v) in obj.entries {
            if let Err(msg) = KeyRule::Identifier.check(&k.name) {
                self.err(k.pos, format!("invalid name `{}` in `{key}`: {msg}", k.name));
                ok = false;
                continue;
            }
            let path = format!("{key}.{}", k.name);
            match decode(self, &k.name, &path, v) {
                Some(item) => {
                    out.insert(k.name.clone(), item);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}
