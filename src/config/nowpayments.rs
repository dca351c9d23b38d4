//! NOWPayments (crypto invoices): the API key, the IPN secret and the API base. The provider is
//! enabled when both secrets are set; one without the other is a finding (`checks.rs`: refused in
//! production, a warning in development, where NOWPayments then stays off).

use secrecy::SecretString;
use url::Url;

use super::layer::Raw;
use super::types::NowPaymentsConfig;

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> NowPaymentsConfig {
    let secret = |key: &str| raw.get(key).map(str::trim).filter(|v| !v.is_empty()).map(|v| SecretString::from(v.to_owned()));
    let api_base = raw.get("nowpayments_api_base").and_then(|v| Url::parse(v.trim()).ok()).unwrap_or_else(|| {
        errors.push(raw.bad("nowpayments_api_base", "must be a URL"));
        Url::parse("https://api.nowpayments.io").expect("constant URL")
    });
    NowPaymentsConfig { api_key: secret("nowpayments_api_key"), ipn_secret: secret("nowpayments_ipn_secret"), api_base }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use crate::config::sources::fixtures::*;
    use crate::config::types::Config;

    const KEY: &str = "NP0KEY1-ABCDEF2-GHIJKL3-MNOPQR4";
    const IPN: &str = "ipn-secret-0123456789abcdefghijklmnop";

    #[test]
    fn enabled_only_with_both_secrets_and_one_alone_is_refused_in_production() {
        let c = Config::load(&sources(&[])).unwrap();
        assert!(c.nowpayments.credentials().is_none());
        assert_eq!(c.nowpayments.api_base.as_str(), "https://api.nowpayments.io/");
        let c = Config::load(&sources(&[("NOWPAYMENTS_API_KEY", KEY), ("NOWPAYMENTS_IPN_SECRET", IPN)])).unwrap();
        let (key, ipn) = c.nowpayments.credentials().unwrap();
        assert_eq!((key.expose_secret(), ipn.expose_secret()), (KEY, IPN));
        let debug = format!("{c:?}");
        assert!(!debug.contains(KEY) && !debug.contains(IPN), "{debug}");

        let dev = Config::load(&sources(&[("NOWPAYMENTS_API_KEY", KEY)])).unwrap();
        assert!(dev.nowpayments.credentials().is_none());
        assert!(dev.warnings().iter().any(|w| w.contains("NOWPAYMENTS_IPN_SECRET is not")), "{:?}", dev.warnings());
        let text = Config::load(&production_with("NOWPAYMENTS_IPN_SECRET", IPN)).unwrap_err().to_string();
        assert!(text.contains("NOWPAYMENTS_API_KEY is not set") && !text.contains(IPN), "{text}");
        let text = Config::load(&production_with("NOWPAYMENTS_API_BASE", "http://api.nowpayments.io")).unwrap_err().to_string();
        assert!(text.contains("NOWPAYMENTS_API_BASE is not https"), "{text}");
        assert!(Config::load(&production_with("NOWPAYMENTS_API_BASE", "https://api-sandbox.nowpayments.io")).is_ok());
    }
}
