//! Property tests standing in for a fuzzer: the loader never panics, on arbitrary
//! bytes, on arbitrary YAML trees, and on valid descriptions with random mutations —
//! it either accepts or returns positioned diagnostics.

use std::path::Path;

use proptest::prelude::*;
use rehearse::description;

fn check(text: String) {
    match description::load_str(Path::new("fuzz.yaml"), text.clone(), None) {
        Ok(_) => {}
        Err(d) => {
            assert!(!d.items.is_empty(), "an error with no diagnostics for {text:?}");
            for item in &d.items {
                assert!(item.pos.line >= 1 && item.pos.col >= 1, "{item:?}");
            }
            // Rendering never panics either, whatever the positions.
            let _ = d.render();
        }
    }
}

/// Arbitrary YAML-ish trees, printed as block YAML with keys drawn partly from the
/// real vocabulary so the decoder's deeper paths are reached.
fn yaml_tree() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name".to_string()),
        Just("provider".to_string()),
        Just("owner".to_string()),
        Just("release".to_string()),
        Just("artifact".to_string()),
        Just("databases".to_string()),
        Just("services".to_string()),
        Just("suites".to_string()),
        Just("source".to_string()),
        Just("depends_on".to_string()),
        Just("timeout".to_string()),
        Just("results".to_string()),
        Just("network".to_string()),
        Just("health".to_string()),
        "[a-z_]{1,8}",
    ];
    let scalar = prop_oneof![
        Just("local".to_string()),
        Just("aws".to_string()),
        Just("5m".to_string()),
        Just("\"{{ databases.db.url }}\"".to_string()),
        Just("\"{{ nope\"".to_string()),
        Just("10.0.0.0/8".to_string()),
        Just("[a, b]".to_string()),
        Just("~".to_string()),
        Just("&x 1".to_string()),
        Just("*x".to_string()),
        "-?[0-9]{1,4}",
        "[a-zA-Z0-9 ./:-]{0,12}",
    ];
    let leaf = scalar.prop_map(|s| vec![s]);
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop::collection::vec((key.clone(), inner), 1..6).prop_map(|entries| {
            let mut lines = Vec::new();
            for (k, v) in entries {
                if v.len() == 1 && !v[0].contains(':') {
                    lines.push(format!("{k}: {}", v[0]));
                } else {
                    lines.push(format!("{k}:"));
                    lines.extend(v.iter().map(|l| format!("  {l}")));
                }
            }
            lines
        })
    })
    .prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        check(text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        check(String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn arbitrary_yaml_trees_never_panic(text in yaml_tree()) {
        check(text);
    }

    #[test]
    fn mutated_examples_never_panic(cut in 0usize..4000, insert in "[ :\\-\\[\\]{}#&*!|>'\"\n]{0,3}", which in 0usize..2) {
        let file = ["environments/demo.yaml", "environments/shop-aws.yaml"][which];
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let mut at = cut % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let mutated = format!("{}{}{}", &text[..at], insert, &text[at..]);
        check(mutated);
    }
}
