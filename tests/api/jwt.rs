//! JWTs from an identity provider over real HTTP: a valid token grants
//! the scopes of its `scope` claim and nothing more; expired, not yet
//! valid, wrong issuer, wrong audience, bad signature and malformed
//! tokens are each refused for their own reason and change nothing; an
//! RSA and an EC public key verify; a rotated key file takes effect
//! without a restart; `ids_claim` limits a token to its prefix.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use troupe::settings::JwtSettings;

use crate::helpers::{assert_error, eventually, spawn_app_with, TestApp};

pub(crate) const ISSUER: &str = "https://id.example.com/";
pub(crate) const AUDIENCE: &str = "troupe-ledger";
pub(crate) const SECRET: &str = "a shared secret of at least thirty-two bytes";

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Claims of a token that passes, granting `scope`.
pub(crate) fn claims(scope: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": now() + 300,
        "scope": scope,
    })
}

fn mint(key: &EncodingKey, alg: Algorithm, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("a token")
}

pub(crate) fn hs256(claims: &Value) -> String {
    mint(
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        Algorithm::HS256,
        claims,
    )
}

fn jwt_settings() -> JwtSettings {
    JwtSettings {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        hs256_secret: String::new(),
        public_key_file: String::new(),
        leeway_s: 30,
        ids_claim: String::new(),
        cache_size: 10_000,
    }
}

async fn app_with(jwt: JwtSettings) -> TestApp {
    spawn_app_with(TempDir::new().unwrap(), move |s| {
        s.auth.enabled = true;
        s.auth.jwt = jwt;
    })
    .await
}

async fn hs256_app() -> TestApp {
    app_with(JwtSettings {
        hs256_secret: SECRET.into(),
        ..jwt_settings()
    })
    .await
}

async fn put_account(app: &TestApp, id: &str, token: &str) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/v1/accounts/{id}")))
        .bearer_auth(token)
        .json(&json!({"currency": "EUR"}))
        .send()
        .await
        .expect("request")
}

async fn get(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request")
}

/// An EC (P-256) or RSA key pair: the private key in PKCS#8 PEM, the
/// public key in PEM.
fn key_pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let pair = rcgen::KeyPair::generate_for(alg).expect("a key pair");
    (pair.serialize_pem(), pair.public_key_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path.display().to_string()
}

#[actix_rt::test]
async fn a_token_grants_the_scopes_of_its_scope_claim_and_nothing_more() {
    let app = hs256_app().await;
    // Scopes troupe does not know (openid) are ignored, not refused.
    let writer = hs256(&claims("openid ledger:read ledger:write"));

    assert_eq!(
        put_account(&app, "a", &writer).await.status(),
        StatusCode::CREATED
    );
    let deposit = app
        .client
        .post(app.url("/v1/accounts/a/deposits"))
        .bearer_auth(&writer)
        .json(&json!({"amount": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(deposit.status(), StatusCode::OK);
    assert_eq!(get(&app, "/v1/accounts/a", &writer).await.status(), 200);

    // Scopes the token lacks: 403, in the error shape.
    for path in ["/metrics", "/v1/actors/account/a"] {
        let r = get(&app, path, &writer).await;
        assert_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let reader = hs256(&claims("ledger:read"));
    assert_error(
        put_account(&app, "b", &reader).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // A token with no scope claim at all grants nothing.
    let mut bare = claims("");
    bare.as_object_mut().unwrap().remove("scope");
    assert_error(
        get(&app, "/v1/accounts/a", &hs256(&bare)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let ops = hs256(&claims("ops:read"));
    let metrics = get(&app, "/metrics", &ops).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"troupe_auth_denied_total{key="jwt",reason="scope"} 4"#),
        "refusals of valid tokens are counted under key jwt:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("troupe_auth"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[actix_rt::test]
async fn tokens_that_do_not_verify_are_refused_each_for_its_reason_and_change_nothing() {
    let app = hs256_app().await;
    let all = "ledger:read ledger:write actors:send ops:read";
    let with = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = claims(all);
        change(c.as_object_mut().unwrap());
        hs256(&c)
    };
    let other_secret = mint(
        &EncodingKey::from_secret(b"another secret of at least thirty-two bytes").unwrap(),
        Algorithm::HS256,
        &claims(all),
    );
    // A valid token's payload swapped for one granting more: the
    // signature no longer covers it.
    let valid = hs256(&claims("ledger:read"));
    let parts: Vec<&str> = valid.split('.').collect();
    let forged_payload = hs256(&claims(all));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        forged_payload.split('.').nth(1).unwrap(),
        parts[2]
    );
    let unsigned = format!(
        "{}.{}.",
        base64url(r#"{"alg":"none","typ":"JWT"}"#),
        forged_payload.split('.').nth(1).unwrap()
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired past the leeway",
            with(&|c| {
                c.insert("exp".into(), json!(now() - 120));
            }),
            "jwt_expired",
        ),
        (
            "not valid for ten minutes",
            with(&|c| {
                c.insert("nbf".into(), json!(now() + 600));
            }),
            "jwt_not_yet_valid",
        ),
        (
            "another issuer",
            with(&|c| {
                c.insert("iss".into(), json!("https://evil.example.com/"));
            }),
            "jwt_issuer",
        ),
        (
            "another audience",
            with(&|c| {
                c.insert("aud".into(), json!("another-service"));
            }),
            "jwt_audience",
        ),
        ("signed with another secret", other_secret, "jwt_signature"),
        ("a forged payload", forged, "jwt_signature"),
        ("alg none", unsigned, "jwt_invalid"),
        (
            "no exp",
            with(&|c| {
                c.remove("exp");
            }),
            "jwt_invalid",
        ),
        (
            "no aud",
            with(&|c| {
                c.remove("aud");
            }),
            "jwt_invalid",
        ),
        (
            "no iss",
            with(&|c| {
                c.remove("iss");
            }),
            "jwt_invalid",
        ),
        (
            "a scope claim that is a number",
            with(&|c| {
                c.insert("scope".into(), json!(7));
            }),
            "jwt_invalid",
        ),
        ("not base64", "a.b.c".into(), "jwt_invalid"),
    ];
    let ops = hs256(&claims("ops:read"));
    for (what, token, reason) in &cases {
        let before = denied(&app, &ops, reason).await;
        let r = put_account(&app, "victim", token).await;
        assert!(
            r.headers()
                .get("www-authenticate")
                .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Bearer")),
            "{what}: a challenge"
        );
        let body = assert_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
        assert!(
            !body.to_string().contains(token.as_str()),
            "{what}: the answer echoes no token"
        );
        assert_eq!(
            denied(&app, &ops, reason).await,
            before + 1,
            "{what}: counted as {reason}"
        );
    }
    // An audience list holding ours passes; Okta's `scp` list grants too.
    let listed = with(&|c| {
        c.insert("aud".into(), json!(["another-service", AUDIENCE]));
        c.remove("scope");
        c.insert("scp".into(), json!(["ledger:read"]));
    });
    assert_eq!(
        get(&app, "/v1/accounts/victim", &listed).await.status(),
        StatusCode::NOT_FOUND
    );
    // Within the leeway, an expired clock skew still passes.
    let skewed = with(&|c| {
        c.insert("exp".into(), json!(now() - 5));
    });
    assert_eq!(
        get(&app, "/v1/accounts/victim", &skewed).await.status(),
        StatusCode::NOT_FOUND,
        "no refused request opened the account"
    );
}

/// Refusals counted without a key for `reason`.
async fn denied(app: &TestApp, ops: &str, reason: &str) -> u64 {
    let metrics = get(app, "/metrics", ops).await.text().await.unwrap();
    let series = format!(r#"troupe_auth_denied_total{{key="none",reason="{reason}"}} "#);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

fn base64url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[actix_rt::test]
async fn rsa_and_ec_public_keys_verify_and_a_rotated_key_takes_over_without_a_restart() {
    let keys = TempDir::new().unwrap();
    let (rsa_private, rsa_public) = key_pair(&rcgen::PKCS_RSA_SHA256);
    let (ec_private, ec_public) = key_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let path = write(keys.path(), "idp.pem", &rsa_public);
    let app = app_with(JwtSettings {
        public_key_file: path,
        ..jwt_settings()
    })
    .await;
    let rsa = EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(ec_private.as_bytes()).unwrap();
    let scope = claims("ledger:read ledger:write ops:read");
    let rs256 = mint(&rsa, Algorithm::RS256, &scope);
    let es256 = mint(&ec, Algorithm::ES256, &scope);

    assert_eq!(put_account(&app, "a", &rs256).await.status(), 201);
    assert_eq!(
        put_account(&app, "b", &es256).await.status(),
        StatusCode::UNAUTHORIZED,
        "the EC key is not the configured one yet"
    );
    // The public key is no HMAC secret: an HS256 token signed with the
    // PEM's bytes is refused (algorithm confusion).
    let confused = mint(
        &EncodingKey::from_secret(rsa_public.as_bytes()).unwrap(),
        Algorithm::HS256,
        &scope,
    );
    assert_error(
        put_account(&app, "c", &confused).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    // Rotation, first edit: the provider's new key joins the old one;
    // tokens of both pass.
    write(keys.path(), "idp.pem", &format!("{rsa_public}{ec_public}"));
    let added = eventually(|| async { put_account(&app, "b", &es256).await.status() == 201 }).await;
    assert!(added, "the added EC key was never used");
    assert_eq!(get(&app, "/v1/accounts/a", &rs256).await.status(), 200);
    // Second edit: the old key leaves; its tokens are refused.
    write(keys.path(), "idp.pem", &ec_public);
    let retired =
        eventually(|| async { get(&app, "/v1/accounts/a", &rs256).await.status() == 401 }).await;
    assert!(retired, "tokens of the retired key still pass");

    // A broken key file keeps the key in force.
    write(keys.path(), "idp.pem", "not a key");
    let counted = eventually(|| async {
        let m = get(&app, "/metrics", &es256).await.text().await.unwrap();
        m.contains(r#"troupe_auth_key_reloads_total{result="jwt_rejected"}"#)
    })
    .await;
    assert!(counted, "the rejected reload is counted");
    assert_eq!(get(&app, "/v1/accounts/b", &es256).await.status(), 200);
}

#[actix_rt::test]
async fn an_ids_claim_limits_a_token_to_its_prefix_and_a_token_without_it_is_refused() {
    let app = app_with(JwtSettings {
        hs256_secret: SECRET.into(),
        ids_claim: "troupe_ids".into(),
        ..jwt_settings()
    })
    .await;
    let mut limited = claims("ledger:read ledger:write");
    limited["troupe_ids"] = json!("pay-");
    let limited = hs256(&limited);
    assert_eq!(put_account(&app, "pay-1", &limited).await.status(), 201);
    assert_error(
        put_account(&app, "other", &limited).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let transfer = app
        .client
        .post(app.url("/v1/transfers"))
        .bearer_auth(&limited)
        .json(&json!({"id": "pay-t", "from": "pay-1", "to": "other", "amount": 1}))
        .send()
        .await
        .unwrap();
    assert_error(transfer, StatusCode::FORBIDDEN, "forbidden").await;
    // Without the claim the token would be unlimited: refused.
    let unlimited = hs256(&claims("ledger:read ledger:write"));
    assert_error(
        put_account(&app, "other", &unlimited).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[actix_rt::test]
async fn api_keys_keep_working_beside_tokens() {
    let keys = TempDir::new().unwrap();
    let file = crate::auth::write_keys(
        keys.path(),
        &crate::auth::key("batch", "t-batch", &["ledger:write"], None),
    )
    .display()
    .to_string();
    let app = spawn_app_with(TempDir::new().unwrap(), move |s| {
        s.auth.enabled = true;
        s.auth.keys_file = file;
        s.auth.jwt = JwtSettings {
            hs256_secret: SECRET.into(),
            ..jwt_settings()
        };
    })
    .await;
    assert_eq!(put_account(&app, "k", "t-batch").await.status(), 201);
    assert_eq!(
        put_account(&app, "j", &hs256(&claims("ledger:write")))
            .await
            .status(),
        201
    );
    assert_error(
        put_account(&app, "x", "t-unknown").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[actix_rt::test]
async fn a_jwt_configuration_that_cannot_verify_safely_stops_start_up() {
    let short = JwtSettings {
        hs256_secret: "too short".into(),
        ..jwt_settings()
    };
    let no_audience = JwtSettings {
        hs256_secret: SECRET.into(),
        audience: String::new(),
        ..jwt_settings()
    };
    let missing = JwtSettings {
        public_key_file: "/nonexistent/idp.pem".into(),
        ..jwt_settings()
    };
    for (what, jwt, says) in [
        ("a short secret", short, "at least 32 bytes"),
        ("no audience", no_audience, "issuer and audience"),
        ("a missing key file", missing, "/nonexistent/idp.pem"),
    ] {
        let dir = TempDir::new().unwrap();
        let mut settings = crate::helpers::test_settings(dir.path());
        settings.auth.enabled = true;
        settings.auth.jwt = jwt;
        let built = troupe::startup::Application::build(settings).await;
        let error = built.err().map(|e| format!("{e:#}"));
        assert!(
            error.as_deref().is_some_and(|e| e.contains(says)),
            "{what}: {error:?}"
        );
    }
    // Through the configuration layers each is refused before anything
    // starts, naming the key (and never printing the secret).
    for (what, env, key) in [
        (
            "no audience",
            vec![
                ("TROUPE__AUTH__JWT__HS256_SECRET", SECRET),
                ("TROUPE__AUTH__JWT__ISSUER", ISSUER),
            ],
            "auth.jwt.audience",
        ),
        (
            "a short secret",
            vec![
                ("TROUPE__AUTH__JWT__HS256_SECRET", "short-secret-value"),
                ("TROUPE__AUTH__JWT__ISSUER", ISSUER),
                ("TROUPE__AUTH__JWT__AUDIENCE", AUDIENCE),
            ],
            "auth.jwt.hs256_secret",
        ),
        (
            "a leeway of a day",
            vec![
                ("TROUPE__AUTH__JWT__HS256_SECRET", SECRET),
                ("TROUPE__AUTH__JWT__ISSUER", ISSUER),
                ("TROUPE__AUTH__JWT__AUDIENCE", AUDIENCE),
                ("TROUPE__AUTH__JWT__LEEWAY_S", "86400"),
            ],
            "auth.jwt.leeway_s",
        ),
        (
            "an issuer without a key",
            vec![("TROUPE__AUTH__JWT__ISSUER", ISSUER)],
            "auth.jwt.issuer",
        ),
    ] {
        let (status, _, stderr) = crate::helpers::troupe_config_printing(&env).await;
        assert!(!status.success(), "{what}");
        assert!(stderr.contains(key), "{what}: {stderr}");
        assert!(!stderr.contains("short-secret-value"), "{what}: {stderr}");
    }
}

/// Verified tokens are remembered, but never past their `exp`: a token
/// used while valid is refused as expired once its time is up.
#[actix_rt::test]
async fn a_remembered_token_is_refused_once_it_expires() {
    let app = app_with(JwtSettings {
        hs256_secret: SECRET.into(),
        leeway_s: 0,
        ..jwt_settings()
    })
    .await;
    let mut short = claims("ledger:read ledger:write");
    short["exp"] = json!(now() + 2);
    let short = hs256(&short);
    assert_eq!(put_account(&app, "a", &short).await.status(), 201);
    assert_eq!(get(&app, "/v1/accounts/a", &short).await.status(), 200);
    // Both workers may have remembered it by now; past exp, each refuses.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    for _ in 0..4 {
        let r = get(&app, "/v1/accounts/a", &short).await;
        let body = assert_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("expired")),
            "{body}"
        );
    }
}
