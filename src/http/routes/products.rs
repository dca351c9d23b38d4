//! The catalog: `GET /api/v1/products` for anyone, `POST`/`PATCH /api/v1/admin/products` for admins.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::catalog::Grant;
use crate::domain::payments::{NewProduct, ProductPatch};
use crate::http::audit::audit;
use crate::http::auth::{AdminUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{Json, Query};
use crate::http::idempotency::{idempotent, IdempotencyKeyHeader};
use crate::http::pagination::{page, ListParams};
use crate::http::responses::{AdminOnlyWithCsrf, BadListParameters, IdempotentCreate, PaymentsJsonBody, Unauthenticated};
use crate::http::state::AppState;
use crate::store::payments::ProductRow;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_products)).routes(routes!(create_product)).routes(routes!(update_product))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductOut {
    #[schema(example = "pr_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub active: bool,
    /// Goes up by one with every change of price or grant; orders keep the version they bought.
    pub version: i64,
    /// In the currency's minor unit (1999 = 19.99).
    #[schema(example = 1999)]
    pub amount: i64,
    #[schema(example = "usd")]
    pub currency: String,
    pub stripe_price_id: Option<String>,
    pub grant: Grant,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProductOut {
    pub fn from_row(r: ProductRow) -> ApiResult<ProductOut> {
        let grant = Grant::from_json(&r.grant_spec).ok_or_else(|| anyhow::anyhow!("product {} has an unreadable grant", r.id))?;
        Ok(ProductOut {
            id: r.id,
            name: r.name,
            description: r.description,
            active: r.active,
            version: r.version,
            amount: r.amount,
            currency: r.currency,
            stripe_price_id: r.stripe_price_id,
            grant,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProductList {
    pub data: Vec<ProductOut>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductIn {
    /// Shown at Checkout; at least one visible character, no control characters.
    #[schema(
        example = "Pro, 30 days",
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u001f\\u007f-\\u009f\\s][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: String,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// In the currency's minor unit.
    #[schema(example = 1999, minimum = 1, maximum = 99999999)]
    #[serde(deserialize_with = "crate::domain::whole_number::deserialize")]
    pub amount: i64,
    #[schema(example = "usd", pattern = "^[a-z]{3}$")]
    pub currency: String,
    /// A Stripe Price to use at Checkout instead of an inline price.
    #[schema(example = "price_1Pgc71B7WZ01zgkW", pattern = "^price_[A-Za-z0-9_]+$", max_length = 255)]
    pub stripe_price_id: Option<String>,
    pub grant: Grant,
    /// Default true.
    pub active: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatchIn {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u001f\\u007f-\\u009f\\s][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub name: Option<String>,
    /// An empty string removes the description.
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    pub active: Option<bool>,
    /// A new price makes a new version.
    #[schema(minimum = 1, maximum = 99999999)]
    #[serde(default, deserialize_with = "crate::domain::whole_number::option::deserialize")]
    pub amount: Option<i64>,
    #[schema(pattern = "^[a-z]{3}$")]
    pub currency: Option<String>,
    /// An empty string removes it.
    #[schema(pattern = "^(price_[A-Za-z0-9_]+)?$", max_length = 255)]
    pub stripe_price_id: Option<String>,
    pub grant: Option<Grant>,
}

/// Active products, newest first.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog", params(ListParams),
    responses(
        (status = 200, description = "A page of active products", body = ProductList),
        BadListParameters,
    ))]
pub async fn list_products(State(state): State<AppState>, Query(list): Query<ListParams>) -> ApiResult<axum::Json<ProductList>> {
    let rows = state.store.list_products(true, list.limit.fetch(), list.starting_after.as_deref()).await?;
    let (rows, has_more) = page(rows, list.limit);
    let data = rows.into_iter().map(ProductOut::from_row).collect::<ApiResult<Vec<_>>>()?;
    Ok(axum::Json(ProductList { data, has_more }))
}

/// Adds a product to the catalog.
#[utoipa::path(post, path = "/api/v1/admin/products", tag = "admin", request_body = ProductIn, security(("bearer" = []), ("session" = [])),
    params(IdempotencyKeyHeader),
    responses(
        (status = 201, description = "Created", body = ProductOut),
        Unauthenticated, AdminOnlyWithCsrf, PaymentsJsonBody, IdempotentCreate,
    ))]
pub async fn create_product(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    headers: HeaderMap,
    Json(input): Json<ProductIn>,
) -> ApiResult<Response> {
    idempotent(&state, &admin.user.id, &headers, "product", &input, || async {
        let product = NewProduct {
            name: input.name.clone(),
            description: input.description.clone().filter(|d| !d.is_empty()),
            amount: input.amount,
            currency: input.currency.clone(),
            stripe_price_id: input.stripe_price_id.clone(),
            grant: input.grant.clone(),
            active: input.active.unwrap_or(true),
        };
        let row = state.payments.create_product(product).await?;
        let detail = serde_json::json!({"amount": row.amount, "currency": row.currency});
        audit(&state, &meta, &admin.user.id, "product.create", &row.id, detail).await;
        Ok((StatusCode::CREATED, ProductOut::from_row(row)?))
    })
    .await
}

/// Changes a product. A change of amount, currency, Stripe price or grant makes a new version;
/// orders already made keep what they bought.
#[utoipa::path(patch, path = "/api/v1/admin/products/{id}", tag = "admin", request_body = ProductPatchIn, security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "A product id (`pr_…`)")),
    responses(
        (status = 200, description = "Changed", body = ProductOut),
        Unauthenticated, AdminOnlyWithCsrf, PaymentsJsonBody,
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_product(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    Path(id): Path<String>,
    Json(input): Json<ProductPatchIn>,
) -> ApiResult<axum::Json<ProductOut>> {
    let patch = ProductPatch {
        name: input.name,
        description: input.description.map(|d| Some(d).filter(|d| !d.is_empty())),
        active: input.active,
        amount: input.amount,
        currency: input.currency,
        stripe_price_id: input.stripe_price_id.map(|p| Some(p).filter(|p| !p.is_empty())),
        grant: input.grant,
    };
    let row = state.payments.update_product(&id, patch).await.map_err(ApiError::from)?;
    audit(
        &state,
        &meta,
        &admin.user.id,
        "product.update",
        &row.id,
        serde_json::json!({"version": row.version, "active": row.active}),
    )
    .await;
    Ok(axum::Json(ProductOut::from_row(row)?))
}
