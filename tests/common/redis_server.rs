//! A throwaway Redis (or Valkey) server on a Unix socket in a temporary directory, for the
//! shared-limits tests: started, stopped and started again by the test itself (the binary
//! comes from `scripts/setup`: Debian's `redis-server`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits (bounded) until it answers `PING`.
    pub fn start() -> RedisServer {
        let mut s = RedisServer { dir: tempfile::tempdir().expect("tempdir"), child: None };
        s.start_server();
        s
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL joule's `[limits] url` takes.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub fn start_server(&mut self) {
        let bin = ["/usr/bin/redis-server", "/usr/bin/valkey-server"].into_iter().find(|p| std::path::Path::new(p).exists()).expect("redis-server (scripts/setup installs it)");
        let child = Command::new(bin)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(Instant::now() < deadline, "redis-server did not answer PING within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop_server(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered — a server
    /// that is slow rather than gone.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg(format!("-{name}")).arg(c.id().to_string()).status();
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(self.socket()) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop_server();
    }
}
