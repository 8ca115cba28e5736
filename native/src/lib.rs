//! mimo's native transport: gRPC and HTTP terminated in Rust threads (tokio, hyper, h2, tonic,
//! rustls), everything else in Python (mimo/serving/transports/native.py).
//!
//! No protobuf is parsed here: each call reaches Python as (method, metadata, request bytes)
//! through one event queue that wakes the asyncio loop via an eventfd, many calls per wake-up.
//! Python answers with response bytes or a status. Python calls in from its event loop's thread;
//! none of those calls blocks, and `shutdown` releases the GIL while it waits.

mod calls;
mod coalesce;
mod events;
mod grpc;
mod http;
mod server;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::ffi::{c_int, c_void};

use pyo3::exceptions::{PyBufferError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use tokio::sync::watch;

use calls::{Calls, WriteResult};
use events::{EventQueue, Kind, Value};
use server::{Limits, Protocol, Shared, Tls};

const UNAVAILABLE: i32 = 14;

/// A request message that Python reads where the transport assembled it: a read-only buffer
/// (memoryview(payload), numpy views of it) over the transport's own bytes, which it keeps alive
/// as long as any view of it lives. Large messages come this way, so their bytes are copied once
/// (from the HTTP/2 frames into one message) between the socket and ONNX Runtime, not twice.
#[pyclass(module = "mimo.serving._transport", frozen)]
struct Payload {
    bytes: Bytes,
}

#[pymethods]
impl Payload {
    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.bytes)
    }

    /// SAFETY (for the caller, CPython): `view` is a Py_buffer to fill; the bytes never move or
    /// change while this object lives, and the view holds a reference to it.
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no view to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a request's bytes are read-only"));
        }
        let bytes = &slf.get().bytes;
        // SAFETY: view is a valid Py_buffer (checked non-null); FillInfo takes a new reference to
        // slf, which owns the bytes the pointer points into, read-only.
        let filled = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut c_void,
                bytes.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if filled != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }
}

#[pyclass(module = "mimo.serving._transport", frozen)]
struct Transport {
    shared: Arc<Shared>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    stop: watch::Sender<bool>,
    tls: Option<Tls>,
    address: String,
    /// Request messages (unary, or of a stream) from this size on reach Python as a Payload (a
    /// view), smaller ones as bytes (cheaper to make than an object with a buffer, for a few
    /// hundred bytes).
    view_min_bytes: usize,
}

impl Transport {
    fn spawn_port(&self, address: &str, protocol: Protocol) -> PyResult<u16> {
        let alpn: &[&[u8]] = match protocol {
            Protocol::Grpc => &[b"h2"],
            Protocol::Http => &[b"h2", b"http/1.1"],
        };
        let acceptor = match &self.tls {
            Some(tls) => Some(server::tls_acceptor(tls, alpn).map_err(PyValueError::new_err)?),
            None => None,
        };
        let listener = server::bind(address).map_err(PyOSError::new_err)?;
        let port = listener.local_addr().map_err(|e| PyOSError::new_err(e.to_string()))?.port();
        let mut runtime = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        if runtime.is_none() {
            *runtime = Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(self.shared.limits.threads.max(1))
                    .thread_name("mimo-transport")
                    .enable_all()
                    .build()
                    .map_err(|e| PyRuntimeError::new_err(format!("could not start the transport's threads: {e}")))?,
            );
        }
        let runtime = runtime.as_ref().expect("just made");
        let _entered = runtime.enter();
        runtime.spawn(server::accept_loop(self.shared.clone(), listener, protocol, acceptor, self.stop.subscribe()));
        Ok(port)
    }
}

fn seconds(value: f64, name: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be a non-negative number of seconds")))
}

#[pymethods]
impl Transport {
    #[new]
    #[pyo3(signature = (address, max_message_bytes, unary_methods, stream_window, tls_key="", tls_cert="",
        tls_client_ca="", *, max_calls=16_384, max_streams_per_connection=1024, max_connections=16_384,
        max_header_list_bytes=16_384, keepalive_interval_s=60.0, keepalive_timeout_s=20.0, idle_timeout_s=600.0,
        handshake_timeout_s=10.0, stream_unsent_bytes=4_194_304, threads=2, view_min_bytes=usize::MAX))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        address: String,
        max_message_bytes: usize,
        unary_methods: HashSet<String>,
        stream_window: usize,
        tls_key: &str,
        tls_cert: &str,
        tls_client_ca: &str,
        max_calls: usize,
        max_streams_per_connection: u32,
        max_connections: usize,
        max_header_list_bytes: u32,
        keepalive_interval_s: f64,
        keepalive_timeout_s: f64,
        idle_timeout_s: f64,
        handshake_timeout_s: f64,
        stream_unsent_bytes: usize,
        threads: usize,
        view_min_bytes: usize,
    ) -> PyResult<Self> {
        if stream_window == 0 || max_calls == 0 || max_connections == 0 || max_streams_per_connection == 0 {
            return Err(PyValueError::new_err("stream_window and the max_* limits must be at least 1"));
        }
        let limits = Limits {
            max_message_bytes,
            max_calls,
            max_streams_per_connection,
            max_connections,
            max_header_list_bytes,
            keepalive_interval: seconds(keepalive_interval_s, "keepalive_interval_s")?,
            keepalive_timeout: seconds(keepalive_timeout_s, "keepalive_timeout_s")?,
            idle_timeout: seconds(idle_timeout_s, "idle_timeout_s")?,
            handshake_timeout: seconds(handshake_timeout_s, "handshake_timeout_s")?,
            stream_unsent_bytes,
            stream_window,
            threads,
        };
        let events = EventQueue::new().map_err(|e| PyOSError::new_err(format!("eventfd: {e}")))?;
        let shared = Arc::new(Shared {
            calls: Calls::new(events, limits.stream_unsent_bytes, limits.stream_window),
            unary_methods,
            limits,
            connections: AtomicUsize::new(0),
        });
        let tls = (!tls_cert.is_empty()).then(|| Tls {
            key: tls_key.to_owned(),
            cert: tls_cert.to_owned(),
            client_ca: tls_client_ca.to_owned(),
        });
        let (stop, _) = watch::channel(false);
        Ok(Transport { shared, runtime: Mutex::new(None), stop, tls, address, view_min_bytes })
    }

    /// Listen for gRPC on the address given at construction; returns the port.
    fn start(&self, py: Python<'_>) -> PyResult<u16> {
        let address = self.address.clone();
        py.detach(|| self.spawn_port(&address, Protocol::Grpc))
    }

    /// Also listen for HTTP/1.1 and h2c (TLS as for gRPC) on `address`; returns the port.
    fn start_http(&self, py: Python<'_>, address: String) -> PyResult<u16> {
        py.detach(|| self.spawn_port(&address, Protocol::Http))
    }

    /// The eventfd that becomes readable when events are queued.
    fn fileno(&self) -> i32 {
        self.shared.calls.events.fileno()
    }

    /// Queued events: (kind, call, method, payload, metadata, timeout, peer) tuples; payload is
    /// bytes, a Payload (a request message of view_min_bytes or more), or None.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let events = self.shared.calls.events.drain();
        let list = PyList::empty(py);
        for event in events {
            let payload: Bound<'py, PyAny> = match event.payload {
                Some(bytes)
                    if matches!(event.kind, Kind::Unary | Kind::Message) && bytes.len() >= self.view_min_bytes =>
                {
                    Bound::new(py, Payload { bytes })?.into_any()
                }
                Some(bytes) => PyBytes::new(py, &bytes).into_any(),
                None => py.None().into_bound(py),
            };
            let (method, metadata, timeout, peer) = match &event.head {
                Some(head) => {
                    let mut pairs = Vec::with_capacity(head.metadata.len());
                    for (name, value) in &head.metadata {
                        let value: Bound<'py, PyAny> = match value {
                            Value::Text(text) => PyString::new(py, text).into_any(),
                            Value::Binary(bytes) => PyBytes::new(py, bytes).into_any(),
                        };
                        pairs.push(PyTuple::new(py, [PyString::new(py, name).into_any(), value])?);
                    }
                    (
                        PyString::new(py, &head.method).into_any(),
                        PyTuple::new(py, pairs)?.into_any(),
                        head.timeout,
                        PyString::new(py, &head.peer).into_any(),
                    )
                }
                None => (py.None().into_bound(py), py.None().into_bound(py), -1.0, py.None().into_bound(py)),
            };
            let item = PyTuple::new(
                py,
                [
                    (event.kind as i32).into_pyobject(py)?.into_any(),
                    event.call.into_pyobject(py)?.into_any(),
                    method,
                    payload,
                    metadata,
                    timeout.into_pyobject(py)?.into_any(),
                    peer,
                ],
            )?;
            list.append(item)?;
        }
        Ok(list)
    }

    /// Answer a unary call with response bytes and OK. False when the call is already over.
    fn reply(&self, call: u64, payload: &[u8]) -> bool {
        self.shared.calls.reply(call, Bytes::copy_from_slice(payload))
    }

    /// Queue one response message on a streaming call: 0 the call is over, 1 queued, 2 queued
    /// and over the unsent limit (write again after a WRITABLE event).
    fn write(&self, call: u64, payload: &[u8]) -> i32 {
        self.shared.calls.write(call, Bytes::copy_from_slice(payload)) as i32
    }

    /// End a call with a status (after any queued messages).
    fn finish(&self, call: u64, code: i32, message: String) -> bool {
        self.shared.calls.finish(call, code, message)
    }

    /// Python took one message of a stream: read on if reading was paused.
    fn ack(&self, call: u64) -> bool {
        self.shared.calls.ack(call)
    }

    /// Answer an HTTP request.
    fn respond(&self, call: u64, status: u16, headers: Vec<(String, String)>, body: &[u8]) -> bool {
        self.shared.calls.respond(call, status, headers, Bytes::copy_from_slice(body))
    }

    /// Calls in progress.
    fn active(&self) -> usize {
        self.shared.calls.active()
    }

    /// Open connections.
    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stop listening, let calls finish for up to grace_s seconds, end the rest with UNAVAILABLE.
    fn shutdown(&self, py: Python<'_>, grace_s: f64) {
        py.detach(|| {
            let Some(runtime) = self.runtime.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
            let _ = self.stop.send(true); // accept loops end; connections send GOAWAY
            let deadline = Instant::now() + Duration::try_from_secs_f64(grace_s).unwrap_or_default();
            while self.shared.calls.active() > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            for id in self.shared.calls.ids() {
                self.shared.calls.abandon(id, Some((UNAVAILABLE, "the server is shutting down".into())));
            }
            let flushed = Instant::now() + Duration::from_millis(500);
            while self.shared.connections.load(Ordering::Relaxed) > 0 && Instant::now() < flushed {
                std::thread::sleep(Duration::from_millis(5));
            }
            runtime.shutdown_timeout(Duration::from_millis(100));
        });
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            runtime.shutdown_background();
        }
    }
}

#[pymodule]
fn _transport(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("UNARY", Kind::Unary as i32)?;
    m.add("OPEN", Kind::Open as i32)?;
    m.add("MESSAGE", Kind::Message as i32)?;
    m.add("END", Kind::End as i32)?;
    m.add("GONE", Kind::Gone as i32)?;
    m.add("WRITABLE", Kind::Writable as i32)?;
    m.add("HTTP", Kind::Http as i32)?;
    m.add("QUEUED", WriteResult::Queued as i32)?;
    m.add("FULL", WriteResult::Full as i32)?;
    m.add("STACK", env!("MIMO_TRANSPORT_STACK"))?;
    m.add_class::<Transport>()?;
    m.add_class::<Payload>()?;
    Ok(())
}
