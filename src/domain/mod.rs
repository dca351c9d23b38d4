//! Domain rules: parsed values and the services that hold the rules. Knows nothing of HTTP or SQL.

use serde::Serialize;
use utoipa::ToSchema;

/// One invalid field of a request, reported in a 422 problem's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's path in the request body (`email`, `grant.amount`, or `body` for the whole).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

pub mod account;
pub mod auth;
pub mod catalog;
pub mod crypto;
pub mod jwt;
pub mod ledger;
pub mod orders;
pub mod password;
pub mod payments;
