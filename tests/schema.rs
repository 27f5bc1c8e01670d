//! The JSON Schema (`rehearse schema`) agrees with the validator, file by file.
//!
//! Every example description, and each of them changed in one place — a key removed,
//! an unknown key added, a value replaced by one of another type or an unknown word, the
//! provider swapped — goes through both. Two things must hold for each:
//! - the schema never refuses what the validator accepts (an editor must not flag a
//!   valid file);
//! - what the validator refuses for a file's shape (a key missing or unknown, a value of
//!   the wrong type or outside its choices, a key the provider requires or refuses), the
//!   schema refuses too.
//!
//! What needs the whole description (references, cycles, files, templates) or a value's
//! finer format (a region name, a CIDR, a range) only the validator checks; a file it
//! refuses for those alone may pass the schema.

use std::path::{Path, PathBuf};

use jsonschema::Validator;
use rehearse::description;
use serde_json::{json, Value};

/// What the validator says in its diagnostics when the problem is one of shape.
const SHAPE_PROBLEMS: &[&str] = &[
    "missing required key",
    "unknown key",
    " must be ",
    "is a bare number",
    "has an unknown value",
    "names no source",
    "a database has exactly one",
    // What the provider requires or refuses.
    "needs a `",
    "needs an `",
    "is for the aws provider",
    "is for the local provider",
    "has no meaning for the local provider",
    "is a local source",
    "is an AWS source",
    "has a health check but no `port`",
];

/// A place in a document: mapping keys and list indexes from the root.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

fn show(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => out.push_str(&format!(".{k}")),
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Every place in `value` but the root, parents before children.
fn places(value: &Value) -> Vec<Vec<Step>> {
    fn walk(value: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        let children: Vec<(Step, &Value)> = match value {
            Value::Object(m) => m.iter().map(|(k, v)| (Step::Key(k.clone()), v)).collect(),
            Value::Array(a) => a.iter().enumerate().map(|(i, v)| (Step::Index(i), v)).collect(),
            _ => Vec::new(),
        };
        for (step, child) in children {
            path.push(step);
            out.push(path.clone());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

fn get<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

fn at<'a>(value: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(value, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

struct Example {
    path: PathBuf,
    doc: Value,
}

fn examples() -> Vec<Example> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("environments"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let doc: Value = serde_saphyr::from_str(&text).unwrap();
            Example { path, doc }
        })
        .collect()
}

/// One changed copy of an example, and what was changed.
struct Case {
    what: String,
    doc: Value,
}

fn mutations(doc: &Value) -> Vec<Case> {
    let mut cases = vec![Case { what: "as it is".into(), doc: doc.clone() }];
    for place in places(doc) {
        let shown = show(&place);
        if let Some((Step::Key(key), parent)) = place.split_last() {
            let mut changed = doc.clone();
            at(&mut changed, parent).as_object_mut().unwrap().remove(key);
            cases.push(Case { what: format!("without `{shown}`"), doc: changed });
        }
        for replacement in [json!(null), json!(7), json!(true), json!("bogus"), json!(["x"]), json!({"x": "y"})] {
            let mut changed = doc.clone();
            *at(&mut changed, &place) = replacement.clone();
            cases.push(Case { what: format!("with `{shown}: {replacement}`"), doc: changed });
        }
    }
    let mut mappings: Vec<Vec<Step>> =
        places(doc).into_iter().filter(|p| get(doc, p).is_some_and(Value::is_object)).collect();
    mappings.push(Vec::new());
    for place in mappings {
        let mut changed = doc.clone();
        at(&mut changed, &place).as_object_mut().unwrap().insert("x_unknown".into(), json!(1));
        cases.push(Case { what: format!("with `{}.x_unknown: 1`", show(&place)), doc: changed });
    }
    for (from, to) in [("aws", "local"), ("local", "aws")] {
        if doc["provider"] == from {
            let mut changed = doc.clone();
            changed["provider"] = json!(to);
            cases.push(Case { what: format!("moved from {from} to {to}"), doc: changed });
        }
    }
    cases
}

/// The validator's verdict: `None` when it accepts, its messages when it refuses.
fn validate(path: &Path, doc: &Value) -> Option<Vec<String>> {
    // JSON is YAML: the document goes to the loader as it would from a file beside
    // the example (so that its relative paths resolve).
    let text = serde_json::to_string_pretty(doc).unwrap();
    match description::load_str(path, text, None) {
        Ok(_) => None,
        Err(d) => Some(d.items.iter().map(|i| i.message.clone()).collect()),
    }
}

fn schema_validator() -> Validator {
    let schema = description::schema();
    jsonschema::meta::validate(&schema).expect("the schema is a valid JSON Schema");
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn the_schema_and_the_validator_agree_on_every_example_changed_in_one_place() {
    let validator = schema_validator();
    let mut disagreements = Vec::new();
    let mut counts = (0, 0, 0);
    for example in examples() {
        for case in mutations(&example.doc) {
            let problems = validate(&example.path, &case.doc);
            let schema_errors: Vec<String> = validator.iter_errors(&case.doc).map(|e| e.to_string()).collect();
            let name = example.path.file_name().unwrap().to_string_lossy();
            match &problems {
                None => {
                    counts.0 += 1;
                    if !schema_errors.is_empty() {
                        disagreements.push(format!(
                            "{name} {}: the validator accepts it, the schema refuses it: {schema_errors:?}",
                            case.what
                        ));
                    }
                }
                Some(problems) => {
                    let shape: Vec<&String> =
                        problems.iter().filter(|p| SHAPE_PROBLEMS.iter().any(|s| p.contains(s))).collect();
                    if shape.is_empty() {
                        counts.2 += 1;
                    } else {
                        counts.1 += 1;
                        if schema_errors.is_empty() {
                            disagreements.push(format!(
                                "{name} {}: the validator refuses its shape ({shape:?}), the schema accepts it",
                                case.what
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(disagreements.is_empty(), "{} disagreements:\n{}", disagreements.len(), disagreements.join("\n"));
    // The changes reach all three verdicts, in numbers.
    let (accepted, shape, other) = counts;
    eprintln!(
        "{accepted} accepted by both, {shape} refused for their shape by both, {other} refused for other reasons"
    );
    assert!(accepted >= 50 && shape >= 300 && other >= 10, "accepted {accepted}, shape {shape}, other {other}");
}

/// The examples as the model serializes them (defaults filled in) still fit the schema:
/// the serialized form keeps the file's shape.
#[test]
fn the_model_serializes_to_what_the_schema_describes() {
    let validator = schema_validator();
    for example in examples() {
        let loaded = description::load(&example.path, None).unwrap_or_else(|d| panic!("{}", d.render()));
        let serialized = serde_json::to_value(&loaded.desc).unwrap();
        let errors: Vec<String> = validator.iter_errors(&serialized).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}\n{serialized:#}", example.path.display());
        // Every key the file wrote is there, where it wrote it.
        for place in places(&example.doc) {
            assert!(
                get(&serialized, &place).is_some(),
                "{}: `{}` is not serialized",
                example.path.display(),
                show(&place)
            );
        }
    }
}

/// Keys the tool fills in when they are left out are not required by the schema.
#[test]
fn defaulted_keys_are_not_required() {
    let schema = description::schema();
    let required = |v: &Value| -> Vec<String> {
        v["required"].as_array().into_iter().flatten().map(|k| k.as_str().unwrap().to_string()).collect()
    };
    assert!(!required(&schema).contains(&"ttl".to_string()), "{:?}", required(&schema));
    assert!(!required(&schema["$defs"]["Health"]).contains(&"timeout".to_string()));
    assert_eq!(schema["properties"]["ttl"]["default"], "2h");
}
