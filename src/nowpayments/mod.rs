//! Everything that knows NOWPayments' wire format: the canonical JSON its IPN signatures are
//! computed over, the IPN verifier, what an IPN's status means for an order, and the API client.
//! Orders, grants and the ledger never see these shapes; they get the same domain facts Stripe's
//! events produce.

pub mod canonical;
pub mod signature;
