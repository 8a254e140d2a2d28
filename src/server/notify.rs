//! systemd readiness (`sd_notify`). Under a `Type=notify` unit (`NOTIFY_SOCKET` set), joule
//! says `READY=1` and `MAINPID=<its pid>` once its services run. After a zero-downtime upgrade
//! the new process says it too, which makes it the unit's main process while the old one drains
//! and exits (the unit needs `NotifyAccess=all`; `config/joule.service` is the example).
//! Without `NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Tells systemd this process is ready and is the service's main process.
pub fn ready() {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    if let Err(e) = send(&socket.to_string_lossy(), &message) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// Sends one datagram to `socket`: a path, or an abstract name written `@name`.
fn send(socket: &str, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(message.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(&path.to_string_lossy(), "READY=1\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("joule-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(&format!("@{name}"), "MAINPID=1\n").unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MAINPID=1\n");
        assert!(send(&dir.path().join("absent").to_string_lossy(), "x").is_err());
    }
}
