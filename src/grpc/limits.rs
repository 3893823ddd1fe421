//! gRPC's conventions for limits that tonic words its own way.
//!
//! A request message over the size limit is `RESOURCE_EXHAUSTED` in gRPC's
//! status code guide; tonic's decoder says `OUT_OF_RANGE`. corsd's handlers
//! never answer `OUT_OF_RANGE` themselves, so every such answer is the
//! decoder's, and this layer renames it on the way out.

use http::HeaderValue;
use tonic::{Code, Status};
use tower::util::MapResponseLayer;

/// What tonic's decoder says of a message over the limit.
const DECODED_TOO_LARGE: &str = "Error, decoded message length too large";

/// The layer that answers an oversized request with `RESOURCE_EXHAUSTED`.
pub type ResourceExhaustedLayer =
    MapResponseLayer<fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>>;

/// The layer for the whole server.
pub fn resource_exhausted() -> ResourceExhaustedLayer {
    MapResponseLayer::new(rename_out_of_range)
}

/// An oversized message is refused before its handler runs, in a response
/// whose headers carry the status (trailers only).
fn rename_out_of_range(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let Some(status) = Status::from_header_map(headers) else {
        return response;
    };
    if status.code() == Code::OutOfRange && status.message().starts_with(DECODED_TOO_LARGE) {
        let renamed = Status::resource_exhausted(status.message());
        if renamed.add_header(headers).is_err() {
            // The message came out of these headers, so it fits back in them.
            headers.insert("grpc-status", HeaderValue::from(Code::ResourceExhausted as i32));
        }
    }
    response
}
