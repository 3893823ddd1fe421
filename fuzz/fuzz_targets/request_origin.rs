//! Any bytes as a request `Origin`: the parser never panics, and what it
//! accepts as a tuple origin is what the allowlist may match.
#![no_main]

use corsd::core::origin::{RequestOrigin, parse_request_origin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    if let Ok(RequestOrigin::Tuple(t)) = parse_request_origin(value) {
        assert!(value.len() <= corsd::core::origin::MAX_ORIGIN_LEN);
        assert_eq!(t.serialized, value);
        assert!(value.starts_with(t.scheme));
        assert!(value.contains(t.host));
    }
});
