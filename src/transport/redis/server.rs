//! A `redis-server` of our own, for benchmarks and tests.
use std::time::{Duration, Instant};

use super::Link;
use crate::error::{Error, Result};

/// A `redis-server` of our own on a free loopback port (benchmarks), stopped when dropped.
pub struct LocalServer {
    pub port: u16,
    child: std::process::Child,
}

impl LocalServer {
    /// A server on a free loopback port.
    pub fn start() -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io("a free port", e))?
            .port();
        LocalServer::on(port)
    }

    /// A server on `port` (a restart on the same port, say), once it answers.
    pub fn on(port: u16) -> Result<Self> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::input(format!(
                    "cannot start redis-server ({e}); scripts/setup.sh installs it"
                ))
            })?;
        let server = LocalServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Link::open(&server.url(), Duration::ZERO).is_err() {
            if Instant::now() > deadline {
                return Err(Error::Corrupt("redis-server did not start".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
