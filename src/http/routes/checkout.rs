//! Checkout and orders: starting a payment (hosted Checkout or a PaymentIntent for Elements), the
//! caller's orders (the success page reads one), and admin refunds.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::account::Role;
use crate::domain::catalog::Grant;
use crate::domain::orders::OrderStatus;
use crate::http::audit::audit;
use crate::http::auth::{AdminUser, CurrentUser, Meta};
use crate::http::error::{ApiError, ApiResult, Problem};
use crate::http::extract::{Json, Query};
use crate::http::idempotency::{idempotent, IdempotencyKeyHeader};
use crate::http::pagination::{non_empty, page, Limit};
use crate::http::responses::{
    AdminOnlyWithCsrf, BadListParameters, IdempotentCreate, PaymentsJsonBody, StartingPayment, Unauthenticated,
};
use crate::http::state::AppState;
use crate::store::payments::{OrderRow, RefundRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_checkout_session))
        .routes(routes!(create_payment_intent))
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(create_refund))
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutIn {
    #[schema(example = "pr_018f3a2b4c5d6e7f8a9b0c1d")]
    pub product_id: String,
    /// Default 1.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::domain::whole_number::option::deserialize")]
    pub quantity: Option<i64>,
}

/// `POST /api/v1/checkout/sessions`: a product, and who takes the payment.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutSessionIn {
    #[schema(example = "pr_018f3a2b4c5d6e7f8a9b0c1d")]
    pub product_id: String,
    /// Default 1.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::domain::whole_number::option::deserialize")]
    pub quantity: Option<i64>,
    /// `stripe` (default: Stripe Checkout, or the sandbox in development) or `nowpayments` (a
    /// crypto invoice; `checkout_url` is its payment page, `checkout_session_id` its invoice id).
    #[schema(pattern = "^(stripe|nowpayments)$")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutOut {
    #[schema(example = "ord_018f3a2b4c5d6e7f8a9b0c1d")]
    pub order_id: String,
    /// Send the buyer here.
    pub checkout_url: String,
    #[schema(example = "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY")]
    pub checkout_session_id: String,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct PaymentIntentOut {
    pub order_id: String,
    #[schema(example = "pi_1PgafyB7WZ01zgkWSjxsAJo3")]
    pub payment_intent_id: String,
    /// For Stripe Elements (`stripe.confirmPayment`) on the buyer's page.
    pub client_secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderOut {
    #[schema(example = "ord_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    pub user_id: String,
    pub product_id: String,
    /// The product version bought; later price changes do not touch this order.
    pub product_version: i64,
    pub quantity: i64,
    /// What the order costs in all, in the currency's minor unit.
    pub amount: i64,
    pub currency: String,
    /// What paying grants (already multiplied by the quantity).
    pub grant: Option<Grant>,
    pub status: OrderStatus,
    pub checkout_session_id: Option<String>,
    pub payment_intent_id: Option<String>,
    /// While the order is pending.
    pub checkout_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub amount_refunded: i64,
    /// True when the payment did not match the order (amount or currency): nothing is granted
    /// until someone looks.
    pub flagged: bool,
    pub flag_reason: Option<String>,
    /// Who takes the payment: `stripe` or `nowpayments`.
    pub provider: String,
    /// Credits a full refund or lost dispute could not claw back because they were already spent
    /// (0 otherwise, and again 0 once a won dispute restored the credits).
    pub credits_unrecoverable: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<OrderRow> for OrderOut {
    fn from(o: OrderRow) -> OrderOut {
        let status = o.status();
        OrderOut {
            grant: Grant::from_json(&o.grant_spec),
            checkout_url: o.checkout_url.filter(|_| status == OrderStatus::Pending),
            id: o.id,
            user_id: o.user_id,
            product_id: o.product_id,
            product_version: o.product_version,
            quantity: o.quantity,
            amount: o.amount,
            currency: o.currency,
            status,
            checkout_session_id: o.checkout_session_id,
            payment_intent_id: o.payment_intent_id,
            expires_at: o.expires_at,
            paid_at: o.paid_at,
            amount_refunded: o.amount_refunded,
            flagged: o.flag.is_some(),
            flag_reason: o.flag,
            provider: o.provider,
            credits_unrecoverable: o.credits_unrecoverable,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderList {
    pub data: Vec<OrderOut>,
    pub has_more: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderListParams {
    /// Admins only: another user's orders.
    #[serde(default, deserialize_with = "non_empty")]
    pub user_id: Option<String>,
    /// 1–100, default 20.
    #[serde(default)]
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Limit,
    /// The last order id of the previous page.
    #[serde(default, deserialize_with = "non_empty")]
    pub starting_after: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundIn {
    /// In the currency's minor unit; absent: everything not yet refunded.
    #[schema(minimum = 1, maximum = 99999999)]
    #[serde(default, deserialize_with = "crate::domain::whole_number::option::deserialize")]
    pub amount: Option<i64>,
    #[schema(pattern = "^(duplicate|fraudulent|requested_by_customer)$")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RefundOut {
    #[schema(example = "rf_018f3a2b4c5d6e7f8a9b0c1d")]
    pub id: String,
    pub order_id: String,
    /// Stripe's refund id.
    pub stripe_refund_id: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub reason: Option<String>,
    /// Stripe's refund status (`succeeded`, `pending`, …).
    pub status: String,
    pub created_at: DateTime<Utc>,
}

impl From<RefundRow> for RefundOut {
    fn from(r: RefundRow) -> RefundOut {
        RefundOut {
            id: r.id,
            order_id: r.order_id,
            stripe_refund_id: r.stripe_refund_id,
            amount: r.amount,
            currency: r.currency,
            reason: r.reason,
            status: r.status.as_str().to_owned(),
            created_at: r.created_at,
        }
    }
}

/// Creates a pending order and a Stripe Checkout Session for it (or, with `provider:
/// "nowpayments"`, a NOWPayments crypto invoice). The amount comes from the catalog; the client
/// names only the product, a quantity and the provider.
#[utoipa::path(post, path = "/api/v1/checkout/sessions", tag = "checkout", request_body = CheckoutSessionIn, security(("bearer" = []), ("session" = [])),
    params(IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The order and where to send the buyer", body = CheckoutOut),
        Unauthenticated, PaymentsJsonBody, StartingPayment, IdempotentCreate,
    ))]
pub async fn create_checkout_session(
    State(state): State<AppState>,
    current: CurrentUser,
    headers: HeaderMap,
    Json(input): Json<CheckoutSessionIn>,
) -> ApiResult<Response> {
    let crypto = match input.provider.as_deref() {
        None | Some("stripe") => false,
        Some("nowpayments") => true,
        Some(_) => {
            return Err(vec![crate::domain::FieldError::new("provider", "must be stripe or nowpayments")].into());
        }
    };
    idempotent(&state, &current.user.id, &headers, "checkout", &input, || async {
        let quantity = input.quantity.unwrap_or(1);
        let out = if crypto {
            let (order_id, invoice) = state.payments.start_crypto_checkout(&current.user, &input.product_id, quantity).await?;
            CheckoutOut { order_id, checkout_url: invoice.url, checkout_session_id: invoice.id, expires_at: None }
        } else {
            let (order_id, created) = state.payments.start_checkout(&current.user, &input.product_id, quantity).await?;
            CheckoutOut {
                order_id,
                checkout_url: created.url,
                checkout_session_id: created.id,
                expires_at: DateTime::from_timestamp(created.expires_at, 0),
            }
        };
        Ok((StatusCode::CREATED, out))
    })
    .await
}

/// Creates a pending order and a Stripe PaymentIntent for a custom page with Stripe Elements.
#[utoipa::path(post, path = "/api/v1/payment-intents", tag = "checkout", request_body = CheckoutIn, security(("bearer" = []), ("session" = [])),
    params(IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The order and the client secret", body = PaymentIntentOut),
        Unauthenticated, PaymentsJsonBody, StartingPayment, IdempotentCreate,
    ))]
pub async fn create_payment_intent(
    State(state): State<AppState>,
    current: CurrentUser,
    headers: HeaderMap,
    Json(input): Json<CheckoutIn>,
) -> ApiResult<Response> {
    idempotent(&state, &current.user.id, &headers, "payment-intent", &input, || async {
        let (order_id, created) =
            state.payments.start_payment_intent(&current.user, &input.product_id, input.quantity.unwrap_or(1)).await?;
        let out = PaymentIntentOut { order_id, payment_intent_id: created.id, client_secret: created.client_secret };
        Ok((StatusCode::CREATED, out))
    })
    .await
}

/// The caller's orders, newest first (admins: `?user_id=` for anyone's).
#[utoipa::path(get, path = "/api/v1/orders", tag = "checkout", params(OrderListParams), security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "A page of orders", body = OrderList),
        Unauthenticated, BadListParameters,
        (status = 403, description = "user_id given by a non-admin", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_orders(
    State(state): State<AppState>,
    current: CurrentUser,
    Query(list): Query<OrderListParams>,
) -> ApiResult<axum::Json<OrderList>> {
    let user_id = match list.user_id {
        Some(other) if other != current.user.id && current.user.role != Role::Admin => {
            return Err(ApiError::Forbidden("only admins may list another user's orders".to_owned()))
        }
        Some(other) => other,
        None => current.user.id.clone(),
    };
    let rows = state.payments.list_orders(Some(&user_id), list.limit.fetch(), list.starting_after.as_deref()).await?;
    let (rows, has_more) = page(rows, list.limit);
    Ok(axum::Json(OrderList { data: rows.into_iter().map(OrderOut::from).collect(), has_more }))
}

/// One order, for its owner or an admin. While it is pending this asks Stripe for the Checkout
/// Session and fulfils the order when it is paid (the success page), exactly once with the webhook.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "checkout", security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "An order id (`ord_…`)")),
    responses(
        (status = 200, description = "The order", body = OrderOut),
        Unauthenticated,
        (status = 404, description = "No such order (or another user's)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_order(
    State(state): State<AppState>,
    current: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<OrderOut>> {
    let order = state.payments.order_for(&current.user, &id).await?;
    Ok(axum::Json(order.into()))
}

/// Refunds a paid order through Stripe (in full when no amount is given). The order changes to
/// `partially_refunded` or `refunded` when Stripe's `charge.refunded` event arrives.
#[utoipa::path(post, path = "/api/v1/admin/orders/{id}/refunds", tag = "admin", request_body = RefundIn, security(("bearer" = []), ("session" = [])),
    params(("id" = String, Path, description = "An order id (`ord_…`)"),
           IdempotencyKeyHeader),
    responses(
        (status = 201, description = "The refund Stripe accepted", body = RefundOut),
        Unauthenticated, AdminOnlyWithCsrf, PaymentsJsonBody,
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not paid", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid amount or reason", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "Stripe failed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_refund(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Meta(meta): Meta,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(input): Json<RefundIn>,
) -> ApiResult<Response> {
    idempotent(&state, &admin.user.id, &headers, &format!("refund:{id}"), &input, || async {
        let key = crate::http::idempotency::idempotency_key(&headers)?;
        let refund = state.payments.refund(&admin.user, &id, input.amount, input.reason.clone(), key.as_deref()).await?;
        audit(
            &state,
            &meta,
            &admin.user.id,
            "order.refund",
            &id,
            serde_json::json!({"refund_id": refund.id, "amount": refund.amount}),
        )
        .await;
        Ok((StatusCode::CREATED, RefundOut::from(refund)))
    })
    .await
}
