//! `envoy.service.auth.v3.Authorization/Check`: Envoy's ext_authz filter asks,
//! corsd decides with the same core, and the answer is mapped onto Envoy's
//! terms. Forwarded requests get OK with `response_headers_to_add`; direct
//! answers (204 preflights, 403 denials) get PERMISSION_DENIED with a
//! `denied_response` carrying the status, the headers and a short body.

use std::sync::Arc;

use arrayvec::ArrayVec;
use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction, HttpStatusCode};
use envoy_types::ext_authz::v3::{CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder};
use tonic::{Code, Request, Response, Status};

use super::Store;
use super::decision::DecisionPath;
use super::stubs::authorization_server::Authorization;
use super::wire::{AuthzCall, AuthzHttp, Encoded, HeaderLines, Writer, str_len, strs_len, sub_len, text, varint_len};
use crate::core::{Answer, Change, Decision, Reason};
use crate::observe::Api;
/// Stands in for a value that is not text: no CORS header accepts it.
const NOT_TEXT: &str = "\u{0}";

/// Which answers carry `dynamic_metadata` for Envoy's access log
/// (`--ext-authz-metadata`, DESIGN.md section 9). Envoy spends about 20,000
/// instructions taking a Struct in, so by default only denials carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtAuthzMetadata {
    /// Every direct answer that denies (403); none on allowed or forwarded ones.
    #[default]
    Denials,
    /// Every answer.
    All,
    /// None.
    Off,
}

impl ExtAuthzMetadata {
    /// Whether the answer to `decision` carries the metadata.
    pub fn carried_by(self, decision: &Decision<'_>) -> bool {
        match self {
            ExtAuthzMetadata::Denials => decision.answer == Answer::Deny,
            ExtAuthzMetadata::All => true,
            ExtAuthzMetadata::Off => false,
        }
    }
}

/// The ext_authz v3 service.
#[derive(Debug, Clone)]
pub struct AuthorizationService {
    path: DecisionPath,
    metadata: ExtAuthzMetadata,
}

impl AuthorizationService {
    /// A service answering from `store`.
    pub fn new(store: Arc<Store>) -> Self {
        AuthorizationService::on_path(DecisionPath::new(store))
    }

    /// A service deciding along `path` (which may count into metrics).
    pub fn on_path(path: DecisionPath) -> Self {
        AuthorizationService {
            path,
            metadata: ExtAuthzMetadata::default(),
        }
    }

    /// Which answers carry `dynamic_metadata`.
    pub fn with_metadata(mut self, metadata: ExtAuthzMetadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Decides one `Check` call with the policy in force.
    pub fn answer(&self, call: &AuthzCall) -> Result<Encoded, Status> {
        let Some(attributes) = call.attributes.as_ref() else {
            return Err(Status::invalid_argument("the check request has no attributes"));
        };
        let Some(http) = attributes.request.as_ref().and_then(|r| r.http.as_ref()) else {
            return Err(Status::invalid_argument(
                "the check request has no HTTP request attributes",
            ));
        };
        // Set by Envoy per route or virtual host; nothing the client sends.
        // As in every protobuf map, the last entry of a key wins.
        let tenant = match attributes
            .context_extensions
            .iter()
            .rev()
            .find(|e| &e.key[..] == b"tenant")
        {
            Some(entry) => text("context_extensions[\"tenant\"]", &entry.value)?,
            None => "",
        };
        let headers = CorsHeaders::read(http);
        let method = text("method", &http.method)?;
        let request = crate::core::Request {
            origin: headers.origin,
            several_origins: headers.several_origins,
            method,
            request_method: headers.request_method,
            request_headers: headers.request_headers.as_slice(),
            request_private_network: headers.private_network,
            scheme: text("scheme", &http.scheme)?,
            authority: text("host", &http.host)?,
            path: text("path", &http.path)?,
        };
        let metadata = self.metadata;
        self.path
            .decide(Api::ExtAuthz, tenant, &request, |tenant, decision, _, shadow| {
                let changed = shadow.map(|s| s.change).filter(|c| *c != Change::Same);
                encode_check_response_shadowed(tenant, decision, metadata.carried_by(decision), changed)
            })
    }
}

/// The CORS-relevant request headers, borrowed from Envoy's attributes.
#[derive(Debug, Default)]
struct CorsHeaders<'a> {
    origin: Option<&'a str>,
    several_origins: bool,
    request_method: Option<&'a str>,
    request_headers: HeaderLines<'a>,
    private_network: bool,
}

impl<'a> CorsHeaders<'a> {
    /// Reads one header line; names are compared as bytes, and only the
    /// values of the four CORS request headers are read as text.
    fn add(&mut self, name: &[u8], value: &'a [u8]) {
        let value = || std::str::from_utf8(value).unwrap_or(NOT_TEXT);
        if name.eq_ignore_ascii_case(b"origin") {
            if self.origin.is_some() {
                self.several_origins = true;
            } else {
                self.origin = Some(value());
            }
        } else if name.eq_ignore_ascii_case(b"access-control-request-method") {
            // Several lines make a list, which is not a method: denied.
            self.request_method = Some(if self.request_method.is_some() { "," } else { value() });
        } else if name.eq_ignore_ascii_case(b"access-control-request-headers") {
            self.request_headers.push(value());
        } else if name.eq_ignore_ascii_case(b"access-control-request-private-network") {
            self.private_network = value().trim().eq_ignore_ascii_case("true");
        }
    }

    /// From `header_map` when Envoy sends raw headers, else from `headers`.
    fn read(http: &'a AuthzHttp) -> Self {
        let mut headers = CorsHeaders::default();
        match &http.header_map {
            Some(map) if !map.headers.is_empty() => {
                for h in &map.headers {
                    let value = if h.raw_value.is_empty() { &h.value } else { &h.raw_value };
                    headers.add(&h.key, value);
                }
            }
            _ => {
                for h in &http.headers {
                    headers.add(&h.key, &h.value);
                }
            }
        }
        headers
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(&self, request: Request<AuthzCall>) -> Result<Response<Encoded>, Status> {
        self.answer(request.get_ref()).map(Response::new)
    }
}

/// A decision as Envoy's `CheckResponse`, with `dynamic_metadata` when
/// `with_metadata`: the readable mapping, which [`encode_check_response`]
/// writes without building.
pub fn to_check_response(tenant: &str, decision: &Decision<'_>, with_metadata: bool) -> CheckResponse {
    to_check_response_shadowed(tenant, decision, with_metadata, None)
}

/// [`to_check_response`] for a decision a candidate would change: the
/// metadata is then written whatever `with_metadata` says, with
/// `corsd_shadow_change`.
pub fn to_check_response_shadowed(
    tenant: &str,
    decision: &Decision<'_>,
    with_metadata: bool,
    changed: Option<Change>,
) -> CheckResponse {
    let mut response = CheckResponse::new();
    let string = |s: &str| envoy_types::pb::google::protobuf::Value {
        kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            s.to_owned(),
        )),
    };
    if with_metadata || changed.is_some() {
        response.dynamic_metadata = Some(envoy_types::pb::google::protobuf::Struct {
            fields: Metadata::of(tenant, decision, changed)
                .fields()
                .iter()
                .map(|(k, v)| ((*k).to_owned(), string(v)))
                .collect(),
        });
    }
    if decision.answer == Answer::Forward {
        let mut ok = OkHttpResponseBuilder::new();
        for h in &decision.response_headers {
            let action = if h.append {
                HeaderAppendAction::AppendIfExistsOrAdd
            } else {
                HeaderAppendAction::OverwriteIfExistsOrAdd
            };
            ok.add_response_header(h.name.as_str(), h.value.as_ref(), Some(action), false);
        }
        response.set_status(Status::ok("")).set_http_response(ok);
    } else {
        let mut denied = DeniedHttpResponseBuilder::new();
        let code = match decision.answer {
            Answer::Preflight => HttpStatusCode::NoContent,
            Answer::Forward | Answer::Deny => HttpStatusCode::Forbidden,
        };
        denied.set_http_status(code);
        for h in &decision.response_headers {
            denied.add_header(
                h.name.as_str(),
                h.value.as_ref(),
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
        }
        if code == HttpStatusCode::Forbidden {
            denied.add_header(
                "content-type",
                TEXT_PLAIN,
                Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                false,
            );
            denied.set_body(denied_body(decision.reason).concat());
        }
        response
            .set_status(Status::permission_denied(decision.reason.as_str()))
            .set_http_response(denied);
    }
    response
}

/// The body of a 403, in pieces: it names the reason.
fn denied_body(reason: Reason) -> [&'static str; 3] {
    ["CORS request denied: ", reason.as_str(), "\n"]
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Field numbers of the messages of a `CheckResponse` (Envoy's
/// `service/auth/v3/external_auth.proto`, `google/rpc/status.proto`,
/// `config/core/v3/base.proto` and `type/v3/http_status.proto`).
mod field {
    pub const STATUS: u32 = 1;
    pub const DENIED_RESPONSE: u32 = 2;
    pub const OK_RESPONSE: u32 = 3;
    pub const STATUS_CODE: u32 = 1;
    pub const STATUS_MESSAGE: u32 = 2;
    pub const DENIED_HTTP_STATUS: u32 = 1;
    pub const DENIED_HEADERS: u32 = 2;
    pub const DENIED_BODY: u32 = 3;
    pub const HTTP_STATUS_CODE: u32 = 1;
    pub const OK_RESPONSE_HEADERS_TO_ADD: u32 = 6;
    pub const OPTION_HEADER: u32 = 1;
    pub const OPTION_APPEND_ACTION: u32 = 3;
    pub const HEADER_KEY: u32 = 1;
    pub const HEADER_VALUE: u32 = 2;
    pub const DYNAMIC_METADATA: u32 = 4;
    pub const STRUCT_FIELDS: u32 = 1;
    pub const ENTRY_KEY: u32 = 1;
    pub const ENTRY_VALUE: u32 = 2;
    pub const VALUE_STRING: u32 = 3;
}

/// `dynamic_metadata`: a `google.protobuf.Struct` of four strings (five
/// when a candidate would change the answer), which Envoy's access log
/// reads as `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:corsd_reason)%`.
struct Metadata<'a> {
    /// In key order, as prost writes a `BTreeMap`; the first `len` are set.
    fields: [(&'static str, &'a str); 5],
    len: usize,
}

impl<'a> Metadata<'a> {
    fn of(tenant: &'a str, decision: &'a Decision<'a>, changed: Option<Change>) -> Self {
        let (matched, version, reason) = (
            ("corsd_matched", decision.matched_pattern()),
            ("corsd_policy_version", decision.policy_version),
            ("corsd_reason", decision.reason.as_str()),
        );
        let tenant = ("corsd_tenant", tenant);
        match changed {
            Some(change) => Metadata {
                fields: [
                    matched,
                    version,
                    reason,
                    ("corsd_shadow_change", change.as_str()),
                    tenant,
                ],
                len: 5,
            },
            None => Metadata {
                fields: [matched, version, reason, tenant, ("", "")],
                len: 4,
            },
        }
    }

    fn fields(&self) -> &[(&'static str, &'a str)] {
        self.fields.get(..self.len).unwrap_or(&self.fields)
    }

    /// A `Value` holding a string: the string is written even when empty
    /// (it is a oneof member).
    fn value_len(value: &str) -> usize {
        sub_len(field::VALUE_STRING, value.len())
    }

    fn entry_len(key: &str, value: &str) -> usize {
        str_len(field::ENTRY_KEY, key) + sub_len(field::ENTRY_VALUE, Self::value_len(value))
    }

    fn len(&self) -> usize {
        self.fields()
            .iter()
            .map(|(k, v)| sub_len(field::STRUCT_FIELDS, Self::entry_len(k, v)))
            .sum()
    }

    fn put(&self, out: &mut Writer) {
        for &(key, value) in self.fields() {
            out.put_sub(field::STRUCT_FIELDS, Self::entry_len(key, value));
            out.put_str(field::ENTRY_KEY, key);
            out.put_sub(field::ENTRY_VALUE, Self::value_len(value));
            out.put_sub(field::VALUE_STRING, value.len());
            out.put_raw(value);
        }
    }
}

/// One `HeaderValueOption` to write.
#[derive(Clone, Copy)]
struct HeaderOption<'a> {
    key: &'a str,
    value: &'a str,
    action: HeaderAppendAction,
}

impl HeaderOption<'_> {
    fn header_len(&self) -> usize {
        str_len(field::HEADER_KEY, self.key) + str_len(field::HEADER_VALUE, self.value)
    }

    fn len(&self) -> usize {
        sub_len(field::OPTION_HEADER, self.header_len()) + varint_len(field::OPTION_APPEND_ACTION, self.action as u64)
    }

    fn put(&self, tag: u32, out: &mut Writer) {
        out.put_sub(tag, self.len());
        out.put_sub(field::OPTION_HEADER, self.header_len());
        out.put_str(field::HEADER_KEY, self.key);
        out.put_str(field::HEADER_VALUE, self.value);
        out.put_varint(field::OPTION_APPEND_ACTION, self.action as u64);
    }
}

/// Writes a decision as Envoy's `CheckResponse`: the bytes prost writes for
/// [`to_check_response`], without building it.
pub fn encode_check_response(tenant: &str, decision: &Decision<'_>, with_metadata: bool) -> Result<Encoded, Status> {
    encode_check_response_shadowed(tenant, decision, with_metadata, None)
}

/// [`encode_check_response`] as [`to_check_response_shadowed`] builds it.
pub fn encode_check_response_shadowed(
    tenant: &str,
    decision: &Decision<'_>,
    with_metadata: bool,
    changed: Option<Change>,
) -> Result<Encoded, Status> {
    use field::*;
    let direct = decision.answer != Answer::Forward;
    let forbidden = decision.answer == Answer::Deny;
    let overwrite = HeaderAppendAction::OverwriteIfExistsOrAdd;
    let mut options: ArrayVec<HeaderOption<'_>, 8> = decision
        .response_headers
        .iter()
        .map(|h| HeaderOption {
            key: h.name.as_str(),
            value: &h.value,
            action: if h.append && !direct {
                HeaderAppendAction::AppendIfExistsOrAdd
            } else {
                overwrite
            },
        })
        .collect();
    let body = if forbidden {
        denied_body(decision.reason)
    } else {
        [""; 3]
    };
    if forbidden {
        // A decision has at most seven headers; this is the eighth.
        let _ = options.try_push(HeaderOption {
            key: "content-type",
            value: TEXT_PLAIN,
            action: overwrite,
        });
    }

    let (code, message) = if direct {
        (Code::PermissionDenied, decision.reason.as_str())
    } else {
        (Code::Ok, "")
    };
    let status_len = varint_len(STATUS_CODE, code as u64) + str_len(STATUS_MESSAGE, message);
    let (response, headers) = if direct {
        (DENIED_RESPONSE, DENIED_HEADERS)
    } else {
        (OK_RESPONSE, OK_RESPONSE_HEADERS_TO_ADD)
    };
    let http_code = if forbidden {
        HttpStatusCode::Forbidden
    } else {
        HttpStatusCode::NoContent
    };
    let http_status_len = varint_len(HTTP_STATUS_CODE, http_code as u64);
    let mut response_len = options.iter().map(|o| sub_len(headers, o.len())).sum::<usize>();
    if direct {
        response_len += sub_len(DENIED_HTTP_STATUS, http_status_len) + strs_len(DENIED_BODY, &body);
    }

    let metadata = (with_metadata || changed.is_some()).then(|| Metadata::of(tenant, decision, changed));
    let metadata_len = metadata.as_ref().map_or(0, |m| sub_len(DYNAMIC_METADATA, m.len()));
    let mut out = Writer::with_len(sub_len(STATUS, status_len) + sub_len(response, response_len) + metadata_len);
    out.put_sub(STATUS, status_len);
    out.put_varint(STATUS_CODE, code as u64);
    out.put_str(STATUS_MESSAGE, message);
    out.put_sub(response, response_len);
    if direct {
        out.put_sub(DENIED_HTTP_STATUS, http_status_len);
        out.put_varint(HTTP_STATUS_CODE, http_code as u64);
    }
    for option in &options {
        option.put(headers, &mut out);
    }
    out.put_strs(DENIED_BODY, &body);
    if let Some(metadata) = &metadata {
        out.put_sub(DYNAMIC_METADATA, metadata.len());
        metadata.put(&mut out);
    }
    out.finish()
}
