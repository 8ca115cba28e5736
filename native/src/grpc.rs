//! One gRPC call, from its HTTP/2 request to its response: tonic frames the messages (length
//! prefixes, size limits, status trailers); the messages stay bytes, parsed by Python.
//!
//! Every method is taken as a bidirectional stream at the tonic level. A unary method's one
//! message reaches Python with the call (`Unary`); a streaming method's call opens first (`Open`)
//! and its messages follow within the read window. Deadlines and vanished clients end the call
//! here, and Python hears `Gone`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, BufMut, Bytes};
use futures_core::Stream;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status, Streaming};

use crate::calls::{Call, Out};
use crate::events::{Event, Head, Kind, Value};
use crate::server::Shared;

pub const NO_REQUEST_MESSAGE: &str = "the call carried no request message";
const DEADLINE_EXCEEDED: &str = "Deadline Exceeded";

/// Messages pass through as bytes.
#[derive(Default, Clone, Copy)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// `grpc-timeout`: up to 8 digits and a unit (H M S m u n). None for a missing or bad value.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Headers that are gRPC's own, not the caller's metadata (as grpc++ leaves them out).
fn is_transport_header(name: &str) -> bool {
    matches!(name, "te" | "content-type" | "grpc-timeout" | "grpc-encoding" | "grpc-accept-encoding")
}

/// The call's metadata as Python sees it: `-bin` values base64-decoded, the others as text.
pub fn metadata(headers: &http::HeaderMap) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.as_str();
        if is_transport_header(name) {
            continue;
        }
        let value = if name.ends_with("-bin") {
            let text = value.as_bytes();
            let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(text.strip_suffix(b"==").or_else(|| text.strip_suffix(b"=")).unwrap_or(text));
            match decoded {
                Ok(bytes) => Value::Binary(bytes),
                Err(_) => continue, // undecodable binary metadata is dropped, as grpc does
            }
        } else {
            Value::latin1(value.as_bytes())
        };
        out.push((name.to_owned(), value));
    }
    out
}

/// The status of a code Python sent; unknown numbers become UNKNOWN.
fn status(code: i32, message: String) -> Status {
    Status::new(Code::from(code), message)
}

/// Ends the call for Python when the network side lets go of it (client reset, connection
/// closed, deadline) before Python answered.
pub struct Registration {
    pub shared: Arc<Shared>,
    pub id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.calls.abandon(self.id, None);
    }
}

/// The response messages of one call, as tonic sends them.
pub struct Responses {
    first: Option<Bytes>,
    rx: mpsc::UnboundedReceiver<Out>,
    call: Arc<Call>,
    registration: Registration,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl Stream for Responses {
    type Item = Result<Bytes, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(message) = this.first.take() {
            return Poll::Ready(Some(Ok(message)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(Out::Message(message))) => {
                this.registration.shared.calls.sent(this.registration.id, &this.call, message.len());
                Poll::Ready(Some(Ok(message)))
            }
            Poll::Ready(Some(Out::End(0, _))) | Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Out::End(code, message))) => {
                this.done = true;
                Poll::Ready(Some(Err(status(code, message))))
            }
            Poll::Ready(Some(Out::Http(..))) => {
                this.done = true;
                Poll::Ready(Some(Err(Status::internal("an HTTP answer to a gRPC call"))))
            }
            Poll::Pending => {
                if let Some(deadline) = this.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.deadline = None;
                        this.registration.shared.calls.abandon(this.registration.id, None);
                        this.done = true;
                        return Poll::Ready(Some(Err(Status::deadline_exceeded(DEADLINE_EXCEEDED))));
                    }
                }
                Poll::Pending
            }
        }
    }
}

/// The tonic service of one call.
pub struct CallService {
    pub shared: Arc<Shared>,
    pub head: Head,
    pub unary: bool,
    pub deadline: Option<Instant>,
}

type CallFuture = Pin<Box<dyn Future<Output = Result<tonic::Response<Responses>, Status>> + Send>>;

impl tonic::server::StreamingService<Bytes> for CallService {
    type Response = Bytes;
    type ResponseStream = Responses;
    type Future = CallFuture;

    fn call(&mut self, request: tonic::Request<Streaming<Bytes>>) -> CallFuture {
        let shared = self.shared.clone();
        let head = std::mem::take(&mut self.head);
        let (unary, deadline) = (self.unary, self.deadline);
        Box::pin(async move {
            let requests = request.into_inner();
            if shared.calls.active() >= shared.limits.max_calls {
                return Err(Status::resource_exhausted(format!(
                    "the server has {} calls in progress, its limit",
                    shared.limits.max_calls
                )));
            }
            let (id, call, rx) = shared.calls.open();
            let registration = Registration { shared: shared.clone(), id };
            let mut responses = Responses {
                first: None,
                rx,
                call: call.clone(),
                registration,
                deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
                done: false,
            };
            if unary {
                let work = unary_call(&shared, id, head, requests, &mut responses);
                match deadline {
                    None => work.await?,
                    Some(at) => match tokio::time::timeout_at(at, work).await {
                        Ok(result) => result?,
                        Err(_) => return Err(Status::deadline_exceeded(DEADLINE_EXCEEDED)),
                    },
                }
            } else {
                shared.calls.events.push(Event {
                    kind: Kind::Open,
                    call: id,
                    payload: None,
                    head: Some(Box::new(head)),
                });
                tokio::spawn(read_stream(shared.clone(), id, call, requests));
            }
            Ok(tonic::Response::new(responses))
        })
    }
}

/// A unary call: its one request to Python, and Python's answer (an error status is sent
/// trailers-only, as grpc does).
async fn unary_call(
    shared: &Arc<Shared>,
    id: u64,
    head: Head,
    mut requests: Streaming<Bytes>,
    responses: &mut Responses,
) -> Result<(), Status> {
    let message = match requests.message().await {
        Ok(Some(message)) => message,
        Ok(None) => return Err(Status::invalid_argument(NO_REQUEST_MESSAGE)),
        Err(status) => return Err(read_error(status)),
    };
    drop(requests);
    shared.calls.events.push(Event { kind: Kind::Unary, call: id, payload: Some(message), head: Some(Box::new(head)) });
    match responses.rx.recv().await {
        Some(Out::Message(message)) => {
            responses.first = Some(message);
            Ok(())
        }
        Some(Out::End(0, _)) => Ok(()),
        Some(Out::End(code, message)) => {
            responses.done = true;
            Err(status(code, message))
        }
        Some(Out::Http(..)) => Err(Status::internal("an HTTP answer to a gRPC call")),
        None => Err(Status::unavailable("the server is shutting down")),
    }
}

/// The status for a request message that could not be read: an oversized one is
/// RESOURCE_EXHAUSTED, as grpc answers (tonic says OUT_OF_RANGE).
fn read_error(status: Status) -> Status {
    if status.code() == Code::OutOfRange {
        Status::resource_exhausted(format!("received message larger than the server's limit: {}", status.message()))
    } else {
        status
    }
}

/// A stream's request messages to Python, at most the read window ahead of its handler.
async fn read_stream(shared: Arc<Shared>, id: u64, call: Arc<Call>, mut requests: Streaming<Bytes>) {
    loop {
        match call.read_window.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return, // the call is over
        }
        match requests.message().await {
            Ok(Some(message)) => {
                shared.calls.events.push(Event { kind: Kind::Message, call: id, payload: Some(message), head: None })
            }
            Ok(None) => {
                shared.calls.events.push(Event::bare(Kind::End, id));
                return;
            }
            Err(status) => {
                // A bad frame or an oversized message ends the call.
                let status = read_error(status);
                shared.calls.abandon(id, Some((status.code() as i32, status.message().to_owned())));
                return;
            }
        }
    }
}

pub fn head(parts: &http::request::Parts, peer: &str, now: Instant) -> (Head, Option<Instant>) {
    let timeout = parts.headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_timeout);
    let head = Head {
        method: parts.uri.path().to_owned(),
        metadata: metadata(&parts.headers),
        timeout: timeout.map_or(-1.0, |t| t.as_secs_f64()),
        peer: peer.to_owned(),
    };
    (head, timeout.map(|t| now + t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_with_every_unit_and_refuse_bad_ones() {
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_timeout("99999999S"), Some(Duration::from_secs(99_999_999)));
        for bad in ["", "S", "5", "5x", "-5S", "123456789S", "1.5S", "²S"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn metadata_leaves_out_grpc_headers_and_decodes_binary_values() {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/grpc".parse().unwrap());
        headers.insert("grpc-timeout", "1S".parse().unwrap());
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("trace-bin", "AAEC".parse().unwrap());
        headers.insert("padded-bin", "AA==".parse().unwrap());
        headers.insert("broken-bin", "!!".parse().unwrap());
        let mut pairs = metadata(&headers);
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            pairs,
            vec![
                ("authorization".into(), Value::Text("Bearer t".into())),
                ("padded-bin".into(), Value::Binary(vec![0])),
                ("trace-bin".into(), Value::Binary(vec![0, 1, 2])),
            ]
        );
    }
}
