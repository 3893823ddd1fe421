//! The Fetch standard's grammar that both the policy and the decision use:
//! tokens, which methods browsers normalise and which they forbid.
//! Nothing here knows about policies or decisions.

/// Methods browsers upper-case when they send them
/// ([Fetch: normalize a method](https://fetch.spec.whatwg.org/#concept-method-normalize)).
const NORMALIZED_METHODS: [&str; 6] = ["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"];

/// Methods no browser lets a page send
/// ([Fetch: forbidden method](https://fetch.spec.whatwg.org/#forbidden-method)).
const FORBIDDEN_METHODS: [&str; 3] = ["CONNECT", "TRACE", "TRACK"];

/// An RFC 9110 token: what a method or a header name is made of.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// The forbidden method `method` is, compared case-insensitively, if it is one.
pub fn forbidden_method(method: &str) -> Option<&'static str> {
    FORBIDDEN_METHODS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(method))
        .copied()
}

/// A method as a browser sends it: the six methods Fetch normalises
/// upper-cased, any other kept as written (`PATCH` and `patch` differ).
pub fn normalize_method(method: String) -> String {
    match NORMALIZED_METHODS.iter().find(|n| n.eq_ignore_ascii_case(&method)) {
        Some(normal) => (*normal).to_owned(),
        None => method,
    }
}

/// Whether a requested header name is `authorization`, which a `*` in
/// `allow_headers` never covers
/// ([Fetch: CORS non-wildcard request-header name](https://fetch.spec.whatwg.org/#cors-non-wildcard-request-header-name)).
pub fn is_non_wildcard_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization")
}
