//! The JSON Schema of a description, for editors (`rehearse schema`).
//!
//! It is derived from the [model](super::model) and held to one promise: an editor
//! never flags a file the tool accepts, and flags what the tool refuses for its shape —
//! a missing or unknown key, a value of the wrong type, a value outside a list of
//! choices, a key that the file's provider requires or refuses. What needs the whole
//! description (references, cycles, files, templates) or a value's finer format (a
//! region name, a CIDR, a range) only the tool checks. `tests/schema.rs` compares the
//! two file by file.
//!
//! The derived schema is adjusted where the model alone cannot say it:
//! - an optional key may be left out but is never `null` (the decoder refuses
//!   `port: ~`), except `databases`, `services` and `suites`, where `~` means none;
//! - what a provider requires or refuses, which depends on the `provider` key at the
//!   top, is said there with one `if`/`then` per provider, built from the keys of its
//!   variants in the model ([`ProviderKeys`]).

use schemars::generate::SchemaSettings;
use schemars::Schema;
use serde_json::{json, Map, Value};

use super::model::{DatabaseSource, Description, ProviderKeys, ProviderKind, KIND_SHAPES};

/// The JSON Schema (draft 2020-12) of a description.
pub fn schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.root_schema_for::<Description>().to_value();
    never_null(&mut schema);
    for section in ["databases", "services", "suites"] {
        if let Some(obj) = schema["properties"][section].as_object_mut() {
            obj.insert("type".into(), json!(["object", "null"]));
        }
    }
    let rules: Vec<Value> = ProviderKind::ALL.iter().map(|p| provider_rule(*p, &mut generator)).collect();
    schema["allOf"] = Value::Array(rules);
    schema
}

/// `if provider is P then` what P requires, and no key that only another provider
/// uses, at the top, in every service and in every database.
fn provider_rule(provider: ProviderKind, generator: &mut schemars::SchemaGenerator) -> Value {
    let mine = ProviderKeys::of(provider, generator);
    let others: Vec<ProviderKeys> =
        ProviderKind::ALL.iter().filter(|o| **o != provider).map(|o| ProviderKeys::of(*o, generator)).collect();
    let refused = |level: fn(&ProviderKeys) -> &Schema| -> Map<String, Value> {
        let own = property_names(level(&mine));
        others
            .iter()
            .flat_map(|o| property_names(level(o)))
            .filter(|k| !own.contains(k))
            .map(|k| (k, Value::Bool(false)))
            .collect()
    };
    let refused_sources: Map<String, Value> = ProviderKind::ALL
        .iter()
        .filter(|o| **o != provider)
        .flat_map(|o| DatabaseSource::keys_of(*o))
        .map(|k| (k.to_string(), Value::Bool(false)))
        .collect();

    let mut service = requiring(&mine.service, refused(|k| &k.service));
    if provider == ProviderKind::Aws {
        // The instances' health is checked on the service's port (see the provider
        // rules in `decode::rules`).
        service["dependentRequired"] = json!({ "health": ["port"] });
    }
    let mut database_properties = refused(|k| &k.database);
    database_properties.insert("source".into(), json!({ "properties": refused_sources }));
    let database = requiring(&mine.database, database_properties);

    let mut top = refused(|k| &k.root);
    top.insert("services".into(), json!({ "additionalProperties": service }));
    top.insert("databases".into(), json!({ "additionalProperties": database }));
    // A fault of a kind only another provider has.
    let foreign: Vec<Value> = KIND_SHAPES
        .iter()
        .filter(|s| !s.providers.contains(&provider))
        .map(
            |s| json!({ "required": [s.target.key(), "kind"], "properties": { "kind": { "const": s.kind.as_str() } } }),
        )
        .collect();
    if !foreign.is_empty() {
        top.insert(
            "chaos".into(),
            json!({ "properties": { "faults": { "additionalProperties": { "not": { "anyOf": foreign } } } } }),
        );
    }
    json!({
        "if": { "properties": { "provider": { "const": provider.as_str() } }, "required": ["provider"] },
        "then": requiring(&mine.root, top),
    })
}

fn property_names(schema: &Schema) -> Vec<String> {
    schema.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default()
}

/// A schema with the keys `variant` requires, and `properties`.
fn requiring(variant: &Schema, properties: Map<String, Value>) -> Value {
    let mut schema = json!({ "properties": properties });
    if let Some(required) = variant.get("required") {
        schema["required"] = required.clone();
    }
    schema
}

/// Removes `null` from what any value of the schema may be: from `type` lists, `enum`
/// lists and `anyOf` alternatives (schemars lets an `Option` be `null`).
fn never_null(value: &mut Value) {
    match value {
        Value::Object(obj) => {
            if let Some(Value::Array(types)) = obj.get_mut("type") {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    obj.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(choices)) = obj.get_mut("enum") {
                choices.retain(|c| !c.is_null());
            }
            if let Some(Value::Array(alternatives)) = obj.get_mut("anyOf") {
                alternatives.retain(|a| a.get("type").and_then(Value::as_str) != Some("null"));
                if let [only] = alternatives.as_slice() {
                    let only = only.clone();
                    obj.remove("anyOf");
                    if let Value::Object(only) = only {
                        obj.extend(only);
                    }
                }
            }
            obj.values_mut().for_each(never_null);
        }
        Value::Array(items) => items.iter_mut().for_each(never_null),
        _ => {}
    }
}
