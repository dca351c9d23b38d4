//! Licences verifiable offline: issued from what a user paid for, verified by outside libraries
//! (PyJWT with cryptography, and jose on Node: the README's examples) against the served JWKS and by
//! `tollgate licence verify`; forgeries, expired licences and other keys refused by both; `exp`
//! bounded by the access and by TOLLGATE_LICENCE_TTL; revocations listed; key rotation; the
//! development key kept across restarts; production refusing to start without a key.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tollgate::domain::account::Role;
use tollgate::domain::licence::{parse_private_key, LicenceClaims};

use crate::helpers::accounts::bearer_for;
use crate::helpers::binary::{output_text, tollgate};
use crate::helpers::database::set_grant_period;
use crate::helpers::keys::api_key;
use crate::helpers::shop::{completed, dispute, refunded, shop, Shop};
use crate::helpers::{assert_problem, in_ci, skip, spawn_app_with, TestApp};

/// `openssl genpkey -algorithm ed25519` (PKCS#8 v1, as OpenSSL writes it).
const KEY_A: &str =
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDATgY59DYsMR8dfBlCFR+Y/7F2uHRFOFUD8x89rrUA4\n-----END PRIVATE KEY-----\n";
/// KEY_A's public key (`openssl pkey -pubout`).
const KEY_A_PUBLIC: &str =
    "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA83eHJT57YVX3m9xHCOO6QgupJIGicecY4JGrVbiKIVM=\n-----END PUBLIC KEY-----\n";
const KEY_B: &str =
    "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEICjXHc3IkVrxdC1bPRZrPMjQkk0g7gKbklYskCMuE9em\n-----END PRIVATE KEY-----\n";
/// What licences say in `iss`: the default TOLLGATE_PUBLIC_URL.
const ISSUER: &str = "http://localhost:8080";

/// The JSON of one part of a compact JWS.
fn part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(i).unwrap()).unwrap()).unwrap()
}

/// POST /api/v1/me/licences as `token`: the answer's body, after checking it is 201.
async fn my_licence(app: &TestApp, token: &str) -> Value {
    let r = app.client.post(app.url("/api/v1/me/licences")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 201, "issuing a licence");
    r.json().await.unwrap()
}

/// The buyer pays for access to `feature` for `days` (None: forever); the order's id.
async fn buy_access(s: &Shop, feature: &str, days: Option<i64>) -> Value {
    let grant = json!({"kind": "access", "feature": feature, "duration_days": days});
    let product = s.product(json!({"name": feature, "amount": 1000, "currency": "usd", "grant": grant})).await;
    let checkout = s.checkout(&product).await;
    assert_eq!(s.deliver(&completed(&checkout, 1000).1).await, 200);
    checkout
}

/// An outside library verifying a licence through the README's example beside it in
/// `examples/licence/`.
#[derive(Debug, Clone, Copy)]
enum Library {
    /// PyJWT with cryptography: `verify_licence.py`.
    PyJwt,
    /// jose on Node: `verify_licence.mjs`.
    Jose,
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/licence");

impl Library {
    fn command(self) -> Command {
        match self {
            Library::PyJwt => {
                let mut c = Command::new("python3");
                c.arg(format!("{EXAMPLES}/verify_licence.py"));
                c
            }
            Library::Jose => {
                let mut c = Command::new("node");
                c.arg(format!("{EXAMPLES}/verify_licence.mjs"));
                c
            }
        }
    }

    /// Whether the library is installed here; a loud skip when not, a failure in CI.
    fn available(self, test: &str) -> bool {
        let ok = match self {
            Library::PyJwt => Command::new("python3")
                .args(["-c", "import jwt, cryptography"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            Library::Jose => {
                std::path::Path::new(&format!("{EXAMPLES}/node_modules/jose/package.json")).exists()
                    && Command::new("node").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
            }
        };
        if !ok {
            let install = match self {
                Library::PyJwt => "python3 with PyJWT and cryptography not found (pip install pyjwt cryptography)",
                Library::Jose => "node or jose not found (npm install --prefix examples/licence)",
            };
            assert!(!in_ci(), "{self:?} must be installed in CI (.ci/run installs it): {install}");
            skip(test, install);
        }
        ok
    }

    /// The example on `licence`, fetching the JWKS from `app`: Ok(claims) or Err(why). On a
    /// blocking thread: the app serves on this one.
    async fn verify(self, app: &TestApp, licence: &str) -> Result<Value, String> {
        let (jwks_url, licence) = (app.url("/.well-known/jwks.json"), licence.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut child = self
                .command()
                .args([jwks_url.as_str(), ISSUER])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(licence.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            if out.status.success() {
                Ok(serde_json::from_slice(&out.stdout).unwrap())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        })
        .await
        .unwrap()
    }
}

/// `tollgate licence verify FILE [args]` with `env`: Ok(claims) or Err(stderr). On a blocking
/// thread: the app it may fetch the JWKS from serves on this one.
async fn cli_verify(licence: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Value, String> {
    let licence = licence.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cli_verify_blocking(&licence, &args, &env)
    })
    .await
    .unwrap()
}

fn cli_verify_blocking(licence: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Value, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("licence.jwt"), licence).unwrap();
    let out = tollgate(dir.path(), env).args(["licence", "verify", "licence.jwt"]).args(args).output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("claims as JSON: {}", output_text(&out))))
    } else {
        assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
        assert!(out.stdout.is_empty(), "nothing on stdout when refused");
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `claims` signed with `key` (PEM) exactly as tollgate signs.
fn signed_with(key: &str, claims: &Value) -> String {
    let claims: LicenceClaims = serde_json::from_value(claims.clone()).unwrap();
    parse_private_key(key).unwrap().sign(&claims)
}

/// The JWKS `app` serves.
async fn jwks(app: &TestApp) -> Value {
    let r = app.get("/.well-known/jwks.json").await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_licence_for_paid_access_verifies_with_pyjwt_jose_and_the_cli_and_forgeries_do_not() {
    let s = shop(&[("TOLLGATE_LICENCE_KEY", KEY_A)]).await;
    let checkout = buy_access(&s, "pro", Some(10)).await;
    let issued = my_licence(&s.app, &s.user).await;
    let licence = issued["licence"].as_str().unwrap();
    let id = issued["id"].as_str().unwrap();
    assert!(id.starts_with("lic_"));

    // The JWKS: one Ed25519 key, the header names it.
    let keys = jwks(&s.app).await;
    let key_a = parse_private_key(KEY_A).unwrap();
    assert_eq!(
        keys,
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": key_a.kid(), "x": keys["keys"][0]["x"], "use": "sig", "alg": "EdDSA"}]})
    );
    assert_eq!(part(licence, 0), json!({"alg": "EdDSA", "kid": key_a.kid(), "typ": "tollgate-licence+jwt"}));

    // The claims: the user, the access bought (ending with the grant), the id.
    let claims = part(licence, 1);
    let grant = &s.grants(checkout["order_id"].as_str().unwrap()).await[0];
    let grant_end = grant.expires_at.unwrap().timestamp();
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["sub"], s.user_id.as_str());
    assert_eq!(claims["jti"], id);
    assert_eq!(claims["features"].as_array().unwrap().len(), 1);
    assert_eq!(claims["features"][0]["feature"], "pro");
    let feature_end = chrono::DateTime::parse_from_rfc3339(claims["features"][0]["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(feature_end.timestamp(), grant_end);
    assert_eq!(claims["exp"], grant_end, "10 days of access: the licence ends with it, before the 30-day TTL");
    assert_eq!(claims["iat"], claims["nbf"]);
    assert_eq!(chrono::DateTime::parse_from_rfc3339(issued["expires_at"].as_str().unwrap()).unwrap().timestamp(), grant_end);
    // Stored with the grant it carries.
    let row = s.app.store.licence(id).await.unwrap().expect("the licence is stored");
    assert_eq!((row.user_id.as_str(), row.kid.as_str(), row.revoked_at), (s.user_id.as_str(), key_a.kid(), None));

    // Forgeries: a payload changed under the same signature, an expired licence signed with the
    // right key, a licence signed by another key, and one by another key claiming our kid.
    let parts: Vec<&str> = licence.split('.').collect();
    let mut more = claims.clone();
    more["features"][0]["expires_at"] = Value::Null;
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(more.to_string()), parts[2]);
    let mut old = claims.clone();
    old["exp"] = json!(chrono::Utc::now().timestamp() - 60);
    old["iat"] = json!(chrono::Utc::now().timestamp() - 3600);
    old["nbf"] = old["iat"].clone();
    let expired = signed_with(KEY_A, &old);
    let other_key = signed_with(KEY_B, &claims);
    let other_parts: Vec<&str> = other_key.split('.').collect();
    let impostor = format!("{}.{}.{}", parts[0], parts[1], other_parts[2]);
    let forgeries = [
        ("tampered", tampered.as_str()),
        ("expired", &expired),
        ("another key", &other_key),
        ("another key, our kid", &impostor),
    ];

    // The real binary: against the served JWKS (URL), a JWKS file, and its own configured key.
    let jwks_url = s.app.url("/.well-known/jwks.json");
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, keys.to_string()).unwrap();
    let jwks_file = jwks_file.to_str().unwrap();
    let own_key = [("TOLLGATE_LICENCE_KEY", KEY_A)];
    for (args, env) in
        [(vec!["--jwks", jwks_url.as_str()], &[][..]), (vec!["--jwks", jwks_file], &[][..]), (vec![], &own_key[..])]
    {
        assert_eq!(cli_verify(licence, &args, env).await.unwrap(), claims, "tollgate licence verify {args:?}");
        for (what, forged) in forgeries {
            let why = cli_verify(forged, &args, env).await.expect_err(what);
            assert!(why.starts_with("refused: "), "{what}: {why}");
        }
    }
    assert!(cli_verify(&expired, &["--jwks", &jwks_url], &[]).await.unwrap_err().contains("expired"));
    assert!(cli_verify(&tampered, &["--jwks", &jwks_url], &[]).await.unwrap_err().contains("signature"));
    assert!(cli_verify(&other_key, &["--jwks", &jwks_url], &[]).await.unwrap_err().contains("kid"));

    // Outside libraries: PyJWT with cryptography and jose, through the README's examples.
    for library in [Library::PyJwt, Library::Jose] {
        if !library.available("a_licence_for_paid_access_verifies_with_pyjwt_jose_and_the_cli_and_forgeries_do_not") {
            continue;
        }
        assert_eq!(library.verify(&s.app, licence).await.unwrap(), claims, "{library:?}");
        for (what, forged) in forgeries {
            let why = library.verify(&s.app, forged).await.expect_err(what);
            assert!(why.starts_with("refused: "), "{library:?}, {what}: {why}");
        }
        let why = library.verify(&s.app, &expired).await.unwrap_err();
        assert!(why.contains("ExpiredSignatureError") || why.contains("ERR_JWT_EXPIRED"), "{library:?}: {why}");
    }

    // Another user's licence carries nothing of the buyer's.
    let (other, _) = bearer_for(&s.app, "other@example.com", Role::User).await;
    assert_eq!(part(my_licence(&s.app, &other).await["licence"].as_str().unwrap(), 1)["features"], json!([]));
    // Unauthenticated: 401.
    assert_problem(s.app.client.post(s.app.url("/api/v1/me/licences")).send().await.unwrap(), 401).await;
}

#[tokio::test]
async fn exp_is_bounded_by_the_access_and_by_the_licence_ttl() {
    let s = shop(&[("TOLLGATE_LICENCE_TTL", "1h")]).await;
    // No access: no features, the TTL.
    let claims = part(my_licence(&s.app, &s.user).await["licence"].as_str().unwrap(), 1);
    assert_eq!(claims["features"], json!([]));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
    // Access forever and for 10 days: both listed, the licence ends after the TTL (1 h).
    buy_access(&s, "forever", None).await;
    buy_access(&s, "pro", Some(10)).await;
    let claims = part(my_licence(&s.app, &s.user).await["licence"].as_str().unwrap(), 1);
    assert_eq!(claims["features"][0], json!({"feature": "forever", "expires_at": null}));
    assert_eq!(claims["features"][1]["feature"], "pro");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);

    // With a TTL longer than the access, the access's end.
    let s = shop(&[("TOLLGATE_LICENCE_TTL", "30d")]).await;
    let first = buy_access(&s, "pro", Some(2)).await;
    let second = buy_access(&s, "pro", Some(3)).await;
    let claims = part(my_licence(&s.app, &s.user).await["licence"].as_str().unwrap(), 1);
    // Two purchases of a feature follow each other: one entry, ending after both (5 days).
    let start = s.grants(first["order_id"].as_str().unwrap()).await[0].starts_at;
    assert_eq!(s.grants(second["order_id"].as_str().unwrap()).await.len(), 1);
    let end = (start + chrono::Duration::days(5)).timestamp();
    assert_eq!(claims["features"].as_array().unwrap().len(), 1);
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(claims["features"][0]["expires_at"].as_str().unwrap()).unwrap().timestamp(),
        end
    );
    assert_eq!(claims["exp"], end);
}

#[tokio::test]
async fn revocations_after_a_refund_a_dispute_and_a_disabled_user_are_listed() {
    let s = shop(&[]).await;
    let revoked = |query: &'static str| {
        let app = &s.app;
        async move {
            let r = app.get(&format!("/api/v1/licences/revoked{query}")).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(revoked("").await, json!({"data": [], "has_more": false}));

    // A full refund revokes the licences carrying the grant; a partial one does not.
    let refund_me = buy_access(&s, "pro", Some(30)).await;
    let keep = buy_access(&s, "extra", Some(30)).await;
    let by_refund = my_licence(&s.app, &s.user).await["id"].as_str().unwrap().to_owned();
    assert_eq!(s.deliver(&refunded(&keep, 1000, 400).1).await, 200);
    assert_eq!(revoked("").await["data"], json!([]), "a partial refund keeps the access");
    assert_eq!(s.deliver(&refunded(&refund_me, 1000, 1000).1).await, 200);
    let list = revoked("").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!((&list["data"][0]["id"], &list["data"][0]["reason"]), (&json!(by_refund), &json!("refund")));

    // A dispute (open) revokes the licences carrying the disputed grant; the new licence no longer
    // carries the refunded access.
    let by_dispute = my_licence(&s.app, &s.user).await;
    let features = part(by_dispute["licence"].as_str().unwrap(), 1)["features"].clone();
    assert_eq!(features.as_array().unwrap().iter().map(|f| f["feature"].as_str().unwrap()).collect::<Vec<_>>(), ["extra"]);
    let by_dispute = by_dispute["id"].as_str().unwrap().to_owned();
    assert_eq!(s.deliver(&dispute(&keep, "charge.dispute.created", "needs_response").1).await, 200);

    // Another user's licence is untouched by all of this; disabling the buyer revokes theirs.
    let (other, _) = bearer_for(&s.app, "other@example.com", Role::User).await;
    let untouched = my_licence(&s.app, &other).await["id"].as_str().unwrap().to_owned();
    let by_disable = my_licence(&s.app, &s.user).await["id"].as_str().unwrap().to_owned();
    let r = s
        .send(reqwest::Method::PATCH, &s.admin, &format!("/api/v1/admin/users/{}", s.user_id), Some(json!({"disabled": true})))
        .await;
    assert_eq!(r.status(), 200);

    let list = revoked("").await;
    let got: Vec<(&str, &str)> =
        list["data"].as_array().unwrap().iter().map(|r| (r["id"].as_str().unwrap(), r["reason"].as_str().unwrap())).collect();
    assert_eq!(got, [(by_refund.as_str(), "refund"), (by_dispute.as_str(), "dispute"), (by_disable.as_str(), "user_disabled")]);
    assert_eq!(list["has_more"], false);
    let row = s.app.store.licence(&by_dispute).await.unwrap().unwrap();
    assert_eq!(row.revoked_reason.as_deref(), Some("dispute"));
    assert!(s.app.store.licence(&untouched).await.unwrap().unwrap().revoked_at.is_none());

    // Pages, oldest first, and `since`.
    let first = revoked("?limit=1").await;
    assert_eq!((first["data"][0]["id"].as_str(), &first["has_more"]), (Some(by_refund.as_str()), &json!(true)));
    let r = s.app.get(&format!("/api/v1/licences/revoked?limit=2&starting_after={by_refund}")).await;
    let rest: Value = r.json().await.unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 2);
    assert_eq!((rest["data"][0]["id"].as_str(), &rest["has_more"]), (Some(by_dispute.as_str()), &json!(false)));
    let since = list["data"][1]["revoked_at"].as_str().unwrap();
    let r = s.app.client.get(s.app.url("/api/v1/licences/revoked")).query(&[("since", since)]).send().await.unwrap();
    let recent: Value = r.json().await.unwrap();
    let ids: Vec<&str> = recent["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [by_dispute.as_str(), by_disable.as_str()]);
    for bad in ["yesterday", "", "2026-12-01"] {
        let r = s.app.client.get(s.app.url("/api/v1/licences/revoked")).query(&[("since", bad)]).send().await.unwrap();
        let problem = assert_problem(r, 422).await;
        assert_eq!(problem["errors"][0]["field"], "since", "since={bad:?}");
    }
    assert_problem(s.app.get("/api/v1/licences/revoked?limit=0").await, 422).await;
}

#[tokio::test]
async fn refunding_an_earlier_purchase_that_already_ended_revokes_the_licences_of_the_later_one() {
    // Purchases of a feature follow each other: refunding an earlier one moves the later ones,
    // so a licence depends on every active grant of its user, ended ones included.
    let s = shop(&[]).await;
    let earlier = buy_access(&s, "pro", Some(30)).await;
    buy_access(&s, "pro", Some(30)).await;
    let grant = &s.grants(earlier["order_id"].as_str().unwrap()).await[0];
    let now = chrono::Utc::now();
    set_grant_period(&s.app, &grant.id, now - chrono::Duration::days(40), now - chrono::Duration::days(10)).await;
    let licence = my_licence(&s.app, &s.user).await;
    let claims = part(licence["licence"].as_str().unwrap(), 1);
    assert_eq!(claims["features"].as_array().unwrap().len(), 1, "{claims}");
    let id = licence["id"].as_str().unwrap();

    assert_eq!(s.deliver(&refunded(&earlier, 1000, 1000).1).await, 200);
    let row = s.app.store.licence(id).await.unwrap().unwrap();
    assert!(row.revoked_at.is_some(), "the licence depended on the refunded, already ended purchase");
    assert_eq!(row.revoked_reason.as_deref(), Some("refund"));
}

#[tokio::test]
async fn a_licence_issued_while_its_access_is_refunded_is_revoked_or_does_not_carry_it() {
    let s = shop(&[]).await;
    let checkout = buy_access(&s, "pro", Some(30)).await;
    let (_, refund) = refunded(&checkout, 1000, 1000);
    // Licences asked for while the full refund arrives: each must either carry no "pro" or be on
    // the revocation list, whatever the interleaving.
    let issue = || async {
        let r = s.app.client.post(s.app.url("/api/v1/me/licences")).bearer_auth(&s.user).send().await.unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()
    };
    let (before, (status, after)) = tokio::join!(futures_util::future::join_all((0..10).map(|_| issue())), async {
        let status = s.deliver(&refund).await;
        (status, futures_util::future::join_all((0..10).map(|_| issue())).await)
    });
    assert_eq!(status, 200);
    let r = s.app.get("/api/v1/licences/revoked?limit=100").await;
    let revoked: Value = r.json().await.unwrap();
    let revoked: Vec<&str> = revoked["data"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut carrying = 0;
    for issued in before.iter().chain(after.iter()) {
        let claims = part(issued["licence"].as_str().unwrap(), 1);
        if claims["features"].as_array().unwrap().iter().any(|f| f["feature"] == "pro") {
            carrying += 1;
            assert!(revoked.contains(&issued["id"].as_str().unwrap()), "{issued} carries the refunded access and is not revoked");
        }
    }
    assert_eq!(revoked.len(), carrying, "only licences carrying the refunded access are revoked");
    // After the refund, a licence never carries it.
    let last = part(issue().await["licence"].as_str().unwrap(), 1);
    assert_eq!(last["features"], json!([]));
}

#[tokio::test]
async fn issuing_is_limited_per_user() {
    let app = spawn_app_with(&[]).await;
    let (greedy, _) = bearer_for(&app, "greedy@example.com", Role::User).await;
    let (other, _) = bearer_for(&app, "other@example.com", Role::User).await;
    // 60 a minute is a bucket of 60 refilled one a second: on a slow machine a few more than 60 are
    // issued before the first refusal, one per second the burst took (never fewer than 60).
    let started = std::time::Instant::now();
    let mut issued = 0;
    let refused = loop {
        let r = app.client.post(app.url("/api/v1/me/licences")).bearer_auth(&greedy).send().await.unwrap();
        if r.status() != 201 {
            break r;
        }
        issued += 1;
        assert!(issued <= 200, "never refused");
    };
    let refills = started.elapsed().as_secs() + 1;
    assert!((60..=60 + refills).contains(&issued), "{issued} issued in {refills} s before the first refusal");
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, 429).await;
    my_licence(&app, &other).await;
}

#[tokio::test]
async fn after_a_key_rotation_old_licences_still_verify_and_new_ones_carry_the_new_kid() {
    let a = spawn_app_with(&[("TOLLGATE_LICENCE_KEY", KEY_A)]).await;
    let (user, _) = bearer_for(&a, "rotating@example.com", Role::User).await;
    let old = my_licence(&a, &user).await["licence"].as_str().unwrap().to_owned();
    let (kid_a, kid_b) = (parse_private_key(KEY_A).unwrap().kid().to_owned(), parse_private_key(KEY_B).unwrap().kid().to_owned());
    assert_eq!(kids(&jwks(&a).await), std::slice::from_ref(&kid_a));

    // The same database, restarted with key B and A's public key as the previous one.
    let b = spawn_app_with(&[
        ("DATABASE_URL", &a.database_url),
        ("TOLLGATE_LICENCE_KEY", KEY_B),
        ("TOLLGATE_LICENCE_PREVIOUS_KEY", KEY_A_PUBLIC),
    ])
    .await;
    assert_eq!(kids(&jwks(&b).await), [kid_b.clone(), kid_a.clone()], "the new key first, the old one still published");
    let (user_b, _) = bearer_for(&b, "after@example.com", Role::User).await;
    let new = my_licence(&b, &user_b).await["licence"].as_str().unwrap().to_owned();
    assert_eq!(part(&new, 0)["kid"], kid_b.as_str());

    let jwks_url = b.url("/.well-known/jwks.json");
    for licence in [&old, &new] {
        cli_verify(licence, &["--jwks", &jwks_url], &[]).await.expect("verifies against the rotated JWKS");
        let own = [("TOLLGATE_LICENCE_KEY", KEY_B), ("TOLLGATE_LICENCE_PREVIOUS_KEY", KEY_A_PUBLIC)];
        cli_verify(licence, &[], &own).await.expect("verifies with the rotated configuration");
    }
    // Once A is dropped, its licences are refused.
    assert!(cli_verify(&old, &[], &[("TOLLGATE_LICENCE_KEY", KEY_B)]).await.unwrap_err().contains("kid"));
    for library in [Library::PyJwt, Library::Jose] {
        if library.available("after_a_key_rotation_old_licences_still_verify_and_new_ones_carry_the_new_kid") {
            library.verify(&b, &old).await.expect("the old licence verifies with the rotated JWKS");
            library.verify(&b, &new).await.expect("the new licence verifies");
        }
    }
}

#[tokio::test]
async fn the_development_key_is_kept_in_the_database_across_restarts() {
    let first = spawn_app_with(&[]).await;
    let (user, _) = bearer_for(&first, "dev@example.com", Role::User).await;
    let licence = my_licence(&first, &user).await["licence"].as_str().unwrap().to_owned();
    let kid = kids(&jwks(&first).await);
    assert_eq!(kid.len(), 1);

    let second = spawn_app_with(&[("DATABASE_URL", &first.database_url)]).await;
    assert_eq!(kids(&jwks(&second).await), kid, "the same key after a restart");
    // An instance starting beside it keeps the stored key, whatever key it generated itself.
    let stored = second.store.ensure_signing_key("development", "another instance's key", chrono::Utc::now()).await.unwrap();
    assert_ne!(stored, "another instance's key");
    // The CLI without --jwks reads the same key from the database.
    let claims = cli_verify(&licence, &[], &[("DATABASE_URL", &first.database_url)]).await.expect("verifies with the stored key");
    assert_eq!(claims["iss"], ISSUER);
    // In production the CLI trusts only the configured key, never one found in the database.
    let why =
        cli_verify(&licence, &[], &[("DATABASE_URL", &first.database_url), ("TOLLGATE_ENV", "production")]).await.unwrap_err();
    assert!(why.contains("TOLLGATE_LICENCE_KEY"), "{why}");
    // Keys fetched over plain http could be anyone's: refused unless from this machine.
    let why = cli_verify(&licence, &["--jwks", "http://keys.example.com/jwks.json"], &[]).await.unwrap_err();
    assert!(why.contains("https"), "{why}");
    // Verifying never creates a key: a database without one refuses.
    let empty = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", empty.path().join("empty.db").display());
    let why = cli_verify(&licence, &[], &[("DATABASE_URL", &url)]).await.unwrap_err();
    assert!(why.starts_with("refused: "), "{why}");
}

#[test]
fn production_refuses_to_start_without_a_licence_key_or_with_a_bad_one() {
    let production = [
        ("TOLLGATE_ENV", "production"),
        ("TOLLGATE_PUBLIC_URL", "https://pay.example.org"),
        ("TOLLGATE_TRUSTED_PROXIES", "10.0.0.0/8"),
        ("TOLLGATE_BIND", "127.0.0.1:0"),
        ("TOLLGATE_JWT_SECRET", "jwt-5e1f0c9a8b7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f"),
        ("STRIPE_SECRET_KEY", "sk_live_51H8qwertyuiopasdfghjklzxcvbnm0123456789QWERTY"),
        ("STRIPE_WEBHOOK_SECRET", "whsec_3f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate(dir.path(), &production).arg("serve").output().unwrap();
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("refuses to start") && text.contains("TOLLGATE_LICENCE_KEY is missing"), "{text}");
    assert!(!dir.path().join("tollgate.db").exists(), "nothing was created before refusing");

    let bad = "MC4CAQAwBQYDK2VwBCIEIGNvcnJ1cHRlZA==";
    let mut env = production.to_vec();
    env.push(("TOLLGATE_LICENCE_KEY", bad));
    let out = tollgate(dir.path(), &env).arg("serve").output().unwrap();
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(text.contains("TOLLGATE_LICENCE_KEY: not an Ed25519 private key"), "{text}");
    assert!(!text.contains(bad), "the value is never printed: {text}");
    assert!(!dir.path().join("tollgate.db").exists(), "refused before opening the database");
}

#[tokio::test]
async fn the_merchant_route_needs_a_key_with_licences_issue() {
    let s = shop(&[]).await;
    buy_access(&s, "pro", None).await;
    let path = format!("/api/v1/users/{}/licences", s.user_id);
    assert_problem(s.app.client.post(s.app.url(&path)).send().await.unwrap(), 401).await;
    // A user's own token is not an API key.
    assert_problem(s.post(&s.user, &path, json!({})).await, 401).await;
    let without = api_key(&s.app, &s.admin, &["entitlements:read"]).await;
    assert_problem(s.app.client.post(s.app.url(&path)).bearer_auth(&without).send().await.unwrap(), 403).await;

    let key = api_key(&s.app, &s.admin, &["licences:issue"]).await;
    let r = s.app.client.post(s.app.url(&path)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let issued: Value = r.json().await.unwrap();
    let claims = part(issued["licence"].as_str().unwrap(), 1);
    assert_eq!((&claims["sub"], &claims["features"]), (&json!(s.user_id), &json!([{"feature": "pro", "expires_at": null}])));
    let r = s.app.client.post(s.app.url("/api/v1/users/usr_nobody/licences")).bearer_auth(&key).send().await.unwrap();
    assert_problem(r, 404).await;
}
