//! HTTPS over real TCP with certificates made in the test (rcgen): the
//! listener serves the configured certificate and refuses plain HTTP; a
//! renewed certificate is served to new connections without a restart,
//! and a broken renewal keeps the one in force; the operations listener
//! speaks TLS too; a pair that does not load stops start-up.

use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use reqwest::{Client, StatusCode};
use serde_json::json;
use tempfile::TempDir;

use crate::helpers::{eventually, spawn_app_with, TestApp};

/// The name the certificates are for; clients resolve it to loopback.
const HOST: &str = "troupe.test";

/// A certificate authority that signs server certificates for [`HOST`].
struct Authority {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate and its private key, in PEM.
    fn server(&self) -> (String, String) {
        self.server_until(None)
    }

    /// As [`Authority::server`], expiring at the start of `year`.
    fn server_until(&self, year: Option<i32>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![HOST.to_owned()]).unwrap();
        if let Some(year) = year {
            params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes both files whole, then renames them into place.
fn install(dir: &Path, (cert, key): &(String, String)) -> (String, String) {
    let put = |name: &str, text: &str| {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
        dir.join(name).display().to_string()
    };
    (put("tls.key", key), put("tls.crt", cert))
}

/// A client that trusts only `authority`, opens a new connection per
/// request, and resolves [`HOST`] to the server's loopback port. (It
/// resumes its TLS sessions, which skip the certificate: only a fresh
/// client shows which certificate is in force.)
fn client_trusting(authority: &Authority, port: u16) -> Client {
    builder_trusting(authority, port)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn builder_trusting(authority: &Authority, port: u16) -> reqwest::ClientBuilder {
    Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(authority.pem.as_bytes()).unwrap())
        .resolve(HOST, ([127, 0, 0, 1], port).into())
}

fn https(port: u16, path: &str) -> String {
    format!("https://{HOST}:{port}{path}")
}

async fn tls_app(files: &TempDir, pair: &(String, String), ops: bool) -> TestApp {
    let (key, cert) = install(files.path(), pair);
    spawn_app_with(TempDir::new().unwrap(), move |s| {
        s.server.tls.cert_file = cert;
        s.server.tls.key_file = key;
        if ops {
            s.server.ops_bind = "127.0.0.1:0".into();
        }
    })
    .await
}

fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

#[actix_rt::test]
async fn the_listener_speaks_https_with_the_configured_certificate_and_refuses_plain_http() {
    let files = TempDir::new().unwrap();
    let authority = Authority::new("test CA");
    let app = tls_app(&files, &authority.server(), false).await;
    let port = port_of(&app.address);
    let client = client_trusting(&authority, port);

    let opened = client
        .put(https(port, "/v1/accounts/a"))
        .json(&json!({"currency": "EUR"}))
        .send()
        .await
        .expect("an HTTPS request");
    assert_eq!(opened.status(), StatusCode::CREATED);
    let deposited = client
        .post(https(port, "/v1/accounts/a/deposits"))
        .json(&json!({"amount": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(deposited.status(), StatusCode::OK);
    let account: serde_json::Value = client
        .get(https(port, "/v1/accounts/a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(account["balance"], 7);

    // HTTP/2 where the client offers it by ALPN (reqwest does), HTTP/1.1
    // where it does not.
    let h2 = client.get(https(port, "/healthz")).send().await.unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let h1 = builder_trusting(&authority, port)
        .http1_only()
        .build()
        .unwrap();
    let h1 = h1.get(https(port, "/healthz")).send().await.unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), StatusCode::OK);

    // Plain HTTP on the TLS port gets no answer.
    let plain = app.client.get(app.url("/healthz")).send().await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // A client that does not trust the issuer refuses the certificate.
    let stranger = client_trusting(&Authority::new("another CA"), port);
    assert!(stranger.get(https(port, "/healthz")).send().await.is_err());
}

#[actix_rt::test]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let files = TempDir::new().unwrap();
    let old = Authority::new("old CA");
    let new = Authority::new("new CA");
    let app = tls_app(&files, &old.server(), false).await;
    let port = port_of(&app.address);
    let (trusts_old, trusts_new) = (client_trusting(&old, port), client_trusting(&new, port));
    assert_eq!(
        trusts_old
            .get(https(port, "/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(trusts_new
        .get(https(port, "/healthz"))
        .send()
        .await
        .is_err());

    install(files.path(), &new.server());
    let renewed =
        eventually(|| async { trusts_new.get(https(port, "/healthz")).send().await.is_ok() }).await;
    assert!(renewed, "the renewed certificate was never served");
    // A fresh client (no TLS session to resume) sees the new one.
    assert!(
        client_trusting(&old, port)
            .get(https(port, "/healthz"))
            .send()
            .await
            .is_err(),
        "new connections get the new certificate"
    );

    let expiry = metric(
        &trusts_new,
        port,
        "troupe_tls_certificate_expiry_timestamp_seconds",
    )
    .await;
    assert!(
        expiry > 4e9,
        "rcgen's certificates last until 4096: {expiry}"
    );

    // A certificate with another certificate's key, then an expired one
    // (a renewal rolled back): each refused and counted, and the renewed
    // pair stays in force.
    let (cert, _) = new.server();
    let (_, other_key) = new.server();
    for (what, pair, rejected) in [
        ("a mismatched pair", (cert, other_key), 1.0),
        ("an expired certificate", new.server_until(Some(2020)), 2.0),
    ] {
        install(files.path(), &pair);
        let series = r#"troupe_tls_reloads_total{result="rejected"}"#;
        let counted =
            eventually(|| async { metric(&trusts_new, port, series).await == rejected }).await;
        assert!(counted, "{what}: the rejected reload is counted");
        // A fresh client: no session to resume, so it checks what is served.
        let fresh = client_trusting(&new, port);
        let served = fresh.get(https(port, "/healthz")).send().await;
        assert!(served.is_ok(), "{what}: {served:?}");
        assert_eq!(
            metric(
                &fresh,
                port,
                "troupe_tls_certificate_expiry_timestamp_seconds"
            )
            .await,
            expiry,
            "{what}: the expiry shown is the one in force"
        );
    }
}

/// A series of `/metrics` over HTTPS, 0 when absent.
async fn metric(client: &Client, port: u16, series: &str) -> f64 {
    let text = client
        .get(https(port, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[actix_rt::test]
async fn the_operations_listener_speaks_tls_too() {
    let files = TempDir::new().unwrap();
    let authority = Authority::new("test CA");
    let app = tls_app(&files, &authority.server(), true).await;
    let ops = port_of(app.ops_address.as_deref().expect("an operations listener"));
    let client = client_trusting(&authority, ops);
    let metrics = client.get(https(ops, "/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let plain = app
        .client
        .get(format!("http://127.0.0.1:{ops}/metrics"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered on the operations port");
}

#[actix_rt::test]
async fn a_certificate_that_does_not_load_stops_start_up() {
    let files = TempDir::new().unwrap();
    let authority = Authority::new("test CA");
    let (cert, _) = authority.server();
    let (_, other_key) = authority.server();
    let mismatched = install(files.path(), &(cert, other_key));
    let cases = [
        ("a key that is not the certificate's", mismatched.clone()),
        (
            "a missing key file",
            (
                files.path().join("absent.key").display().to_string(),
                mismatched.1.clone(),
            ),
        ),
        (
            "a certificate file holding no certificate",
            (mismatched.0.clone(), mismatched.0.clone()),
        ),
    ];
    for (what, (key, cert)) in cases {
        let dir = TempDir::new().unwrap();
        let mut settings = crate::helpers::test_settings(dir.path());
        settings.server.tls.cert_file = cert;
        settings.server.tls.key_file = key;
        let built = troupe::startup::Application::build(settings).await;
        let error = built.err().map(|e| format!("{e:#}"));
        assert!(
            error.as_deref().is_some_and(|e| e.contains("server.tls")),
            "{what}: {error:?}"
        );
    }
    // Through the configuration layers, one file without the other is
    // refused before anything starts.
    let (status, _) =
        crate::helpers::troupe_config(&[("TROUPE__SERVER__TLS__CERT_FILE", "/etc/tls.crt")]).await;
    assert!(!status.success());
}

/// An expired certificate at start is served (with a warning) rather than
/// keeping the service down: clients refuse it, the expiry gauge says why.
#[actix_rt::test]
async fn an_expired_certificate_at_start_is_served_and_shown_expired() {
    let files = TempDir::new().unwrap();
    let authority = Authority::new("test CA");
    let app = tls_app(&files, &authority.server_until(Some(2020)), false).await;
    let port = port_of(&app.address);
    assert!(
        client_trusting(&authority, port)
            .get(https(port, "/healthz"))
            .send()
            .await
            .is_err(),
        "a client checking dates refuses it"
    );
    let lenient = Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(HOST, ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let expiry = metric(
        &lenient,
        port,
        "troupe_tls_certificate_expiry_timestamp_seconds",
    )
    .await;
    assert_eq!(expiry, 1_577_836_800.0, "2020-01-01");
}
