//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{ObjectBuilder, RefOr, Type};
use utoipa::{Modify, OpenApi};

use crate::domain::FieldError;
use crate::http::error::Problem;
use crate::http::routes::{docs, health};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate",
        description = "A self-hosted payments backend: accounts, Stripe Checkout, a ledger of every verified Stripe event and exactly-once fulfilment. Errors are RFC 9457 problem details (`application/problem+json`); every response carries `X-Request-Id`.",
        license(name = "MIT"),
    ),
    paths(health::healthz, health::readyz, docs::openapi_json, docs::docs_page),
    components(schemas(Problem, FieldError, health::HealthOut, health::ReadyOut)),
    tags(
        (name = "health", description = "Liveness and readiness"),
        (name = "docs", description = "This document and a page that renders it"),
    ),
    modifiers(&RequestIdHeader),
)]
pub struct ApiDoc;

/// Documents the `X-Request-Id` header every response carries.
struct RequestIdHeader;

impl Modify for RequestIdHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let header = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String))
            .description(Some("The request id: the client's when it was sane (1–128 of A-Z a-z 0-9 - _ . :), else generated"))
            .build();
        for item in openapi.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten() {
                for response in op.responses.responses.values_mut() {
                    if let RefOr::T(r) = response {
                        r.headers.insert("X-Request-Id".to_owned(), header.clone());
                    }
                }
            }
        }
    }
}

/// The document as served, generated once.
pub fn document_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|_| "{}".to_owned())
}
