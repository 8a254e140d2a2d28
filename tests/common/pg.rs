//! Throwaway PostgreSQL clusters for tests: `initdb` into a temporary directory and a
//! `postgres` listening only on a Unix socket in that directory (no TCP port, so clusters of
//! parallel tests cannot collide). As root, the server runs as the `postgres` user (initdb
//! refuses root). Binaries: `$JOULE_TEST_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin`, else `PATH`. `scripts/setup` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster, stopped and deleted on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

fn pg_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("JOULE_TEST_PG_BIN") {
        return PathBuf::from(b);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, p)) => p,
        None => PathBuf::new(), // rely on PATH
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl PgCluster {
    /// Creates and starts a cluster; panics with the server log if that fails.
    pub fn start() -> PgCluster {
        let as_postgres = is_root();
        // As root, the postgres user must reach the directory: $TMPDIR may sit under /root.
        let parent = if as_postgres { PathBuf::from("/tmp") } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("joule-pg-").tempdir_in(parent).expect("tempdir");
        let c = PgCluster { dir, bin: pg_bin(), as_postgres };
        if c.as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres:"]).arg(c.dir.path()).status().is_ok_and(|s| s.success());
            assert!(ok, "chown of the cluster directory to postgres failed (is PostgreSQL installed? run scripts/setup)");
        }
        let data = c.data();
        c.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]);
        c.start_server();
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = if self.bin.as_os_str().is_empty() { PathBuf::from(tool) } else { self.bin.join(tool) };
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} ({e}); install PostgreSQL with scripts/setup", exe.display()));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn start_server(&self) {
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60",
            self.socket_dir().display()
        );
        let log = self.dir.path().join("server.log").to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &self.data(), "-w", "-t", "60", "-l", &log, "-o", &opts, "start"]);
    }

    /// Stops the server (fast: open connections are cut), waiting until it is down.
    pub fn stop_server(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-w", "-t", "60", "-m", "fast", "stop"]);
    }

    /// A libpq-style connection string for the `postgres` database over the socket.
    pub fn url(&self) -> String {
        format!("host={} port=5432 user=postgres dbname=postgres", self.socket_dir().display())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let exe = if self.bin.as_os_str().is_empty() { PathBuf::from("pg_ctl") } else { self.bin.join("pg_ctl") };
        let data = self.data();
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd.args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
    }
}
