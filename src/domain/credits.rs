//! Credits as a ledger: every change of a balance is a movement with its reason and the balance
//! after it. This file holds the rules (what a debit or an adjustment may ask for, and how much a
//! grant's change of state claws back or restores); `store/credits.rs` writes them atomically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::orders::GrantState;
use super::FieldError;

/// The largest amount one debit or adjustment may move.
pub const MAX_AMOUNT: i64 = 1_000_000_000;
/// Stripe's metadata limits.
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
pub const MAX_REASON_CHARS: usize = 200;

/// What moved a balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CreditKind {
    /// Credits bought by an order.
    Grant,
    /// Spent by the merchant's server.
    Debit,
    /// Taken back (unspent part) because the order was refunded or disputed.
    Clawback,
    /// Given back when a dispute was won.
    Restore,
    /// Changed by an admin.
    Adjustment,
}

impl CreditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CreditKind::Grant => "grant",
            CreditKind::Debit => "debit",
            CreditKind::Clawback => "clawback",
            CreditKind::Restore => "restore",
            CreditKind::Adjustment => "adjustment",
        }
    }

    pub fn parse(s: &str) -> Option<CreditKind> {
        [CreditKind::Grant, CreditKind::Debit, CreditKind::Clawback, CreditKind::Restore, CreditKind::Adjustment]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Free-form string pairs a merchant attaches to a debit.
pub type Metadata = BTreeMap<String, String>;

fn validate_reason(reason: &str, errors: &mut Vec<FieldError>) {
    let n = reason.chars().count();
    if reason.trim().is_empty() || n > MAX_REASON_CHARS {
        errors.push(FieldError::new("reason", format!("must be 1-{MAX_REASON_CHARS} characters, not blank")));
    } else if reason.chars().any(char::is_control) {
        errors.push(FieldError::new("reason", "must not contain control characters"));
    }
}

fn validate_metadata(metadata: &Metadata, errors: &mut Vec<FieldError>) {
    if metadata.len() > MAX_METADATA_KEYS {
        errors.push(FieldError::new("metadata", format!("at most {MAX_METADATA_KEYS} keys")));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.chars().count() > MAX_METADATA_KEY_CHARS {
            errors.push(FieldError::new("metadata", format!("keys must be 1-{MAX_METADATA_KEY_CHARS} characters")));
            return;
        }
        if v.chars().count() > MAX_METADATA_VALUE_CHARS {
            errors.push(FieldError::new(format!("metadata.{k}"), format!("at most {MAX_METADATA_VALUE_CHARS} characters")));
            return;
        }
    }
}

/// A debit the merchant asked for, checked: `amount` in 1..=MAX_AMOUNT, a reason, metadata
/// within Stripe's limits.
pub fn validate_debit(amount: i64, reason: &str, metadata: Option<&Metadata>) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if !(1..=MAX_AMOUNT).contains(&amount) {
        errors.push(FieldError::new("amount", format!("must be a whole number from 1 to {MAX_AMOUNT}")));
    }
    validate_reason(reason, &mut errors);
    if let Some(m) = metadata {
        validate_metadata(m, &mut errors);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// An admin adjustment, checked: a non-zero amount of at most MAX_AMOUNT either way, a reason.
pub fn validate_adjustment(amount: i64, reason: &str) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    if amount == 0 || amount.unsigned_abs() > MAX_AMOUNT as u64 {
        errors.push(FieldError::new("amount", format!("must be a non-zero whole number from -{MAX_AMOUNT} to {MAX_AMOUNT}")));
    }
    validate_reason(reason, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// What identifies a debit request for its Idempotency-Key: the same key with another amount,
/// reason or metadata is a different request (422), not a replay.
pub fn debit_request_hash(amount: i64, reason: &str, metadata: Option<&Metadata>) -> String {
    let canonical = serde_json::json!({"amount": amount, "reason": reason, "metadata": metadata});
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a credits grant's change of state does to the balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantCredits {
    /// Nothing moves.
    Nothing,
    /// A new grant: `+amount`.
    Grant(i64),
    /// A new grant created already held (a dispute was open when the payment arrived): granted and
    /// clawed back at once, so the ledger shows both.
    GrantHeld(i64),
    /// Take back `amount` (≤ the balance); `unrecoverable` of the grant was already spent.
    Clawback { amount: i64, unrecoverable: i64 },
    /// Give back `amount` (what was clawed back, maybe 0); nothing is unrecoverable any more.
    Restore(i64),
}

/// A grant is *held* (its credits are not the user's) while it is suspended or revoked.
fn held(state: GrantState) -> bool {
    state != GrantState::Active
}

/// The credits decision for a grant of `granted` credits moving from `from` (None: being created)
/// to `to`, of which `clawed_back` were taken back already, with the user's `balance` now.
///
/// Active → held (open dispute, full refund, lost dispute): only the unspent part comes back,
/// `min(granted − clawed_back, balance)`, so the balance never goes negative; the rest is
/// unrecoverable. Held → active (dispute won): what was clawed back is restored. Held → held
/// (suspended → revoked): nothing more to claw.
pub fn grant_credits(from: Option<GrantState>, to: GrantState, granted: i64, clawed_back: i64, balance: i64) -> GrantCredits {
    match from {
        None if granted <= 0 => GrantCredits::Nothing,
        None if held(to) => GrantCredits::GrantHeld(granted),
        None => GrantCredits::Grant(granted),
        Some(from) if held(from) == held(to) => GrantCredits::Nothing,
        Some(_) if held(to) => {
            let unspent_owed = (granted - clawed_back).max(0);
            let amount = unspent_owed.min(balance.max(0));
            GrantCredits::Clawback { amount, unrecoverable: unspent_owed - amount }
        }
        Some(_) => GrantCredits::Restore(clawed_back.max(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GrantState::*;

    #[test]
    fn a_new_grant_adds_its_credits_or_is_held_at_once() {
        assert_eq!(grant_credits(None, Active, 500, 0, 0), GrantCredits::Grant(500));
        assert_eq!(grant_credits(None, Suspended, 500, 0, 0), GrantCredits::GrantHeld(500));
        assert_eq!(grant_credits(None, Active, 0, 0, 0), GrantCredits::Nothing);
    }

    #[test]
    fn a_refund_claws_back_only_what_is_unspent() {
        // 500 granted, 430 spent: 70 left.
        assert_eq!(grant_credits(Some(Active), Revoked, 500, 0, 70), GrantCredits::Clawback { amount: 70, unrecoverable: 430 });
        // Nothing spent, and other credits besides: only this grant's 500.
        assert_eq!(grant_credits(Some(Active), Revoked, 500, 0, 800), GrantCredits::Clawback { amount: 500, unrecoverable: 0 });
        // Everything spent.
        assert_eq!(grant_credits(Some(Active), Suspended, 500, 0, 0), GrantCredits::Clawback { amount: 0, unrecoverable: 500 });
    }

    #[test]
    fn a_second_hold_claws_only_what_the_first_did_not() {
        // Restored after a won dispute (clawed_back back to 0), then disputed again.
        assert_eq!(
            grant_credits(Some(Active), Suspended, 500, 0, 300),
            GrantCredits::Clawback { amount: 300, unrecoverable: 200 }
        );
        // Defensive: a clawed_back left over never makes the claw exceed the grant.
        assert_eq!(grant_credits(Some(Active), Revoked, 500, 450, 300), GrantCredits::Clawback { amount: 50, unrecoverable: 0 });
    }

    #[test]
    fn a_won_dispute_restores_what_was_clawed_and_a_loss_takes_nothing_more() {
        assert_eq!(grant_credits(Some(Suspended), Active, 500, 70, 0), GrantCredits::Restore(70));
        // Everything was spent before the hold: nothing to give back, nothing unrecoverable now.
        assert_eq!(grant_credits(Some(Suspended), Active, 500, 0, 0), GrantCredits::Restore(0));
        assert_eq!(grant_credits(Some(Suspended), Revoked, 500, 70, 1000), GrantCredits::Nothing);
        assert_eq!(grant_credits(Some(Active), Active, 500, 0, 1000), GrantCredits::Nothing);
    }

    #[test]
    fn the_balance_never_goes_negative() {
        for balance in [0, 1, 499, 500, 501, 10_000] {
            for clawed in [0, 100, 500] {
                if let GrantCredits::Clawback { amount, unrecoverable } =
                    grant_credits(Some(Active), Revoked, 500, clawed, balance)
                {
                    assert!(amount <= balance && amount >= 0 && unrecoverable >= 0);
                    assert_eq!(amount + unrecoverable, 500 - clawed);
                }
            }
        }
    }

    #[test]
    fn debits_and_adjustments_are_checked_field_by_field() {
        assert!(validate_debit(7, "export", None).is_ok());
        for bad in [0, -1, MAX_AMOUNT + 1] {
            assert_eq!(validate_debit(bad, "x", None).unwrap_err()[0].field, "amount");
        }
        assert_eq!(validate_debit(7, " ", None).unwrap_err()[0].field, "reason");
        assert_eq!(validate_debit(7, &"r".repeat(201), None).unwrap_err()[0].field, "reason");
        let many: Metadata = (0..51).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(validate_debit(7, "x", Some(&many)).unwrap_err()[0].field, "metadata");
        let long_key: Metadata = [("k".repeat(41), "v".to_owned())].into();
        assert_eq!(validate_debit(7, "x", Some(&long_key)).unwrap_err()[0].field, "metadata");
        let long_value: Metadata = [("k".to_owned(), "v".repeat(501))].into();
        assert_eq!(validate_debit(7, "x", Some(&long_value)).unwrap_err()[0].field, "metadata.k");
        assert!(validate_adjustment(-5, "correction").is_ok());
        assert_eq!(validate_adjustment(0, "x").unwrap_err()[0].field, "amount");
    }

    #[test]
    fn the_request_hash_depends_on_every_field() {
        let m: Metadata = [("a".to_owned(), "1".to_owned())].into();
        let base = debit_request_hash(7, "x", Some(&m));
        assert_eq!(base, debit_request_hash(7, "x", Some(&m.clone())));
        assert_ne!(base, debit_request_hash(8, "x", Some(&m)));
        assert_ne!(base, debit_request_hash(7, "y", Some(&m)));
        assert_ne!(base, debit_request_hash(7, "x", None));
    }
}
