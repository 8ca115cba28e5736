//! The queue of events for Python, and the eventfd that wakes its event loop.
//!
//! Transport threads push; Python's thread drains everything queued in one call. The eventfd is
//! written only when the queue goes from empty to non-empty, so a burst of calls costs Python one
//! wake-up however many it carries.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use bytes::Bytes;

/// Event kinds, mirrored in mimo/serving/transports/native.py.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A unary call with its one request message.
    Unary = 0,
    /// A streaming call began (its messages follow as `Message`).
    Open = 1,
    /// One request message of a streaming call.
    Message = 2,
    /// The client half-closed a streaming call.
    End = 3,
    /// The call is over without Python's answer: cancelled, past its deadline, client gone.
    Gone = 4,
    /// A streaming call's unsent responses fell back under the limit: Python may write again.
    Writable = 5,
    /// An HTTP request (method, path and headers in `metadata`, the body as payload).
    Http = 6,
}

/// A metadata value: text, or bytes for gRPC's `-bin` keys (base64 already decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Binary(Vec<u8>),
}

impl Value {
    /// Header bytes as text, Latin-1 as grpc and HTTP/1.1 read them.
    pub fn latin1(bytes: &[u8]) -> Self {
        Value::Text(bytes.iter().map(|&b| b as char).collect())
    }
}

/// What a new call brings: method (the gRPC path, or the HTTP method), metadata, time left, peer.
#[derive(Debug, Default)]
pub struct Head {
    pub method: String,
    pub metadata: Vec<(String, Value)>,
    /// Seconds left at arrival; negative: no deadline; 0: already expired.
    pub timeout: f64,
    pub peer: String,
}

#[derive(Debug)]
pub struct Event {
    pub kind: Kind,
    pub call: u64,
    pub payload: Option<Bytes>,
    pub head: Option<Box<Head>>,
}

impl Event {
    pub fn bare(kind: Kind, call: u64) -> Self {
        Event { kind, call, payload: None, head: None }
    }
}

pub struct EventQueue {
    events: Mutex<Vec<Event>>,
    wake: OwnedFd,
}

impl EventQueue {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd returns a new descriptor or -1; nothing else owns it.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventQueue { events: Mutex::new(Vec::new()), wake })
    }

    pub fn fileno(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    pub fn push(&self, event: Event) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = events.is_empty();
        events.push(event);
        if was_empty {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our own eventfd; a full counter (EAGAIN)
            // still leaves the descriptor readable, which is all a wake-up needs.
            unsafe { libc::write(self.wake.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        }
    }

    /// Everything queued, oldest first; clears the wake-up.
    pub fn drain(&self) -> Vec<Event> {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), &mut count as *mut u64 as *mut libc::c_void, 8) };
        std::mem::take(&mut *events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: i32) -> bool {
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    #[test]
    fn one_wake_up_for_a_burst_and_drain_keeps_order() {
        let queue = EventQueue::new().unwrap();
        assert!(!readable(queue.fileno()));
        for call in 1..=5 {
            queue.push(Event::bare(Kind::Gone, call));
        }
        assert!(readable(queue.fileno()));
        let calls: Vec<u64> = queue.drain().iter().map(|e| e.call).collect();
        assert_eq!(calls, vec![1, 2, 3, 4, 5]);
        assert!(!readable(queue.fileno()), "drain clears the wake-up");
        assert!(queue.drain().is_empty());
        queue.push(Event::bare(Kind::End, 9));
        assert!(readable(queue.fileno()), "the next event wakes again");
    }
}
