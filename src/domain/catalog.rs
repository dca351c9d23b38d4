//! The catalog: what can be bought, for how much, and what paying grants. Amounts are integers in
//! the currency's minor unit; a price change makes a new product version.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::FieldError;

/// The largest amount accepted for one product or order (Stripe's own limit is 99 999 999).
pub const MAX_AMOUNT: i64 = 99_999_999;
pub const MAX_QUANTITY: i64 = 100;

/// What paying for a product buys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Grant {
    /// Access to `feature` for `duration_days` days from payment (null: forever). Buying again
    /// while access is active extends it.
    Access {
        #[schema(example = "pro", pattern = "^[a-z0-9_.:-]{1,64}$")]
        feature: String,
        #[schema(example = 30, minimum = 1, maximum = 36500)]
        #[serde(default, deserialize_with = "super::whole_number::option::deserialize")]
        duration_days: Option<i64>,
    },
    /// `amount` credits added to the buyer's balance.
    Credits {
        #[schema(example = 500, minimum = 1, maximum = 1000000000)]
        #[serde(deserialize_with = "super::whole_number::deserialize")]
        amount: i64,
    },
}

impl Grant {
    pub fn validate(&self, field: &str, errors: &mut Vec<FieldError>) {
        match self {
            Grant::Access { feature, duration_days } => {
                let ok = (1..=64).contains(&feature.len())
                    && feature.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.:".contains(&b));
                if !ok {
                    errors.push(FieldError::new(format!("{field}.feature"), "must be 1-64 of a-z, 0-9, _ - . :"));
                }
                if duration_days.is_some_and(|d| !(1..=36_500).contains(&d)) {
                    errors.push(FieldError::new(format!("{field}.duration_days"), "must be 1-36500 days, or null for forever"));
                }
            }
            Grant::Credits { amount } => {
                if !(1..=1_000_000_000).contains(amount) {
                    errors.push(FieldError::new(format!("{field}.amount"), "must be 1-1000000000 credits"));
                }
            }
        }
    }

    /// This grant bought `quantity` times: credits multiply, access lasts `quantity` periods.
    pub fn times(&self, quantity: i64) -> Grant {
        match self {
            Grant::Access { feature, duration_days } => {
                Grant::Access { feature: feature.clone(), duration_days: duration_days.map(|d| d * quantity) }
            }
            Grant::Credits { amount } => Grant::Credits { amount: amount * quantity },
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Option<Grant> {
        serde_json::from_str(text).ok()
    }
}

/// A lowercase ISO 4217 code (three letters); Stripe's own rule for `currency`.
pub fn valid_currency(currency: &str) -> bool {
    currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_lowercase())
}

pub fn validate_amount(field: &str, amount: i64, errors: &mut Vec<FieldError>) {
    if !(1..=MAX_AMOUNT).contains(&amount) {
        errors.push(FieldError::new(field, format!("must be an integer in the currency's minor unit, 1-{MAX_AMOUNT}")));
    }
}

pub fn validate_currency(field: &str, currency: &str, errors: &mut Vec<FieldError>) {
    if !valid_currency(currency) {
        errors.push(FieldError::new(field, "must be a lowercase ISO 4217 code such as usd"));
    }
}

pub fn validate_name(field: &str, name: &str, errors: &mut Vec<FieldError>) {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        errors.push(FieldError::new(field, "must be 1-200 characters, no control characters"));
    }
}

pub fn validate_description(field: &str, description: &str, errors: &mut Vec<FieldError>) {
    if description.chars().count() > 2000 {
        errors.push(FieldError::new(field, "must be at most 2000 characters"));
    }
}

pub fn validate_price_id(field: &str, price: &str, errors: &mut Vec<FieldError>) {
    let ok = price.starts_with("price_") && price.len() <= 255 && price.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        errors.push(FieldError::new(field, "must be a Stripe price id (price_…)"));
    }
}

pub fn validate_quantity(field: &str, quantity: i64, errors: &mut Vec<FieldError>) {
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        errors.push(FieldError::new(field, format!("must be 1-{MAX_QUANTITY}")));
    }
}

/// Stripe's zero-decimal currencies: `amount` is whole units (docs.stripe.com/currencies,
/// "Zero-decimal currencies"). UGX is in Stripe's list but not here: its "Special cases" row
/// says it is still represented as a two-decimal value ("to charge 5 UGX, provide an `amount`
/// value of `500`"), and that row governs `amount`.
const ZERO_DECIMAL: &[&str] =
    &["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "vnd", "vuv", "xaf", "xof", "xpf"];
/// Stripe's three-decimal currencies (an `amount` of 5120 is 5.120 KWD), and IQD and LYD, which
/// ISO 4217 gives three decimals and Stripe does not take at all (another provider may).
const THREE_DECIMAL: &[&str] = &["bhd", "iqd", "jod", "kwd", "lyd", "omr", "tnd"];

/// How many decimal places `currency`'s minor unit has, with the meaning Stripe's API gives an
/// `amount`: 0 for the zero-decimal currencies, 3 for the three-decimal ones, 2 for every other
/// ("Currencies are two-decimal currencies unless otherwise specified"). Stripe's special cases
/// stay two-decimal in `amount`: ISK and UGX became zero-decimal but are still sent as
/// hundredths that end in `00` (`100` is 1 króna), and HUF and TWD are charged in hundredths
/// (only their payouts are whole units). Case-insensitive. The one table: prices, receipts and
/// the decimal numbers other providers want ([`to_decimal`]) all read it.
pub fn minor_unit_exponent(currency: &str) -> u32 {
    if ZERO_DECIMAL.iter().any(|c| c.eq_ignore_ascii_case(currency)) {
        0
    } else if THREE_DECIMAL.iter().any(|c| c.eq_ignore_ascii_case(currency)) {
        3
    } else {
        2
    }
}

/// `amount` minor units of `currency` as a decimal number's text (`1299` usd → `12.99`,
/// `5` usd → `0.05`, `500` jpy → `500`), by integer arithmetic only.
pub fn to_decimal(amount: i64, currency: &str) -> String {
    let exponent = minor_unit_exponent(currency);
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u64.pow(exponent);
    format!("{sign}{}.{:0width$}", abs / scale, abs % scale, width = exponent as usize)
}

/// A decimal number's text (`12.99`, `12.990`, `13`, `1.5e1`) as minor units of `currency`, by
/// integer arithmetic; `None` when it is not a plain non-negative decimal, has a non-zero digit
/// below the minor unit, or exceeds [`MAX_AMOUNT`].
pub fn from_decimal(text: &str, currency: &str) -> Option<i64> {
    let exponent = i64::from(minor_unit_exponent(currency));
    let (mantissa, e10) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() || !whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    // value = digits × 10^(e10 − len(fraction)); minor units = value × 10^exponent. The exponent
    // is the sender's (`1e9223372036854775807`): checked, so an absurd one is unreadable, not a panic.
    let shift = e10.checked_sub(i64::try_from(fraction.len()).ok()?)?.checked_add(exponent)?;
    let (kept, dropped) = if shift >= 0 {
        (format!("{digits}{}", "0".repeat(usize::try_from(shift).ok().filter(|s| *s <= 18)?)), "")
    } else {
        let cut = digits.len().saturating_sub(usize::try_from(shift.unsigned_abs()).ok()?);
        (digits[..cut].to_owned(), &digits[cut..])
    };
    if dropped.bytes().any(|b| b != b'0') {
        return None;
    }
    let kept = if kept.is_empty() { "0".to_owned() } else { kept };
    kept.parse::<i64>().ok().filter(|a| *a <= MAX_AMOUNT)
}

/// The total for `quantity` units, or None when it would exceed [`MAX_AMOUNT`].
pub fn total(unit_amount: i64, quantity: i64) -> Option<i64> {
    unit_amount.checked_mul(quantity).filter(|t| *t <= MAX_AMOUNT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_validate_and_multiply() {
        let g: Grant = serde_json::from_str(r#"{"kind":"access","feature":"pro","duration_days":30}"#).unwrap();
        assert_eq!(g.times(2), Grant::Access { feature: "pro".into(), duration_days: Some(60) });
        let forever: Grant = serde_json::from_str(r#"{"kind":"access","feature":"pro","duration_days":null}"#).unwrap();
        assert_eq!(forever.times(3), forever);
        let c: Grant = serde_json::from_str(r#"{"kind":"credits","amount":500}"#).unwrap();
        assert_eq!(c.times(3), Grant::Credits { amount: 1500 });
        assert_eq!(Grant::from_json(&c.to_json()), Some(c));
        assert!(serde_json::from_str::<Grant>(r#"{"kind":"credits","amount":5,"extra":1}"#).is_err());
        let mut errors = Vec::new();
        Grant::Access { feature: "Pro Plan".into(), duration_days: Some(0) }.validate("grant", &mut errors);
        Grant::Credits { amount: 0 }.validate("grant", &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["grant.feature", "grant.duration_days", "grant.amount"]);
    }

    #[test]
    fn decimals_from_minor_units_and_back_without_floats() {
        assert_eq!(to_decimal(1299, "usd"), "12.99");
        assert_eq!(to_decimal(5, "eur"), "0.05");
        assert_eq!(to_decimal(500, "jpy"), "500");
        assert_eq!(to_decimal(1234, "kwd"), "1.234");
        assert_eq!(to_decimal(99_999_999, "usd"), "999999.99");
        for (text, currency, minor) in [
            ("12.99", "usd", Some(1299)),
            ("12.990", "usd", Some(1299)),
            ("13", "usd", Some(1300)),
            ("1.5e1", "usd", Some(1500)),
            ("1e-2", "usd", Some(1)),
            ("0.05", "eur", Some(5)),
            ("500", "jpy", Some(500)),
            ("1.234", "kwd", Some(1234)),
            ("12.991", "usd", None),
            ("0.5", "jpy", None),
            ("-1", "usd", None),
            ("1e30", "usd", None),
            ("abc", "usd", None),
            ("", "usd", None),
            (".5", "usd", None),
            ("0", "usd", Some(0)),
        ] {
            assert_eq!(from_decimal(text, currency), minor, "{text} {currency}");
        }
        for amount in [1, 9, 10, 99, 100, 101, 1299, 99_999_999] {
            for currency in ["usd", "jpy", "kwd"] {
                assert_eq!(from_decimal(&to_decimal(amount, currency), currency), Some(amount));
            }
        }
    }

    #[test]
    fn exponents_follow_stripes_meaning_of_amount_special_cases_included() {
        for (currency, exponent) in [
            ("usd", 2),
            ("eur", 2),
            ("jpy", 0),
            ("JPY", 0),
            ("krw", 0),
            ("clp", 0),
            ("kwd", 3),
            ("bhd", 3),
            ("tnd", 3),
            // Stripe's special cases: still hundredths in `amount`.
            ("isk", 2),
            ("ugx", 2),
            ("huf", 2),
            ("twd", 2),
            ("idr", 2),
        ] {
            assert_eq!(minor_unit_exponent(currency), exponent, "{currency}");
        }
        // 5 ISK is an `amount` of 500 (Stripe's own example), and so is 5 UGX.
        assert_eq!(to_decimal(500, "isk"), "5.00");
        assert_eq!(from_decimal("5", "isk"), Some(500));
        assert_eq!(from_decimal("5", "ugx"), Some(500));
        assert_eq!(to_decimal(80_000, "twd"), "800.00");
    }

    #[test]
    fn money_rules() {
        assert!(valid_currency("usd") && !valid_currency("USD") && !valid_currency("usdt") && !valid_currency("u$d"));
        assert_eq!(total(1999, 3), Some(5997));
        assert_eq!(total(MAX_AMOUNT, 2), None);
        assert_eq!(total(i64::MAX, 2), None);
    }
}
