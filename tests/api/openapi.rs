//! The OpenAPI document as machines meet it: a standard validator accepts
//! it, every operation declares its path parameters, headers and every
//! status the server can answer, a client generated from it by a standard
//! generator (openapi-python-client, from PyPI) drives the ledger over
//! real HTTP with a bearer key, and `/docs` renders in headless Chromium
//! with every other host unreachable (a screenshot is kept).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

use crate::helpers::{json_of, spawn_app, spawn_app_with, TestApp};

async fn document(app: &TestApp) -> Value {
    json_of(app.get("/openapi.json").await).await
}

fn write_document(dir: &Path, doc: &Value) -> std::path::PathBuf {
    let path = dir.join("openapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    path
}

/// Runs a command to completion; its stdout, or a panic with everything
/// it printed.
fn run(command: &mut Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); scripts/deps.sh test installs it"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every `(method, path, operation)` of the document.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            all.push((method.clone(), path.clone(), op.clone()));
        }
    }
    all
}

#[actix_rt::test]
async fn the_document_passes_a_standard_validator_and_declares_what_the_server_answers() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let dir = TempDir::new().unwrap();
    let path = write_document(dir.path(), &doc);
    run(
        Command::new("python3")
            .args(["-m", "openapi_spec_validator"])
            .arg(&path),
        "openapi-spec-validator",
    );

    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let what = format!("{method} {path}");
        let id = op["operationId"].as_str().expect("an operationId");
        assert!(ids.insert(id.to_owned()), "{what}: operationId {id} twice");
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let declared = |name: &str, place: &str| {
            params
                .iter()
                .find(|p| p["name"] == name && p["in"] == place)
                .cloned()
        };
        for name in path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        {
            let p = declared(name, "path").unwrap_or_else(|| panic!("{what}: no {name}"));
            assert!(p["schema"].is_object(), "{what}: {name} has a schema");
        }
        if let Some(id) = declared("id", "path") {
            assert_eq!(id["schema"]["maxLength"], 128, "{what}");
            assert!(id["schema"]["pattern"].is_string(), "{what}");
        }
        for header in ["X-Request-Id", "traceparent"] {
            assert!(declared(header, "header").is_some(), "{what}: {header}");
        }
        let responses = op["responses"].as_object().expect("responses");
        let has = |status: &str| responses.contains_key(status);
        assert!(has("500"), "{what}: 500");
        for (status, response) in responses {
            assert!(
                response["headers"]["X-Request-Id"].is_object(),
                "{what} {status}: X-Request-Id"
            );
            if status.starts_with('4') || status.starts_with('5') {
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{what} {status}: the error shape"
                );
            }
            if status == "429" || status == "503" {
                assert!(
                    response["headers"]["Retry-After"].is_object(),
                    "{what} {status}"
                );
            }
        }
        let to_actor = path.starts_with("/v1/accounts")
            || path.starts_with("/v1/transfers")
            || path.starts_with("/v1/actors/{kind}/{id}");
        if to_actor {
            for status in ["429", "503", "504"] {
                assert!(has(status), "{what}: {status}");
            }
            assert!(declared("X-Request-Timeout", "header").is_some(), "{what}");
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413", "415"] {
                assert!(has(status), "{what}: {status}");
            }
        }
        if let Some(key) = declared("Idempotency-Key", "header") {
            assert_eq!(key["schema"]["maxLength"], 128, "{what}");
            let text = key["description"].as_str().unwrap_or_default();
            assert!(text.contains("Scoped to the actor"), "{what}: {text}");
            let ok = responses
                .iter()
                .find(|(s, _)| s.starts_with('2'))
                .expect("a success");
            assert!(ok.1["headers"]["Idempotent-Replayed"].is_object(), "{what}");
        }
        if path != "/healthz" && path != "/readyz" {
            assert!(has("401") && has("403"), "{what}: 401 and 403");
        }
    }
    assert_eq!(ids.len(), 15, "every operation: {ids:?}");
    // The error body's code is the closed list of codes.
    let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
    for code in [
        "invalid_request",
        "insufficient_funds",
        "unauthorized",
        "overloaded",
    ] {
        assert!(
            codes
                .as_array()
                .is_some_and(|c| c.contains(&Value::from(code))),
            "{code} in {codes}"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["$ref"],
        "#/components/schemas/ErrorCode"
    );
    assert!(doc["components"]["schemas"]["TransferRequest"]["examples"].is_array());
}

/// The document tells the truth: every operation is sent as it is, with
/// a bad id, with a bad `X-Request-Timeout`, with a body that is not JSON
/// and one too large, and every status the server answers is one the
/// document declares for that operation.
#[actix_rt::test]
async fn every_status_the_server_answers_is_declared() {
    let app = spawn_app().await;
    app.open("x1").await;
    let doc = document(&app).await;
    let mut tried = 0;
    for (method, path, op) in operations(&doc) {
        let declared: BTreeSet<String> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .cloned()
            .collect();
        let fill = |id: &str| {
            path.replace("{kind}", "account")
                .replace("{id}", id)
                .replace("{message}", "get")
        };
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let has_body = op.get("requestBody").is_some();
        let send = |url: String,
                    header: Option<(&'static str, &'static str)>,
                    body: Option<(String, &'static str)>| {
            let mut request = app.client.request(method.clone(), app.url(&url));
            if let Some((name, value)) = header {
                request = request.header(name, value);
            }
            match body {
                Some((text, kind)) => request = request.header("Content-Type", kind).body(text),
                None if has_body => {
                    request = request.json(&serde_json::json!({}));
                }
                None => {}
            }
            async move { request.send().await.expect("an answer").status() }
        };
        let mut cases = vec![("as documented", send(fill("x1"), None, None).await, None)];
        if path.contains("{id}") {
            cases.push((
                "a bad id",
                send(fill("bad%20id"), None, None).await,
                Some(400),
            ));
        }
        if path.starts_with("/v1/") && path != "/v1/actors" {
            let status = send(fill("x1"), Some(("X-Request-Timeout", "soon")), None).await;
            cases.push(("a bad X-Request-Timeout", status, Some(400)));
        }
        if has_body {
            let not_json = send(fill("x1"), None, Some(("amount=1".into(), "text/plain"))).await;
            cases.push(("a text/plain body", not_json, Some(415)));
            let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(70_000));
            let large = send(fill("x1"), None, Some((huge, "application/json"))).await;
            cases.push(("a body over the limit", large, Some(413)));
        }
        for (case, status, expected) in cases {
            tried += 1;
            let what = format!("{method} {path} with {case}");
            if let Some(expected) = expected {
                assert_eq!(status.as_u16(), expected, "{what}");
            }
            assert!(
                declared.contains(status.as_str()),
                "{what}: {status} is not declared ({declared:?})"
            );
        }
    }
    assert!(tried > 40, "{tried} probes");
}

#[actix_rt::test]
async fn a_client_generated_from_the_document_drives_the_ledger() {
    let keys = TempDir::new().unwrap();
    let scopes = ["ledger:read", "ledger:write", "actors:send"];
    let file = crate::auth::key("generated", "t-generated", &scopes, None);
    let file = crate::auth::write_keys(keys.path(), &file)
        .display()
        .to_string();
    let app = spawn_app_with(TempDir::new().unwrap(), move |s| {
        s.auth.enabled = true;
        s.auth.keys_file = file;
    })
    .await;
    let doc = document(&app).await;
    let dir = TempDir::new().unwrap();
    let path = write_document(dir.path(), &doc);
    let config = dir.path().join("generator.yaml");
    std::fs::write(
        &config,
        "post_hooks: []\nproject_name_override: troupe-client\npackage_name_override: troupe_client\n",
    )
    .unwrap();
    let package = dir.path().join("troupe_client");
    let generated = run(
        Command::new("python3")
            .args(["-m", "openapi_python_client", "generate", "--meta", "none"])
            .arg("--path")
            .arg(&path)
            .arg("--config")
            .arg(&config)
            .arg("--output-path")
            .arg(&package),
        "openapi-python-client",
    );
    assert!(
        !generated.to_lowercase().contains("warning"),
        "the generator warned:\n{generated}"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/drive.py");
    let out = tokio::task::spawn_blocking({
        let address = app.address.clone();
        let root = dir.path().to_path_buf();
        move || {
            run(
                Command::new("python3")
                    .arg(script)
                    .arg(address)
                    .arg("t-generated")
                    .env("PYTHONPATH", root),
                "the generated client",
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(out.trim(), "ok");
    // What it did is real: the server holds the transfer's outcome.
    let bob = app
        .client
        .get(app.url("/v1/accounts/bob"))
        .bearer_auth("t-generated")
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(bob).await["balance"], 250);
}

#[actix_rt::test]
async fn the_docs_page_renders_from_troupe_alone() {
    let app = spawn_app().await;
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url("/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
    let page = app.get("/docs/").await.text().await.unwrap();
    assert!(page.contains("swagger-ui"), "{page}");
    // Every asset the page names is troupe's own, and is served.
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        assert!(page.contains(asset), "{asset} in the page");
        let r = app.get(&format!("/docs/{asset}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
    }
    assert!(!page.contains("http://") && !page.contains("https://"));
    let initializer = app
        .get("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
    assert!(
        initializer.contains(r#""validatorUrl": "none""#),
        "no document URL sent to validator.swagger.io: {initializer}"
    );

    // Headless Chromium, the page under a name that is not loopback's (as
    // a user meets it), and every other host sent to a trap that counts
    // connections: the page must render from troupe alone.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docs");
    std::fs::create_dir_all(&shots).unwrap();
    let screenshot = shots.join("docs.png");
    let _ = std::fs::remove_file(&screenshot);
    let profile = TempDir::new().unwrap();
    let trap = Trap::start();
    let trap_port = trap.port;
    let port: u16 = app.address.rsplit(':').next().unwrap().parse().unwrap();
    let url = format!("http://docs.troupe.test:{port}/docs/");
    let rules = format!(
        "--host-resolver-rules=MAP docs.troupe.test 127.0.0.1, MAP * 127.0.0.1:{trap_port}"
    );
    let chromium = |extra: &[String]| {
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=10000",
                "--window-size=1280,2000",
            ])
            .arg(&rules)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url);
        command
    };
    let dom = tokio::task::spawn_blocking({
        let mut command = chromium(&["--dump-dom".to_owned()]);
        move || run(&mut command, "chromium --dump-dom")
    })
    .await
    .unwrap();
    for rendered in [
        "openAccount",
        "startTransfer",
        "/v1/accounts/{id}/deposits",
        "ErrorBody",
    ] {
        assert!(
            dom.contains(rendered),
            "the rendered page lacks {rendered}: {}",
            &dom[..dom.len().min(2000)]
        );
    }
    tokio::task::spawn_blocking({
        let mut command = chromium(&[format!("--screenshot={}", screenshot.display())]);
        move || run(&mut command, "chromium --screenshot")
    })
    .await
    .unwrap();
    let strays: Vec<String> = trap
        .stop()
        .into_iter()
        .map(|first| String::from_utf8_lossy(&first).into_owned())
        // Chromium's own update and sign-in checks go to Google's hosts
        // (their names are in the request or the TLS hello); the page's
        // would go anywhere else.
        .filter(|first| !first.contains("google"))
        .collect();
    assert!(
        strays.is_empty(),
        "the page reached for another host: {strays:?}"
    );
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of {size} bytes");
    println!("docs page screenshot: {}", screenshot.display());
}

/// A listener every other host is sent to: it keeps the first bytes of
/// each connection (an HTTP request's Host, or a TLS hello's server name).
struct Trap {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Vec<u8>>>,
}

impl Trap {
    fn start() -> Self {
        use std::io::Read;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ =
                            stream.set_read_timeout(Some(std::time::Duration::from_millis(500)));
                        // A TLS hello with a post-quantum key share is about
                        // 2 KB, its server name past the first kilobyte.
                        let mut first = Vec::new();
                        let mut buf = [0u8; 4096];
                        while first.len() < 4096 {
                            match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => first.extend_from_slice(&buf[..n]),
                            }
                        }
                        seen.push(first);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
            seen
        });
        Self { port, stop, thread }
    }

    fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
