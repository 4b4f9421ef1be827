//! The remote layer on a real etcd (Debian's `etcd-server`), started by the
//! test on free ports in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use troupe::settings::Sources;

use crate::helpers::{free_port, json_of, spawn_app_reloading, TestApp};

struct Etcd {
    port: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Etcd {
    /// etcd on free ports in `dir`. A port another process took between
    /// `free_port` and etcd's bind is detected and new ports are tried.
    async fn start(dir: &Path) -> Self {
        for _ in 0..5 {
            let mut etcd = Self::unstarted(dir);
            if etcd.spawn().await.is_ok() {
                return etcd;
            }
        }
        panic!("etcd did not start on any free port");
    }

    /// Ports chosen, nothing running yet.
    fn unstarted(dir: &Path) -> Self {
        Self {
            port: free_port(),
            peer: free_port(),
            dir: dir.to_path_buf(),
            child: None,
        }
    }

    /// The member name: unique per test, so `spawn` can tell its own etcd
    /// from another test's on the same port.
    fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "t".into())
    }

    /// Starts etcd and waits until it answers as this test's member.
    async fn spawn(&mut self) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let name = self.name();
        let child = Command::new("etcd")
            .args(["--name", &name, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is on PATH (make test installs etcd-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("etcd exited: {status}"));
            }
            // Bounded: whatever holds the port may accept and never answer.
            let asked = tokio::time::timeout(Duration::from_secs(1), async {
                let mut c = etcd_client::Client::connect([self.url()], None).await?;
                c.member_list().await
            });
            if let Ok(Ok(members)) = asked.await {
                if members.members().iter().any(|m| m.name() == name) {
                    return Ok(());
                }
                self.kill();
                return Err("another etcd answers on this port".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
        Err("etcd did not answer".into())
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn put(&self, key: &str, value: &str) {
        for _ in 0..100 {
            if let Ok(mut client) = etcd_client::Client::connect([self.url()], None).await {
                if client.put(key, value, None).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not write to etcd");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn app_following(etcd_url: &str, config: &Path) -> TestApp {
    std::fs::write(
        config.join("local.toml"),
        format!("[remote.etcd]\nendpoints = [\"{etcd_url}\"]\nprefix = \"/troupe/test/\"\nconnect_timeout_ms = 300\n"),
    )
    .unwrap();
    let sources = Sources {
        config_dir: Some(config.to_path_buf()),
        env: Some("development".into()),
        overrides: vec![
            ("server.port".into(), "0".into()),
            ("server.workers".into(), "2".into()),
        ],
        remote: Vec::new(),
        environment: None,
    };
    spawn_app_reloading(TempDir::new().unwrap(), sources).await
}

async fn eventually(app: &TestApp, key: &str, value: &str) -> bool {
    for _ in 0..300 {
        if json_of(app.get("/config").await).await[key] == Value::String(value.into()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[actix_rt::test]
async fn a_value_put_under_the_prefix_reaches_the_running_server() {
    let data = TempDir::new().unwrap();
    let etcd = Etcd::start(data.path()).await;
    let config = TempDir::new().unwrap();
    let app = app_following(&etcd.url(), config.path()).await;
    etcd.put("/troupe/test/runtime.default_timeout_ms", "2345")
        .await;
    assert!(
        eventually(&app, "runtime.default_timeout_ms", "2345").await,
        "the etcd value never arrived"
    );
    assert_eq!(
        app.app_runtime.options().default_timeout,
        Duration::from_millis(2345)
    );
    etcd.put("/troupe/other/runtime.default_timeout_ms", "1")
        .await;
    etcd.put("/troupe/test/log.filter", "warn").await;
    assert!(eventually(&app, "log.filter", "warn").await);
    assert_eq!(
        app.app_runtime.options().default_timeout,
        Duration::from_millis(2345),
        "keys outside the prefix are ignored"
    );
}

#[actix_rt::test]
async fn etcd_stopped_and_started_again_does_not_disturb_serving() {
    let data = TempDir::new().unwrap();
    let mut etcd = Etcd::start(data.path()).await;
    let config = TempDir::new().unwrap();
    let app = app_following(&etcd.url(), config.path()).await;
    etcd.put("/troupe/test/runtime.idle_timeout_ms", "45000")
        .await;
    assert!(eventually(&app, "runtime.idle_timeout_ms", "45000").await);

    etcd.kill();
    app.open("steady").await;
    for _ in 0..20 {
        assert_eq!(app.deposit("steady", 1).await.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        json_of(app.get("/config").await).await["runtime.idle_timeout_ms"],
        Value::String("45000".into()),
        "the last good value stays"
    );
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);

    etcd.spawn().await.expect("etcd restarts on its ports");
    etcd.put("/troupe/test/runtime.idle_timeout_ms", "46000")
        .await;
    assert!(
        eventually(&app, "runtime.idle_timeout_ms", "46000").await,
        "no reconnection after etcd came back"
    );
    assert_eq!(app.balance("steady").await, 20);
}

/// etcd down when the service starts: the local layers are in force and
/// the service is ready; when etcd comes, its layer arrives with no restart.
#[actix_rt::test]
async fn an_etcd_unreachable_at_start_is_followed_once_it_comes() {
    let data = TempDir::new().unwrap();
    let mut etcd = Etcd::unstarted(data.path());
    let config = TempDir::new().unwrap();
    let app = app_following(&etcd.url(), config.path()).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(
        json_of(app.get("/config").await).await["runtime.default_timeout_ms"],
        Value::String("5000".into())
    );

    etcd.spawn()
        .await
        .expect("etcd starts on the port the service follows");
    etcd.put("/troupe/test/runtime.default_timeout_ms", "4321")
        .await;
    assert!(
        eventually(&app, "runtime.default_timeout_ms", "4321").await,
        "the etcd layer never arrived after etcd came up"
    );
    assert_eq!(
        app.app_runtime.options().default_timeout,
        Duration::from_millis(4321)
    );
}

/// Values already under the prefix are read at start-up: the first request
/// sees them, and `/config` names etcd as their layer.
#[actix_rt::test]
async fn values_under_the_prefix_are_in_force_from_start_up() {
    let data = TempDir::new().unwrap();
    let etcd = Etcd::start(data.path()).await;
    etcd.put("/troupe/test/runtime.default_timeout_ms", "3456")
        .await;
    let config = TempDir::new().unwrap();
    let app = app_following(&etcd.url(), config.path()).await;
    assert_eq!(
        app.app_runtime.options().default_timeout,
        Duration::from_millis(3456),
        "the remote value was not read before serving"
    );
    let shown = json_of(app.get("/config").await).await;
    assert_eq!(
        shown["runtime.default_timeout_ms"],
        Value::String("3456".into())
    );
}

/// Through the binary: `troupe config` shows the etcd layer, read at start,
/// with a key a reload could not apply (it needs a restart), and without
/// the keys etcd may not set (the store). The endpoints come as the
/// comma-separated environment form, the first one a member that accepts
/// connections and never answers: it must not cost the layer.
#[actix_rt::test]
async fn the_binary_reads_etcd_before_it_starts() {
    let data = TempDir::new().unwrap();
    let etcd = Etcd::start(data.path()).await;
    etcd.put("/troupe/bin/server.drain_delay_ms", "777").await;
    etcd.put("/troupe/bin/store.backend", "redis").await;
    // Held for the whole test: no other test can take the port.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = black_hole.local_addr().unwrap().port();
    let endpoints = format!(" http://127.0.0.1:{hung}, {} ,", etcd.url());
    let (status, text) = crate::helpers::troupe_config(&[
        ("TROUPE__REMOTE__ETCD__ENDPOINTS", &endpoints),
        ("TROUPE__REMOTE__ETCD__PREFIX", "/troupe/bin/"),
        ("TROUPE__REMOTE__ETCD__CONNECT_TIMEOUT_MS", "300"),
    ])
    .await;
    assert!(status.success());
    assert!(
        text.lines()
            .any(|l| l == "server.drain_delay_ms = 777    # etcd"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("store.backend = embedded    # ")),
        "etcd set the store:\n{text}"
    );
    drop(black_hole);
}

/// An invalid value in etcd at start is refused as a reload would refuse
/// it: the service starts on its local layers instead of crash-looping.
#[actix_rt::test]
async fn an_invalid_etcd_value_at_start_leaves_the_local_layers_in_force() {
    let data = TempDir::new().unwrap();
    let etcd = Etcd::start(data.path()).await;
    etcd.put("/troupe/test/runtime.mailbox_capacity", "0").await;
    let config = TempDir::new().unwrap();
    let app = app_following(&etcd.url(), config.path()).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(app.app_runtime.options().mailbox_capacity, 1024);
}

/// The environment form with one endpoint (no comma) is a list of one,
/// as the configuration chapter shows it: the binary reads etcd through it.
#[actix_rt::test]
async fn one_endpoint_in_the_environment_form_reaches_etcd() {
    let data = TempDir::new().unwrap();
    let etcd = Etcd::start(data.path()).await;
    etcd.put("/troupe/one/server.drain_delay_ms", "555").await;
    let (status, text) = crate::helpers::troupe_config(&[
        ("TROUPE__REMOTE__ETCD__ENDPOINTS", &etcd.url()),
        ("TROUPE__REMOTE__ETCD__PREFIX", "/troupe/one/"),
    ])
    .await;
    assert!(status.success(), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "server.drain_delay_ms = 555    # etcd"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("remote.etcd.endpoints = [\"http://")),
        "{text}"
    );
}
