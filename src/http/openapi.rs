//! The OpenAPI 3.1 document: what the whole API says about itself (info, tags, shared schemas),
//! the operations the routers collected from the handlers' `#[utoipa::path]`, and the modifiers
//! that then apply to every operation.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::{ObjectBuilder, RefOr, Type};
use utoipa::{Modify, OpenApi};

use crate::domain::FieldError;
use crate::http::error::Problem;
use crate::http::routes::health;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate",
        description = "A self-hosted payments backend: accounts, Stripe Checkout, a ledger of every verified Stripe event and exactly-once fulfilment. Errors are RFC 9457 problem details (`application/problem+json`); every response carries `X-Request-Id`.",
        license(name = "MIT"),
    ),
    components(schemas(Problem, FieldError, health::HealthOut, health::ReadyOut)),
    tags(
        (name = "auth", description = "Accounts: registration, browser sessions (cookie + CSRF), tokens for API clients"),
        (name = "me", description = "The caller's own account"),
        (name = "admin", description = "Administration (role admin)"),
        (name = "catalog", description = "What can be bought"),
        (name = "checkout", description = "Paying: Stripe Checkout or a PaymentIntent, and the resulting orders"),
        (name = "webhooks", description = "Deliveries from Stripe, verified and stored in the ledger"),
        (name = "health", description = "Liveness and readiness"),
        (name = "docs", description = "This document and a page that renders it"),
        (name = "licences", description = "Licences verifiable offline: the public keys, issuing, the revocation list"),
    ),
)]
pub struct ApiDoc;

/// The document for `operations` (what [`routes::router`](crate::http::routes::router) collected).
pub fn document(operations: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.merge(operations);
    // After the merge: they look at every operation and at schemas only operations name.
    let modifiers: [&dyn Modify; 4] = [&GlobalBudget, &RequestIdHeader, &SecuritySchemes, &ClosedGrant];
    for modifier in modifiers {
        modifier.modify(&mut document);
    }
    document
}

/// `Grant`'s variants refuse unknown fields (`deny_unknown_fields`), which utoipa states for
/// structs but not for the variants of a tagged enum; say it here so the schema is the truth.
struct ClosedGrant;

impl Modify for ClosedGrant {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        let Some(components) = openapi.components.as_mut() else { return };
        if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut("Grant") {
            for item in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = item {
                    object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
    }
}

/// The global per-client budget (`http/budget.rs`) can refuse every operation it applies to.
struct GlobalBudget;

impl Modify for GlobalBudget {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let response = ResponseBuilder::new()
            .description(
                "The client's budget (TOLLGATE_API_HOURLY_LIMIT an hour, TOLLGATE_API_DAILY_LIMIT a day) is spent; see Retry-After",
            )
            .content("application/problem+json", ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !crate::http::budget::budgeted(path) {
                continue;
            }
            for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete].into_iter().flatten() {
                op.responses.responses.entry("429".to_owned()).or_insert_with(|| RefOr::T(response.clone()));
            }
        }
    }
}

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

/// The ways to authenticate: a session cookie (browsers; state-changing requests also need
/// `X-CSRF-Token`), a bearer access token (API clients) and an API key (the merchant's servers).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-tollgate_session",
                "Set by /api/v1/auth/login (`tollgate_session` in development over http). State-changing requests also need X-CSRF-Token.",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from /api/v1/auth/token or /api/v1/auth/refresh"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tg_live_… / tg_test_…")
                    .description(Some(
                        "An API key for the merchant's servers (POST /api/v1/admin/api-keys), in the Authorization header only; it works only on the routes its scopes name",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as served.
pub fn document_json(operations: utoipa::openapi::OpenApi) -> String {
    document(operations).to_pretty_json().unwrap_or_else(|_| "{}".to_owned())
}
