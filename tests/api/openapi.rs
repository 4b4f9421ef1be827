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

#[actix_rt::test]
async fn a_client_generated_from_the_document_drives_the_ledger() {
    let keys = TempDir::new().unwrap();
    let file = keys.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[key]]\nname = \"generated\"\nsha256 = {:?}\nscopes = [\"ledger:read\", \"ledger:write\", \"actors:send\"]\n",
            troupe::auth::digest_hex("t-generated")
        ),
    )
    .unwrap();
    let file = file.display().to_string();
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

    // Headless Chromium, every host but loopback unresolvable: the page
    // must render the document from troupe alone.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("docs");
    std::fs::create_dir_all(&shots).unwrap();
    let screenshot = shots.join("docs.png");
    let _ = std::fs::remove_file(&screenshot);
    let profile = TempDir::new().unwrap();
    let url = app.url("/docs/");
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
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--virtual-time-budget=10000",
                "--window-size=1280,2000",
            ])
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
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot of {size} bytes");
    println!("docs page screenshot: {}", screenshot.display());
}
