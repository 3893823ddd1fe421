//! The wire forms of corsd's two hot calls, `CheckOrigin` and ext_authz
//! `Check`, which borrow where the generated messages copy:
//!
//! - Requests read only the fields a decision needs, each string kept where
//!   it lies: `CheckOrigin` as spans of one copy of its message, ext_authz
//!   as slices of the received buffer (`Bytes`). Every other field is skipped
//!   unread, so Envoy's full attribute context costs no allocation.
//! - Answers are written straight from a decision into one buffer
//!   ([`Encoded`]). No message of owned strings is built on the way.
//!
//! The generated messages (`pb`, `envoy-types`) stay the reference. Tests hold
//! these forms to them: decoding gives the same values, and encoding gives the
//! same bytes.

use arrayvec::ArrayVec;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, skip_field};
use tonic::Status;

use crate::core::decide::MAX_REQUEST_HEADER_LINES;

mod writer;
pub use writer::{Writer, str_len, strs_len, sub_len, varint_len};

/// `corsd.v1.CheckOriginRequest`, its strings left in the message's bytes.
///
/// Decoding copies the whole message out of the receive buffer once and
/// reads its fields in one pass, keeping where each string lies in it.
/// prost's field-by-field merge took a buffer split per field, and was the
/// larger part of a `CheckOrigin` call's own cost (docs/benchmarks.md).
/// Reading the strings as text ([`CheckOriginCall::text`]) checks the UTF-8
/// of the whole message once when it can, instead of each string on its own.
#[derive(Clone, Debug, Default)]
pub struct CheckOriginCall {
    /// The message's bytes, which the spans of `fields` index.
    message: Vec<u8>,
    fields: Fields,
}

/// Where a string field lies in the message. 32 bits each: the call is
/// moved several times on its way to the handler, and half-size spans halve
/// what each move copies. gRPC's length prefix is 32 bits, so no message
/// served is longer.
type Span = std::ops::Range<u32>;

/// Where `span` lies, as an index into the message.
fn range(span: &Span) -> std::ops::Range<usize> {
    span.start as usize..span.end as usize
}

/// The span of the `len` bytes at `start`.
fn span(start: usize, len: usize) -> Span {
    let at = |offset: usize| u32::try_from(offset).unwrap_or(u32::MAX);
    at(start)..at(start + len)
}

/// The fields of a [`CheckOriginCall`].
#[derive(Clone, Debug, Default)]
struct Fields {
    /// `origin` (1); absent: no `Origin` header.
    origin: Option<Span>,
    /// `method` (2).
    method: Span,
    /// `access_control_request_method` (3); absent: no such header.
    request_method: Option<Span>,
    /// `access_control_request_headers` (4), one element per header line:
    /// one past the most the core reads, so that it refuses a longer list
    /// for its count; a message can hold tens of thousands of lines, which
    /// are not kept.
    request_headers: Vec<Span>,
    /// Whether a line past those kept is not UTF-8 (refused, as prost does).
    dropped_line_not_text: bool,
    /// `scheme` (5) of the target.
    scheme: Span,
    /// `authority` (6): the target's `host[:port]`.
    authority: Span,
    /// `path` (7), maybe with a query.
    path: Span,
    /// `access_control_request_private_network` (8).
    private_network: bool,
    /// `tenant` (9); empty: select the tenant by the target host.
    tenant: Span,
}

/// The strings of a [`CheckOriginCall`], as text.
#[derive(Debug)]
pub struct CallText<'a> {
    /// `origin`.
    pub origin: Option<&'a str>,
    /// `method`.
    pub method: &'a str,
    /// `access_control_request_method`.
    pub request_method: Option<&'a str>,
    /// `scheme`.
    pub scheme: &'a str,
    /// `authority`.
    pub authority: &'a str,
    /// `path`.
    pub path: &'a str,
    /// `tenant`.
    pub tenant: &'a str,
}

impl CheckOriginCall {
    /// `origin`; `None` when the field is absent.
    pub fn origin(&self) -> Option<&[u8]> {
        self.fields.origin.as_ref().map(|span| self.bytes(span))
    }

    /// `method`.
    pub fn method(&self) -> &[u8] {
        self.bytes(&self.fields.method)
    }

    /// `access_control_request_method`; `None` when the field is absent.
    pub fn access_control_request_method(&self) -> Option<&[u8]> {
        self.fields.request_method.as_ref().map(|span| self.bytes(span))
    }

    /// `access_control_request_headers`, a line each.
    pub fn access_control_request_headers(&self) -> impl ExactSizeIterator<Item = &[u8]> {
        self.fields.request_headers.iter().map(|span| self.bytes(span))
    }

    /// `scheme`.
    pub fn scheme(&self) -> &[u8] {
        self.bytes(&self.fields.scheme)
    }

    /// `authority`.
    pub fn authority(&self) -> &[u8] {
        self.bytes(&self.fields.authority)
    }

    /// `path`.
    pub fn path(&self) -> &[u8] {
        self.bytes(&self.fields.path)
    }

    /// `access_control_request_private_network`.
    pub fn access_control_request_private_network(&self) -> bool {
        self.fields.private_network
    }

    /// `tenant`.
    pub fn tenant(&self) -> &[u8] {
        self.bytes(&self.fields.tenant)
    }

    /// The strings as text, the header lines into `request_headers` (kept
    /// by the caller: they are too large to move), or `INVALID_ARGUMENT`
    /// naming the first field, in field order, that is not UTF-8. When the
    /// whole message is UTF-8 (as it is when every key and length is one
    /// byte and every string is text), one check covers every string: a
    /// string is then a slice of that text, taken at char boundaries (which
    /// `str::get` checks; a string whose ends are not is checked on its own).
    pub fn text<'a>(&'a self, request_headers: &mut HeaderLines<'a>) -> Result<CallText<'a>, Status> {
        let whole = std::str::from_utf8(&self.message).ok();
        let field = |name: &'static str, span: &Span| match whole.and_then(|w| w.get(range(span))) {
            Some(s) => Ok(s),
            None => text(name, self.bytes(span)),
        };
        let f = &self.fields;
        let origin = f.origin.as_ref().map(|s| field("origin", s)).transpose()?;
        let method = field("method", &f.method)?;
        let request_method = f
            .request_method
            .as_ref()
            .map(|s| field("access_control_request_method", s))
            .transpose()?;
        for span in &f.request_headers {
            request_headers.push(field("access_control_request_headers", span)?);
        }
        if f.dropped_line_not_text {
            text("access_control_request_headers", &[0xff])?;
        }
        Ok(CallText {
            origin,
            method,
            request_method,
            scheme: field("scheme", &f.scheme)?,
            authority: field("authority", &f.authority)?,
            path: field("path", &f.path)?,
            tenant: field("tenant", &f.tenant)?,
        })
    }

    fn bytes(&self, span: &Span) -> &[u8] {
        self.message.get(range(span)).unwrap_or_default()
    }
}

impl Fields {
    /// Sets string field `tag` to `span`; other fields are skipped by the
    /// caller.
    fn set(&mut self, tag: u32, span: Span, message: &[u8]) {
        match tag {
            1 => self.origin = Some(span),
            2 => self.method = span,
            3 => self.request_method = Some(span),
            4 => {
                // A vector, not an inline array: the call is moved several
                // times before it is handled, and most carry no line.
                if self.request_headers.len() <= MAX_REQUEST_HEADER_LINES {
                    self.request_headers.push(span);
                } else {
                    let line = message.get(range(&span)).unwrap_or_default();
                    self.dropped_line_not_text |= std::str::from_utf8(line).is_err();
                }
            }
            5 => self.scheme = span,
            6 => self.authority = span,
            7 => self.path = span,
            _ => self.tenant = span,
        }
    }

    /// Reads the fields of `message` from `at` on, in one pass.
    fn read(&mut self, message: &[u8], at: usize) -> Result<(), prost::DecodeError> {
        let mut rest = message.get(at..).unwrap_or_default();
        while !rest.is_empty() {
            // Most strings have a one-byte key and a one-byte length.
            if let [key, len, after @ ..] = rest
                && let (1..=7 | 9, 2) = (key >> 3, key & 7)
                && *len < 0x80
                && let Some(value) = after.get(..usize::from(*len))
            {
                let start = message.len() - after.len();
                self.set(u32::from(key >> 3), span(start, value.len()), message);
                rest = after.get(value.len()..).unwrap_or_default();
                continue;
            }
            let (tag, wire_type) = prost::encoding::decode_key(&mut rest)?;
            match (tag, wire_type) {
                (1..=7 | 9, WireType::LengthDelimited) => {
                    let mut value_on = rest;
                    let len = prost::encoding::decode_varint(&mut rest)?;
                    let value = usize::try_from(len).ok().and_then(|len| rest.get(..len));
                    let Some(value) = value else {
                        // A length past the end: prost reads the same and
                        // refuses it with its own error.
                        let mut read = Bytes::new();
                        prost::encoding::bytes::merge(wire_type, &mut read, &mut value_on, DecodeContext::default())?;
                        let end = message.len() - value_on.len();
                        self.set(tag, span(end.saturating_sub(read.len()), read.len().min(end)), message);
                        rest = value_on;
                        continue;
                    };
                    let start = message.len() - rest.len();
                    self.set(tag, span(start, value.len()), message);
                    rest = rest.get(value.len()..).unwrap_or_default();
                }
                (8, _) => prost::encoding::bool::merge(
                    wire_type,
                    &mut self.private_network,
                    &mut rest,
                    DecodeContext::default(),
                )?,
                // prost's own error for a string field of another wire type.
                (1..=7 | 9, _) => {
                    prost::encoding::bytes::merge(wire_type, &mut Bytes::new(), &mut rest, DecodeContext::default())?
                }
                _ => skip_field(wire_type, tag, &mut rest, DecodeContext::default())?,
            }
        }
        Ok(())
    }
}

impl prost::Message for CheckOriginCall {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        fn put(tag: u32, value: &[u8], buf: &mut impl BufMut) {
            prost::encoding::encode_key(tag, WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(value.len() as u64, buf);
            buf.put_slice(value);
        }
        if let Some(origin) = self.origin() {
            put(1, origin, buf);
        }
        if !self.method().is_empty() {
            put(2, self.method(), buf);
        }
        if let Some(method) = self.access_control_request_method() {
            put(3, method, buf);
        }
        for line in self.access_control_request_headers() {
            put(4, line, buf);
        }
        for (tag, value) in [(5, self.scheme()), (6, self.authority()), (7, self.path())] {
            if !value.is_empty() {
                put(tag, value, buf);
            }
        }
        if self.fields.private_network {
            prost::encoding::bool::encode(8, &true, buf);
        }
        if !self.tenant().is_empty() {
            put(9, self.tenant(), buf);
        }
    }

    /// One pass over the whole message, which is copied from `buf` at once
    /// (after what an earlier merge read).
    fn merge(&mut self, buf: impl Buf) -> Result<(), prost::DecodeError> {
        let at = self.message.len();
        self.message.reserve_exact(buf.remaining());
        self.message.put(buf);
        self.fields.read(&self.message, at)
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            1..=7 | 9 => {
                let mut value = Bytes::new();
                prost::encoding::bytes::merge(wire_type, &mut value, buf, ctx)?;
                let start = self.message.len();
                self.message.extend_from_slice(&value);
                self.fields.set(tag, span(start, value.len()), &self.message);
                Ok(())
            }
            8 => prost::encoding::bool::merge(wire_type, &mut self.fields.private_network, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let len = |tag, value: &[u8]| sub_len(tag, value.len());
        let present = |tag, value: &[u8]| if value.is_empty() { 0 } else { len(tag, value) };
        self.origin().map_or(0, |v| len(1, v))
            + present(2, self.method())
            + self.access_control_request_method().map_or(0, |v| len(3, v))
            + self.access_control_request_headers().map(|v| len(4, v)).sum::<usize>()
            + present(5, self.scheme())
            + present(6, self.authority())
            + present(7, self.path())
            + if self.fields.private_network { 2 } else { 0 }
            + present(9, self.tenant())
    }

    fn clear(&mut self) {
        *self = CheckOriginCall::default();
    }
}

/// `envoy.service.auth.v3.CheckRequest`, down to the HTTP request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthzCall {
    /// `attributes`.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AuthzAttributes>,
}

/// `AttributeContext`: only `request` and `context_extensions` are read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthzAttributes {
    /// `request`.
    #[prost(message, optional, tag = "4")]
    pub request: Option<AuthzRequest>,
    /// `context_extensions`, a `map<string, string>` set per route or virtual
    /// host in Envoy (`ExtAuthzPerRoute`): one key/value message per entry.
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<AuthzHeader>,
}

/// `AttributeContext.Request`: only `http` is read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthzRequest {
    /// `http`.
    #[prost(message, optional, tag = "2")]
    pub http: Option<AuthzHttp>,
}

/// `AttributeContext.HttpRequest`: the method, target and headers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthzHttp {
    /// `method`.
    #[prost(bytes = "bytes", tag = "2")]
    pub method: Bytes,
    /// `headers`, a `map<string, string>`: on the wire, one key/value message
    /// per entry. Envoy joins repeated header lines into one entry.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<AuthzHeader>,
    /// `path`.
    #[prost(bytes = "bytes", tag = "4")]
    pub path: Bytes,
    /// `host`.
    #[prost(bytes = "bytes", tag = "5")]
    pub host: Bytes,
    /// `scheme`.
    #[prost(bytes = "bytes", tag = "6")]
    pub scheme: Bytes,
    /// `header_map`, sent instead of `headers` when Envoy's
    /// `encode_raw_headers` is on: one entry per header line.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<AuthzHeaderMap>,
}

/// One header: an entry of `HttpRequest.headers`, or a `config.core.v3.HeaderValue`
/// (the same field numbers for the name and the value).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthzHeader {
    /// `key`: the name, lowercase.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// `value`, when it is UTF-8.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// `raw_value` (a `HeaderValue` only): the value's bytes as sent.
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

/// `config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthzHeaderMap {
    /// `headers`.
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<AuthzHeader>,
}

/// A string field as text; proto3 strings are UTF-8, and a call whose are not
/// is refused.
pub fn text<'a>(field: &'static str, bytes: &'a [u8]) -> Result<&'a str, Status> {
    std::str::from_utf8(bytes).map_err(|_| Status::invalid_argument(format!("`{field}` is not UTF-8")))
}

/// The `Access-Control-Request-Headers` lines of a call, borrowed. One line
/// past the most the core reads is kept, so the core refuses a longer list
/// for its count; the lines after it are dropped.
#[derive(Debug, Default)]
pub struct HeaderLines<'a> {
    lines: ArrayVec<&'a str, { MAX_REQUEST_HEADER_LINES + 1 }>,
}

impl<'a> HeaderLines<'a> {
    /// Adds one line.
    pub fn push(&mut self, line: &'a str) {
        let _ = self.lines.try_push(line);
    }

    /// The lines kept.
    pub fn as_slice(&self) -> &[&'a str] {
        &self.lines
    }
}

/// A message already encoded: what a handler returns when it writes its answer
/// straight from a decision, or a client sends when it encoded its request
/// once. Encoding copies the bytes out; decoding into it keeps nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Encoded(Bytes);

impl Encoded {
    /// The encoded message.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Encoded {
    fn from(bytes: Bytes) -> Self {
        Encoded(bytes)
    }
}

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}
