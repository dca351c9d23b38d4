//! Telling the outside world: the outbox's dispatcher (`dispatcher.rs`), which delivers the
//! messages the store wrote in the transaction of their fact, as signed webhooks to the merchant's
//! app (`webhook.rs`, Standard Webhooks; `ssrf.rs` keeps them off private addresses) or as email
//! (`email/`, the EMAIL part's transports and templates).

pub mod dispatcher;
pub mod email;
pub mod ssrf;
pub mod webhook;
