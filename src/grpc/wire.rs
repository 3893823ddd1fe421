//! The wire forms of corsd's two hot calls, `CheckOrigin` and ext_authz
//! `Check`, which borrow where the generated messages copy:
//!
//! - Requests keep their strings as slices of the received buffer (`Bytes`),
//!   and read only the fields a decision needs. Every other field is skipped
//!   unread, so Envoy's full attribute context costs no allocation.
//! - Answers are written straight from a decision into one buffer
//!   ([`Encoded`]). No message of owned strings is built on the way.
//!
//! The generated messages (`pb`, `envoy-types`) stay the reference. Tests hold
//! these forms to them: decoding gives the same values, and encoding gives the
//! same bytes.

use arrayvec::ArrayVec;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, skip_field};
use tonic::Status;

use crate::core::decide::MAX_REQUEST_HEADER_LINES;

/// `corsd.v1.CheckOriginRequest`, its strings left in the received buffer.
///
/// Decoding takes the whole message out of the receive buffer once and reads
/// its fields in one pass; each string is a slice of that one buffer. prost's
/// field-by-field merge took a buffer split per field, and was the larger
/// part of a `CheckOrigin` call's own cost (docs/benchmarks.md).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckOriginCall {
    /// `origin` (1); absent: no `Origin` header.
    pub origin: Option<Bytes>,
    /// `method` (2).
    pub method: Bytes,
    /// `access_control_request_method` (3); absent: no such header.
    pub access_control_request_method: Option<Bytes>,
    /// `access_control_request_headers` (4), one element per header line.
    pub access_control_request_headers: Vec<Bytes>,
    /// `scheme` (5) of the target.
    pub scheme: Bytes,
    /// `authority` (6): the target's `host[:port]`.
    pub authority: Bytes,
    /// `path` (7), maybe with a query.
    pub path: Bytes,
    /// `access_control_request_private_network` (8).
    pub access_control_request_private_network: bool,
    /// `tenant` (9); empty: select the tenant by the target host.
    pub tenant: Bytes,
}

impl CheckOriginCall {
    /// Sets field `tag` to `value`, a slice of the message; other fields are
    /// skipped by the caller.
    fn set(&mut self, tag: u32, value: Bytes) {
        match tag {
            1 => self.origin = Some(value),
            2 => self.method = value,
            3 => self.access_control_request_method = Some(value),
            4 => self.access_control_request_headers.push(value),
            5 => self.scheme = value,
            6 => self.authority = value,
            7 => self.path = value,
            _ => self.tenant = value,
        }
    }
}

impl prost::Message for CheckOriginCall {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        use prost::encoding::{bool, bytes};
        if let Some(origin) = &self.origin {
            bytes::encode(1, origin, buf);
        }
        if !self.method.is_empty() {
            bytes::encode(2, &self.method, buf);
        }
        if let Some(method) = &self.access_control_request_method {
            bytes::encode(3, method, buf);
        }
        bytes::encode_repeated(4, &self.access_control_request_headers, buf);
        for (tag, value) in [(5, &self.scheme), (6, &self.authority), (7, &self.path)] {
            if !value.is_empty() {
                bytes::encode(tag, value, buf);
            }
        }
        if self.access_control_request_private_network {
            bool::encode(8, &true, buf);
        }
        if !self.tenant.is_empty() {
            bytes::encode(9, &self.tenant, buf);
        }
    }

    /// One pass over the whole message, which is taken from `buf` at once.
    fn merge(&mut self, mut buf: impl Buf) -> Result<(), prost::DecodeError> {
        let message = buf.copy_to_bytes(buf.remaining());
        let mut rest: &[u8] = &message;
        while !rest.is_empty() {
            let (tag, wire_type) = prost::encoding::decode_key(&mut rest)?;
            if matches!(tag, 1..=7 | 9) && wire_type == WireType::LengthDelimited {
                let mut value = rest;
                let len = prost::encoding::decode_varint(&mut value)?;
                let start = message.len() - value.len();
                let end = usize::try_from(len).ok().and_then(|len| start.checked_add(len));
                if let Some(after) = end.and_then(|end| message.get(end..)) {
                    self.set(tag, message.slice(start..message.len() - after.len()));
                    rest = after;
                    continue;
                }
            } else if tag == 8 && wire_type == WireType::Varint {
                self.access_control_request_private_network = prost::encoding::decode_varint(&mut rest)? != 0;
                continue;
            }
            // Unknown fields, and prost's own errors for malformed ones.
            self.merge_field(tag, wire_type, &mut rest, DecodeContext::default())?;
        }
        Ok(())
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{bool, bytes};
        match tag {
            1..=7 | 9 => {
                let mut value = Bytes::new();
                bytes::merge(wire_type, &mut value, buf, ctx)?;
                self.set(tag, value);
                Ok(())
            }
            8 => bool::merge(wire_type, &mut self.access_control_request_private_network, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::bytes;
        self.origin.as_ref().map_or(0, |v| bytes::encoded_len(1, v))
            + if self.method.is_empty() {
                0
            } else {
                bytes::encoded_len(2, &self.method)
            }
            + self
                .access_control_request_method
                .as_ref()
                .map_or(0, |v| bytes::encoded_len(3, v))
            + bytes::encoded_len_repeated(4, &self.access_control_request_headers)
            + [(5, &self.scheme), (6, &self.authority), (7, &self.path)]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(tag, v)| bytes::encoded_len(tag, v))
                .sum::<usize>()
            + if self.access_control_request_private_network {
                2
            } else {
                0
            }
            + if self.tenant.is_empty() {
                0
            } else {
                bytes::encoded_len(9, &self.tenant)
            }
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

/// Writes one message: the caller sums its length from the `*_len` functions
/// first, then writes the same fields in tag order with the `put_*` methods.
/// As prost does, a scalar field at its default value is left out, and a
/// present sub-message is written even when empty.
#[derive(Debug)]
pub struct Writer {
    out: Vec<u8>,
    len: usize,
}

impl Writer {
    /// A writer for a message of `len` bytes.
    pub fn with_len(len: usize) -> Self {
        Writer {
            out: Vec::with_capacity(len),
            len,
        }
    }

    /// A string field.
    pub fn put_str(&mut self, tag: u32, value: &str) {
        self.put_strs(tag, &[value]);
    }

    /// A string field written in pieces.
    pub fn put_strs(&mut self, tag: u32, pieces: &[&str]) {
        let len = pieces.iter().map(|p| p.len()).sum();
        if len != 0 {
            self.put_sub(tag, len);
            for piece in pieces {
                self.out.put_slice(piece.as_bytes());
            }
        }
    }

    /// Bytes whose key and length were written with [`Writer::put_sub`].
    pub fn put_raw(&mut self, value: &str) {
        self.out.put_slice(value.as_bytes());
    }

    /// A varint field: an enum, a `uint32`, a non-negative `int32` or a `bool`.
    pub fn put_varint(&mut self, tag: u32, value: u64) {
        if value != 0 {
            encode_key(tag, WireType::Varint, &mut self.out);
            encode_varint(value, &mut self.out);
        }
    }

    /// The key and length of a sub-message whose fields follow.
    pub fn put_sub(&mut self, tag: u32, len: usize) {
        encode_key(tag, WireType::LengthDelimited, &mut self.out);
        encode_varint(len as u64, &mut self.out);
    }

    /// The message written.
    pub fn finish(self) -> Encoded {
        debug_assert_eq!(
            self.out.len(),
            self.len,
            "the length summed differs from the length written"
        );
        // Written to its capacity, the buffer becomes `Bytes` without a copy.
        Encoded(Bytes::from(self.out))
    }
}

/// Length of a string field.
pub fn str_len(tag: u32, value: &str) -> usize {
    strs_len(tag, &[value])
}

/// Length of a string field written in pieces.
pub fn strs_len(tag: u32, pieces: &[&str]) -> usize {
    match pieces.iter().map(|p| p.len()).sum() {
        0 => 0,
        len => sub_len(tag, len),
    }
}

/// Length of a varint field.
pub fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

/// Length of a present sub-message whose own fields take `len` bytes.
pub fn sub_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}
