//! Certificates read from PEM files, for the clients that trust a private CA (`rediss://` with
//! `TOLLGATE_REDIS_CA_FILE`): shared by the configuration check and the client that uses them.

/// The certificates of a PEM file (at least one), for `rediss://` with a private CA. The error
/// says what is wrong with the file, for the configuration check.
pub fn load_ca(path: &std::path::Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(format!("{} holds no usable CA certificate", path.display()));
    }
    Ok(certs)
}
