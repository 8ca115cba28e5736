//! The HTTP port (HTTP/1.1 and h2c through hyper): each request reaches Python as one `Http` event
//! (method, path, headers, the whole body) and Python answers with status, headers and body.
//! Bodies are bounded by the message limit and must arrive within the body timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::calls::Out;
use crate::events::{Event, Head, Kind, Value};
use crate::grpc::Registration;
use crate::server::{ActiveStream, Shared};

/// A whole request body must arrive within this.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A response body that keeps its connection counted busy until it is sent or dropped.
pub struct Holding<B> {
    pub body: B,
    pub _busy: ActiveStream,
}

impl<B: Body + Unpin> Body for Holding<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

type Response = http::Response<tonic::body::Body>;

fn plain(status: u16, headers: Vec<(String, String)>, body: Bytes) -> Response {
    let mut response = http::Response::new(tonic::body::Body::new(Full::new(body)));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (http::HeaderName::try_from(name), http::HeaderValue::try_from(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn error(status: u16, message: &str) -> Response {
    let body = format!("{{\"error\": {}}}", json_string(message));
    plain(status, vec![("content-type".into(), "application/json".into())], Bytes::from(body))
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the gRPC port answers a request that is not gRPC (HTTP/1.1, or HTTP/2 without
/// `application/grpc`): a clear 415 instead of a protocol error.
pub fn not_grpc() -> Response {
    error(415, "this port serves gRPC (HTTP/2, content-type application/grpc); HTTP requests go to the HTTP port")
}

pub async fn serve(shared: Arc<Shared>, request: http::Request<Incoming>, peer: &str, busy: ActiveStream) -> Response {
    let (parts, body) = request.into_parts();
    let limit = shared.limits.max_message_bytes;
    if let Some(length) = parts.headers.get(http::header::CONTENT_LENGTH) {
        if length.to_str().ok().and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > limit as u64) {
            return error(413, &format!("the request body is larger than the server's limit of {limit} bytes"));
        }
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return error(413, &format!("the request body is larger than the server's limit of {limit} bytes"));
        }
        Ok(Err(_)) => return error(400, "the request body could not be read"),
        Err(_) => return error(408, &format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs())),
    };
    let mut metadata = Vec::with_capacity(parts.headers.len() + 1);
    metadata.push((":path".to_owned(), Value::Text(parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned())));
    for (name, value) in &parts.headers {
        metadata.push((name.as_str().to_owned(), Value::latin1(value.as_bytes())));
    }
    let head = Head { method: parts.method.as_str().to_owned(), metadata, timeout: -1.0, peer: peer.to_owned() };
    let (id, _call, mut rx) = shared.calls.open();
    let registration = Registration { shared: shared.clone(), id }; // Gone if the client leaves first
    shared.calls.events.push(Event { kind: Kind::Http, call: id, payload: Some(body), head: Some(Box::new(head)) });
    let response = match rx.recv().await {
        Some(Out::Http(status, headers, body)) => plain(status, headers, body),
        Some(Out::End(_, message)) => error(500, &message),
        Some(Out::Message(_)) | None => error(503, "the server is shutting down"),
    };
    drop(registration);
    let (parts, body) = response.into_parts();
    http::Response::from_parts(parts, tonic::body::Body::new(Holding { body, _busy: busy }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_json_with_the_message_escaped() {
        assert_eq!(json_string("a \"b\"\n\\"), "\"a \\\"b\\\"\\u000a\\\\\"");
    }
}
