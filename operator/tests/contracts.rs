//! Files this crate shares with others, checked against their other copy, so each
//! fact has one meaning however many files must spell it:
//! - the CRD's decoding defaults against the runtime's own defaults
//!   (`runtime/tests/fixtures/runtime-defaults.toml`, which the runtime's tests pin);
//! - the Helm chart's RBAC rules against kustomize's `config/rbac` (neither tool can
//!   read the other's directory, so the rules are written twice and compared here).

use dfastllm_operator::crd::{DecodingSpec, DiffusionModel};
use kube::CustomResourceExt;
use serde_json::Value;

const RUNTIME_DEFAULTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../runtime/tests/fixtures/runtime-defaults.toml"
);

fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

/// `[decoding.<section>]` of the runtime's defaults.
fn runtime_defaults(section: &str) -> toml::Table {
    let text = std::fs::read_to_string(RUNTIME_DEFAULTS)
        .unwrap_or_else(|e| panic!("reading {RUNTIME_DEFAULTS}: {e}"));
    let defaults: toml::Table = toml::from_str(&text).expect("runtime-defaults.toml parses");
    defaults["decoding"][section]
        .as_table()
        .unwrap_or_else(|| panic!("runtime-defaults.toml has no [decoding.{section}]"))
        .clone()
}

/// A default as a number, whether the CRD spells it as a decimal string ("0.9", the
/// schema's way to keep probabilities exact) or as an integer.
fn number(value: &Value) -> f64 {
    match value {
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("{s:?} is no number")),
        other => other
            .as_f64()
            .unwrap_or_else(|| panic!("{other} is no number")),
    }
}

fn runtime_number(table: &toml::Table, key: &str) -> f64 {
    match &table[key] {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => panic!("runtime default {key} = {other} is no number"),
    }
}

/// Every place the CRD states a decoding default, as `(where, camelCase key → value)`:
/// the Rust default, the schema's default for the whole `decoding` object, the schema's
/// default for the `apd`/`mor` object, and each field's own schema default.
fn crd_defaults(section: &str, field: &str) -> Vec<(String, Value)> {
    let rust = serde_json::to_value(DecodingSpec::default()).expect("DecodingSpec serialises");
    let crd = serde_json::to_value(DiffusionModel::crd()).expect("the CRD serialises");
    let decoding = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["decoding"];
    let section_schema = &decoding["properties"][section];
    vec![
        (
            "DecodingSpec::default()".into(),
            rust[section][field].clone(),
        ),
        (
            "the schema default of decoding".into(),
            decoding["default"][section][field].clone(),
        ),
        (
            format!("the schema default of decoding.{section}"),
            section_schema["default"][field].clone(),
        ),
        (
            format!("the schema default of decoding.{section}.{field}"),
            section_schema["properties"][field]["default"].clone(),
        ),
    ]
}

fn assert_defaults_match(section: &str, pairs: &[(&str, &str)]) {
    let runtime = runtime_defaults(section);
    for (field, runtime_key) in pairs {
        let expected = runtime_number(&runtime, runtime_key);
        for (place, value) in crd_defaults(section, field) {
            assert!(
                !value.is_null(),
                "{place} states no {section}.{field} default"
            );
            assert_eq!(
                number(&value),
                expected,
                "{place}: {section}.{field} is {value}, the runtime's {runtime_key} is {expected}"
            );
        }
    }
}

#[test]
fn crd_apd_defaults_are_the_runtimes() {
    assert_defaults_match(
        "apd",
        &[
            ("threshold", "threshold"),
            ("factor", "factor"),
            ("maxParallel", "max_parallel"),
        ],
    );
}

#[test]
fn crd_mor_defaults_are_the_runtimes() {
    assert_defaults_match(
        "mor",
        &[
            ("minRecursions", "min_recursions"),
            ("maxRecursions", "max_recursions"),
            ("confidenceThreshold", "confidence_threshold"),
        ],
    );
}

#[test]
fn crd_allows_zero_minimum_recursions() {
    let crd = serde_json::to_value(DiffusionModel::crd()).expect("the CRD serialises");
    let mor = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["decoding"]["properties"]["mor"];
    assert_eq!(number(&mor["properties"]["minRecursions"]["minimum"]), 0.0);
    assert_eq!(number(&mor["properties"]["maxRecursions"]["minimum"]), 0.0);
}

/// The `rules` of the first document in `path`.
fn kustomize_rules(path: &str) -> serde_yaml::Value {
    let role: serde_yaml::Value =
        serde_yaml::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    role["rules"].clone()
}

fn chart_rules(path: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn rbac_rules_have_one_source() {
    for (kustomize, chart) in [
        (
            "config/rbac/role.yaml",
            "charts/dfastllm-operator/files/rbac/rules.yaml",
        ),
        (
            "config/rbac/leader_election_role.yaml",
            "charts/dfastllm-operator/files/rbac/leader-election-rules.yaml",
        ),
    ] {
        let rules = kustomize_rules(kustomize);
        assert!(
            rules.as_sequence().is_some_and(|r| !r.is_empty()),
            "{kustomize} has no rules"
        );
        assert_eq!(
            rules,
            chart_rules(chart),
            "{chart} must hold exactly the rules of {kustomize}"
        );
    }
}

/// The chart renders its roles from those files only: a rule written inline in a
/// template would be a second source the test above never sees.
#[test]
fn chart_templates_write_no_rules_of_their_own() {
    let helpers = repo_file("charts/dfastllm-operator/templates/_helpers.tpl");
    for file in [
        "files/rbac/rules.yaml",
        "files/rbac/leader-election-rules.yaml",
    ] {
        assert!(
            helpers.contains(&format!(".Files.Get \"{file}\"")),
            "_helpers.tpl does not render {file}"
        );
    }
    let templates = format!(
        "{}/../charts/dfastllm-operator/templates",
        env!("CARGO_MANIFEST_DIR")
    );
    for entry in std::fs::read_dir(&templates).expect("the chart's templates") {
        let path = entry.expect("a template").path();
        let text = std::fs::read_to_string(&path).expect("a readable template");
        assert!(
            !text.contains("verbs:"),
            "{} writes RBAC rules inline; put them in files/rbac/",
            path.display()
        );
    }
}
