//! One module per resource, each exposing `router()`.

pub mod docs;
pub mod health;

use axum::Router;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new().merge(health::router()).merge(docs::router())
}
