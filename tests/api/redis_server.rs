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
}

impl RedisServer {
    /// A throwaway server with no persistence.
    pub fn start() -> Self {
        let owned = TempDir::new().expect("temp dir");
        let dir = owned.path().to_path_buf();
        Self::spawn(free_port(), dir, Some(owned), false)
    }

    /// A server with `appendonly yes` and `appendfsync always` in `dir`.
    pub fn start_durable(dir: &Path, port: u16) -> Self {
        Self::spawn(port, dir.to_path_buf(), None, true)
    }

    fn spawn(port: u16, dir: PathBuf, owned: Option<TempDir>, durable: bool) -> Self {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&dir)
            .args([
                "--appendonly",
                if durable { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command
            .spawn()
            .expect("redis-server is on PATH (make test installs it)");
        let server = Self {
            port,
            dir,
            _owned: owned,
            child: Some(child),
            durable,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        for _ in 0..200 {
            if ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not start", self.port);
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
        let restarted = Self::spawn(self.port, self.dir.clone(), None, self.durable);
        self.child = restarted.child_taken();
    }

    fn child_taken(mut self) -> Option<Child> {
        self.child.take()
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

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16];
    stream.write_all(b"PING\r\n").is_ok()
        && stream
            .read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}
