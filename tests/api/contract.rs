//! The served OpenAPI document against `../shared/API.md`, the contract users build against.

use std::collections::BTreeSet;

use crate::helpers::spawn_app_with;

const SECRET_KEY: &str = "sk_test_51ContractTestKeyThatMustNeverAppear0123456789";
const WEBHOOK_SECRET: &str = "whsec_ContractTestSecretThatMustNeverAppear0123";

/// Operations tollgate serves beyond API.md.
const ADDITIONS: &[(&str, &str)] = &[
    ("GET", "/api/v1/me/sessions"),
    ("DELETE", "/api/v1/me/sessions/{id}"),
    // A merchant's server reading a user's orders (key with `orders:read`).
    ("GET", "/api/v1/users/{id}/orders"),
    // Test a webhook endpoint: a `ping` message (issue 11 asks for one; API.md has no row).
    ("POST", "/api/v1/admin/webhook-endpoints/{id}/ping"),
    // Where admins see failed mail (issue 11: "visible to admins"; API.md has no row).
    ("GET", "/api/v1/admin/email-messages"),
    ("GET", "/api/v1/admin/email-messages/{id}"),
];

/// (METHOD, path) of every operation in API.md's tables.
fn contract_operations(api_md: &str) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for line in api_md.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&cells[1]) {
            continue;
        }
        for path in cells[2].split(',').map(str::trim) {
            // `/api/v1/users?email=` documents its query; the operation is the path.
            let path = path.split('?').next().unwrap_or(path);
            ops.insert((cells[1].to_owned(), path.to_owned()));
        }
    }
    ops
}

#[tokio::test]
async fn the_openapi_document_matches_api_md() {
    let api_md_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/API.md");
    let Ok(api_md) = std::fs::read_to_string(api_md_path) else {
        assert!(!crate::helpers::in_ci(), "../shared/API.md must be beside the repository in CI");
        crate::helpers::skip("the_openapi_document_matches_api_md", &format!("{api_md_path} not found"));
        return;
    };
    let contract = contract_operations(&api_md);
    assert!(contract.len() > 20, "API.md parsed: {contract:?}");

    // Secrets configured, so the last assertion below could catch one leaking into the document.
    let app = spawn_app_with(&[("STRIPE_SECRET_KEY", SECRET_KEY), ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)]).await;
    let r = app.get("/openapi.json").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let mut served = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            if item.get(method).is_some() {
                served.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    // Additions to API.md ("add, don't rename"); anything else served must be in API.md.
    let additions: BTreeSet<(String, String)> = ADDITIONS.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    let undocumented: Vec<_> = served.difference(&contract).filter(|op| !additions.contains(*op)).collect();
    assert!(undocumented.is_empty(), "served but not in API.md (renamed?): {undocumented:?}");
    for op in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("POST", "/api/v1/auth/register"),
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/auth/logout"),
        ("GET", "/api/v1/auth/csrf"),
        ("POST", "/api/v1/auth/token"),
        ("POST", "/api/v1/auth/refresh"),
        ("GET", "/api/v1/me"),
        ("POST", "/api/v1/me/password"),
        ("GET", "/api/v1/admin/users"),
        ("PATCH", "/api/v1/admin/users/{id}"),
        ("GET", "/api/v1/admin/audit"),
    ] {
        assert!(served.contains(&(op.0.to_owned(), op.1.to_owned())), "{op:?} is documented");
    }

    // Every documented operation is really routed (no 404/405 for a documented path).
    for (method, path) in &served {
        let concrete = path.replace("{id}", "x");
        let r = app.client.request(method.parse().unwrap(), app.url(&concrete)).send().await.unwrap();
        // A 404 for a made-up id is the handler answering; for a fixed path it means "not routed".
        let routed = r.status() != 405 && (r.status() != 404 || path.contains("{id}"));
        assert!(routed, "{method} {path} answers {}", r.status());
    }

    // The error shape is the one API.md describes.
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    for field in ["type", "title", "status", "detail", "request_id", "errors"] {
        assert!(problem.get(field).is_some(), "Problem.{field} documented");
    }
    let text = doc.to_string();
    assert!(!text.contains(SECRET_KEY) && !text.contains(WEBHOOK_SECRET), "no secrets in the document");
}
