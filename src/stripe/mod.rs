//! Everything that knows Stripe's wire format. So far: the webhook signature verifier and the
//! event envelope (the webhook route, ledger and client come with the payments work).

pub mod webhook;
