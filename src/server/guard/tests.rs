//! The held write: a response head and its body leave in one write, whatever the stream
//! takes per call, and nothing is held past a flush.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType};
use prometheus::{IntCounterVec, Opts};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{hold_next_write, GuardedIo, IN_REQUEST};

/// A client socket that records each write call and takes at most `per_call` bytes of it.
#[derive(Debug, Clone)]
struct Recorder {
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
    per_call: usize,
}

impl Recorder {
    fn writes(&self) -> Vec<Vec<u8>> {
        self.writes.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

impl AsyncRead for Recorder {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, _: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }
    fn poll_write_vectored(self: Pin<&mut Self>, _: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        let taken = all[..all.len().min(self.per_call)].to_vec();
        let n = taken.len();
        if n > 0 {
            self.writes.lock().expect("recorder lock").push(taken);
        }
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for Recorder {
    async fn shutdown(&mut self) {}
}
impl UniqueID for Recorder {
    fn id(&self) -> UniqueIDType {
        0
    }
}
impl Ssl for Recorder {}
impl GetTimingDigest for Recorder {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        Vec::new()
    }
}
impl GetProxyDigest for Recorder {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}
impl GetSocketDigest for Recorder {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        None
    }
}
impl Peek for Recorder {}

/// A guarded connection in a request, over a recorder taking `per_call` bytes per write.
fn guarded(per_call: usize) -> (pingora::protocols::Stream, Recorder) {
    let rec = Recorder { writes: Arc::default(), per_call };
    let closed = IntCounterVec::new(Opts::new("closed", "test"), &["reason"]).expect("counter");
    let g = GuardedIo::new(Box::new(rec.clone()), Duration::from_secs(10), Duration::from_secs(60), closed);
    g.phase.store(IN_REQUEST, std::sync::atomic::Ordering::Release);
    (Box::new(g), rec)
}

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n";
const BODY: &[u8] = b"{\"ok\":true}";

#[tokio::test]
async fn a_held_head_leaves_with_its_body_in_one_write() {
    let (mut s, rec) = guarded(usize::MAX);
    hold_next_write(Some(&s));
    s.write_all(HEAD).await.unwrap();
    assert!(rec.writes().is_empty(), "the head waits for its body");
    s.write_all(BODY).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(rec.writes(), vec![[HEAD, BODY].concat()]);

    // Only the next write is held: the next answer's writes pass as they come.
    s.write_all(HEAD).await.unwrap();
    s.write_all(BODY).await.unwrap();
    assert_eq!(rec.writes().len(), 3);
}

#[tokio::test]
async fn a_held_head_without_a_body_leaves_at_the_flush() {
    let (mut s, rec) = guarded(usize::MAX);
    hold_next_write(Some(&s));
    s.write_all(HEAD).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(rec.writes(), vec![HEAD.to_vec()]);
}

#[tokio::test]
async fn short_writes_deliver_every_byte_in_order() {
    for per_call in [1, 7, HEAD.len() - 1, HEAD.len(), HEAD.len() + 1, HEAD.len() + BODY.len() - 1] {
        let (mut s, rec) = guarded(per_call);
        hold_next_write(Some(&s));
        s.write_all(HEAD).await.unwrap();
        // Vectored, as pingora writes chunked pieces.
        let pieces = [io::IoSlice::new(&BODY[..4]), io::IoSlice::new(&BODY[4..])];
        let mut sent = 0;
        while sent < BODY.len() {
            let n = if sent == 0 { s.write_vectored(&pieces).await.unwrap() } else { s.write(&BODY[sent..]).await.unwrap() };
            assert!(n > 0 && sent + n <= BODY.len(), "per_call {per_call}: {n} of the body's bytes reported at {sent}");
            sent += n;
        }
        s.flush().await.unwrap();
        assert_eq!(rec.writes().concat(), [HEAD, BODY].concat(), "per_call {per_call}");
    }
}

#[tokio::test]
async fn no_hold_outside_a_request() {
    let (mut s, rec) = guarded(usize::MAX);
    let g = s.as_ref().as_any().downcast_ref::<GuardedIo>().expect("guarded");
    g.phase.store(super::BETWEEN, std::sync::atomic::Ordering::Release);
    hold_next_write(Some(&s));
    s.write_all(HEAD).await.unwrap();
    assert_eq!(rec.writes(), vec![HEAD.to_vec()], "a write between requests passes at once");
}
