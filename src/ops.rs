//! Operations from the shell: `tollgate healthcheck` (a container's HEALTHCHECK without curl) and
//! `tollgate db backup` (an online copy of a SQLite database). See RUNBOOK.md.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use secrecy::ExposeSecret;
use url::Url;

use crate::config::Config;
use crate::store::{self, Engine};

/// The path a health check asks: readiness (the database answers, is migrated and takes a write),
/// not mere liveness. README "Running in a container" says why.
pub const READY_PATH: &str = "/readyz";

/// What `healthcheck` asks and how: a URL, and a client that reaches it.
pub struct Probe {
    pub url: Url,
    client: reqwest::Client,
    pinned: Option<Arc<PinnedCertificate>>,
}

/// The probe for this configuration. Without `url`: the server's own address (`TOLLGATE_BIND`, an
/// unspecified address replaced by loopback) and `/readyz`, over https when tollgate serves TLS.
/// Then the name sent (SNI) is `localhost`, resolved to that address, and the one certificate
/// accepted is the one in `TOLLGATE_TLS_CERT` (pinned, byte for byte, with the handshake signed by
/// its key): the probe reaches this process and no other, whatever names the certificate holds
/// and whether or not a public client would accept it (an openssl self-signed certificate is
/// marked CA, which webpki refuses as a server's).
pub fn probe(config: &Config, url: Option<&str>, timeout: Duration) -> anyhow::Result<Probe> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // The server itself, never a proxy from the environment, and never somewhere a redirect points.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate-healthcheck/", env!("CARGO_PKG_VERSION")));
    if let Some(url) = url {
        let url = Url::parse(url).with_context(|| format!("--url {url} is not a URL"))?;
        anyhow::ensure!(matches!(url.scheme(), "http" | "https"), "--url must be http(s)");
        // An explicit URL may be served with the configured certificate or a public one.
        let mut builder = builder;
        if let Some(tls) = &config.tls {
            if let Ok(pem) = std::fs::read(&tls.cert_path) {
                for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
                    builder = builder.add_root_certificate(cert);
                }
            }
        }
        return Ok(Probe { url, client: builder.build()?, pinned: None });
    }
    let ip = match config.bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, config.bind.port());
    match &config.tls {
        None => {
            let url = Url::parse(&format!("http://{addr}{READY_PATH}"))?;
            Ok(Probe { url, client: builder.build()?, pinned: None })
        }
        Some(tls) => {
            let pem = std::fs::read(&tls.cert_path)
                .with_context(|| format!("cannot read TOLLGATE_TLS_CERT ({})", tls.cert_path.display()))?;
            let pinned: Vec<Vec<u8>> = rustls_pemfile_certs(&pem);
            anyhow::ensure!(!pinned.is_empty(), "TOLLGATE_TLS_CERT ({}) holds no PEM certificate", tls.cert_path.display());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = Arc::new(PinnedCertificate {
                pinned,
                algorithms: provider.signature_verification_algorithms,
                mismatch: AtomicBool::new(false),
                bad_signature: AtomicBool::new(false),
            });
            let tls_config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth();
            let client = builder.use_preconfigured_tls(tls_config).resolve("localhost", addr).build()?;
            let url = Url::parse(&format!("https://localhost:{}{READY_PATH}", addr.port()))?;
            Ok(Probe { url, client, pinned: Some(verifier) })
        }
    }
}

/// The certificates of a PEM bundle, in DER.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).map(|c| c.as_ref().to_vec()).collect()
}

/// Accepts exactly the certificates configured for the server, and checks that the handshake was
/// signed by the key of the one presented.
#[derive(Debug)]
struct PinnedCertificate {
    pinned: Vec<Vec<u8>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    /// Set when a server presented another certificate, to say so in words.
    mismatch: AtomicBool,
    /// Set when the handshake was not signed by the presented certificate's key.
    bad_signature: AtomicBool,
}

impl PinnedCertificate {
    fn signature(
        &self,
        verdict: Result<HandshakeSignatureValid, rustls::Error>,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if verdict.is_err() {
            self.bad_signature.store(true, Ordering::SeqCst);
        }
        verdict
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pinned.iter().any(|c| c.as_slice() == end_entity.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            self.mismatch.store(true, Ordering::SeqCst);
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Asks the probe's URL once: `Ok` with a line to print when it answers 200, `Err` with the
/// reason otherwise (refused, timed out, TLS refused, any other status).
pub async fn healthcheck(probe: &Probe) -> Result<String, String> {
    let url = &probe.url;
    let response = probe.client.get(url.clone()).send().await.map_err(|e| {
        let why = if probe.pinned.as_ref().is_some_and(|p| p.mismatch.load(Ordering::SeqCst)) {
            "the server's certificate is not the one in TOLLGATE_TLS_CERT".to_owned()
        } else if probe.pinned.as_ref().is_some_and(|p| p.bad_signature.load(Ordering::SeqCst)) {
            format!(
                "the server presents the certificate in TOLLGATE_TLS_CERT but did not sign the handshake with its key ({})",
                root_cause(&e)
            )
        } else if e.is_timeout() {
            "timed out".to_owned()
        } else if e.is_connect() {
            format!("cannot connect: {}", root_cause(&e))
        } else {
            root_cause(&e)
        };
        format!("{url}: {why}")
    })?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let checks = body["checks"]
        .as_object()
        .map(|c| c.iter().map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?"))).collect::<Vec<_>>().join(", "))
        .unwrap_or_default();
    let line = if checks.is_empty() { format!("{url}: {status}") } else { format!("{url}: {status} ({checks})") };
    let line: String = line.chars().take(300).collect();
    if status == reqwest::StatusCode::OK {
        Ok(line)
    } else {
        Err(line)
    }
}

/// The innermost cause: reqwest's own message is only "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `tollgate db backup PATH`: a consistent copy of a SQLite database, taken while the server runs;
/// PostgreSQL is refused with the pg_dump command to use instead. The line to print.
pub async fn backup(config: &Config, dest: &Path) -> anyhow::Result<String> {
    let url = config.database.url.expose_secret();
    match Engine::from_url(url) {
        Some(Engine::Sqlite) => {}
        Some(Engine::Postgres) => anyhow::bail!(
            "the database is PostgreSQL: back it up with pg_dump, e.g. pg_dump --format=custom --file=tollgate.dump \"$DATABASE_URL\" (RUNBOOK.md)"
        ),
        None => anyhow::bail!("DATABASE_URL names no database tollgate knows"),
    }
    anyhow::ensure!(
        !(url.contains(":memory:") || url.contains("mode=memory")),
        "the database is in memory: there is nothing on disk to back up"
    );
    let done = store::backup::sqlite_backup(url, dest).await.map_err(|e| match e {
        store::StoreError::Rule(why) => anyhow::anyhow!(why),
        other => anyhow::anyhow!("backup to {} failed: {other}", dest.display()),
    })?;
    Ok(format!("backed up to {} ({} bytes, {} tables, integrity ok)", done.path.display(), done.bytes, done.tables))
}
