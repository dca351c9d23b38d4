//! TLS served by tollgate itself: TLS 1.3 and 1.2 only (rustls on ring), and the certificate in use
//! re-read from its files on SIGHUP. A handshake takes whatever pair is current when it starts; a
//! connection keeps the certificate it was opened with, so a reload drops nobody.

use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SupportedProtocolVersion;
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// The protocol versions served, named rather than left to the library's defaults: TLS 1.1 and
/// older (and SSL) are refused with a `protocol_version` alert.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate and key every new handshake is given; [`ReloadableCert::reload`] replaces them.
#[derive(Debug)]
pub struct ReloadableCert {
    paths: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

/// What is logged about a certificate: never anything about its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// SHA-256 of the leaf certificate's DER, uppercase hex pairs joined by `:` (as
    /// `openssl x509 -noout -fingerprint -sha256` prints it).
    pub fingerprint_sha256: String,
    /// The leaf's notAfter, RFC 3339 (absent when the certificate cannot be read that far).
    pub not_after: Option<String>,
}

impl ReloadableCert {
    /// Reads the pair at `paths`; an error names the file at fault.
    pub fn load(paths: &TlsConfig) -> anyhow::Result<ReloadableCert> {
        let provider = provider();
        let key = load_certified_key(paths, &provider)?;
        Ok(ReloadableCert { paths: paths.clone(), provider, current: RwLock::new(Arc::new(key)) })
    }

    /// Re-reads the certificate and key from the configured paths. On success new handshakes get
    /// the new pair; on error the pair in use stays.
    pub fn reload(&self) -> anyhow::Result<CertSummary> {
        let key = Arc::new(load_certified_key(&self.paths, &self.provider)?);
        let summary = summary_of(&key);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(summary)
    }

    /// The pair in use now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn summary(&self) -> CertSummary {
        summary_of(&self.current())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server config over `certs`: ring, TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(certs: Arc<ReloadableCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut server = rustls::ServerConfig::builder_with_provider(certs.provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .context("the TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The certificate chain and key at `paths`, checked to belong together.
fn load_certified_key(paths: &TlsConfig, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let (cert_path, key_path) = (&paths.cert_path, &paths.key_path);
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("TOLLGATE_TLS_CERT: cannot read {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("TOLLGATE_TLS_CERT: {} is not a PEM certificate chain", cert_path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "TOLLGATE_TLS_CERT: {} holds no certificate", cert_path.display());
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("TOLLGATE_TLS_KEY: {} is not a PEM private key", key_path.display()))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("TOLLGATE_TLS_KEY: {} is not a key rustls can sign with", key_path.display()))?;
    let certified = CertifiedKey::new(certs, signer);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(anyhow::anyhow!("the TLS certificate and key do not match ({e})")),
    }
}

fn summary_of(key: &CertifiedKey) -> CertSummary {
    let leaf = key.cert.first().map(|c| c.as_ref()).unwrap_or_default();
    CertSummary { fingerprint_sha256: fingerprint_sha256(leaf), not_after: not_after(leaf).map(|t| t.to_rfc3339()) }
}

/// SHA-256 of `der` as `AB:CD:…`.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The notAfter of an X.509 certificate in DER: Certificate → tbsCertificate → [version], serial,
/// signature, issuer, validity { notBefore, notAfter }.
pub fn not_after(der: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    let (0x30, certificate, _) = der_item(der)? else { return None };
    let (0x30, tbs, _) = der_item(certificate)? else { return None };
    let (tag, _, mut rest) = der_item(tbs)?;
    if tag == 0xa0 {
        (_, _, rest) = der_item(rest)?; // the serial number follows the explicit version
    }
    let (_, _, rest) = der_item(rest)?; // signature algorithm
    let (_, _, rest) = der_item(rest)?; // issuer
    let (0x30, validity, _) = der_item(rest)? else { return None };
    let (_, _, rest) = der_item(validity)?; // notBefore
    let (tag, time, _) = der_item(rest)?;
    // Both time types are ASCII digits and `Z`; anything else (a forged or broken certificate) is
    // unreadable, never sliced inside a character.
    let text = std::str::from_utf8(time).ok().filter(|t| t.is_ascii())?;
    let full = match tag {
        // UTCTime: YYMMDDHHMMSSZ, years 1950-2049 (RFC 5280 4.1.2.5.1)
        0x17 if text.len() == 13 => format!("{}{text}", if text.get(..2)?.parse::<u8>().ok()? >= 50 { "19" } else { "20" }),
        // GeneralizedTime: YYYYMMDDHHMMSSZ
        0x18 if text.len() == 15 => text.to_owned(),
        _ => return None,
    };
    chrono::NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%SZ").ok().map(|t| t.and_utc())
}

/// One DER item: its tag, its contents and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// SIGHUP, listened for from the very start of `serve` (before the database is opened), so that a
/// SIGHUP at any point is handled rather than ending the process (its default action). Signals that
/// arrive before [`reload_on_sighup`] runs are kept and handled then.
pub struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    /// Registers the handler; needs a running tokio runtime.
    #[cfg(unix)]
    pub fn install() -> anyhow::Result<Hangups> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Hangups { signal: signal(SignalKind::hangup()).context("cannot handle SIGHUP")? })
    }

    #[cfg(not(unix))]
    pub fn install() -> anyhow::Result<Hangups> {
        Ok(Hangups {})
    }

    async fn recv(&mut self) -> Option<()> {
        #[cfg(unix)]
        return self.signal.recv().await;
        #[cfg(not(unix))]
        std::future::pending().await
    }
}

/// Handles every SIGHUP: reloads `certs` (see [`reload_logged`]), or, without TLS, logs that there
/// is nothing to reload and goes on serving.
pub async fn reload_on_sighup(mut hangups: Hangups, certs: Option<Arc<ReloadableCert>>) {
    while hangups.recv().await.is_some() {
        match &certs {
            Some(certs) => reload_logged(certs),
            None => tracing::warn!("SIGHUP: no TLS certificate to reload"),
        }
    }
}

/// Reloads `certs` and logs the new certificate's fingerprint and expiry, or the error (keeping the
/// pair in use). A panic while reading the new pair is caught and logged the same way, so the
/// SIGHUP task never dies and later reloads are still handled.
pub fn reload_logged(certs: &ReloadableCert) {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| certs.reload())) {
        Ok(Ok(s)) => tracing::info!(
            fingerprint_sha256 = %s.fingerprint_sha256,
            not_after = s.not_after.as_deref().unwrap_or("unknown"),
            "TLS certificate reloaded"
        ),
        Ok(Err(e)) => tracing::error!(
            error = %format!("{e:#}"),
            fingerprint_sha256 = %certs.summary().fingerprint_sha256,
            "cannot reload the TLS certificate; still serving the previous one"
        ),
        Err(_) => tracing::error!(
            error = "internal error while reading the new certificate (a panic, caught)",
            fingerprint_sha256 = %certs.summary().fingerprint_sha256,
            "cannot reload the TLS certificate; still serving the previous one"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_until(year: i32, month: u8, day: u8) -> rcgen::CertifiedKey {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, month, day);
        let cert = params.self_signed(&key_pair).unwrap();
        rcgen::CertifiedKey { cert, key_pair }
    }

    #[test]
    fn not_after_reads_utc_time_and_generalized_time() {
        // rcgen writes UTCTime up to 2049 and GeneralizedTime from 2050 on, as RFC 5280 asks.
        let before_2050 = cert_until(2031, 5, 17);
        assert_eq!(not_after(before_2050.cert.der()).unwrap().to_rfc3339(), "2031-05-17T00:00:00+00:00");
        let after_2050 = cert_until(2051, 1, 2);
        assert_eq!(not_after(after_2050.cert.der()).unwrap().to_rfc3339(), "2051-01-02T00:00:00+00:00");
        assert_eq!(not_after(b"\x30\x03\x02\x01\x01"), None);
        assert_eq!(not_after(&[]), None);
    }

    #[test]
    fn the_fingerprint_is_sha256_of_the_der_as_openssl_prints_it() {
        let c = cert_until(2031, 1, 1);
        let f = fingerprint_sha256(c.cert.der());
        assert_eq!(f.len(), 32 * 3 - 1);
        assert_eq!(f.replace(':', ""), Sha256::digest(c.cert.der()).iter().map(|b| format!("{b:02X}")).collect::<String>());
    }

    #[test]
    fn a_mismatched_pair_is_refused_and_reload_keeps_the_pair_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TlsConfig { cert_path: dir.path().join("c.pem"), key_path: dir.path().join("k.pem"), redirect_bind: None };
        let first = cert_until(2031, 1, 1);
        std::fs::write(&paths.cert_path, first.cert.pem()).unwrap();
        std::fs::write(&paths.key_path, first.key_pair.serialize_pem()).unwrap();
        let certs = ReloadableCert::load(&paths).unwrap();
        let before = certs.summary();
        assert_eq!(before.fingerprint_sha256, fingerprint_sha256(first.cert.der()));

        let other = cert_until(2032, 1, 1);
        std::fs::write(&paths.key_path, other.key_pair.serialize_pem()).unwrap();
        let e = format!("{:#}", certs.reload().unwrap_err());
        assert!(e.contains("do not match"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        assert_eq!(certs.summary(), before);

        std::fs::write(&paths.cert_path, other.cert.pem()).unwrap();
        let after = certs.reload().unwrap();
        assert_eq!(after.fingerprint_sha256, fingerprint_sha256(other.cert.der()));
        assert_eq!(after.not_after.as_deref(), Some("2032-01-01T00:00:00+00:00"));
        assert_eq!(certs.summary(), after);
    }

    /// `cert` with the notAfter time's contents replaced by `time` (same length).
    fn with_not_after(cert: &[u8], old: &[u8], time: &[u8]) -> Vec<u8> {
        assert_eq!(old.len(), time.len());
        let at = cert.windows(old.len()).position(|w| w == old).expect("the notAfter time");
        let mut der = cert.to_vec();
        der[at..at + old.len()].copy_from_slice(time);
        der
    }

    #[test]
    fn a_non_ascii_time_is_unreadable_not_a_panic_and_reload_survives_it() {
        let pair = cert_until(2031, 5, 17);
        // "1é517000000Z" is 13 bytes, like a UTCTime, and byte 2 falls inside the `é`.
        let forged = with_not_after(pair.cert.der(), b"310517000000Z", "1é517000000Z".as_bytes());
        assert_eq!(not_after(&forged), None);

        // Served as the new certificate (its key still matches, or cannot be checked): the reload
        // is refused or taken, and it never panics.
        let dir = tempfile::tempdir().unwrap();
        let paths = TlsConfig { cert_path: dir.path().join("c.pem"), key_path: dir.path().join("k.pem"), redirect_bind: None };
        std::fs::write(&paths.cert_path, pair.cert.pem()).unwrap();
        std::fs::write(&paths.key_path, pair.key_pair.serialize_pem()).unwrap();
        let certs = ReloadableCert::load(&paths).unwrap();
        let forged_pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &forged)
        );
        std::fs::write(&paths.cert_path, forged_pem).unwrap();
        let reloaded = certs.reload().expect("the key still matches the forged certificate");
        assert_eq!(reloaded.fingerprint_sha256, fingerprint_sha256(&forged));
        assert_eq!(reloaded.not_after, None);
        reload_logged(&certs);
    }
}
