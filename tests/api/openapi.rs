//! The served OpenAPI document against the one saved in `tests/fixtures/openapi.json`, so that a
//! change of the contract is always deliberate (API.md: add, don't rename): a refactoring of the
//! routes must leave it as it is. After a deliberate change, save the new document with
//! `TOLLGATE_OPENAPI_UPDATE=1 cargo test the_served_document_is_the_baseline` and commit it with
//! the change; `TOLLGATE_OPENAPI_BASELINE=<file>` compares against another file. Objects are
//! compared by key (their order is not part of the document), arrays element by element.

use serde_json::Value;

use crate::helpers::spawn_app;

/// Every place where `served` differs from `baseline`, as JSON pointers.
fn differences(baseline: &Value, served: &Value, at: &str, out: &mut Vec<String>) {
    match (baseline, served) {
        (Value::Object(b), Value::Object(s)) => {
            for key in b.keys().chain(s.keys().filter(|k| !b.contains_key(*k))) {
                let here = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match (b.get(key), s.get(key)) {
                    (Some(b), Some(s)) => differences(b, s, &here, out),
                    (Some(_), None) => out.push(format!("{here}: only in the baseline")),
                    _ => out.push(format!("{here}: only in the served document")),
                }
            }
        }
        (Value::Array(b), Value::Array(s)) if b.len() == s.len() => {
            for (i, (b, s)) in b.iter().zip(s).enumerate() {
                differences(b, s, &format!("{at}/{i}"), out);
            }
        }
        (b, s) if b == s => {}
        (b, s) => out.push(format!("{at}: baseline {b}, served {s}")),
    }
}

#[test]
fn differences_are_found_wherever_they_are() {
    let baseline = serde_json::json!({"a": {"b": [1, {"c": "x"}], "d/e": 1}, "f": true});
    let same_other_order = serde_json::json!({"f": true, "a": {"d/e": 1, "b": [1, {"c": "x"}]}});
    let mut found = Vec::new();
    differences(&baseline, &same_other_order, "", &mut found);
    assert!(found.is_empty(), "{found:?}");
    let changed = serde_json::json!({"a": {"b": [1, {"c": "y"}], "g": 2}, "f": true});
    differences(&baseline, &changed, "", &mut found);
    assert_eq!(
        found,
        ["/a/b/1/c: baseline \"x\", served \"y\"", "/a/d~1e: only in the baseline", "/a/g: only in the served document"]
    );
}

#[tokio::test]
async fn the_served_document_is_the_baseline() {
    let saved = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/openapi.json"));
    let path = std::env::var_os("TOLLGATE_OPENAPI_BASELINE").map(std::path::PathBuf::from).unwrap_or(saved.clone());
    let app = spawn_app().await;
    let r = app.get("/openapi.json").await;
    assert_eq!(r.status(), 200);
    let served: Value = r.json().await.unwrap();
    if std::env::var("TOLLGATE_OPENAPI_UPDATE").is_ok_and(|v| v == "1") {
        std::fs::write(&saved, serde_json::to_string_pretty(&served).unwrap() + "\n").unwrap();
        return;
    }
    let baseline: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the baseline is readable")).expect("the baseline is JSON");
    let mut found = Vec::new();
    differences(&baseline, &served, "", &mut found);
    assert!(
        found.is_empty(),
        "the served document differs from {} (after a deliberate change: TOLLGATE_OPENAPI_UPDATE=1):\n{}",
        path.display(),
        found.join("\n")
    );
}
