//! A YAML document as a tree of values that remember where they were written.
//!
//! Deserializing straight into typed structs (plain serde derive) stops at the first
//! problem; a user fixing a description wants every problem of a file at once, each with
//! its line and column. So the YAML is first read into this small spanned tree — through
//! `serde-saphyr`, which gives positions (`Spanned<T>`), YAML syntax errors with
//! locations, and a budget against alias bombs and deep nesting — and the decoder in
//! [`super::decode`] then walks the tree collecting diagnostics.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, DefaultMessageFormatter, MessageFormatter, Options, Spanned};

/// Largest description file accepted, in bytes. Real descriptions are a few kilobytes;
/// anything near this limit is a mistake (or an attack) and is refused before parsing.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;

pub use crate::diag::Pos;

/// The position of a parser location.
fn pos_of(loc: &serde_saphyr::Location) -> Pos {
    Pos { line: (loc.line().max(1)) as u32, col: (loc.column().max(1)) as u32 }
}

/// A value in the tree, with the position where it was written.
#[derive(Clone, Debug)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// A mapping key: always a string in a description, with its position (the place an
/// "unknown key" error points at).
#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// What this value is, for "expected a string, found a list" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Why a file is not a YAML document the decoder can read.
#[derive(Debug, thiserror::Error)]
pub enum SyntaxError {
    #[error("file is {bytes} bytes; a description may be at most {MAX_FILE_BYTES} bytes (1 MiB)")]
    TooLarge { bytes: usize },
    #[error("the file is empty; a description is a mapping with at least `name`, `provider`, `owner` and `release`")]
    Empty,
    /// The parser refused the text; `pos` is where, when it knows.
    #[error("{problem}")]
    Yaml {
        pos: Pos,
        problem: YamlProblem,
        #[source]
        source: Box<serde_saphyr::Error>,
    },
}

impl SyntaxError {
    /// Where the problem is (the file's start when nobody knows better).
    pub fn pos(&self) -> Pos {
        match self {
            SyntaxError::Yaml { pos, .. } => *pos,
            SyntaxError::TooLarge { .. } | SyntaxError::Empty => Pos::START,
        }
    }
}

/// What the YAML parser refused, said in a description's terms.
#[derive(Debug, thiserror::Error)]
pub enum YamlProblem {
    #[error("invalid YAML: duplicate key `{0}`: a key may appear only once in a mapping")]
    DuplicateKey(String),
    #[error("invalid YAML: more than one YAML document (`---`) in the file: a description is a single document")]
    MultipleDocuments,
    #[error("invalid YAML: nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
    #[error(
        "invalid YAML: too many alias expansions (anchors and aliases are limited to protect against alias bombs)"
    )]
    TooManyAliases,
    #[error("invalid YAML: the document is too large (more than 100,000 values)")]
    TooManyValues,
    /// Anything else, in the parser's words (without its position: ours is printed
    /// in front).
    #[error("invalid YAML{}", if .0.is_empty() { String::new() } else { format!(": {}", .0) })]
    Other(String),
}

impl YamlProblem {
    fn of(err: &serde_saphyr::Error) -> YamlProblem {
        use serde_saphyr::budget::BudgetBreach;
        use serde_saphyr::Error;
        // A wrapper adds a snippet, or where an alias was used; the problem is inside.
        let mut err = err;
        while let Error::WithSnippet { error, .. } | Error::AliasError { error, .. } = err {
            err = error;
        }
        match err {
            Error::DuplicateMappingKey { key: Some(key), .. } => YamlProblem::DuplicateKey(key.clone()),
            Error::MultipleDocuments { .. } => YamlProblem::MultipleDocuments,
            Error::Budget { breach, .. } => match breach {
                BudgetBreach::Depth { .. }
                | BudgetBreach::InclusionDepth { .. }
                | BudgetBreach::PropertyExpansionDepth { .. } => YamlProblem::TooDeep,
                BudgetBreach::Aliases { .. }
                | BudgetBreach::Anchors { .. }
                | BudgetBreach::AliasAnchorRatio { .. }
                | BudgetBreach::RecordedAnchorEvents { .. }
                | BudgetBreach::RecordedAnchorBytes { .. } => YamlProblem::TooManyAliases,
                _ => YamlProblem::TooManyValues,
            },
            other => {
                let text = DefaultMessageFormatter.format_message(other);
                // Control characters in a message would garble the terminal.
                let mut shown = String::new();
                for c in text.trim().chars() {
                    if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
                        shown.extend(c.escape_debug());
                    } else {
                        shown.push(c);
                    }
                }
                YamlProblem::Other(shown)
            }
        }
    }
}

/// Nesting deeper than this is refused (no description needs a tenth of it).
const MAX_DEPTH: usize = 48;

/// Parses a whole description file into a spanned tree.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(SyntaxError::TooLarge { bytes: text.len() });
    }
    let mut budget = Budget::default();
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 100_000;
    budget.max_recorded_anchor_events = 100_000;
    budget.max_depth = MAX_DEPTH;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    match serde_saphyr::from_str_with_options::<Option<Node>>(text, options) {
        Ok(Some(node)) => Ok(node),
        Ok(None) => Err(SyntaxError::Empty),
        Err(source) => {
            let pos = source.location().map(|l| pos_of(&l)).unwrap_or(Pos::START);
            Err(SyntaxError::Yaml { pos, problem: YamlProblem::of(&source), source: Box::new(source) })
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Value>::deserialize(d)?;
        Ok(Node { value: spanned.value, pos: pos_of(&spanned.referenced) })
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<KeyText>::deserialize(d)?;
        Ok(Key { name: spanned.value.0, pos: pos_of(&spanned.referenced) })
    }
}

/// A mapping key written as any scalar (`1: x` or `true: y` are legal YAML); it is kept
/// as text so the decoder can say "unknown key `1`" instead of a type error.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a plain key (a string)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyText, E> {
                Ok(KeyText("null".to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
                Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
                Ok(i64::try_from(v).map(Value::Int).unwrap_or(Value::Float(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
                Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Value, D2::Error> {
                Value::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Node>()? {
                    items.push(item);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Key>()? {
                    let value = map.next_value::<Node>()?;
                    entries.push((key, value));
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_positions_of_keys_and_values() {
        let node = parse("name: demo\nservices:\n  web:\n    count: 2\n").unwrap();
        let Value::Map(entries) = &node.value else { panic!("not a map") };
        assert_eq!(entries[0].0.name, "name");
        assert_eq!(entries[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 1, col: 7 });
        let Value::Map(services) = &entries[1].1.value else { panic!("not a map") };
        let Value::Map(web) = &services[0].1.value else { panic!("not a map") };
        assert_eq!(web[0].0.pos, Pos { line: 4, col: 5 });
        assert!(matches!(web[0].1.value, Value::Int(2)));
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut prev = 'a';
        for name in "bcdefghij".chars() {
            text.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = name;
        }
        let err = parse(&text).unwrap_err();
        assert!(matches!(err, SyntaxError::Yaml { problem: YamlProblem::TooManyAliases, .. }), "{err}");
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(parse("").is_err());
        assert!(parse("# only a comment\n").is_err());
    }
}
