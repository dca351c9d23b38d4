//! Amounts in mails: integer minor units shown with their currency's exponent, never through a float.
//! The exponent is the domain's one table ([`minor_unit_exponent`]: Stripe's meaning of `amount`).

use crate::domain::catalog::minor_unit_exponent;

/// `amount` minor units of `currency` as people read it: `1,234.56 USD`, `500 JPY`, `1.500 KWD`,
/// `5,000.00 ISK` (Stripe counts ISK in hundredths).
pub fn format_amount(amount: i64, currency: &str) -> String {
    let exp = minor_unit_exponent(currency);
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

    #[test]
    fn stripes_special_cases_are_hundredths_not_whole_units() {
        // Stripe: "to charge 5 ISK, provide an `amount` value of `500`"; the same for UGX; HUF and
        // TWD are charged in hundredths. Shown as whole units these were 100 times too large.
        assert_eq!(format_amount(500_000, "isk"), "5,000.00 ISK");
        assert_eq!(format_amount(500, "ISK"), "5.00 ISK");
        assert_eq!(format_amount(150_000, "ugx"), "1,500.00 UGX");
        assert_eq!(format_amount(599_000, "huf"), "5,990.00 HUF");
        assert_eq!(format_amount(80_045, "twd"), "800.45 TWD");
        assert_eq!(format_amount(500, "JPY"), "500 JPY");
        assert_eq!(format_amount(5120, "kwd"), "5.120 KWD");
    }
}
