//! `tollgate cert dev`: a self-signed certificate for trying https on this machine (rcgen on ring),
//! and how to use and trust it. Never for production: nobody but this machine's user vouches for it.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{Datelike, Duration, Utc};
use rand::RngCore;
use rustls::pki_types::ServerName;

use crate::http::tls::{fingerprint_sha256, not_after};

/// Names every development certificate covers.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Under the 398 days browsers accept for a server certificate.
pub const VALID_DAYS: i64 = 365;
pub const CERT_FILE: &str = "tollgate-dev-cert.pem";
pub const KEY_FILE: &str = "tollgate-dev-key.pem";

/// What `cert dev` wrote.
#[derive(Debug)]
pub struct DevCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub hosts: Vec<String>,
    pub fingerprint_sha256: String,
    pub not_after: String,
}

/// Writes a self-signed certificate for localhost, 127.0.0.1, ::1 and `extra_hosts` into `out`
/// (the key readable by its owner only). Refuses to replace either file unless `force`.
pub fn dev(out: &Path, extra_hosts: &[String], force: bool) -> anyhow::Result<DevCert> {
    let mut hosts: Vec<String> = DEFAULT_HOSTS.iter().map(|h| (*h).to_owned()).collect();
    for host in extra_hosts {
        let host = host.trim().trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let valid = host.parse::<IpAddr>().is_ok() || matches!(ServerName::try_from(host.as_str()), Ok(ServerName::DnsName(_)));
        anyhow::ensure!(valid, "--host {host:?} is neither a DNS name nor an IP address");
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    let cert_path = out.join(CERT_FILE);
    let key_path = out.join(KEY_FILE);
    if !force {
        let existing: Vec<String> =
            [&cert_path, &key_path].iter().filter(|p| p.symlink_metadata().is_ok()).map(|p| p.display().to_string()).collect();
        anyhow::ensure!(existing.is_empty(), "{} already exist(s); pass --force to replace", existing.join(" and "));
    }

    let key_pair = rcgen::KeyPair::generate().context("cannot generate a key")?;
    let mut params = rcgen::CertificateParams::new(hosts.clone()).context("the certificate's names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "tollgate development certificate (localhost)");
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "tollgate cert dev");
    let (from, until) = (Utc::now() - Duration::days(1), Utc::now() + Duration::days(VALID_DAYS));
    params.not_before = rcgen::date_time_ymd(from.year(), from.month() as u8, from.day() as u8);
    params.not_after = rcgen::date_time_ymd(until.year(), until.month() as u8, until.day() as u8);
    // A fresh serial each time: browsers refuse two certificates with one issuer and serial.
    let mut serial = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key_pair).context("cannot sign the certificate")?;

    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_new(&key_path, key_pair.serialize_pem().as_bytes(), 0o600, force)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644, force)?;
    Ok(DevCert {
        fingerprint_sha256: fingerprint_sha256(cert.der()),
        not_after: not_after(cert.der()).map(|t| t.to_rfc3339()).unwrap_or_default(),
        cert_path,
        key_path,
        hosts,
    })
}

/// Creates `path` with `mode` (never following an existing file's permissions or a symlink): with
/// `force` an existing file is removed first.
fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if force && path.symlink_metadata().is_ok() {
        std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("cannot write {}", path.display()))
}

/// How to serve with the certificate and make clients trust it.
pub fn instructions(c: &DevCert) -> String {
    let cert = absolute(&c.cert_path);
    let key = absolute(&c.key_path);
    format!(
        "\
wrote a self-signed development certificate (never use it in production):
  certificate: {cert}
  private key: {key} (mode 0600)
  names:       {names}
  expires:     {not_after}
  SHA-256:     {fingerprint}

Serve https with it:
  TOLLGATE_TLS_CERT={cert} \\
  TOLLGATE_TLS_KEY={key} \\
  tollgate serve

Try it without trusting it system-wide:
  curl --cacert {cert} https://localhost:8080/healthz

Trust it on this machine (undo by removing it again):
  Debian/Ubuntu: sudo cp {cert} /usr/local/share/ca-certificates/tollgate-dev.crt && sudo update-ca-certificates
                 (undo: sudo rm /usr/local/share/ca-certificates/tollgate-dev.crt && sudo update-ca-certificates --fresh)
  macOS:         sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {cert}
                 (undo: sudo security remove-trusted-cert -d {cert})
  Firefox keeps its own certificate store and ignores the system one on Linux: open
                 https://localhost:8080/ and choose Advanced > Accept the Risk and Continue (an exception
                 for this certificate only), or import it under Settings > Privacy & Security >
                 Certificates > View Certificates > Servers.
  Node.js:       NODE_EXTRA_CA_CERTS={cert}

Replace the certificate and key files and send SIGHUP to reload them without a restart.
",
        names = c.hosts.join(", "),
        not_after = c.not_after,
        fingerprint = c.fingerprint_sha256,
    )
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}
