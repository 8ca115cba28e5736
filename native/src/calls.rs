//! The calls in progress, and what Python and the network side say to each other about one.
//!
//! A call is in the table from its arrival until it ends: Python answered it (`reply`/`finish`),
//! or the network side gave up on it (deadline, client gone, read error). Whichever side removes
//! it ends it; the other finds it gone. That one rule gives "exactly one end per call".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};

use crate::events::{Event, EventQueue, Kind};

/// What Python sends the network side of one call.
#[derive(Debug)]
pub enum Out {
    Message(Bytes),
    /// The final status (0 = OK) and its message.
    End(i32, String),
    /// An HTTP response: status, headers, body.
    Http(u16, Vec<(String, String)>, Bytes),
}

/// What `Calls::write` tells Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    /// The call is over: nothing was queued.
    Gone = 0,
    Queued = 1,
    /// Queued, and the unsent responses are now over the limit: wait for `Writable`.
    Full = 2,
}

pub struct Call {
    out: mpsc::UnboundedSender<Out>,
    /// Response bytes Python wrote that the network side has not taken yet.
    unsent: AtomicUsize,
    wants_writable: AtomicBool,
    /// Request messages the reader may deliver ahead of Python (streams only).
    pub read_window: Arc<Semaphore>,
}

pub struct Calls {
    table: Mutex<HashMap<u64, Arc<Call>>>,
    next_id: AtomicU64,
    pub events: EventQueue,
    /// Unsent response bytes a stream may hold before Python is told to wait.
    pub unsent_limit: usize,
    pub read_window: usize,
}

impl Calls {
    pub fn new(events: EventQueue, unsent_limit: usize, read_window: usize) -> Self {
        Calls { table: Mutex::new(HashMap::new()), next_id: AtomicU64::new(0), events, unsent_limit, read_window }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Call>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new call: its id, its state, and the receiving end of what Python sends it.
    pub fn open(&self) -> (u64, Arc<Call>, mpsc::UnboundedReceiver<Out>) {
        let (out, rx) = mpsc::unbounded_channel();
        let call = Arc::new(Call {
            out,
            unsent: AtomicUsize::new(0),
            wants_writable: AtomicBool::new(false),
            read_window: Arc::new(Semaphore::new(self.read_window)),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.table().insert(id, call.clone());
        (id, call, rx)
    }

    pub fn active(&self) -> usize {
        self.table().len()
    }

    fn get(&self, id: u64) -> Option<Arc<Call>> {
        self.table().get(&id).cloned()
    }

    fn remove(&self, id: u64) -> Option<Arc<Call>> {
        let call = self.table().remove(&id);
        if let Some(call) = &call {
            call.read_window.close(); // the reader stops; unread requests are dropped
        }
        call
    }

    // -- Python's side --------------------------------------------------------------------------

    /// Answer a unary call: one message, then OK. False when the call is already over.
    pub fn reply(&self, id: u64, message: Bytes) -> bool {
        match self.remove(id) {
            Some(call) => {
                let _ = call.out.send(Out::Message(message));
                let _ = call.out.send(Out::End(0, String::new()));
                true
            }
            None => false,
        }
    }

    pub fn write(&self, id: u64, message: Bytes) -> WriteResult {
        let Some(call) = self.get(id) else { return WriteResult::Gone };
        let unsent = call.unsent.fetch_add(message.len(), Ordering::AcqRel) + message.len();
        if call.out.send(Out::Message(message)).is_err() {
            return WriteResult::Gone;
        }
        if unsent > self.unsent_limit {
            call.wants_writable.store(true, Ordering::Release);
            // The network side may have taken everything between the add and the flag.
            if call.unsent.load(Ordering::Acquire) <= self.unsent_limit
                && call.wants_writable.swap(false, Ordering::AcqRel)
            {
                return WriteResult::Queued;
            }
            return WriteResult::Full;
        }
        WriteResult::Queued
    }

    /// Answer an HTTP request. False when the request is already over.
    pub fn respond(&self, id: u64, status: u16, headers: Vec<(String, String)>, body: Bytes) -> bool {
        match self.remove(id) {
            Some(call) => {
                let _ = call.out.send(Out::Http(status, headers, body));
                true
            }
            None => false,
        }
    }

    /// End a call with a status, after the messages already written.
    pub fn finish(&self, id: u64, code: i32, message: String) -> bool {
        match self.remove(id) {
            Some(call) => {
                let _ = call.out.send(Out::End(code, message));
                true
            }
            None => false,
        }
    }

    /// Python took one request message of a stream: the reader may read one more.
    pub fn ack(&self, id: u64) -> bool {
        match self.get(id) {
            Some(call) => {
                call.read_window.add_permits(1);
                true
            }
            None => false,
        }
    }

    // -- the network side -----------------------------------------------------------------------

    /// The network side ends a call itself (deadline, client gone, bad request): Python hears
    /// `Gone`, and the client gets `status` when it is still there to get it.
    pub fn abandon(&self, id: u64, status: Option<(i32, String)>) -> bool {
        match self.remove(id) {
            Some(call) => {
                if let Some((code, message)) = status {
                    let _ = call.out.send(Out::End(code, message));
                }
                self.events.push(Event::bare(Kind::Gone, id));
                true
            }
            None => false,
        }
    }

    /// The network side took `bytes` of a call's responses; Python hears `Writable` if it waits.
    pub fn sent(&self, id: u64, call: &Call, bytes: usize) {
        let left = call.unsent.fetch_sub(bytes, Ordering::AcqRel) - bytes;
        if left <= self.unsent_limit && call.wants_writable.swap(false, Ordering::AcqRel) {
            self.events.push(Event::bare(Kind::Writable, id));
        }
    }

    /// Every call still in progress, for shutdown.
    pub fn ids(&self) -> Vec<u64> {
        self.table().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(limit: usize, window: usize) -> Calls {
        Calls::new(EventQueue::new().unwrap(), limit, window)
    }

    fn kinds(calls: &Calls) -> Vec<(Kind, u64)> {
        calls.events.drain().iter().map(|e| (e.kind, e.call)).collect()
    }

    #[test]
    fn a_call_ends_once_whoever_ends_it() {
        let calls = calls(100, 4);
        let (id, _call, mut rx) = calls.open();
        assert_eq!(calls.active(), 1);
        assert!(calls.reply(id, Bytes::from_static(b"answer")));
        assert!(!calls.finish(id, 13, "late".into()), "a second end is refused");
        assert!(!calls.abandon(id, Some((4, "deadline".into()))));
        assert!(matches!(rx.try_recv(), Ok(Out::Message(m)) if &m[..] == b"answer"));
        assert!(matches!(rx.try_recv(), Ok(Out::End(0, _))));
        assert!(rx.try_recv().is_err());
        assert_eq!(calls.active(), 0);
        assert!(kinds(&calls).is_empty(), "Python ended it: no Gone");
    }

    #[test]
    fn abandoning_tells_python_and_the_client() {
        let calls = calls(100, 4);
        let (id, _call, mut rx) = calls.open();
        assert!(calls.abandon(id, Some((4, "Deadline Exceeded".into()))));
        assert_eq!(kinds(&calls), vec![(Kind::Gone, id)]);
        assert!(matches!(rx.try_recv(), Ok(Out::End(4, m)) if m == "Deadline Exceeded"));
        assert_eq!(calls.write(id, Bytes::from_static(b"x")), WriteResult::Gone);
        assert!(!calls.reply(id, Bytes::new()));
    }

    #[test]
    fn unsent_responses_past_the_limit_make_python_wait_until_they_drain() {
        let calls = calls(10, 4);
        let (id, call, _rx) = calls.open();
        assert_eq!(calls.write(id, Bytes::from(vec![0; 6])), WriteResult::Queued);
        assert_eq!(calls.write(id, Bytes::from(vec![0; 6])), WriteResult::Full);
        calls.sent(id, &call, 6);
        assert_eq!(kinds(&calls), vec![(Kind::Writable, id)], "back under the limit: Python may write");
        calls.sent(id, &call, 6);
        assert!(kinds(&calls).is_empty(), "Writable only once per wait");
        assert_eq!(calls.write(id, Bytes::from(vec![0; 4])), WriteResult::Queued);
    }

    #[test]
    fn the_read_window_is_given_back_by_acks_and_closed_at_the_end() {
        let calls = calls(10, 2);
        let (id, call, _rx) = calls.open();
        call.read_window.try_acquire().unwrap().forget();
        call.read_window.try_acquire().unwrap().forget();
        assert!(call.read_window.try_acquire().is_err(), "two unacknowledged messages: reading stops");
        assert!(calls.ack(id));
        call.read_window.try_acquire().unwrap().forget();
        assert!(calls.finish(id, 0, String::new()));
        assert!(call.read_window.is_closed(), "the reader wakes up and stops");
        assert!(!calls.ack(id));
    }
}
