//! A real `redis-server` for one test: its own free port and temporary
//! directory, stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use troupe::settings::{Settings, StoreBackend};

use crate::helpers::free_port;

pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    _owned: Option<TempDir>,
    child: Option<Child>,
    durable: bool,
    /// More arguments for redis-server.
    extra: Vec<String>,
}

impl RedisServer {
    /// A throwaway server with no persistence.
    pub fn start() -> Self {
        let owned = TempDir::new().expect("temp dir");
        let dir = owned.path().to_path_buf();
        Self::start_on_a_free_port(dir, Some(owned), false, &[])
    }

    /// A throwaway server with more `args` (`--maxmemory-policy x`).
    pub fn start_with(args: &[&str]) -> Self {
        let owned = TempDir::new().expect("temp dir");
        let dir = owned.path().to_path_buf();
        Self::start_on_a_free_port(dir, Some(owned), false, args)
    }

    /// A server with `appendonly yes` and `appendfsync always` in `dir`.
    pub fn start_durable(dir: &Path) -> Self {
        Self::start_on_a_free_port(dir.to_path_buf(), None, true, &[])
    }

    /// A port can be taken between `free_port` and redis-server's bind:
    /// then another port is tried.
    fn start_on_a_free_port(
        dir: PathBuf,
        owned: Option<TempDir>,
        durable: bool,
        extra: &[&str],
    ) -> Self {
        let mut owned = owned;
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                dir: dir.clone(),
                _owned: None,
                child: None,
                durable,
                extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            };
            if server.spawn().is_ok() {
                server._owned = owned.take();
                return server;
            }
        }
        panic!("redis-server did not start on any free port");
    }

    /// Starts redis-server on `self.port` and waits until it answers as
    /// this test's server (its `dir`), not another's on the same port.
    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                if self.durable { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(
            command
                .spawn()
                .expect("redis-server is on PATH (make test installs it)"),
        );
        for _ in 0..200 {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("redis-server exited: {status}"));
            }
            if let Some(dir) = served_dir(self.port) {
                let ours = std::fs::canonicalize(&self.dir).unwrap_or(self.dir.clone());
                if Path::new(&dir) == ours {
                    return Ok(());
                }
                self.kill();
                return Err(format!(
                    "another redis-server ({dir}) answers on {}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill();
        Err(format!("redis-server on port {} did not answer", self.port))
    }

    /// Whether the next start or restart runs with `appendonly yes` (a
    /// restore loads an RDB with it off).
    pub fn set_appendonly(&mut self, on: bool) {
        self.durable = on;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown save, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`hung`) or SIGCONT: a Redis that accepts connections and
    /// answers nothing, then carries on.
    pub fn freeze(&self, hung: bool) {
        let signal = if hung {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, signal).expect("signal redis-server");
        }
    }

    /// Starts again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("redis-server did not restart on its port: {e}");
        }
    }

    /// Points a test server's settings at this Redis.
    pub fn configure(&self, settings: &mut Settings) {
        settings.store.backend = StoreBackend::Redis;
        settings.store.redis.url = self.url();
        settings.store.redis.command_timeout_ms = 500;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `dir` of the redis-server answering on `port`, if one answers.
fn served_dir(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    stream.write_all(b"CONFIG GET dir\r\n").ok()?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).ok()?;
    // *2 $3 dir $N <path>: the path is the last line.
    let reply = std::str::from_utf8(&buf[..n]).ok()?;
    reply
        .strip_prefix("*2\r\n")
        .and_then(|r| r.trim_end().rsplit("\r\n").next())
        .map(str::to_owned)
}
