//! Listening, connections and their limits, TLS, and graceful stop.
//!
//! One accept loop per port, on tokio; each connection is served by hyper (HTTP/2 for gRPC,
//! HTTP/1.1 and h2c on the HTTP port) with the limits below. The accept loop survives running out
//! of descriptors (EMFILE, ENFILE): it waits and retries, and the connections queued in the
//! kernel's backlog are taken once descriptors free up.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::calls::Calls;
use crate::coalesce::Coalesce;
use crate::grpc;
use crate::http;

/// Limits that bound what one client, and all of them together, can make the server hold.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_message_bytes: usize,
    /// Calls in progress over all connections; more are refused with RESOURCE_EXHAUSTED.
    pub max_calls: usize,
    pub max_streams_per_connection: u32,
    pub max_connections: usize,
    pub max_header_list_bytes: u32,
    /// HTTP/2 pings on a quiet connection, and how long an answer may take before it is closed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection with no call in progress for this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// TLS handshake, and HTTP/1.1 request headers, must arrive within this.
    pub handshake_timeout: Duration,
    /// A streaming call's response bytes that may wait for the client to read them.
    pub stream_unsent_bytes: usize,
    pub stream_window: usize,
    /// Tokio worker threads.
    pub threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 << 20,
            max_calls: 16_384,
            max_streams_per_connection: 1024,
            max_connections: 16_384,
            max_header_list_bytes: 16 << 10,
            keepalive_interval: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
            stream_unsent_bytes: 4 << 20,
            stream_window: 128,
            threads: 2,
        }
    }
}

/// What every connection and call of one transport shares.
pub struct Shared {
    pub calls: Calls,
    pub unary_methods: HashSet<String>,
    pub limits: Limits,
    pub connections: AtomicUsize,
}

pub struct Tls {
    pub key: String,
    pub cert: String,
    pub client_ca: String,
}

pub fn tls_acceptor(tls: &Tls, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(tls.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("TLS certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes()).map_err(|e| format!("TLS key: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if tls.client_ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(tls.client_ca.as_bytes()) {
            let cert = cert.map_err(|e| format!("TLS client CA: {e}"))?;
            roots.add(cert).map_err(|e| format!("TLS client CA: {e}"))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("TLS client CA: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("TLS: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listening socket with SO_REUSEPORT, so `--workers N` processes share one port.
pub fn bind(address: &str) -> Result<std::net::TcpListener, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> =
        address.to_socket_addrs().map_err(|e| format!("could not listen on {address}: {e}"))?.collect();
    let mut last = format!("could not listen on {address}: no address");
    for addr in addrs {
        let socket = match socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None) {
            Ok(s) => s,
            Err(e) => {
                last = format!("could not listen on {address}: {e}");
                continue;
            }
        };
        let ready = socket
            .set_reuse_address(true)
            .and_then(|_| socket.set_reuse_port(true))
            .and_then(|_| socket.set_nonblocking(true))
            .and_then(|_| socket.bind(&addr.into()))
            .and_then(|_| socket.listen(4096));
        match ready {
            Ok(()) => return Ok(socket.into()),
            Err(e) => last = format!("could not listen on {address}: {e}"),
        }
    }
    Err(last)
}

/// The two kinds of port.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

/// Accept until `stop` turns true; each connection on its own task.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    protocol: Protocol,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mimo transport: cannot use the listening socket: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut stopping = stop.clone();
    let mut backoff = Duration::from_millis(5);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = stopping.wait_for(|s| *s) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let (tls, stop) = (tls.clone(), stop.clone());
                tokio::spawn(async move {
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    serve_connection(&shared, stream, peer, protocol, tls, stop).await;
                    shared.connections.fetch_sub(1, Ordering::Relaxed);
                    drop(slot);
                });
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS/ENOMEM: out of resources for now, the listener is fine.
                // Anything else (ECONNABORTED, ...) concerns one connection. Either way: go on.
                let resources =
                    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
                if resources {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
        }
    }
}

fn peer_name(peer: SocketAddr) -> String {
    match peer {
        SocketAddr::V4(a) => format!("ipv4:{a}"),
        SocketAddr::V6(a) => format!("ipv6:{a}"),
    }
}

/// A connection's calls in progress and when it last had one, for the idle timeout.
pub struct Activity {
    streams: AtomicUsize,
    quiet_since_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn new() -> Self {
        Activity { streams: AtomicUsize::new(0), quiet_since_ms: AtomicU64::new(0), epoch: Instant::now() }
    }

    pub fn begin(self: &Arc<Self>) -> ActiveStream {
        self.streams.fetch_add(1, Ordering::AcqRel);
        ActiveStream(self.clone())
    }

    /// How long the connection has had no call in progress; None while it has one.
    fn quiet_for(&self) -> Option<Duration> {
        if self.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(since))
    }
}

/// Held by a call's response body: the connection is busy until it is dropped.
pub struct ActiveStream(Arc<Activity>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.quiet_since_ms.store(now, Ordering::Release);
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn serve_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    protocol: Protocol,
    tls: Option<TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let limits = &shared.limits;
    match tls {
        None => serve_io(shared, TokioIo::new(Coalesce::new(stream)), peer, protocol, stop).await,
        Some(acceptor) => {
            // A failed or slow handshake concerns that client only.
            if let Ok(Ok(stream)) = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                serve_io(shared, TokioIo::new(Coalesce::new(stream)), peer, protocol, stop).await;
            }
        }
    }
}

async fn serve_io<I>(
    shared: &Arc<Shared>,
    io: TokioIo<I>,
    peer: SocketAddr,
    protocol: Protocol,
    mut stop: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(limits.max_header_list_bytes)
        .max_send_buf_size(1 << 20)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size((limits.max_header_list_bytes as usize).max(8192) + 8192);
    let activity = Arc::new(Activity::new());
    let peer = peer_name(peer);
    let service = {
        let (shared, activity) = (shared.clone(), activity.clone());
        hyper::service::service_fn(move |request: ::http::Request<Incoming>| {
            let (shared, activity, peer) = (shared.clone(), activity.clone(), peer.clone());
            async move {
                let busy = activity.begin();
                Ok::<_, std::convert::Infallible>(match protocol {
                    Protocol::Grpc => serve_grpc(shared, request, &peer, busy).await,
                    Protocol::Http => http::serve(shared, request, &peer, busy).await,
                })
            }
        })
    };
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let idle = limits.idle_timeout;
    let mut check = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    check.tick().await;
    let mut closing = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = check.tick(), if !closing => {
                if activity.quiet_for().is_some_and(|quiet| quiet >= idle) {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

type GrpcResponse = ::http::Response<tonic::body::Body>;

async fn serve_grpc(
    shared: Arc<Shared>,
    request: ::http::Request<Incoming>,
    peer: &str,
    busy: crate::server::ActiveStream,
) -> GrpcResponse {
    let is_grpc = request
        .headers()
        .get(::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if request.version() != ::http::Version::HTTP_2 || !is_grpc {
        return http::not_grpc();
    }
    let (parts, body) = request.into_parts();
    let (head, deadline) = grpc::head(&parts, peer, Instant::now());
    let unary = shared.unary_methods.contains(&head.method);
    let limit = shared.limits.max_message_bytes;
    let service = grpc::CallService { shared, head, unary, deadline };
    // Compressed requests are taken as grpc++ took them; decompression stops at the message limit.
    let mut codec = tonic::server::Grpc::new(grpc::RawCodec)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Deflate)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let response = codec.streaming(service, ::http::Request::from_parts(parts, body)).await;
    let (parts, body) = response.into_parts();
    ::http::Response::from_parts(parts, tonic::body::Body::new(http::Holding { body, _busy: busy }))
}
