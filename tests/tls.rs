//! The TLS listener with several certificates: each server name gets its certificate (SNI),
//! clients without SNI get the default, a renewed file is served to new connections while open
//! ones finish on the old certificate, a bad file keeps the old one serving, and TLS 1.0/1.1
//! are refused.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use joule::mock::{TestCa, TlsIdentity};
use rustls::pki_types::ServerName;

const MODEL: &str = "llama-tls";

fn write(dir: &std::path::Path, name: &str, id: &TlsIdentity) -> (String, String) {
    let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&c, &id.cert_chain_pem).unwrap();
    std::fs::write(&k, &id.key_pem).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// Replaces a file the way certbot and cert-manager do: a new file renamed over the old.
fn replace(path: &str, content: &str) {
    let tmp = format!("{path}.new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn serial_of_pem(pem: &str) -> String {
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    x.raw_serial_as_string().replace(':', "").to_ascii_lowercase()
}

/// The serial of the leaf certificate the listener presents for `name` (an IP address: no SNI).
async fn served_serial(port: u16, ca_pem: &str, name: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = connector.connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await.unwrap_or_else(|e| panic!("handshake for {name}: {e}"));
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, x) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    x.raw_serial_as_string().replace(':', "").to_ascii_lowercase()
}

async fn metric(gw: &Gateway, line_start: &str) -> Option<f64> {
    let text = client().get(format!("{}/metrics", gw.admin())).send().await.unwrap().text().await.unwrap();
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_certificates_and_renewals_apply_without_dropping_connections() {
    // 20 tokens at 10/s: a stream open for about two seconds.
    let m = mock(MockConfig { tokens: 20, tokens_per_s: 10.0, ttft_ms: 0, ..Default::default() }).await;
    let ca = TestCa::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let default = ca.issue(&["localhost", "127.0.0.1"]).unwrap();
    let api = ca.issue(&["api.test"]).unwrap();
    let other = ca.issue(&["*.other.test"]).unwrap();
    let (dc, dk) = write(dir.path(), "default", &default);
    let (ac, ak) = write(dir.path(), "api", &api);
    let (oc, ok) = write(dir.path(), "other", &other);
    let server_extra = format!(
        "[server.tls]\nlisten = [\"127.0.0.1:{{tls_port}}\"]\ncert_file = \"{dc}\"\nkey_file = \"{dk}\"\nreload_interval_ms = 100\n\
         [[server.tls.certificates]]\nserver_names = [\"api.test\"]\ncert_file = \"{ac}\"\nkey_file = \"{ak}\"\n\
         [[server.tls.certificates]]\nname = \"other\"\nserver_names = [\"*.other.test\"]\ncert_file = \"{oc}\"\nkey_file = \"{ok}\"\n"
    );
    let gw = Gateway::start_with(&hosted_catalog(MODEL, &[m.base_url()]), &server_extra, &[]).await;
    let port = gw.tls_port.unwrap();

    // Each name its certificate; no SNI (an IP address) the default.
    assert_eq!(served_serial(port, &ca.ca_cert_pem, "api.test").await, serial_of_pem(&api.cert_chain_pem));
    assert_eq!(served_serial(port, &ca.ca_cert_pem, "x.other.test").await, serial_of_pem(&other.cert_chain_pem));
    assert_eq!(served_serial(port, &ca.ca_cert_pem, "127.0.0.1").await, serial_of_pem(&default.cert_chain_pem));
    assert_eq!(served_serial(port, &ca.ca_cert_pem, "localhost").await, serial_of_pem(&default.cert_chain_pem));
    let now = joule::clock::now_ms() / 1000;
    for name in ["default", "api.test", "other"] {
        let expiry = metric(&gw, &format!("joule_tls_certificate_expiry_seconds{{name=\"{name}\"}}")).await.unwrap_or_else(|| panic!("{name}"));
        assert!(expiry > now as f64, "{name}: {expiry}");
    }

    // Under traffic: a stream on an open connection, and new connections all along.
    let root = reqwest::Certificate::from_pem(ca.ca_cert_pem.as_bytes()).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let builder = || reqwest::Client::builder().no_proxy().add_root_certificate(root.clone()).resolve("api.test", addr);
    let url = format!("https://api.test:{port}/v1/chat/completions");
    let stream = builder().build().unwrap().post(&url).bearer_auth(KEY).json(&chat_body(MODEL, true)).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let reading = tokio::spawn(read_sse(stream, Duration::from_secs(30)));
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, sent, failed, url) = (stop.clone(), sent.clone(), failed.clone(), url.clone());
        let fresh = builder().pool_max_idle_per_host(0).build().unwrap();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = fresh.post(&url).bearer_auth(KEY).json(&chat_body(MODEL, false)).send().await;
                sent.fetch_add(1, Ordering::Relaxed);
                if !r.is_ok_and(|r| r.status() == 200) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let renewed = ca.issue(&["api.test"]).unwrap();
    replace(&ac, &renewed.cert_chain_pem);
    replace(&ak, &renewed.key_pem);
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_serial(port, &ca.ca_cert_pem, "api.test").await != serial_of_pem(&renewed.cert_chain_pem) {
        assert!(Instant::now() < deadline, "the renewed certificate was not picked up\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let swapped = Instant::now();
    assert_eq!(served_serial(port, &ca.ca_cert_pem, "x.other.test").await, serial_of_pem(&other.cert_chain_pem), "the others stay");

    let got = reading.await.unwrap();
    assert_eq!(got.data().last().copied(), Some("[DONE]"), "the open stream finished");
    assert_eq!(got.content_times().len(), 20);
    assert!(*got.content_times().last().unwrap() > swapped, "the stream was still open when new connections got the new certificate");
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed across the renewal");
    assert_eq!(metric(&gw, "joule_tls_certificate_reloads_total{name=\"api.test\",result=\"success\"}").await, Some(1.0));

    // A bad renewal: reported, and the renewed certificate keeps serving.
    replace(&ac, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&gw, "joule_tls_certificate_reloads_total{name=\"api.test\",result=\"failure\"}").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the bad file was not reported\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_serial(port, &ca.ca_cert_pem, "api.test").await, serial_of_pem(&renewed.cert_chain_pem));
    assert!(gw.logs().contains("renewed TLS certificate refused"), "{}", gw.logs());
}

/// `openssl s_client` offering one protocol version (security level 0, so that the client
/// really offers TLS 1.0 and 1.1): whether the handshake completed, and what it printed.
fn handshake_with(port: u16, version_flag: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost", version_flag, "-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let done = text.contains("BEGIN CERTIFICATE") && !text.contains("Cipher is (NONE)");
    (done, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_are_refused() {
    let m = mock(MockConfig::default()).await;
    let ca = TestCa::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = write(dir.path(), "default", &ca.issue(&["localhost"]).unwrap());
    let server_extra = format!("[server.tls]\nlisten = [\"127.0.0.1:{{tls_port}}\"]\ncert_file = \"{c}\"\nkey_file = \"{k}\"\n");
    let gw = Gateway::start_with(&hosted_catalog(MODEL, &[m.base_url()]), &server_extra, &[]).await;
    let port = gw.tls_port.unwrap();
    for flag in ["-tls1_2", "-tls1_3"] {
        let (done, text) = handshake_with(port, flag);
        assert!(done, "{flag} is accepted:\n{text}");
    }
    for flag in ["-tls1", "-tls1_1"] {
        let (done, text) = handshake_with(port, flag);
        assert!(!done, "{flag} must be refused:\n{text}");
        // The server's refusal (an alert it sent after reading the hello), not a client that
        // never offered the version.
        assert!(text.contains("SSL alert number") && !text.contains("written 0 bytes"), "{flag}:\n{text}");
    }
}
