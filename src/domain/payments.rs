//! The payments service: catalog management, starting a checkout (order first, then the
//! provider), the success-page path, refunds, and taking in verified events. The rules for what
//! an event does to an order are in `orders`; this is the orchestration around them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::Digest;

use super::account::{new_id, Role, User};
use super::catalog::{self, Grant};
use super::ledger::{EventPlan, EventStatus, Recorded};
use super::orders::{GrantKind, GrantState, OrderFlow, OrderStatus, RefundRefused, RefundStatus};
use super::FieldError;
use crate::config::PaymentsConfig;
use crate::nowpayments::ipn::{plan as ipn_plan, Payment};
use crate::nowpayments::{InvoiceCreated, InvoiceRequest, NowPayments};
use crate::ratelimit::{Decision, Quota, RateLimiter};
use crate::store::payments::{GrantRow, OrderRow, ProductRow, RefundPick, RefundRow, Reserved};
use crate::store::{EntitlementInputs, NewEvent, Store, StoreError};
use crate::stripe::events::{plan, session_fact};
use crate::stripe::webhook::Event;
use crate::stripe::{
    CheckoutCreated, CheckoutRequest, PaymentIntentCreated, PaymentIntentRequest, Provider, ProviderError, RefundRequest,
};

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("not found")]
    NotFound,
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("rate limited")]
    RateLimited { limit: u32, retry_after: Duration },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<StoreError> for PaymentError {
    fn from(e: StoreError) -> Self {
        PaymentError::Internal(e.into())
    }
}

impl From<Vec<FieldError>> for PaymentError {
    fn from(errors: Vec<FieldError>) -> Self {
        PaymentError::Validation(errors)
    }
}

/// A product as an admin describes it.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub name: String,
    pub description: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub stripe_price_id: Option<String>,
    pub grant: Grant,
    pub active: bool,
}

/// Changes to a product; absent fields stay. `stripe_price_id: Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ProductPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub active: Option<bool>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub stripe_price_id: Option<Option<String>>,
    pub grant: Option<Grant>,
}

/// What a user owns now.
#[derive(Debug, Clone)]
pub struct Entitlements {
    pub access: Vec<GrantRow>,
    pub credit_balance: i64,
}

/// How a `stripe sync` went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub seen: usize,
    pub stored: usize,
    pub already_had: usize,
}

/// Active access grants as the user holds them: per feature, each purchase's period follows the
/// one before (buying 30 days twice gives 60), computed when read so that revoking one purchase
/// moves the later ones up. Only what is current or still to come is returned.
pub fn effective_access(mut grants: Vec<GrantRow>, now: DateTime<Utc>) -> Vec<GrantRow> {
    grants.retain(|g| g.kind == GrantKind::Access && g.status == GrantState::Active);
    grants.sort_by(|a, b| (a.feature.as_deref(), a.starts_at, &a.id).cmp(&(b.feature.as_deref(), b.starts_at, &b.id)));
    let mut out = Vec::new();
    let mut feature: Option<String> = None;
    // Where the previous purchase of this feature ends (None inside a feature: forever).
    let mut end: Option<Option<DateTime<Utc>>> = None;
    for mut g in grants {
        if g.feature != feature {
            feature.clone_from(&g.feature);
            end = None;
        }
        let start = match end {
            Some(None) => continue, // forever already
            Some(Some(previous_end)) => previous_end.max(g.starts_at),
            None => g.starts_at,
        };
        let expires = g.expires_at.map(|e| start + (e - g.starts_at));
        end = Some(expires);
        g.starts_at = start;
        g.expires_at = expires;
        if expires.is_none_or(|e| e > now) {
            out.push(g);
        }
    }
    out
}

pub struct PaymentsService {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    limiter: Arc<dyn RateLimiter>,
    config: PaymentsConfig,
    key_live: bool,
    nowpayments: Option<NowPaymentsLink>,
}

/// NOWPayments, when enabled: its API (or the sandbox), the secret IPNs are verified with, and
/// where its IPNs are sent.
pub struct NowPaymentsLink {
    pub api: Arc<dyn NowPayments>,
    pub ipn_secret: secrecy::SecretString,
    pub ipn_callback_url: String,
    /// The same object as `api` when it is the development sandbox (its pages need it).
    pub sandbox: Option<Arc<crate::nowpayments::sandbox::NowPaymentsSandbox>>,
}

/// The ledger's and the orders' names for the providers.
pub const STRIPE: &str = "stripe";
pub const NOWPAYMENTS: &str = "nowpayments";

/// How many times a minute tollgate asks `GET /v1/payment/{id}` about one payment before a held
/// IPN that is re-sent (or replayed) is held again without asking.
pub const NP_CHECKS_PER_MINUTE: u32 = 3;

fn validate_product_fields(p: &NewProduct, errors: &mut Vec<FieldError>) {
    catalog::validate_name("name", &p.name, errors);
    if let Some(d) = &p.description {
        catalog::validate_description("description", d, errors);
    }
    catalog::validate_amount("amount", p.amount, errors);
    catalog::validate_currency("currency", &p.currency, errors);
    if let Some(price) = &p.stripe_price_id {
        catalog::validate_price_id("stripe_price_id", price, errors);
    }
    p.grant.validate("grant", errors);
}

impl PaymentsService {
    pub fn new(
        store: Arc<dyn Store>,
        provider: Arc<dyn Provider>,
        limiter: Arc<dyn RateLimiter>,
        config: PaymentsConfig,
        key_live: bool,
    ) -> PaymentsService {
        PaymentsService { store, provider, limiter, config, key_live, nowpayments: None }
    }

    /// Enables NOWPayments (crypto invoices) beside the Stripe provider.
    pub fn with_nowpayments(mut self, link: NowPaymentsLink) -> PaymentsService {
        self.nowpayments = Some(link);
        self
    }

    /// NOWPayments' development stand-in, when it is the one in use.
    pub fn nowpayments_sandbox(&self) -> Option<&Arc<crate::nowpayments::sandbox::NowPaymentsSandbox>> {
        self.nowpayments.as_ref().and_then(|n| n.sandbox.as_ref())
    }

    /// The secret NOWPayments' IPNs are verified with; `None` while NOWPayments is off.
    pub fn nowpayments_ipn_secret(&self) -> Option<&secrecy::SecretString> {
        self.nowpayments.as_ref().map(|n| &n.ipn_secret)
    }

    pub async fn create_product(&self, p: NewProduct) -> Result<ProductRow, PaymentError> {
        let mut errors = Vec::new();
        validate_product_fields(&p, &mut errors);
        if !errors.is_empty() {
            return Err(errors.into());
        }
        let now = Utc::now();
        let row = ProductRow {
            id: new_id("pr"),
            name: p.name.trim().to_owned(),
            description: p.description,
            active: p.active,
            version: 1,
            amount: p.amount,
            currency: p.currency,
            stripe_price_id: p.stripe_price_id,
            grant_spec: p.grant.to_json(),
            created_at: now,
            updated_at: now,
        };
        self.store.insert_product(&row).await?;
        Ok(row)
    }

    /// A change of amount, currency, Stripe price or grant makes a new version; orders keep the
    /// version (and the amount and grant) they were created with.
    pub async fn update_product(&self, id: &str, patch: ProductPatch) -> Result<ProductRow, PaymentError> {
        let current = self.store.product(id).await?.ok_or(PaymentError::NotFound)?;
        let grant = patch
            .grant
            .clone()
            .or_else(|| Grant::from_json(&current.grant_spec))
            .ok_or_else(|| anyhow::anyhow!("unreadable grant"))?;
        let merged = NewProduct {
            name: patch.name.clone().unwrap_or_else(|| current.name.clone()),
            description: patch.description.clone().unwrap_or_else(|| current.description.clone()),
            amount: patch.amount.unwrap_or(current.amount),
            currency: patch.currency.clone().unwrap_or_else(|| current.currency.clone()),
            stripe_price_id: patch.stripe_price_id.clone().unwrap_or_else(|| current.stripe_price_id.clone()),
            grant,
            active: patch.active.unwrap_or(current.active),
        };
        let mut errors = Vec::new();
        validate_product_fields(&merged, &mut errors);
        if !errors.is_empty() {
            return Err(errors.into());
        }
        let grant_spec = merged.grant.to_json();
        let new_version = merged.amount != current.amount
            || merged.currency != current.currency
            || merged.stripe_price_id != current.stripe_price_id
            || grant_spec != current.grant_spec;
        let row = ProductRow {
            id: current.id.clone(),
            name: merged.name.trim().to_owned(),
            description: merged.description,
            active: merged.active,
            version: if new_version { current.version + 1 } else { current.version },
            amount: merged.amount,
            currency: merged.currency,
            stripe_price_id: merged.stripe_price_id,
            grant_spec,
            created_at: current.created_at,
            updated_at: Utc::now(),
        };
        match self.store.update_product(&row, &current, new_version).await {
            Err(StoreError::Conflict) => {
                Err(PaymentError::Conflict("the product was changed at the same time; retry".to_owned()))
            }
            other => other.map(|()| row).map_err(Into::into),
        }
    }

    /// Creates a pending order for `product_id` and opens a Checkout Session for it; the order's id
    /// and the session. The amount is the catalog's; the client only names the product and a
    /// quantity. If the provider fails, the order stays pending with nothing that can pay it.
    pub async fn start_checkout(
        &self,
        user: &User,
        product_id: &str,
        quantity: i64,
    ) -> Result<(String, CheckoutCreated), PaymentError> {
        let (order, product) = self.new_order(user, product_id, quantity, OrderFlow::Checkout, STRIPE).await?;
        let created = self.open_checkout(&order, &product, user).await?;
        let expires_at = DateTime::from_timestamp(created.expires_at, 0);
        self.record_provider_ids(&order.id, Some(&created.id), None, Some(&created.url), expires_at).await?;
        Ok((order.id, created))
    }

    /// Like [`start_checkout`](Self::start_checkout), with a PaymentIntent for Stripe Elements.
    pub async fn start_payment_intent(
        &self,
        user: &User,
        product_id: &str,
        quantity: i64,
    ) -> Result<(String, PaymentIntentCreated), PaymentError> {
        let (order, product) = self.new_order(user, product_id, quantity, OrderFlow::PaymentIntent, STRIPE).await?;
        let created = self.open_intent(&order, &product).await?;
        self.record_provider_ids(&order.id, None, Some(&created.id), None, None).await?;
        Ok((order.id, created))
    }

    /// Like [`start_checkout`](Self::start_checkout), paid in crypto through a NOWPayments
    /// invoice (whose id is the order's `checkout_session_id`). Refused (422 on `provider`) while
    /// NOWPayments is off. If NOWPayments fails, the order stays pending with nothing that can pay it.
    pub async fn start_crypto_checkout(
        &self,
        user: &User,
        product_id: &str,
        quantity: i64,
    ) -> Result<(String, InvoiceCreated), PaymentError> {
        let Some(np) = &self.nowpayments else {
            return Err(vec![FieldError::new(
                "provider",
                "nowpayments is not enabled on this server (NOWPAYMENTS_API_KEY and NOWPAYMENTS_IPN_SECRET)",
            )]
            .into());
        };
        let (order, product) = self.new_order(user, product_id, quantity, OrderFlow::Checkout, NOWPAYMENTS).await?;
        let fill = |template: &str| template.replace("{ORDER_ID}", &order.id);
        let request = InvoiceRequest {
            order_id: order.id.clone(),
            amount: order.amount,
            currency: order.currency.clone(),
            description: format!("{} x{}", product.name, order.quantity),
            ipn_callback_url: np.ipn_callback_url.clone(),
            success_url: fill(&self.config.success_url),
            cancel_url: fill(&self.config.cancel_url),
        };
        let created = np.api.create_invoice(&request).await?;
        self.record_provider_ids(&order.id, Some(&created.id), None, Some(&created.url), None).await?;
        Ok((order.id, created))
    }

    /// Validates the request, counts it against the user's checkout limit, and stores the pending
    /// order with the catalog's amount and grant.
    async fn new_order(
        &self,
        user: &User,
        product_id: &str,
        quantity: i64,
        flow: OrderFlow,
        provider: &str,
    ) -> Result<(OrderRow, ProductRow), PaymentError> {
        let mut errors = Vec::new();
        catalog::validate_quantity("quantity", quantity, &mut errors);
        let product = self.store.product(product_id).await?.filter(|p| p.active);
        if product.is_none() {
            errors.push(FieldError::new("product_id", "no such active product"));
        }
        let total = product.as_ref().and_then(|p| catalog::total(p.amount, quantity));
        if product.is_some() && total.is_none() {
            errors.push(FieldError::new("quantity", "the total would exceed the largest amount accepted"));
        }
        let (Some(product), Some(total), true) = (product, total, errors.is_empty()) else {
            return Err(errors.into());
        };
        let grant = Grant::from_json(&product.grant_spec)
            .ok_or_else(|| anyhow::anyhow!("product {} has an unreadable grant", product.id))?
            .times(quantity);
        let mut too_much = Vec::new();
        grant.validate("grant", &mut too_much);
        if !too_much.is_empty() {
            return Err(
                vec![FieldError::new("quantity", "this many would grant more than one order may (credits or days)")].into()
            );
        }
        let quota = Quota { limit: self.config.checkout_limit, period: Duration::from_secs(60) };
        if let Decision::Limited { limit, retry_after } = self.limiter.hit(&format!("checkout:{}", user.id), quota).await {
            return Err(PaymentError::RateLimited { limit, retry_after });
        }
        let now = Utc::now();
        let order = OrderRow {
            id: new_id("ord"),
            user_id: user.id.clone(),
            product_id: product.id.clone(),
            product_version: product.version,
            quantity,
            amount: total,
            currency: product.currency.clone(),
            grant_spec: grant.to_json(),
            flow,
            status: OrderStatus::Pending,
            checkout_session_id: None,
            payment_intent_id: None,
            charge_id: None,
            checkout_url: None,
            expires_at: None,
            paid_at: None,
            processing: false,
            failed: false,
            expired: false,
            canceled: false,
            amount_refunded: 0,
            dispute: None,
            flag: None,
            credits_unrecoverable: 0,
            created_at: now,
            updated_at: now,
            provider: provider.to_owned(),
        };
        self.store.insert_order(&order).await?;
        Ok((order, product))
    }

    async fn record_provider_ids(
        &self,
        order_id: &str,
        session: Option<&str>,
        intent: Option<&str>,
        url: Option<&str>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), PaymentError> {
        match self.store.set_order_provider_ids(order_id, session, intent, url, expires_at, Utc::now()).await {
            Err(StoreError::Conflict) => Err(anyhow::anyhow!("the provider returned an id another order already holds").into()),
            other => other.map_err(Into::into),
        }
    }

    async fn open_checkout(&self, order: &OrderRow, product: &ProductRow, user: &User) -> Result<CheckoutCreated, ProviderError> {
        let fill = |template: &str| template.replace("{ORDER_ID}", &order.id);
        let ttl = chrono::Duration::from_std(self.config.checkout_ttl).unwrap_or(chrono::Duration::hours(1));
        let request = CheckoutRequest {
            order_id: order.id.clone(),
            product_name: product.name.clone(),
            unit_amount: product.amount,
            currency: product.currency.clone(),
            quantity: order.quantity,
            stripe_price_id: product.stripe_price_id.clone(),
            customer_email: Some(user.email.clone()),
            success_url: fill(&self.config.success_url),
            cancel_url: fill(&self.config.cancel_url),
            expires_at: (order.created_at + ttl).timestamp(),
        };
        self.provider.create_checkout_session(&request).await
    }

    async fn open_intent(&self, order: &OrderRow, product: &ProductRow) -> Result<PaymentIntentCreated, ProviderError> {
        let request = PaymentIntentRequest {
            order_id: order.id.clone(),
            amount: order.amount,
            currency: order.currency.clone(),
            description: format!("{} x{}", product.name, order.quantity),
        };
        self.provider.create_payment_intent(&request).await
    }

    /// The order, for its owner or an admin (anyone else: not found). While a Checkout order is
    /// pending this asks the provider for the session and applies what it says, through the same
    /// path as the webhook: whichever comes first fulfils, the other finds it done.
    pub async fn order_for(&self, viewer: &User, id: &str) -> Result<OrderRow, PaymentError> {
        let order = self.store.order(id).await?.ok_or(PaymentError::NotFound)?;
        if order.user_id != viewer.id && viewer.role != Role::Admin {
            return Err(PaymentError::NotFound);
        }
        // A declined card leaves a Checkout order open; `failed` here is an async failure, which
        // a later look at the session cannot undo, but asking costs nothing wrong.
        let open = matches!(order.status(), OrderStatus::Pending | OrderStatus::Processing | OrderStatus::Failed);
        // A NOWPayments order's session id is its invoice: its IPNs (and `nowpayments sync`) move it.
        let Some(session_id) = order.checkout_session_id.clone().filter(|_| open && order.provider == STRIPE) else {
            return Ok(order);
        };
        // Each look is a call to Stripe, whose rate limit checkout and refunds share: bounded per
        // viewer; over the bound the page shows what the webhook has told us.
        let quota = Quota { limit: 30, period: Duration::from_secs(60) };
        if !self.limiter.hit(&format!("order-refresh:{}", viewer.id), quota).await.is_allowed() {
            return Ok(order);
        }
        match self.provider.retrieve_checkout_session(&session_id).await {
            Ok(session) => {
                if let Some((mut r, fact)) = session_fact(&session) {
                    // The session must be this order's: its own id, whatever its metadata says.
                    r.order_id = Some(order.id.clone());
                    self.store.apply_fact(&r, &fact, Utc::now()).await?;
                    return Ok(self.store.order(id).await?.unwrap_or(order));
                }
                Ok(order)
            }
            Err(e) => {
                // The webhook will still come; the page shows what we know.
                tracing::warn!(order_id = %order.id, error = %e, "cannot refresh the order from the provider");
                Ok(order)
            }
        }
    }

    pub async fn list_orders(
        &self,
        user_id: Option<&str>,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<OrderRow>, PaymentError> {
        Ok(self.store.list_orders(user_id, limit, after).await?)
    }

    /// What the user owns now, read from the database: for the merchant's servers (API keys),
    /// which are promised that a refund, a dispute or a grant shows on their next call.
    pub async fn entitlements(&self, user_id: &str) -> Result<Entitlements, PaymentError> {
        let inputs = self.entitlement_inputs(user_id).await?;
        Ok(Entitlements { access: effective_access(inputs.active, Utc::now()), credit_balance: inputs.credit_balance })
    }

    /// As [`Self::entitlements`], through the read view (`store/view.rs`), for the user's own
    /// `GET /me/entitlements`: its inputs (active grants, balance) are held; effective access is
    /// computed with the time of this read, so expiry is exact.
    pub async fn viewed_entitlements(&self, user_id: &str) -> Result<Entitlements, PaymentError> {
        let view = self.store.view();
        let inputs = match view.entitlements(user_id) {
            Some(inputs) => inputs,
            None => {
                let ticket = view.ticket(user_id);
                let inputs = std::sync::Arc::new(self.entitlement_inputs(user_id).await?);
                view.put_entitlements(&ticket, user_id, &inputs);
                inputs
            }
        };
        Ok(Entitlements { access: effective_access(inputs.active.clone(), Utc::now()), credit_balance: inputs.credit_balance })
    }

    async fn entitlement_inputs(&self, user_id: &str) -> Result<EntitlementInputs, PaymentError> {
        let grants = self.store.grants_for_user(user_id).await?;
        let active: Vec<GrantRow> = grants.into_iter().filter(|g| g.status == GrantState::Active).collect();
        // The ledger's balance (store/credits.rs), not a sum of grants: debits and claw-backs count.
        let credit_balance = self.store.credit_balance(user_id).await?;
        Ok(EntitlementInputs { active, credit_balance })
    }

    /// What a licence may carry: the user's effective access (as [`Self::entitlements`] shows
    /// it) and the ids of every active access grant it was computed from, ended ones included: an
    /// earlier purchase that is refunded or disputed moves every later period of its feature, so a
    /// licence depends on all of them.
    pub async fn licensable_access(&self, user_id: &str) -> Result<(Vec<GrantRow>, Vec<String>), PaymentError> {
        let grants = self.store.grants_for_user(user_id).await?;
        let active: Vec<GrantRow> =
            grants.into_iter().filter(|g| g.status == GrantState::Active && g.kind == GrantKind::Access).collect();
        let ids = active.iter().map(|g| g.id.clone()).collect();
        Ok((effective_access(active, Utc::now()), ids))
    }

    /// Asks the provider for a refund of a paid order (the whole remaining amount when `amount`
    /// is None). The order itself changes when the provider's `charge.refunded` event arrives.
    /// With the caller's Idempotency-Key the refund's id, and so the key Stripe sees, is derived
    /// from it: a retry after a timeout can never refund twice. Refunds of one order are decided
    /// under its lock; one whose outcome is unknown (a timeout) still counts against what is left.
    pub async fn refund(
        &self,
        admin: &User,
        order_id: &str,
        amount: Option<i64>,
        reason: Option<String>,
        idempotency_key: Option<&str>,
    ) -> Result<RefundRow, PaymentError> {
        if self.store.order(order_id).await?.is_some_and(|o| o.provider != STRIPE) {
            return Err(PaymentError::Conflict(
                "a NOWPayments order is refunded from the NOWPayments dashboard; its refunded IPN then revokes the grant"
                    .to_owned(),
            ));
        }
        let mut errors = Vec::new();
        if let Some(r) = &reason {
            if !matches!(r.as_str(), "duplicate" | "fraudulent" | "requested_by_customer") {
                errors.push(FieldError::new("reason", "must be duplicate, fraudulent or requested_by_customer"));
            }
        }
        if !errors.is_empty() {
            return Err(errors.into());
        }
        let (admin_id, key, wanted, why) = (admin.id.clone(), idempotency_key.map(str::to_owned), amount, reason.clone());
        let decide = move |order: &OrderRow, refunds: &[RefundRow]| -> Result<RefundPick, RefundRefused> {
            // The refund's id, and so the Idempotency-Key Stripe sees, is derived from the request:
            // from the caller's key, or else from what is asked and how many refunds of this order
            // have settled, so repeating a request whose outcome is unknown repeats the same refund.
            let settled = refunds.iter().filter(|r| r.status.settled()).count();
            let basis = match &key {
                Some(k) => format!("key\n{k}"),
                None => format!("request\n{wanted:?}\n{why:?}\n{settled}"),
            };
            let digest = sha2::Sha256::digest(format!("{}\n{admin_id}\n{basis}", order.id).as_bytes());
            let id = format!("rf_{}", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>());
            // Without a key, the same refund asked again within a minute by the same admin is a
            // double click, not a second refund (a deliberate one within the minute needs a key).
            let double_click = key.is_none().then(|| {
                refunds.iter().find(|r| {
                    r.requested_by == admin_id
                        && r.reason == why
                        && wanted.is_some_and(|a| a == r.amount)
                        && r.status != RefundStatus::Failed
                        && Utc::now() - r.created_at < chrono::Duration::seconds(60)
                })
            });
            if let Some(Some(recent)) = double_click {
                return Ok(RefundPick::Existing(recent.clone()));
            }
            if let Some(existing) = refunds.iter().find(|r| r.id == id) {
                if wanted.is_some_and(|a| a != existing.amount) || why != existing.reason {
                    let message = "was already used for a refund of another amount or reason; use a new key";
                    return Err(RefundRefused::Invalid(vec![FieldError::new("Idempotency-Key", message)]));
                }
                return Ok(RefundPick::Existing(existing.clone()));
            }
            if !matches!(order.status(), OrderStatus::Paid | OrderStatus::PartiallyRefunded) {
                return Err(RefundRefused::Conflict(format!("a {} order cannot be refunded", order.status().as_str())));
            }
            if order.payment_intent_id.is_none() {
                return Err(RefundRefused::Conflict("the order has no payment to refund yet".to_owned()));
            }
            let asked: i64 = refunds.iter().filter(|r| r.status.counts()).map(|r| r.amount).sum();
            let remaining = order.amount - order.amount_refunded.max(asked);
            let amount = wanted.unwrap_or(remaining);
            if remaining < 1 {
                return Err(RefundRefused::Invalid(vec![FieldError::new("amount", "nothing is left to refund")]));
            }
            if !(1..=remaining).contains(&amount) {
                let message = format!("must be 1-{remaining} (what is left to refund)");
                return Err(RefundRefused::Invalid(vec![FieldError::new("amount", message)]));
            }
            Ok(RefundPick::New(RefundRow {
                id,
                order_id: order.id.clone(),
                stripe_refund_id: None,
                amount,
                currency: order.currency.clone(),
                reason: why.clone(),
                status: RefundStatus::Requested,
                requested_by: admin_id.clone(),
                created_at: Utc::now(),
            }))
        };
        let mut row = match self.store.reserve_refund(order_id, &decide).await? {
            Reserved::NoOrder => return Err(PaymentError::NotFound),
            Reserved::Refused(RefundRefused::Invalid(errors)) => return Err(PaymentError::Validation(errors)),
            Reserved::Refused(RefundRefused::Conflict(why)) => return Err(PaymentError::Conflict(why)),
            Reserved::Existing(row) if row.stripe_refund_id.is_some() && row.status != RefundStatus::Failed => return Ok(row),
            Reserved::Existing(row)
                if row.status == RefundStatus::Requested && Utc::now() - row.created_at < chrono::Duration::seconds(60) =>
            {
                return Err(PaymentError::Conflict("this refund is being made right now; retry in a moment".to_owned()));
            }
            Reserved::Existing(row) | Reserved::New(row) => row,
        };
        let order = self.store.order(order_id).await?.ok_or(PaymentError::NotFound)?;
        let Some(payment_intent_id) = order.payment_intent_id.clone() else {
            return Err(PaymentError::Conflict("the order has no payment to refund yet".to_owned()));
        };
        let request = RefundRequest {
            refund_id: row.id.clone(),
            order_id: order.id.clone(),
            payment_intent_id,
            amount: Some(row.amount),
            reason,
        };
        match self.provider.create_refund(&request).await {
            Ok(created) => {
                self.store.set_refund_result(&row.id, Some(&created.id), created.status).await?;
                row.stripe_refund_id = Some(created.id);
                row.status = created.status;
                Ok(row)
            }
            Err(e) => {
                // Refused outright (4xx): nothing happened. Otherwise Stripe may have made it:
                // `unknown` keeps counting against what is left until an event or a retry says.
                // 409 and idempotency errors mean another request with the key is in flight or differs.
                let definite = matches!(&e, ProviderError::Api { status, kind, .. }
                    if (400..500).contains(status) && !matches!(status, 409 | 429) && kind != "idempotency_error");
                let status = if definite { RefundStatus::Failed } else { RefundStatus::Unknown };
                self.store.set_refund_result(&row.id, None, status).await?;
                Err(e.into())
            }
        }
    }

    /// Stores a verified event and applies it, in one transaction. When applying fails the event
    /// is still kept (status `failed`) and the error returned, so the caller answers 500 and
    /// Stripe's retry processes it again.
    pub async fn ingest(&self, event: &Event, payload: &[u8]) -> Result<Recorded, PaymentError> {
        let new = NewEvent {
            event_id: event.id.clone(),
            kind: event.kind.clone(),
            livemode: event.livemode,
            api_version: event.api_version.clone(),
            created: event.created,
            payload: payload.to_vec(),
            provider: "stripe",
        };
        let plan = plan(event, self.key_live);
        self.record(&new, &plan).await
    }

    /// Stores `new` and carries out `plan` in one transaction; on failure keeps it as `failed`.
    async fn record(&self, new: &NewEvent, plan: &EventPlan) -> Result<Recorded, PaymentError> {
        let event = new;
        match self.store.record_event(new, plan, Utc::now()).await {
            Ok(recorded) => Ok(recorded),
            // Nothing was stored, and trying to record that would only wait on the database again
            // (unreachable: 503) or write to a database that just faulted (a full disk, an I/O
            // error, a lost connection: 500; with group commit, one such write per event of the
            // batch). The provider retries either way.
            Err(e) if e.is_unavailable() || e.is_fault() => Err(e.into()),
            Err(e) => {
                let detail = format!("processing failed: {e}");
                if let Err(mark) = self.store.mark_event_failed(new, &detail, Utc::now()).await {
                    tracing::error!(event_id = %event.event_id, error = %mark, "cannot record the failure either; the provider will retry");
                }
                Err(anyhow::Error::from(e).context(format!("processing event {} failed", event.event_id)).into())
            }
        }
    }

    /// What a NOWPayments payment (a verified IPN, or the API's own answer) means: a `finished`
    /// one is first confirmed with `GET /v1/payment/{id}` unless `confirmed` already is the API's
    /// answer.
    ///
    /// Every question about a payment counts against [`NP_CHECKS_PER_MINUTE`] (per payment id);
    /// a `recheck` (the IPN was held before: a re-sent one, a replay) over it is held again
    /// without asking, so a payment NOWPayments keeps re-sending costs at most that many
    /// `GET /v1/payment` a minute. First deliveries are never refused for it (concurrent
    /// deliveries of one new IPN all get their answer).
    async fn plan_payment(&self, payment: &Payment, confirmed: Option<Payment>, recheck: bool) -> EventPlan {
        let answer = match (&self.nowpayments, confirmed) {
            (_, Some(api)) => Some(Ok(api)),
            (_, None) if !payment.needs_confirmation() => None,
            (None, None) => Some(Err("NOWPayments is not enabled".to_owned())),
            (Some(np), None) => Some(match self.may_check(&payment.payment_id, recheck).await {
                Err(retry_after) => Err(format!(
                    "payment {} was already checked {NP_CHECKS_PER_MINUTE} times in the last minute; not asked again for {}s",
                    payment.payment_id,
                    retry_after.as_secs().max(1)
                )),
                Ok(()) => match np.api.payment(&payment.payment_id).await {
                    Ok(bytes) => Payment::parse(&bytes).map_err(|e| format!("unreadable answer: {e}")),
                    Err(e) => Err(e.to_string()),
                },
            }),
        };
        ipn_plan(payment, answer)
    }

    /// Counts a `GET /v1/payment` about `payment_id`; `Err(retry_after)` when it is a `recheck`
    /// over the per-payment quota.
    async fn may_check(&self, payment_id: &str, recheck: bool) -> Result<(), std::time::Duration> {
        let quota = Quota { limit: NP_CHECKS_PER_MINUTE, period: std::time::Duration::from_secs(60) };
        match self.limiter.hit(&format!("nowpayments-check:{payment_id}"), quota).await {
            Decision::Limited { retry_after, .. } if recheck => Err(retry_after),
            _ => Ok(()),
        }
    }

    /// Stores a verified NOWPayments IPN (the raw bytes as received) in the ledger, deduplicated
    /// by (payment id, status, updated_at), and applies it to its order in the same transaction.
    /// `confirmed`: the API's answer about the payment, when it is the source (a sync).
    pub async fn ingest_ipn(
        &self,
        payment: &Payment,
        payload: &[u8],
        confirmed: Option<Payment>,
    ) -> Result<Recorded, PaymentError> {
        let live = self.nowpayments.as_ref().is_some_and(|n| n.api.live());
        let new = NewEvent {
            event_id: payment.event_id(),
            kind: payment.kind(),
            livemode: live,
            api_version: None,
            created: payment.created(Utc::now().timestamp()),
            payload: payload.to_vec(),
            provider: NOWPAYMENTS,
        };
        // A redelivery of what is already done costs no call to the API.
        let held_before = match self.store.event(&new.event_id).await? {
            Some((row, _)) if !row.status.needs_processing() => return Ok(Recorded::Duplicate { status: row.status }),
            Some(_) => true,
            None => false,
        };
        let plan = self.plan_payment(payment, confirmed, held_before).await;
        self.record(&new, &plan).await
    }

    /// Re-reads, with `GET /v1/payment/{id}`, every NOWPayments payment the ledger has heard of
    /// since `since` whose order is still open (pending or processing), and stores and applies
    /// what the API says (NOWPayments has no events API to page through). An IPN that never
    /// arrived at all leaves no payment id to ask about.
    pub async fn sync_nowpayments(&self, since: DateTime<Utc>) -> Result<SyncReport, PaymentError> {
        let Some(np) = &self.nowpayments else {
            return Err(PaymentError::Conflict("NOWPayments is not enabled".to_owned()));
        };
        let mut report = SyncReport::default();
        let mut seen = std::collections::BTreeSet::new();
        let mut after: Option<String> = None;
        'pages: loop {
            let rows = self.store.list_provider_events(Some(NOWPAYMENTS), None, None, 100, after.as_deref()).await?;
            for row in &rows {
                if row.received_at < since {
                    break 'pages;
                }
                let Ok(ipn) = Payment::parse(&row.payload) else { continue };
                if !seen.insert(ipn.payment_id.clone()) {
                    continue;
                }
                let open = match ipn.order_id.as_deref() {
                    Some(id) => self.store.order(id).await?.is_some_and(|o| {
                        o.provider == NOWPAYMENTS && matches!(o.status(), OrderStatus::Pending | OrderStatus::Processing)
                    }),
                    None => false,
                };
                if !open {
                    continue;
                }
                report.seen += 1;
                let bytes = np.api.payment(&ipn.payment_id).await?;
                let Ok(current) = Payment::parse(&bytes) else {
                    tracing::warn!(payment_id = %ipn.payment_id, "nowpayments sync: unreadable payment; skipped");
                    continue;
                };
                match self.ingest_ipn(&current, &bytes, Some(current.clone())).await? {
                    Recorded::Stored { .. } => report.stored += 1,
                    Recorded::Duplicate { .. } => report.already_had += 1,
                }
            }
            match rows.last() {
                Some(last) if rows.len() == 100 => after = Some(last.event_id.clone()),
                _ => break,
            }
        }
        Ok(report)
    }

    /// Processes a stored event again (idempotent: facts only accumulate, the grant is unique).
    pub async fn replay(&self, event_id: &str, who: &str) -> Result<(EventStatus, String), PaymentError> {
        let (row, _) = self.store.event(event_id).await?.ok_or(PaymentError::NotFound)?;
        let plan = if row.provider == NOWPAYMENTS {
            match Payment::parse(&row.payload) {
                Ok(payment) => self.plan_payment(&payment, None, true).await,
                Err(_) => EventPlan::Ignore("the stored payload is not a NOWPayments payment".to_owned()),
            }
        } else {
            match Event::parse(&row.payload) {
                Some(event) => plan(&event, self.key_live),
                None => EventPlan::Ignore("the stored payload is not an event".to_owned()),
            }
        };
        self.store.replay_event(event_id, &plan, &format!("replayed by {who}"), Utc::now()).await?.ok_or(PaymentError::NotFound)
    }

    /// Pages through the provider's events since `since` and stores and applies the ones the
    /// ledger is missing; `progress` is told after each page.
    pub async fn sync(&self, since: DateTime<Utc>, mut progress: impl FnMut(&SyncReport)) -> Result<SyncReport, PaymentError> {
        let mut report = SyncReport::default();
        let mut after: Option<String> = None;
        loop {
            let page = self.provider.list_events(since.timestamp(), after.as_deref()).await?;
            for (id, payload) in &page.events {
                report.seen += 1;
                let Some(event) = Event::parse(payload) else {
                    tracing::warn!(event_id = %id, "stripe sync: not an event; skipped");
                    continue;
                };
                match self.ingest(&event, payload).await? {
                    Recorded::Stored { .. } => report.stored += 1,
                    Recorded::Duplicate { .. } => report.already_had += 1,
                }
            }
            progress(&report);
            match page.events.last() {
                Some((last, _)) if page.has_more => after = Some(last.clone()),
                _ => break,
            }
        }
        Ok(report)
    }
}
