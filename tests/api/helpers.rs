//! One way to start the service for a test: its own port, its own data
//! directory, real HTTP over loopback. Logs stay silent unless `TEST_LOG`
//! is set.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;
use troupe::settings::{LogFormat, LogSettings, Settings, Sources};
use troupe::startup::{Application, Controls};

static LOGS: Once = Once::new();

pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// A writable copy of the configuration directory, for tests that edit
/// `local.toml` under a running server.
pub fn config_dir_copy() -> TempDir {
    let copy = TempDir::new().expect("temp dir");
    for entry in std::fs::read_dir(config_dir()).expect("the config directory") {
        let path = entry.expect("a config file").path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, copy.path().join(name)).expect("copy a config file");
        }
    }
    copy
}

/// `troupe config` through the binary with `env`: its exit status and
/// what it printed on stdout.
pub async fn troupe_config(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let (status, stdout, _) = troupe_config_printing(env).await;
    (status, stdout)
}

/// As [`troupe_config`], with what it printed on stderr too.
pub async fn troupe_config_printing(
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_troupe"));
    command.arg("--config-dir").arg(config_dir()).arg("config");
    for (k, v) in env {
        command.env(k, v);
    }
    let printed = command.output().await.expect("the troupe binary runs");
    (
        printed.status,
        String::from_utf8_lossy(&printed.stdout).into_owned(),
        String::from_utf8_lossy(&printed.stderr).into_owned(),
    )
}

/// Whether `check` holds within 5 s (polled every 50 ms): for what a
/// background reload or index makes true a little later.
pub async fn eventually<F, Fut>(check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The settings of a test server: defaults, a free port, `dir` as store.
pub fn test_settings(dir: &Path) -> Settings {
    let sources = Sources {
        config_dir: Some(config_dir()),
        env: Some("test".into()),
        overrides: vec![
            ("server.port".into(), "0".into()),
            ("server.workers".into(), "2".into()),
            ("store.path".into(), dir.display().to_string()),
        ],
        remote: Vec::new(),
        // The suite's servers never read the process environment.
        environment: Some(Default::default()),
    };
    Settings::load(&sources).expect("test settings load")
}

pub struct TestApp {
    pub address: String,
    /// The operations listener (`server.ops_bind`), when configured.
    pub ops_address: Option<String>,
    pub client: Client,
    pub dir: TempDir,
    pub app_runtime: troupe::runtime::Runtime,
    pub background: troupe::background::Background,
    handle: ServerHandle,
    task: actix_rt::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TempDir::new().expect("temp dir"), |_| {}).await
}

pub async fn spawn_app_with(dir: TempDir, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_controlled(dir, tweak, Controls::default()).await
}

/// A test server whose store is wrapped by `layer` (fault injection).
pub async fn spawn_app_layered(
    tweak: impl FnOnce(&mut Settings),
    layer: troupe::startup::StoreLayer,
) -> TestApp {
    spawn_app_layered_in(TempDir::new().expect("temp dir"), tweak, layer).await
}

/// As [`spawn_app_layered`], on the data in `dir` (a restart).
pub async fn spawn_app_layered_in(
    dir: TempDir,
    tweak: impl FnOnce(&mut Settings),
    layer: troupe::startup::StoreLayer,
) -> TestApp {
    let controls = Controls {
        store_layer: Some(layer),
        ..Controls::default()
    };
    spawn_app_controlled(dir, tweak, controls).await
}

/// A test server that reloads its configuration from `sources`.
pub async fn spawn_app_reloading(dir: TempDir, sources: Sources) -> TestApp {
    spawn_app_reloading_layered(dir, sources, None).await
}

/// As [`spawn_app_reloading`], its store wrapped by `layer`.
pub async fn spawn_app_reloading_layered(
    dir: TempDir,
    mut sources: Sources,
    layer: Option<troupe::startup::StoreLayer>,
) -> TestApp {
    sources
        .overrides
        .push(("store.path".into(), dir.path().display().to_string()));
    // As the binary starts: the remote layer (etcd) is read first.
    let (settings, sources, _) = troupe::remote::resolve(sources)
        .await
        .expect("test settings load");
    let controls = Controls {
        sources: Some(sources),
        log_filter: None,
        store_layer: layer,
    };
    spawn_app_controlled(dir, |s| *s = settings, controls).await
}

async fn spawn_app_controlled(
    dir: TempDir,
    tweak: impl FnOnce(&mut Settings),
    controls: Controls,
) -> TestApp {
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            troupe::telemetry::init_logging(&LogSettings {
                filter: "info,troupe=trace".into(),
                format: LogFormat::Pretty,
            });
        }
    });
    let mut settings = test_settings(dir.path());
    tweak(&mut settings);
    let app = Application::build_with(settings, controls)
        .await
        .expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let ops_address = app.ops_port().map(|p| format!("http://127.0.0.1:{p}"));
    let handle = app.server_handle();
    let app_runtime = app.runtime().clone();
    let background = app.background().clone();
    let task = actix_rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        ops_address,
        client: Client::new(),
        dir,
        app_runtime,
        background,
        handle,
        task,
    }
}

impl TestApp {
    /// Stops the server gracefully and closes the store; returns the data
    /// directory for a restart.
    pub async fn stop(self) -> TempDir {
        self.handle.stop(true).await;
        self.task
            .await
            .expect("server task")
            .expect("server stops cleanly");
        self.dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn put(&self, path: &str, body: Value) -> Response {
        self.client
            .put(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_with_key(&self, path: &str, key: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn open(&self, id: &str) {
        let r = self.put(&format!("/v1/accounts/{id}"), json!({})).await;
        assert_eq!(r.status(), StatusCode::CREATED, "opening {id}");
    }

    pub async fn deposit(&self, id: &str, amount: u64) -> Response {
        self.post(
            &format!("/v1/accounts/{id}/deposits"),
            json!({ "amount": amount }),
        )
        .await
    }

    pub async fn balance(&self, id: &str) -> i64 {
        let body = json_of(self.get(&format!("/v1/accounts/{id}")).await).await;
        body["balance"].as_i64().expect("a balance")
    }

    /// Polls `id`'s balance until it is `balance`; panics after 5 s.
    pub async fn wait_balance(&self, id: &str, balance: i64) {
        let mut last = 0;
        for _ in 0..250 {
            last = self.balance(id).await;
            if last == balance {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{id}'s balance never reached {balance}; last {last}");
    }
}

impl TestApp {
    /// The value of one series of `/metrics` (its full name and labels, as
    /// printed), if present.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_at(&self.client, &self.address, series).await
    }

    /// Polls `/metrics` until `series` satisfies `holds` (shards report every
    /// 250 ms); panics with the last value after five seconds.
    pub async fn wait_metric(&self, series: &str, holds: impl Fn(f64) -> bool) -> f64 {
        let mut last = None;
        for _ in 0..100 {
            last = self.metric(series).await;
            if let Some(v) = last.filter(|v| holds(*v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{series} never held; last value {last:?}");
    }
}

/// The value of one series of `/metrics` at `base` (its full name and
/// labels, as printed), if present.
pub async fn metric_at(client: &Client, base: &str, series: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Opens account `id` on the server at `base`: `201`.
pub async fn open_at(client: &Client, base: &str, id: &str) {
    let r = client
        .put(format!("{base}/v1/accounts/{id}"))
        .json(&json!({}))
        .send()
        .await
        .expect("a reply");
    assert_eq!(r.status(), StatusCode::CREATED);
}

pub async fn json_of(response: Response) -> Value {
    response.json().await.expect("a JSON body")
}

/// Asserts the API's error shape and code, and returns the body.
pub async fn assert_error(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], json!(code), "body: {body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(body["error"]["request_id"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(body["error"]["trace_id"]
        .as_str()
        .is_some_and(|m| m.len() == 32));
    body
}

/// Every entry of an account, following `next`.
pub async fn all_entries(client: &Client, base: &str, id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let url = format!("{base}/v1/accounts/{id}/entries?after={after}&limit=1000");
        let page: Value = client
            .get(url)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json");
        out.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => return out,
        }
    }
}

/// Checks that an account's journal replays to its balance: gapless
/// sequence numbers, and each `balance_after` follows from the last.
pub fn replay_journal(entries: &[Value]) -> i64 {
    let mut balance = 0i64;
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "gapless journal");
        let amount = e["amount"].as_i64().expect("amount");
        balance += match e["kind"].as_str() {
            Some("deposit" | "transfer_credit" | "refund") => amount,
            Some("withdrawal" | "transfer_debit") => -amount,
            other => panic!("unknown entry kind {other:?}"),
        };
        assert_eq!(e["balance_after"].as_i64(), Some(balance), "entry {e}");
    }
    balance
}

/// A free loopback port for a child process. Only for servers that cannot
/// pick their own (etcd, redis-server): the port is free when returned, not
/// reserved, so their helpers check they reached their own child.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The service as a child process with `dir` as its store. It listens on
/// port 0, so the kernel picks a port no other test holds, and reports it
/// in its "troupe listening" log line (JSON logs, read from its stdout).
/// A restarted child gets a new port: use the new [`Child::address`].
pub struct Child {
    pub process: tokio::process::Child,
    pub address: String,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// Lines of child output kept for [`Child::wait_log`]; later ones are
/// dropped (a test that needs more reads sooner).
const KEPT_LINES: usize = 100_000;

impl Child {
    pub async fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        Self::start_in(dir, &config_dir(), extra_env).await
    }

    /// As [`Child::start`], with its own configuration directory.
    pub async fn start_in(dir: &Path, config: &Path, extra_env: &[(&str, &str)]) -> Self {
        Self::launch(&[], dir, config, extra_env).await
    }

    /// As [`Child::start`], run by `wrapper` (a command and its arguments,
    /// e.g. `strace -f ...`), which runs the binary as its own child.
    pub async fn start_under(wrapper: &[&str], dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        Self::launch(wrapper, dir, &config_dir(), extra_env).await
    }

    async fn launch(
        wrapper: &[&str],
        dir: &Path,
        config: &Path,
        extra_env: &[(&str, &str)],
    ) -> Self {
        let binary = env!("CARGO_BIN_EXE_troupe");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = tokio::process::Command::new(program);
                c.args(args).arg(binary);
                c
            }
            None => tokio::process::Command::new(binary),
        };
        command
            .args(["--port", "0", "--data-dir", &dir.display().to_string()])
            .arg("--config-dir")
            .arg(config)
            .env("TROUPE__SERVER__WORKERS", "2")
            .env("TROUPE__LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .env_remove("TROUPE_ENV")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let mut process = command.spawn().expect("the troupe binary starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let stdout = process.stdout.take().expect("piped stdout");
        let stderr = process.stderr.take().expect("piped stderr");
        let readers = vec![
            tokio::spawn(keep_lines(stdout, lines.clone(), Some(port_tx))),
            tokio::spawn(keep_lines(stderr, lines.clone(), None)),
        ];
        let port = match tokio::time::timeout(Duration::from_secs(30), port_rx).await {
            Ok(Ok(port)) => port,
            _ => {
                let status = process.try_wait();
                panic!(
                    "the child reported no port (exit: {status:?}); its output:\n{}",
                    lines.lock().map(|l| l.join("\n")).unwrap_or_default()
                )
            }
        };
        let mut child = Self {
            process,
            address: format!("http://127.0.0.1:{port}"),
            lines,
            readers,
        };
        child.wait_ready().await;
        child
    }

    async fn wait_ready(&mut self) {
        let client = Client::new();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.process.try_wait() {
                panic!(
                    "the child exited before it was ready: {status}\n{}",
                    self.output()
                );
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.address)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the child did not become ready\n{}", self.output());
    }

    /// Waits for the process to exit and for its output to be read to the
    /// end: after this, [`Child::output`] holds everything it printed.
    pub async fn exit(&mut self) -> std::process::ExitStatus {
        let status = self
            .process
            .wait()
            .await
            .expect("the child can be waited on");
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        status
    }

    /// Everything the child printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The first JSON log line from index `from` on that `matches`, with
    /// its index; panics after `within`.
    pub async fn wait_log(
        &self,
        from: usize,
        within: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> (usize, Value) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let found = self.lines.lock().ok().and_then(|lines| {
                lines.iter().enumerate().skip(from).find_map(|(i, l)| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .filter(|v| matches(v))
                        .map(|v| (i, v))
                })
            });
            if let Some(found) = found {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no such log line within {within:?}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.process.id().expect("a running child") as i32)
    }
}

/// Keeps a child's output lines; on the first "troupe listening" line
/// sends its port. Echoes to stderr when `TEST_LOG` is set.
async fn keep_lines(
    output: impl tokio::io::AsyncRead + Unpin,
    lines: Arc<Mutex<Vec<String>>>,
    mut port: Option<tokio::sync::oneshot::Sender<u16>>,
) {
    use tokio::io::AsyncBufReadExt;
    let echo = std::env::var_os("TEST_LOG").is_some();
    let mut reader = tokio::io::BufReader::new(output);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        match reader.read_until(b'\n', &mut bytes).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // A line that is not UTF-8 (a panic message, say) is kept, lossily.
        let line = String::from_utf8_lossy(&bytes).trim_end().to_owned();
        if echo {
            eprintln!("{line}");
        }
        if port.is_some() {
            let listening = serde_json::from_str::<Value>(&line)
                .ok()
                .filter(|v| v["fields"]["message"] == "troupe listening")
                .and_then(|v| v["fields"]["port"].as_u64());
            if let Some(p) = listening.and_then(|p| u16::try_from(p).ok()) {
                if let Some(tx) = port.take() {
                    let _ = tx.send(p);
                }
            }
        }
        if let Ok(mut kept) = lines.lock() {
            if kept.len() < KEPT_LINES {
                kept.push(line);
            }
        }
    }
}
