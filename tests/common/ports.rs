//! Loopback ports for server processes started by tests (and benches): picking them, and
//! telling whether a started process lost them to another process.
//!
//! A picked port is only free at the moment it is picked: the gateway binds it later, and in
//! between any other process on the machine (the other test binaries, which `cargo test` runs
//! in parallel, their mocks, the kernel's choice of a source port) may take it. The gateway
//! cannot be given port 0 instead: pingora binds its listeners itself and does not report the
//! port it got. So a start that lost its ports is recognised from the process's own words
//! ([`port_taken`]) and retried with fresh ports, a bounded number of times ([`START_ATTEMPTS`]);
//! a start that fails for any other reason is not retried. And a process counts as serving only
//! once it holds the listening sockets itself ([`listens_on`]): when another gateway took the
//! port, a health check on it would be answered, by the wrong process.
#![allow(dead_code)]

use std::net::TcpListener;

/// Start attempts on fresh ports before a start that keeps losing its ports fails the test.
pub const START_ATTEMPTS: usize = 5;

/// A free loopback port (bound then released; the gateway binds it right after). Never the
/// same port twice in one test process: tests run in parallel, and the kernel may hand a just
/// released port to the next `bind(0)`, which would put two gateways on one port. Other
/// processes are not covered: see the module documentation.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&port) {
            seen.push(port);
            return port;
        }
    }
}

/// True when a joule process's output (log and stderr) says one of its listen addresses was
/// in use: either its own start-up check failed (`cannot listen on …: Address already in use`,
/// exit status 1), or that check passed and pingora's bind then found the port taken
/// (pingora logs a warning and retries for 30 s, then gives up without exiting).
/// Any other failure, including other bind errors, is a real start-up failure.
pub fn port_taken(output: &str) -> bool {
    output.lines().any(|l| (l.contains("cannot listen on") && l.contains("Address already in use")) || l.contains("is in use, will try again"))
}

/// True when process `pid` holds a TCP socket listening on 127.0.0.1:`port` (or on any
/// address with that port), read from `/proc`. Not Linux: always true (no such check there).
#[cfg(target_os = "linux")]
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| Some(target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else { return false };
    let held = listening_inodes(&table, port).any(|inode| inodes.iter().any(|i| i == inode));
    held
}

#[cfg(not(target_os = "linux"))]
pub fn listens_on(_pid: u32, _port: u16) -> bool {
    true
}

/// Socket inodes of the rows of a `/proc/net/tcp` table in state LISTEN on local port `port`
/// at 127.0.0.1 or 0.0.0.0.
fn listening_inodes(table: &str, port: u16) -> impl Iterator<Item = &str> {
    const LISTEN: &str = "0A";
    let local = [format!("0100007F:{port:04X}"), format!("00000000:{port:04X}")];
    table.lines().skip(1).filter_map(move |row| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …
        let f: Vec<&str> = row.split_whitespace().collect();
        (f.len() > 9 && local.iter().any(|l| l == f[1]) && f[3] == LISTEN).then(|| f[9])
    })
}
