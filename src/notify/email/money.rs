//! Amounts in mails: integer minor units shown with their currency's exponent, never through a float.

/// Stripe's zero-decimal currencies (the amount is whole units; docs.stripe.com/currencies),
/// ISK included since Stripe made it zero-decimal.
const ZERO_DECIMAL: &[&str] =
    &["bif", "clp", "djf", "gnf", "isk", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];
/// Stripe's three-decimal currencies.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// Digits after the decimal point in `currency`'s minor unit, as Stripe counts them (every other
/// currency has two).
pub fn exponent(currency: &str) -> u32 {
    let c = currency.to_ascii_lowercase();
    if ZERO_DECIMAL.contains(&c.as_str()) {
        0
    } else if THREE_DECIMAL.contains(&c.as_str()) {
        3
    } else {
        2
    }
}

/// `amount` minor units of `currency` as people read it: `1,234.56 USD`, `500 JPY`, `1.500 KWD`.
pub fn format_amount(amount: i64, currency: &str) -> String {
    let exp = exponent(currency);
    let scale = 10u128.pow(exp);
    let magnitude = u128::from(amount.unsigned_abs());
    let (major, minor) = (magnitude / scale, magnitude % scale);
    let mut digits = major.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    while digits.len() > 3 {
        let tail = digits.split_off(digits.len() - 3);
        grouped.insert_str(0, &format!(",{tail}"));
    }
    grouped.insert_str(0, &digits);
    let sign = if amount < 0 { "-" } else { "" };
    let code = currency.to_ascii_uppercase();
    if exp == 0 {
        format!("{sign}{grouped} {code}")
    } else {
        format!("{sign}{grouped}.{minor:0width$} {code}", width = exp as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_use_the_currency_exponent() {
        assert_eq!(format_amount(1999, "usd"), "19.99 USD");
        assert_eq!(format_amount(5, "eur"), "0.05 EUR");
        assert_eq!(format_amount(123_456_789, "gbp"), "1,234,567.89 GBP");
        assert_eq!(format_amount(500, "jpy"), "500 JPY");
        assert_eq!(format_amount(1_000_000, "krw"), "1,000,000 KRW");
        assert_eq!(format_amount(1500, "kwd"), "1.500 KWD");
        assert_eq!(format_amount(-250, "usd"), "-2.50 USD");
        assert_eq!(format_amount(i64::MIN, "usd"), "-92,233,720,368,547,758.08 USD");
        assert_eq!(format_amount(0, "usd"), "0.00 USD");
    }
}
