//! Allowlist entries: the origin URL pattern grammar, its normal form, and
//! errors that say what is wrong and how to fix it.
//!
//! A pattern is `scheme://host[:port]`: `https` anywhere, `http` only for
//! local development hosts, `*.` as the whole leftmost label in front of a
//! registrable domain, IP addresses, and Chrome and Firefox extension ids.
//! Names are converted to ASCII the way the URL standard's
//! [domain to ASCII](https://url.spec.whatwg.org/#concept-domain-to-ascii) does.
//! This module parses single patterns; the index lives in `allowlist`.

use ::core::net::Ipv6Addr;
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use idna::AsciiDenyList;

use super::origin::{NameError, NameKind, check_dns_name, dotted_quad, parse_port};

/// The schemes an HTTP(S) pattern can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebScheme {
    /// `https`, allowed for every host.
    Https,
    /// `http`, allowed only for local development hosts.
    Http,
}

impl WebScheme {
    /// The scheme as an origin serialises it.
    pub fn as_str(self) -> &'static str {
        match self {
            WebScheme::Https => "https",
            WebScheme::Http => "http",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            WebScheme::Https => 443,
            WebScheme::Http => 80,
        }
    }
}

/// A validated, normalised allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    normalized: Box<str>,
    kind: PatternKind,
}

/// What an [`OriginPattern`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternKind {
    /// Exactly one origin: the normalised pattern itself.
    Exact,
    /// Every subdomain, at any depth, of `base` (not `base` itself).
    Subdomains {
        /// `http` or `https`.
        scheme: WebScheme,
        /// The ASCII domain after `*.`, with its trailing dot if written.
        base: Box<str>,
        /// The port, `None` for the scheme's default.
        port: Option<u16>,
    },
}

impl OriginPattern {
    /// The normalised pattern, e.g. `https://*.xn--bcher-kva.example:8443`.
    pub fn as_str(&self) -> &str {
        &self.normalized
    }

    /// What the pattern matches.
    pub fn kind(&self) -> &PatternKind {
        &self.kind
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.normalized)
    }
}

/// Why a pattern was refused, and where it helps, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    message: String,
    help: Option<String>,
}

impl PatternError {
    fn new(message: impl Into<String>) -> Self {
        PatternError {
            message: message.into(),
            help: None,
        }
    }

    fn with_help(message: impl Into<String>, help: impl Into<String>) -> Self {
        PatternError {
            message: message.into(),
            help: Some(help.into()),
        }
    }

    /// What is wrong: lowercase, with the offending text in backticks.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How to fix it, where a hint helps.
    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }
}

/// `message: help`, or the message alone.
impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.help {
            Some(help) => write!(f, ": {help}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for PatternError {}

const SHAPE: &str = "write `https://HOST` or `https://HOST:PORT`";

impl FromStr for OriginPattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::with_help("the origin is empty", SHAPE));
        }
        if text.trim() != text {
            return Err(PatternError::new(format!(
                "remove the whitespace around `{}`",
                text.trim()
            )));
        }
        if text.eq_ignore_ascii_case("null") {
            return Err(PatternError::with_help(
                "`null` can never be allowlisted",
                "sandboxed frames, `file:` pages and redirects all send it",
            ));
        }
        if text == "*" {
            return Err(PatternError::with_help(
                "`*` would allow every origin",
                "list the origins, or use `https://*.example.com` for the subdomains of one domain",
            ));
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(PatternError::new(format!(
                "`{}` holds whitespace or a control character",
                text.escape_debug()
            )));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(missing_scheme(text));
        };
        if scheme.eq_ignore_ascii_case("file") {
            return Err(missing_scheme(text));
        }
        let rest = strip_path_query_fragment(rest)?;
        if let Some((userinfo, _)) = rest.rsplit_once('@') {
            return Err(PatternError::with_help(
                format!("remove `{userinfo}@`"),
                "an origin has no user name or password",
            ));
        }
        let is = |name: &str| scheme.eq_ignore_ascii_case(name);
        if is("https") {
            parse_web(WebScheme::Https, rest)
        } else if is("http") {
            parse_web(WebScheme::Http, rest)
        } else if is("chrome-extension") {
            parse_chrome_extension(rest)
        } else if is("moz-extension") {
            parse_moz_extension(rest)
        } else {
            Err(PatternError::with_help(
                format!("the scheme `{}` is not allowed", scheme.to_ascii_lowercase()),
                "use `https` (`http` only for localhost, `chrome-extension` or `moz-extension` for browser extensions)",
            ))
        }
    }
}

fn missing_scheme(text: &str) -> PatternError {
    if text.to_ascii_lowercase().starts_with("file:") {
        return PatternError::new("`file:` pages send the origin `null`, which can never be allowlisted");
    }
    PatternError::with_help(format!("`{text}` has no scheme"), format!("write `https://{text}`"))
}

/// Refuses anything after the authority, with a hint that names it.
fn strip_path_query_fragment(rest: &str) -> Result<&str, PatternError> {
    let Some(at) = rest.find(['/', '?', '#', '\\']) else {
        return Ok(rest);
    };
    let (authority, tail) = rest.split_at(at);
    let (message, help) = match tail.as_bytes().first() {
        Some(b'/') if tail == "/" => ("remove the trailing \"/\"".to_owned(), "an origin has no path"),
        Some(b'/' | b'\\') => (format!("remove the path `{tail}`"), "an origin has no path"),
        Some(b'?') => (format!("remove the query `{tail}`"), "an origin has no query"),
        _ => (format!("remove the fragment `{tail}`"), "an origin has no fragment"),
    };
    if authority.is_empty() {
        return Err(PatternError::with_help("the host is empty", SHAPE));
    }
    Err(PatternError::with_help(message, help))
}

fn parse_chrome_extension(id: &str) -> Result<OriginPattern, PatternError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_lowercase()) {
        return Ok(OriginPattern {
            normalized: format!("chrome-extension://{id}").into(),
            kind: PatternKind::Exact,
        });
    }
    let why = if id.contains('*') {
        "an extension id cannot be a wildcard"
    } else if id.bytes().any(|b| b.is_ascii_uppercase()) {
        "capital letters are not allowed"
    } else if id.bytes().any(|b| b.is_ascii_digit()) {
        "digits are not allowed"
    } else {
        "it must be exactly 32 letters `a`-`z`"
    };
    Err(PatternError::with_help(
        format!("`chrome-extension://{id}` is not a Chrome extension origin"),
        format!(
            "{why}; write `chrome-extension://` and the 32-letter id, as in `chrome-extension://abdkkegmcbiomijcbdaodaflgehfffed`"
        ),
    ))
}

fn parse_moz_extension(id: &str) -> Result<OriginPattern, PatternError> {
    let groups: Vec<&str> = id.split('-').collect();
    let shaped = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let small_alnum = id
        .bytes()
        .all(|b| b == b'-' || b.is_ascii_lowercase() || b.is_ascii_digit());
    if shaped && small_alnum {
        return Ok(OriginPattern {
            normalized: format!("moz-extension://{id}").into(),
            kind: PatternKind::Exact,
        });
    }
    let why = if id.starts_with('{') || id.ends_with('}') {
        "remove the braces"
    } else if id.contains('*') {
        "an extension id cannot be a wildcard"
    } else if id.bytes().any(|b| b.is_ascii_uppercase()) {
        "capital letters are not allowed"
    } else {
        "the id must be groups of 8-4-4-4-12 letters `a`-`z` and digits"
    };
    Err(PatternError::with_help(
        format!("`moz-extension://{id}` is not a Firefox extension origin"),
        format!("{why}; write it as in `moz-extension://1234ab56-78c9-1df2-3efg-4567891hi1j2`"),
    ))
}

/// `http`/`https` with a host and an optional port.
fn parse_web(scheme: WebScheme, authority: &str) -> Result<OriginPattern, PatternError> {
    if authority.is_empty() {
        return Err(PatternError::with_help("the host is empty", SHAPE));
    }
    if authority.starts_with("*.[") {
        return Err(PatternError::new(format!(
            "`{authority}`: a wildcard cannot stand in front of an IP address"
        )));
    }
    let (host, port) = split_pattern_authority(authority)?;
    let port = match port {
        None => None,
        Some(digits) => check_port(digits)?,
    }
    .filter(|&p| p != scheme.default_port());

    let (host, wildcard) = if host.starts_with('[') {
        (Cow::Owned(normalize_ipv6(host)?), false)
    } else if let Some(base) = host.strip_prefix("*.") {
        (normalize_wildcard_base(base, host)?, true)
    } else if host.contains('*') {
        return Err(misplaced_wildcard(host));
    } else {
        (normalize_name(host)?, false)
    };

    if scheme == WebScheme::Http && !is_local_development_host(&host) {
        let shown = if wildcard {
            format!("*.{host}")
        } else {
            host.to_string()
        };
        return Err(PatternError::with_help(
            "`http` is allowed only for localhost and loopback addresses",
            format!("write `https://{shown}`"),
        ));
    }

    let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
    let star = if wildcard { "*." } else { "" };
    let normalized = format!("{}://{star}{host}{port_text}", scheme.as_str()).into_boxed_str();
    let kind = if wildcard {
        PatternKind::Subdomains {
            scheme,
            base: host.into(),
            port,
        }
    } else {
        PatternKind::Exact
    };
    Ok(OriginPattern { normalized, kind })
}

fn split_pattern_authority(authority: &str) -> Result<(&str, Option<&str>), PatternError> {
    if authority.starts_with('[') {
        let Some(close) = authority.find(']') else {
            return Err(PatternError::new(format!(
                "`{authority}` lacks the closing `]` of an IPv6 address"
            )));
        };
        let (host, after) = authority.split_at(close + 1);
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(PatternError::with_help(
                format!("remove `{after}` after the IPv6 address `{host}`"),
                "or write `:PORT`",
            )),
        };
    }
    match authority.split_once(':') {
        Some((_, port)) if port.contains(':') => Err(PatternError::with_help(
            format!("`{authority}` has more than one `:`"),
            "write an IPv6 address in brackets, as in `https://[2001:db8::1]`",
        )),
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((authority, None)),
    }
}

fn check_port(digits: &str) -> Result<Option<u16>, PatternError> {
    if let Some(port) = parse_port(digits) {
        return Ok(Some(port));
    }
    Err(if digits.is_empty() {
        PatternError::with_help("the port is empty", "remove the `:` or write a port")
    } else if digits.contains('*') {
        PatternError::with_help(
            format!("a port cannot be a wildcard (`:{digits}`)"),
            "list each port as an entry of its own",
        )
    } else if !digits.bytes().all(|b| b.is_ascii_digit()) {
        PatternError::new(format!("the port `{digits}` is not a number"))
    } else if digits.starts_with('0') && digits.bytes().any(|b| b != b'0') {
        PatternError::with_help(
            format!("remove the leading zero from the port `{digits}`"),
            format!("write `:{}`", digits.trim_start_matches('0')),
        )
    } else {
        PatternError::with_help(format!("the port `{digits}` is out of range"), "use 1 to 65535")
    })
}

fn normalize_ipv6(host: &str) -> Result<String, PatternError> {
    let inner = host.trim_start_matches('[').trim_end_matches(']');
    if inner.contains('*') {
        return Err(PatternError::new(format!(
            "`{host}`: a wildcard cannot stand in front of an IP address"
        )));
    }
    if let Some((_, zone)) = inner.split_once('%') {
        return Err(PatternError::with_help(
            format!("remove the zone id `%{zone}` from `{host}`"),
            "an origin has no zone id",
        ));
    }
    let addr: Ipv6Addr = inner
        .parse()
        .map_err(|_| PatternError::new(format!("`{host}` is not a valid IPv6 address")))?;
    if let Some(v4) = addr.to_ipv4_mapped() {
        return Err(PatternError::with_help(
            format!("`{host}` is an IPv4-mapped IPv6 address"),
            format!("write the IPv4 address `{v4}` instead"),
        ));
    }
    Ok(format!("[{addr}]"))
}

fn misplaced_wildcard(host: &str) -> PatternError {
    PatternError::with_help(
        format!("`{host}`: `*` may only be the whole leftmost label"),
        "followed by a registrable domain, as in `*.example.com`",
    )
}

fn normalize_wildcard_base<'h>(base: &'h str, host: &str) -> Result<Cow<'h, str>, PatternError> {
    if base.contains('*') {
        return Err(misplaced_wildcard(host));
    }
    if base.starts_with('[') || dotted_quad(base.strip_suffix('.').unwrap_or(base)).is_some() {
        return Err(PatternError::new(format!(
            "`{host}`: a wildcard cannot stand in front of an IP address"
        )));
    }
    let ascii = normalize_name(base)?;
    let bare = ascii.strip_suffix('.').unwrap_or(&ascii);
    if psl::domain(bare.as_bytes()).is_some() {
        return Ok(ascii);
    }
    let known_suffix = psl::suffix(bare.as_bytes()).is_some_and(|s| s.is_known());
    if !bare.contains('.') && !known_suffix {
        return Err(PatternError::with_help(
            format!("`*.{ascii}` covers every name under the single label `{bare}`"),
            "put the wildcard in front of a registrable domain, as in `*.example.com`",
        ));
    }
    Err(PatternError::with_help(
        format!("`*.{ascii}` would cover the public suffix `{bare}`"),
        format!("put the wildcard in front of a registrable domain, as in `*.example.{bare}`"),
    ))
}

/// Converts a host name to its ASCII form and checks it as a DNS name or a
/// dotted-quad IPv4 address.
fn normalize_name(host: &str) -> Result<Cow<'_, str>, PatternError> {
    // Lowercase ASCII letters, digits, `-`, `_` and `.` map to themselves
    // under UTS #46, and only `xn--` labels need decoding: skip the
    // conversion for the names most policies hold.
    let plain = host
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
        && !host.split('.').any(|label| label.starts_with("xn--"));
    let ascii = if plain {
        Cow::Borrowed(host)
    } else {
        idna_to_ascii(host)?
    };
    match check_dns_name(&ascii) {
        Ok(NameKind::Domain | NameKind::Ipv4(_)) => Ok(ascii),
        Err(error) => Err(name_error(host, &ascii, error)),
    }
}

/// The URL standard's domain to ASCII (UTS #46, nontransitional, hyphens unchecked).
fn idna_to_ascii(host: &str) -> Result<Cow<'_, str>, PatternError> {
    let ascii = idna::domain_to_ascii_cow(host.as_bytes(), AsciiDenyList::URL).map_err(|_| {
        PatternError::with_help(
            format!("`{host}` is not a valid domain name"),
            "it fails the URL standard's IDNA conversion (check the punycode of `xn--` labels)",
        )
    })?;
    Ok(ascii)
}

fn name_error(host: &str, ascii: &str, error: NameError) -> PatternError {
    match error {
        NameError::Empty => PatternError::with_help("the host is empty", SHAPE),
        NameError::TooLong => PatternError::new(format!(
            "`{host}` is longer than 253 bytes, the most a DNS name can have"
        )),
        NameError::EmptyLabel => {
            PatternError::with_help(format!("`{host}` has an empty label"), "remove the extra `.`")
        }
        NameError::LabelTooLong => PatternError::new(format!("`{host}` has a label longer than 63 bytes")),
        NameError::BadByte(b) => PatternError::with_help(
            format!("`{host}` holds `{}`", char::from(b).escape_default()),
            "a host has only letters, digits, hyphens and underscores",
        ),
        NameError::HyphenAtEdge => PatternError::new(format!("`{host}` has a label that starts or ends with `-`")),
        NameError::NumericLastLabel => numeric_error(host, ascii),
    }
}

fn numeric_error(host: &str, ascii: &str) -> PatternError {
    let body = ascii.strip_suffix('.').unwrap_or(ascii);
    if dotted_quad(body).is_some() {
        return PatternError::with_help(
            format!("remove the trailing dot from the IPv4 address `{host}`"),
            format!("write `{body}`"),
        );
    }
    let looks_numeric = body
        .split('.')
        .all(|l| !l.is_empty() && (l.bytes().all(|b| b.is_ascii_digit()) || l.starts_with("0x")));
    if looks_numeric {
        PatternError::with_help(
            format!("`{host}` is not a dotted-quad IPv4 address"),
            "write four decimal parts 0-255 without leading zeros, as in `127.0.0.1`",
        )
    } else {
        PatternError::with_help(
            format!("`{host}` ends in a number"),
            "the URL standard reads such a host as a broken IPv4 address; use a real domain name",
        )
    }
}

/// `localhost`, names under `.localhost`, `127.0.0.0/8` and `[::1]`.
fn is_local_development_host(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    name == "localhost"
        || name.ends_with(".localhost")
        || host == "[::1]"
        || dotted_quad(host).is_some_and(|[first, ..]| first == 127)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        match text.parse::<OriginPattern>() {
            Ok(p) => p.to_string(),
            Err(e) => panic!("{text}: {e}"),
        }
    }

    fn err(text: &str) -> String {
        match text.parse::<OriginPattern>() {
            Ok(p) => panic!("{text} parsed as {p}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn normalises() {
        assert_eq!(norm("HTTPS://Example.COM:443"), "https://example.com");
        assert_eq!(norm("https://Bücher.Example"), "https://xn--bcher-kva.example");
        assert_eq!(
            norm("https://[2001:DB8:0:0:0:0:0:1]:8443"),
            "https://[2001:db8::1]:8443"
        );
        assert_eq!(norm("http://localhost:80"), "http://localhost");
        assert_eq!(norm("https://example.com."), "https://example.com.");
        assert_eq!(norm("https://*.Example.co.uk"), "https://*.example.co.uk");
        assert_eq!(norm("http://127.0.0.2:3000"), "http://127.0.0.2:3000");
    }

    proptest::proptest! {
        /// Skipping IDNA for plain lowercase names changes nothing.
        #[test]
        fn plain_names_are_their_own_ascii_form(name in "[a-z0-9_.-]{1,30}") {
            proptest::prop_assume!(!name.split('.').any(|l| l.starts_with("xn--")));
            let converted = idna_to_ascii(&name).map(|c| c.into_owned()).ok();
            proptest::prop_assert_eq!(converted.as_deref(), Some(name.as_str()));
        }
    }

    #[test]
    fn explains_refusals() {
        assert_eq!(
            err("https://example.com/"),
            "remove the trailing \"/\": an origin has no path"
        );
        assert!(err("http://example.com").starts_with("`http` is allowed only for localhost"));
        assert!(err("https://*.co.uk").contains("public suffix `co.uk`"));
        assert!(err("https://*.github.io").contains("public suffix"));
        assert!(err("https://xn--f").contains("IDNA"));
        assert!(err("https://:08443").contains("host is empty") || err("https://a.com:08443").contains("leading zero"));
        assert!(err("https://a.com:08443").contains("leading zero"));
    }
}
