//! The request's `Origin` header: a strict parse that borrows its input.
//!
//! This module owns what corsd accepts as the `Origin` of a request
//! ([Fetch §3.1 "`Origin` header"](https://fetch.spec.whatwg.org/#origin-header),
//! [URL §4.5 origin serialisation](https://html.spec.whatwg.org/multipage/browsers.html#ascii-serialisation-of-an-origin))
//! and the host grammar shared with allowlist patterns. It never allocates and
//! never panics; it does not decide anything (see `decide`).

use ::core::net::Ipv6Addr;

/// The longest `Origin` value corsd parses; anything longer is malformed.
///
/// No legal origin comes near it: `https://` + a 253-byte name + a trailing
/// dot + `:65535` is 268 bytes.
pub const MAX_ORIGIN_LEN: usize = 327;

/// Longest DNS name, not counting a trailing dot.
pub(crate) const MAX_HOST_LEN: usize = 253;

/// Longest DNS label.
pub(crate) const MAX_LABEL_LEN: usize = 63;

/// A parsed request `Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOrigin<'a> {
    /// The opaque origin `null` (sandboxed frames, `file:` pages, redirects).
    Null,
    /// A tuple origin: scheme, host and optional port.
    Tuple(OriginTuple<'a>),
}

/// The parts of a tuple origin, each borrowed from the header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginTuple<'a> {
    /// The whole header value, as received.
    pub serialized: &'a str,
    /// The scheme, as received (browsers send it lowercase).
    pub scheme: &'a str,
    /// The host: a DNS name (maybe with a trailing dot), a dotted-quad IPv4
    /// address, or an IPv6 address in brackets.
    pub host: &'a str,
    /// The port, when the origin names one.
    pub port: Option<u16>,
}

/// Why an `Origin` value is malformed. The text is for logs and `corsd check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses a request's `Origin` header value.
///
/// Accepts `null` and `scheme://host[:port]` with a well-formed host; refuses
/// everything else (empty, over [`MAX_ORIGIN_LEN`] bytes, several values,
/// whitespace or control characters, paths, queries, fragments, userinfo).
/// Letter case is not judged here: matching is byte for byte, so a value a
/// browser would never send simply matches no entry.
///
/// One pass over the bytes: this runs for every CORS request.
pub fn parse_request_origin(value: &str) -> Result<RequestOrigin<'_>, Malformed> {
    if value.is_empty() {
        return Err(Malformed("the Origin header is empty"));
    }
    if value.len() > MAX_ORIGIN_LEN {
        return Err(Malformed("the Origin header is longer than any origin"));
    }
    if value == "null" {
        return Ok(RequestOrigin::Null);
    }
    let (scheme, authority) = match value.split_at_checked(HTTPS.len()) {
        // Nearly every origin is https: no need to scan for the scheme's end.
        Some((https, authority)) if https == HTTPS => ("https", authority),
        _ => split_scheme(value)?,
    };
    let (host, port) = if authority.starts_with('[') {
        scan_ipv6_authority(authority)?
    } else {
        scan_name_authority(authority)?
    };
    Ok(RequestOrigin::Tuple(OriginTuple {
        serialized: value,
        scheme,
        host,
        port,
    }))
}

const HTTPS: &str = "https://";

/// `scheme://` and the rest, for any scheme.
fn split_scheme(value: &str) -> Result<(&str, &str), Malformed> {
    let bytes = value.as_bytes();
    let scheme_len = bytes
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .unwrap_or(bytes.len());
    let (scheme, rest) = value.split_at(scheme_len);
    let Some(authority) = rest.strip_prefix("://") else {
        return Err(unexpected(
            bytes.get(scheme_len).copied(),
            "the Origin header has no `://`",
        ));
    };
    if !bytes.first().is_some_and(u8::is_ascii_alphabetic) {
        return Err(Malformed("the Origin header's scheme is not a URL scheme"));
    }
    Ok((scheme, authority))
}

/// Why a byte that no origin holds is there.
fn unexpected(byte: Option<u8>, otherwise: &'static str) -> Malformed {
    Malformed(match byte {
        Some(b' ' | b'\t') => "the Origin header holds whitespace (several values?)",
        Some(b',') => "the Origin header holds several values",
        Some(b'/' | b'\\') => "the Origin header has a path",
        Some(b'?') => "the Origin header has a query",
        Some(b'#') => "the Origin header has a fragment",
        Some(b'@') => "the Origin header has userinfo",
        Some(b) if !b.is_ascii_graphic() => "the Origin header holds a control character or a non-ASCII byte",
        _ => otherwise,
    })
}

const MALFORMED_HOST: &str = "the Origin header's host is malformed";
const MALFORMED_PORT: &str = "the Origin header's port is malformed";

/// Which bytes a DNS label holds: letters, digits, `_` and `-`.
const LABEL_BYTES: [bool; 256] = label_bytes();

#[expect(clippy::indexing_slicing, reason = "the loop stays within the table")]
const fn label_bytes() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0u8;
    while b < 128 {
        table[b as usize] = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        b += 1;
    }
    table
}

#[expect(clippy::indexing_slicing, reason = "a byte indexes a 256-entry table")]
fn is_label_byte(b: u8) -> bool {
    LABEL_BYTES[usize::from(b)]
}

/// Whether `label` is 1-63 label bytes, not starting or ending with `-`
/// (its bytes are already known to be label bytes).
fn is_label(label: &[u8]) -> bool {
    !label.is_empty() && label.len() <= MAX_LABEL_LEN && label.first() != Some(&b'-') && label.last() != Some(&b'-')
}

/// `name[:port]`: the name's labels checked as they go by ([`check_dns_name`]
/// says the same in several passes, for allowlist patterns). The loop only
/// classifies bytes; each label's length and hyphens are checked at its end.
fn scan_name_authority(authority: &str) -> Result<(&str, Option<u16>), Malformed> {
    let bytes = authority.as_bytes();
    let mut label_start = 0usize;
    let mut last_label = (0usize, 0usize);
    let mut host_len = bytes.len();
    for (i, &b) in bytes.iter().enumerate() {
        if is_label_byte(b) {
            continue;
        }
        match b {
            b'.' if is_label(bytes.get(label_start..i).unwrap_or_default()) => {
                last_label = (label_start, i);
                label_start = i + 1;
            }
            b'.' => return Err(Malformed(MALFORMED_HOST)),
            b':' => {
                host_len = i;
                break;
            }
            other => return Err(unexpected(Some(other), MALFORMED_HOST)),
        }
    }
    let label_len = host_len - label_start;
    let (host, port) = authority.split_at(host_len);
    let trailing_dot = label_len == 0;
    if label_len > 0 {
        if !is_label(bytes.get(label_start..host_len).unwrap_or_default()) {
            return Err(Malformed(MALFORMED_HOST));
        }
        last_label = (label_start, host_len);
    }
    let body_len = host_len.saturating_sub(usize::from(trailing_dot));
    if body_len == 0 || body_len > MAX_HOST_LEN || (trailing_dot && host.ends_with("..")) {
        return Err(Malformed(MALFORMED_HOST));
    }
    let last = host.get(last_label.0..last_label.1).unwrap_or_default();
    if ends_in_number(last) && (trailing_dot || dotted_quad(host).is_none()) {
        return Err(Malformed(MALFORMED_HOST));
    }
    let port = match port.strip_prefix(':') {
        None => None,
        Some(digits) => Some(
            parse_port(digits)
                .ok_or_else(|| unexpected(digits.bytes().find(|b| !b.is_ascii_digit()), MALFORMED_PORT))?,
        ),
    };
    Ok((host, port))
}

/// `[v6][:port]`: an IPv6 address without zone id.
fn scan_ipv6_authority(authority: &str) -> Result<(&str, Option<u16>), Malformed> {
    let close = authority.find(']').ok_or(Malformed(MALFORMED_HOST))?;
    let (host, after) = authority.split_at(close + 1);
    let inner = host.get(1..close).unwrap_or_default();
    if inner.parse::<Ipv6Addr>().is_err() {
        return Err(unexpected(
            inner.bytes().find(|b| !b.is_ascii_graphic()),
            MALFORMED_HOST,
        ));
    }
    match after.strip_prefix(':') {
        None if after.is_empty() => Ok((host, None)),
        None => Err(unexpected(after.bytes().next(), MALFORMED_HOST)),
        Some(digits) => Ok((host, Some(parse_port(digits).ok_or(Malformed(MALFORMED_PORT))?))),
    }
}

/// Splits `host[:port]`, keeping an IPv6 host's brackets. `None` when the
/// colons do not make sense (an unbracketed IPv6 address, text after `]`).
pub(crate) fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let bytes = authority.as_bytes();
    if bytes.first() == Some(&b'[') {
        let close = bytes.iter().position(|&b| b == b']')?;
        let (host, after) = authority.split_at(close + 1);
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    let Some(colon) = bytes.iter().position(|&b| b == b':') else {
        return Some((authority, None));
    };
    let (host, port) = authority.split_at(colon);
    let port = port.get(1..).unwrap_or_default();
    if port.as_bytes().contains(&b':') {
        None
    } else {
        Some((host, Some(port)))
    }
}

/// A port as an origin serialises it: 1-65535, decimal, no leading zero.
pub(crate) fn parse_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|&p| p != 0)
}

/// The default port of a scheme, for same-origin comparisons.
pub(crate) fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else {
        None
    }
}

/// What is wrong with a host name, for messages that say how to fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameError {
    Empty,
    TooLong,
    EmptyLabel,
    LabelTooLong,
    BadByte(u8),
    HyphenAtEdge,
    /// The last label is a number, but the whole is no dotted-quad address.
    NumericLastLabel,
}

/// The shape of a host name that passed [`check_dns_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameKind {
    Domain,
    /// A dotted-quad IPv4 address in its one serialisation.
    Ipv4([u8; 4]),
}

/// Checks a DNS name or dotted-quad IPv4 address: labels of 1-63 letters,
/// digits, hyphens or underscores, not starting or ending with a hyphen; at
/// most 253 bytes besides one trailing dot; a last label that is a number
/// (the URL standard's "ends in a number") only in a strict dotted quad.
pub(crate) fn check_dns_name(name: &str) -> Result<NameKind, NameError> {
    let body = name.strip_suffix('.').unwrap_or(name);
    if body.is_empty() {
        return Err(if name.is_empty() {
            NameError::Empty
        } else {
            NameError::EmptyLabel
        });
    }
    if body.len() > MAX_HOST_LEN {
        return Err(NameError::TooLong);
    }
    let mut last = "";
    for label in body.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong);
        }
        if let Some(bad) = label.bytes().find(|&b| !is_label_byte(b)) {
            return Err(NameError::BadByte(bad));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError::HyphenAtEdge);
        }
        last = label;
    }
    if !ends_in_number(last) {
        return Ok(NameKind::Domain);
    }
    match (name.len() == body.len()).then(|| dotted_quad(body)).flatten() {
        Some(octets) => Ok(NameKind::Ipv4(octets)),
        None => Err(NameError::NumericLastLabel),
    }
}

/// The URL standard's test of the last label: all digits, or `0x` and hex digits.
fn ends_in_number(label: &str) -> bool {
    if !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    label
        .strip_prefix("0x")
        .or_else(|| label.strip_prefix("0X"))
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Four decimal parts 0-255 without leading zeros, and nothing else.
pub(crate) fn dotted_quad(text: &str) -> Option<[u8; 4]> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part.starts_with('0')) {
            return None;
        }
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(octets)
}

#[cfg(test)]
pub(crate) mod reference {
    //! The request-origin grammar in its plainest form, several passes over
    //! the value; the one-pass parser must accept exactly what this accepts.
    use super::*;

    /// `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )` (RFC 3986 §3.1).
    pub(crate) fn is_scheme(scheme: &str) -> bool {
        let mut bytes = scheme.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    }

    /// A request host: a bracketed IPv6 address (no zone id) or a name whose
    /// labels are well formed ([`check_dns_name`], letters of either case).
    pub(crate) fn is_request_host(host: &str) -> bool {
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return inner.parse::<Ipv6Addr>().is_ok();
        }
        check_dns_name(host).is_ok()
    }

    /// Whether the reference grammar accepts `value` as a tuple origin,
    /// and its parts.
    pub(crate) fn parse(value: &str) -> Option<(&str, &str, Option<u16>)> {
        if value.is_empty() || value.len() > MAX_ORIGIN_LEN || value == "null" {
            return None;
        }
        if value.bytes().any(|b| !b.is_ascii_graphic()) || value.contains(',') {
            return None;
        }
        let (scheme, rest) = value.split_once("://")?;
        if !is_scheme(scheme) || rest.contains(['/', '?', '#', '@', '\\']) {
            return None;
        }
        let (host, port) = split_host_port(rest)?;
        let port = match port {
            None => None,
            Some(digits) => Some(parse_port(digits)?),
        };
        is_request_host(host).then_some((scheme, host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(value: &str) -> OriginTuple<'_> {
        match parse_request_origin(value) {
            Ok(RequestOrigin::Tuple(t)) => t,
            other => panic!("{value}: {other:?}"),
        }
    }

    #[test]
    fn parses_the_parts() {
        let t = tuple("https://a.example.com:8443");
        assert_eq!((t.scheme, t.host, t.port), ("https", "a.example.com", Some(8443)));
        let t = tuple("http://[::1]:3000");
        assert_eq!((t.host, t.port), ("[::1]", Some(3000)));
        assert_eq!(tuple("https://example.com.").host, "example.com.");
        assert_eq!(parse_request_origin("null"), Ok(RequestOrigin::Null));
    }

    #[test]
    fn refuses_what_no_browser_sends() {
        for bad in [
            "",
            "https://a.com, https://b.com",
            "https://a.com,https://b.com",
            "https://a.com/",
            "https://a.com/x",
            "https://a.com?x",
            "https://a.com#x",
            "https://u@a.com",
            "https://a.com:0",
            "https://a.com:65536",
            "https://a.com:08443",
            "https://a.com:",
            "https://.a.com",
            "https://a..com",
            "https://a.com..",
            "https://-a.com",
            "https://[fe80::1%25eth0]",
            "https://example.123",
            "https://127.1",
            "https://a\u{7f}.com",
            " https://a.com",
            "https:/a.com",
            "1https://a.com",
            "https://",
        ] {
            assert!(parse_request_origin(bad).is_err(), "{bad:?} parsed");
        }
        let long = format!("https://{}.com", "a".repeat(MAX_ORIGIN_LEN));
        assert!(parse_request_origin(&long).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(5_000))]

        /// The one-pass parser accepts exactly what the plain grammar accepts.
        #[test]
        fn one_pass_parser_agrees_with_the_reference(
            value in "(null|https?|HTTPS|x-1|1x|)(://|:/|//|)([a-zA-Z0-9._:\\[\\]-]|xn--|127|0x|::|,| |/|@|%|\u{e9}){0,12}"
        ) {
            let fast = match parse_request_origin(&value) {
                Ok(RequestOrigin::Tuple(t)) => Some((t.scheme, t.host, t.port)),
                _ => None,
            };
            proptest::prop_assert_eq!(fast, reference::parse(&value), "{:?}", value);
        }
    }

    #[test]
    fn dotted_quads_are_strict() {
        assert_eq!(dotted_quad("127.0.0.1"), Some([127, 0, 0, 1]));
        for bad in ["127.1", "010.0.0.1", "256.0.0.1", "1.2.3.4.5", "0x7f.0.0.1", "1.2.3."] {
            assert_eq!(dotted_quad(bad), None, "{bad}");
        }
        assert_eq!(check_dns_name("1.2.3.4."), Err(NameError::NumericLastLabel));
        assert_eq!(check_dns_name("example.0x1f"), Err(NameError::NumericLastLabel));
    }
}
