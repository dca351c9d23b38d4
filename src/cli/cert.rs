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
    replace_pair(&key_path, key_pair.serialize_pem().as_bytes(), &cert_path, cert.pem().as_bytes())?;
    Ok(DevCert {
        fingerprint_sha256: fingerprint_sha256(cert.der()),
        not_after: not_after(cert.der()).map(|t| t.to_rfc3339()).unwrap_or_default(),
        cert_path,
        key_path,
        hosts,
    })
}

/// Writes the key and the certificate to new files beside their targets (the key with mode 0600),
/// and only once both are written renames them over the targets. A failure while writing leaves
/// the targets as they were (never a new key beside the old certificate) and removes what it wrote;
/// a rename replaces a symlink at the target rather than writing through it.
fn replace_pair(key_path: &Path, key: &[u8], cert_path: &Path, cert: &[u8]) -> anyhow::Result<()> {
    for target in [key_path, cert_path] {
        if target.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            anyhow::bail!("{} is a directory; cannot replace it", target.display());
        }
    }
    let key_tmp = temporary_beside(key_path);
    let cert_tmp = temporary_beside(cert_path);
    let written = write_new(&key_tmp, key, 0o600).and_then(|()| write_new(&cert_tmp, cert, 0o644));
    let renamed = written.and_then(|()| {
        std::fs::rename(&key_tmp, key_path).with_context(|| format!("cannot replace {}", key_path.display()))?;
        std::fs::rename(&cert_tmp, cert_path).with_context(|| format!("cannot replace {}", cert_path.display()))
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&key_tmp);
        let _ = std::fs::remove_file(&cert_tmp);
    }
    renamed
}

/// `.<name>.<random>.tmp` in `path`'s directory (a rename within one directory is atomic).
fn temporary_beside(path: &Path) -> PathBuf {
    let mut nonce = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut nonce);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    path.with_file_name(format!(".{name}.{nonce}.tmp"))
}

/// Creates `path`, which must not exist yet, with `mode` (never following a symlink).
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
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
    let (cert_shown, key_shown) = (absolute(&c.cert_path), absolute(&c.key_path));
    // In commands, paths are shell-quoted: a directory with a space or a quote stays one argument.
    let (cert, key) = (shell_quote(&cert_shown), shell_quote(&key_shown));
    format!(
        "\
wrote a self-signed development certificate (never use it in production):
  certificate: {cert_shown}
  private key: {key_shown} (mode 0600)
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

Replace the certificate and key files and send SIGHUP to the server (systemctl reload, or
kill -HUP with its own process id) to reload them without a restart.
",
        names = c.hosts.join(", "),
        not_after = c.not_after,
        fingerprint = c.fingerprint_sha256,
    )
}

fn absolute(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}

/// `text` as one POSIX shell word: in single quotes, each `'` written as `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_the_printed_commands_are_shell_quoted() {
        assert_eq!(shell_quote("/tmp/a b/it's"), "'/tmp/a b/it'\\''s'");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("dev tls/it's $(touch pwned)");
        let written = dev(&out, &[], false).unwrap();
        let text = instructions(&written);
        let cert = absolute(&written.cert_path);
        let quoted = shell_quote(&cert);
        assert!(text.contains(&format!("curl --cacert {quoted} https://")), "{text}");
        assert!(text.contains(&format!("TOLLGATE_TLS_KEY={} \\", shell_quote(&absolute(&written.key_path)))), "{text}");
        // The reference: POSIX sh reads the quoted path back as one word, unchanged, running nothing.
        let echoed = std::process::Command::new("sh")
            .current_dir(dir.path())
            .args(["-c", &format!("printf '%s\\n' {quoted}")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(echoed.stdout).unwrap(), format!("{cert}\n"));
        assert!(!dir.path().join("pwned").exists());
    }

    #[test]
    fn force_replaces_both_files_as_a_matching_pair_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = dev(dir.path(), &[], false).unwrap();
        let old_key = std::fs::read(&first.key_path).unwrap();
        let second = dev(dir.path(), &[], true).unwrap();
        assert_ne!(std::fs::read(&second.key_path).unwrap(), old_key);
        let paths = crate::config::TlsConfig {
            cert_path: second.cert_path.clone(),
            key_path: second.key_path.clone(),
            redirect_bind: None,
        };
        let loaded = crate::http::tls::ReloadableCert::load(&paths).expect("the new key matches the new certificate");
        assert_eq!(loaded.summary().fingerprint_sha256, second.fingerprint_sha256);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&second.key_path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, [CERT_FILE, KEY_FILE]);
    }

    #[test]
    fn a_failure_before_the_renames_leaves_the_old_pair_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let first = dev(dir.path(), &[], false).unwrap();
        let (old_key, old_cert) = (std::fs::read(&first.key_path).unwrap(), std::fs::read(&first.cert_path).unwrap());
        // The certificate cannot be replaced (a directory stands there): the key is not either.
        std::fs::remove_file(&first.cert_path).unwrap();
        std::fs::create_dir(&first.cert_path).unwrap();
        let e = format!("{:#}", dev(dir.path(), &[], true).unwrap_err());
        assert!(e.contains("is a directory"), "{e}");
        assert_eq!(std::fs::read(&first.key_path).unwrap(), old_key);
        std::fs::remove_dir(&first.cert_path).unwrap();
        std::fs::write(&first.cert_path, &old_cert).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temporary file is left");
    }
}
