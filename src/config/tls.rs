//! TLS served by tollgate itself: a certificate chain and its key, both or neither.

use std::path::{Path, PathBuf};

use super::layer::Raw;
use super::types::TlsConfig;

pub(super) fn parse(raw: &Raw, errors: &mut Vec<String>) -> Option<TlsConfig> {
    let tls = match (raw.get("tls_cert"), raw.get("tls_key")) {
        (None, None) => None,
        (Some(c), Some(k)) => Some(TlsConfig { cert_path: PathBuf::from(c.trim()), key_path: PathBuf::from(k.trim()) }),
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
    tls
}
