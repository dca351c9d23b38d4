use crate::helpers::spawn_app_with;

#[tokio::test]
async fn tollgate_serves_https_itself_with_hsts() {
    let _ = crate::helpers::client();
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();

    let app =
        spawn_app_with(&[("TOLLGATE_TLS_CERT", cert_path.to_str().unwrap()), ("TOLLGATE_TLS_KEY", key_path.to_str().unwrap())])
            .await;
    assert!(app.base.starts_with("https://"));
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("strict-transport-security").unwrap(), "max-age=63072000; includeSubDomains");

    let plain = crate::helpers::client().get(format!("http://localhost:{}/healthz", app.addr.port())).send().await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true), "plain http is not served on the TLS port");
}
