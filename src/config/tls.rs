//! TLS served by tollgate itself: a certificate chain and its key, both or neither; and the
//! optional plain-http listener that only redirects to https.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::layer::Raw;
use super::server::Server;
use super::types::TlsConfig;

pub(super) fn parse(raw: &Raw, server: &Server, errors: &mut Vec<String>) -> Option<TlsConfig> {
    let redirect_bind = match raw.get("http_redirect_bind") {
        None => None,
        Some(v) => match v.trim().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                errors.push(raw.bad("http_redirect_bind", "must be an address and port such as 0.0.0.0:80"));
                None
            }
        },
    };
    let tls = match (raw.get("tls_cert"), raw.get("tls_key")) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            Some(TlsConfig { cert_path: PathBuf::from(c.trim()), key_path: PathBuf::from(k.trim()), redirect_bind })
        }
        _ => {
            errors.push("TOLLGATE_TLS_CERT and TOLLGATE_TLS_KEY must be set together".to_owned());
            None
        }
    };
    if let Some(t) = &tls {
        for (name, path) in [("TOLLGATE_TLS_CERT", &t.cert_path), ("TOLLGATE_TLS_KEY", &t.key_path)] {
            if !Path::new(path).is_file() {
                errors.push(format!("{name}: file {} does not exist", path.display()));
            }
        }
    }
    if let Some(addr) = redirect_bind {
        if raw.get("tls_cert").is_none() && raw.get("tls_key").is_none() {
            errors.push(
                "TOLLGATE_HTTP_REDIRECT_BIND needs TLS (TOLLGATE_TLS_CERT and TOLLGATE_TLS_KEY): without it there is no https to redirect to"
                    .to_owned(),
            );
        }
        if server.public_url.scheme() != "https" {
            errors.push("TOLLGATE_HTTP_REDIRECT_BIND redirects to TOLLGATE_PUBLIC_URL's origin, which must be https".to_owned());
        }
        if addr == server.bind && addr.port() != 0 {
            errors.push("TOLLGATE_HTTP_REDIRECT_BIND must differ from TOLLGATE_BIND".to_owned());
        }
    }
    tls
}

#[cfg(test)]
mod tests {
    use crate::config::sources::fixtures::*;
    use crate::config::types::Config;

    #[test]
    fn the_redirect_listener_needs_tls_and_an_https_public_url() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "x").unwrap();
        std::fs::write(&key, "x").unwrap();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());

        let text = Config::parse(&sources(&[("TOLLGATE_HTTP_REDIRECT_BIND", "127.0.0.1:8081")])).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_HTTP_REDIRECT_BIND needs TLS"), "{text}");

        let text = Config::parse(&sources(&[
            ("TOLLGATE_HTTP_REDIRECT_BIND", "127.0.0.1:8081"),
            ("TOLLGATE_TLS_CERT", cert),
            ("TOLLGATE_TLS_KEY", key),
        ]))
        .unwrap_err()
        .to_string();
        assert!(text.contains("TOLLGATE_PUBLIC_URL's origin, which must be https"), "{text}");
        assert!(!text.contains("needs TLS"), "{text}");

        let text = Config::parse(&sources(&[("TOLLGATE_HTTP_REDIRECT_BIND", "port 80")])).unwrap_err().to_string();
        assert!(text.contains("TOLLGATE_HTTP_REDIRECT_BIND: must be an address"), "{text}");

        let c = Config::parse(&sources(&[
            ("TOLLGATE_HTTP_REDIRECT_BIND", "127.0.0.1:8081"),
            ("TOLLGATE_PUBLIC_URL", "https://pay.example.com"),
            ("TOLLGATE_TLS_CERT", cert),
            ("TOLLGATE_TLS_KEY", key),
        ]))
        .unwrap();
        assert_eq!(c.tls.unwrap().redirect_bind, Some("127.0.0.1:8081".parse().unwrap()));
    }
}
