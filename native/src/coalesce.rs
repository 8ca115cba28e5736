//! A connection's writes gathered into one system call for every response that is ready together.
//!
//! h2 flushes its socket at the end of each poll of the connection task, and before it buffers a
//! frame after a DATA payload of 256 bytes or more (it keeps one such payload by reference). On
//! one busy core every answered call wakes the connection task on its own, so each response cost
//! a `writev` of its own, some two (qa at c=32: 1.5 a request; loopback TCP spends 7 us a call).
//!
//! `Coalesce` copies what h2 (or hyper's HTTP/1.1) writes into a buffer, and a flush with data
//! in it is put off once: it asks the runtime to wake the task again when the worker has run the
//! other tasks that are ready (`tokio::task::yield_now`, whose wake tokio defers until the worker
//! has nothing else to run, or at most 61 polls later), meanwhile flushes report success, and
//! the bytes go out in one write on the flush after that wake. Responses that become ready in the
//! same burst leave together; an idle server writes at once (the deferred wake is immediate when
//! nothing else is runnable). Gathered bytes past `LIMIT` go out without waiting, and a write larger
//! than `GATHER_MAX` (h2 sends a large message as DATA frames of 16 KiB) passes straight through,
//! not copied: large tensors cost no extra copy.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before they are written regardless.
pub const LIMIT: usize = 64 * 1024;
/// The largest write that is gathered (copied); a larger one goes to the socket as it is.
pub const GATHER_MAX: usize = 8 * 1024;
/// A buffer larger than this is let go once written out (thousands of connections may be open).
const KEEP: usize = 16 * 1024;

pub struct Coalesce<T> {
    io: T,
    buf: Vec<u8>,
    /// Bytes of `buf` already written (a write the socket took only part of).
    written: usize,
    /// Set while a flush is put off: fired once the runtime has woken the task again.
    waiting: Option<Arc<Deferred>>,
    /// A flush is writing the buffer out (the socket took part): the next flush goes on with it.
    draining: bool,
}

/// The wake a put-off flush waits for: tokio calls it when the worker has run the ready tasks.
struct Deferred {
    fired: AtomicBool,
    task: Waker,
}

impl Wake for Deferred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl<T> Coalesce<T> {
    pub fn new(io: T) -> Self {
        Coalesce { io, buf: Vec::new(), written: 0, waiting: None, draining: false }
    }

    /// Whether this flush should wait for the deferred wake (armed here on the first one).
    fn put_off(&mut self, cx: &mut Context<'_>) -> bool {
        match &self.waiting {
            Some(deferred) if deferred.fired.load(Ordering::Acquire) => {
                self.waiting = None;
                false
            }
            Some(_) => true,
            None => {
                let deferred = Arc::new(Deferred { fired: AtomicBool::new(false), task: cx.waker().clone() });
                let waker = Waker::from(deferred.clone());
                let mut yielding = std::pin::pin!(tokio::task::yield_now());
                // Pending: tokio holds `waker` until the worker has run what is ready (outside a
                // runtime it wakes at once, and the next flush writes).
                let _ = yielding.as_mut().poll(&mut Context::from_waker(&waker));
                self.waiting = Some(deferred);
                true
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Write out everything gathered (Pending while the socket takes no more; the rest stays).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new(); // an idle connection does not hold a burst's buffer
        } else {
            self.buf.clear();
        }
        self.written = 0;
        self.draining = false;
        Poll::Ready(Ok(()))
    }

    fn poll_gather(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > GATHER_MAX {
            std::task::ready!(self.poll_drain(cx))?; // what was gathered goes first
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        if self.buf.len() + total > LIMIT {
            std::task::ready!(self.poll_drain(cx))?;
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_gather(cx, &[IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_gather(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true // gathered by copy, so h2 may hand over head and payload apart
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return Pin::new(&mut self.io).poll_flush(cx);
        }
        if !self.draining && self.put_off(cx) {
            return Poll::Ready(Ok(()));
        }
        self.draining = true;
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A socket that records each write call, and can refuse writes (WouldBlock) for a while.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        blocked: bool,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
            if self.blocked {
                return Poll::Pending;
            }
            let n = data.len().min(10_000); // a socket takes part of a large write
            self.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn noop() -> Waker {
        struct Noop;
        impl Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Waker::from(Arc::new(Noop))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_flushed_in_one_burst_leave_in_one_write_after_the_deferred_wake() {
        let mut out = Coalesce::new(Recorder::default());
        for response in [&b"first "[..], b"second ", b"third"] {
            out.write_all(response).await.unwrap();
            out.flush().await.unwrap(); // put off: the task has not been woken again yet
        }
        assert!(out.io.writes.is_empty(), "nothing may be written before the deferred wake");
        tokio::task::yield_now().await; // the runtime runs the deferred wake
        out.flush().await.unwrap();
        assert_eq!(out.io.writes, vec![b"first second third".to_vec()]);
        assert_eq!(out.io.flushes, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flush_with_nothing_gathered_flushes_the_socket_at_once() {
        let mut out = Coalesce::new(Recorder::default());
        out.flush().await.unwrap();
        assert_eq!(out.io.flushes, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn past_the_limit_gathered_bytes_go_out() {
        let mut out = Coalesce::new(Recorder::default());
        let frame = vec![1u8; GATHER_MAX];
        for _ in 0..LIMIT / GATHER_MAX {
            out.write_all(&frame).await.unwrap();
        }
        assert!(out.io.writes.is_empty(), "up to the limit, writes are gathered");
        out.write_all(&[2u8; 20]).await.unwrap(); // over the limit: the gathered bytes go first
        let sent: usize = out.io.writes.iter().map(Vec::len).sum();
        assert_eq!(sent, LIMIT);
        assert_eq!(out.buf, vec![2u8; 20]);
        assert!(out.buf.capacity() <= KEEP, "the burst's 64 KiB buffer is not kept");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_large_write_passes_straight_through_after_what_was_gathered() {
        let mut out = Coalesce::new(Recorder::default());
        out.write_all(b"head").await.unwrap();
        let large = vec![3u8; GATHER_MAX + 1];
        let taken = std::future::poll_fn(|cx| Pin::new(&mut out).poll_write(cx, &large)).await.unwrap();
        assert_eq!(taken, GATHER_MAX + 1);
        assert!(out.buf.is_empty(), "a large write is not copied into the buffer");
        assert_eq!(out.io.writes, vec![b"head".to_vec(), large]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_socket_that_takes_nothing_keeps_the_bytes_for_the_next_flush() {
        let mut out = Coalesce::new(Recorder::default());
        out.write_all(b"answer").await.unwrap();
        out.flush().await.unwrap();
        tokio::task::yield_now().await;
        out.io.blocked = true;
        let waker = noop();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut out).poll_flush(&mut cx).is_pending());
        out.io.blocked = false;
        assert!(Pin::new(&mut out).poll_flush(&mut cx).is_ready());
        assert_eq!(out.io.writes, vec![b"answer".to_vec()]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn shutdown_writes_what_is_gathered_first() {
        let mut out = Coalesce::new(Recorder::default());
        out.write_all(b"last words").await.unwrap();
        out.flush().await.unwrap();
        out.shutdown().await.unwrap();
        assert_eq!(out.io.writes, vec![b"last words".to_vec()]);
    }
}
