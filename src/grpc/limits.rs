//! gRPC's conventions for limits that tonic words its own way.
//!
//! A request message over the size limit is `RESOURCE_EXHAUSTED` in gRPC's
//! status code guide; tonic's decoder says `OUT_OF_RANGE`.
//!
//! The limit itself is enforced where a message is framed, from its 5-byte
//! prefix, before a byte of its body is buffered: refusing it later, in
//! corsd's own decoders, would first take the whole message into memory.
//! corsd's handlers and decoders never answer `OUT_OF_RANGE` (a test below
//! holds the source to it), so every `OUT_OF_RANGE` is the framing's
//! refusal, and this layer renames it by its code on the way out; no
//! message text is read.

use http::HeaderValue;
use tonic::{Code, Status};
use tower::util::MapResponseLayer;

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
    if status.code() == Code::OutOfRange {
        let renamed = Status::resource_exhausted(status.message());
        if renamed.add_header(headers).is_err() {
            // The message came out of these headers, so it fits back in them.
            headers.insert("grpc-status", HeaderValue::from(Code::ResourceExhausted as i32));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    /// Every `OUT_OF_RANGE` a client sees is a message over the limit: no
    /// code of corsd's answers it.
    #[test]
    fn no_handler_answers_out_of_range() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![src];
        let mut read = 0;
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("grpc/limits.rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    read += 1;
                    for needle in [
                        "Status::out_of_range",
                        "Status::new(Code::OutOfRange",
                        "Status::new(tonic::Code::OutOfRange",
                    ] {
                        assert!(!text.contains(needle), "{} answers {needle}", path.display());
                    }
                }
            }
        }
        assert!(read > 20, "read only {read} source files");
    }
}
