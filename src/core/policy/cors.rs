//! The `[cors]` table: which methods and headers a preflight may ask for,
//! credentials, exposed headers, max-age and private network access. The
//! response header values are built here, once, when the policy compiles.

use toml::de::{DeTable, DeValue};

use super::reader::{Reader, kind};
use crate::core::fetch::{forbidden_method, is_token, normalize_method};

const DEFAULT_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
const DEFAULT_HEADERS: [&str; 3] = ["authorization", "content-type", "x-requested-with"];
const MAX_MAX_AGE: i64 = 86_400;

/// The `[cors]` table, with the response header values built in advance.
#[derive(Debug)]
pub(crate) struct CorsRules {
    pub(crate) any_method: bool,
    pub(crate) methods: Vec<Box<str>>,
    pub(crate) any_header: bool,
    /// Lowercase header names listed by name (besides `*`).
    pub(crate) headers: Vec<Box<str>>,
    pub(crate) allow_credentials: bool,
    pub(crate) allow_private_network: bool,
    /// `Access-Control-Allow-Methods`; `None`: echo the requested method.
    pub(crate) allow_methods_value: Option<Box<str>>,
    /// `Access-Control-Allow-Headers`; `None`: echo the requested headers.
    pub(crate) allow_headers_value: Option<Box<str>>,
    /// `Access-Control-Expose-Headers`; `None` when nothing is exposed.
    pub(crate) expose_headers_value: Option<Box<str>>,
    pub(crate) max_age_value: Box<str>,
}

impl Reader<'_> {
    pub(super) fn cors(&mut self, table: &DeTable<'_>) -> Option<CorsRules> {
        self.unknown_keys(
            table,
            "`[cors]`",
            &[
                "allow_methods",
                "allow_headers",
                "expose_headers",
                "allow_credentials",
                "max_age",
                "allow_private_network",
            ],
        );
        let credentials = self.boolean(table, "allow_credentials", true);
        let private_network = self.boolean(table, "allow_private_network", false);
        let methods = self.methods(table);
        let headers = self.header_names(table, "allow_headers", &DEFAULT_HEADERS);
        let expose = self.header_names(table, "expose_headers", &[]);
        let max_age = self.max_age(table);

        if credentials.unwrap_or(true)
            && expose.as_ref().is_some_and(|(any, _)| *any)
            && let Some(v) = table.get("expose_headers")
        {
            self.error_with_help(
                v.span().start,
                "`expose_headers = [\"*\"]` does not work with `allow_credentials = true`",
                "browsers then read `*` as a header name; list the headers to expose",
            );
            return None;
        }
        let (credentials, private_network) = (credentials?, private_network?);
        let (any_method, methods) = methods?;
        let (any_header, headers) = headers?;
        let (any_expose, expose) = expose?;
        let max_age = max_age?;

        let allow_methods_value = match (any_method, credentials) {
            (true, true) => None,
            (true, false) => Some("*".into()),
            (false, _) => Some(methods.join(", ").into()),
        };
        let allow_headers_value = match (any_header, credentials) {
            (true, true) => None,
            (true, false) => Some(
                std::iter::once("*")
                    .chain(headers.iter().map(|h| &**h))
                    .collect::<Vec<_>>()
                    .join(", ")
                    .into(),
            ),
            (false, _) => Some(headers.join(", ").into()),
        };
        let expose_list: Vec<&str> = if any_expose {
            vec!["*"]
        } else {
            expose.iter().map(|h| &**h).collect()
        };
        let expose_headers_value = (!expose_list.is_empty()).then(|| expose_list.join(", ").into());
        Some(CorsRules {
            any_method,
            methods,
            any_header,
            headers,
            allow_credentials: credentials,
            allow_private_network: private_network,
            allow_methods_value,
            allow_headers_value,
            expose_headers_value,
            max_age_value: max_age.to_string().into(),
        })
    }

    fn methods(&mut self, table: &DeTable<'_>) -> Option<(bool, Vec<Box<str>>)> {
        let listed = self.strings(table, "allow_methods")?;
        let listed = listed.unwrap_or_else(|| DEFAULT_METHODS.iter().map(|m| ((*m).to_owned(), 0)).collect());
        let mut any = false;
        let mut methods: Vec<Box<str>> = Vec::new();
        let mut ok = true;
        for (method, at) in listed {
            if method == "*" {
                any = true;
                continue;
            }
            if !is_token(&method) {
                self.error_with_help(
                    at,
                    format!("`{method}` is not an HTTP method"),
                    "a method is a token such as `PATCH`",
                );
                ok = false;
                continue;
            }
            if let Some(forbidden) = forbidden_method(&method) {
                self.error_with_help(
                    at,
                    format!("`{method}` can never be allowed"),
                    format!("browsers forbid `{forbidden}` in requests"),
                );
                ok = false;
                continue;
            }
            let method = normalize_method(method);
            if !methods.iter().any(|m| **m == *method) {
                methods.push(method.into());
            }
        }
        ok.then_some((any, methods))
    }

    fn header_names(&mut self, table: &DeTable<'_>, name: &str, default: &[&str]) -> Option<(bool, Vec<Box<str>>)> {
        let listed = self.strings(table, name)?;
        let listed = listed.unwrap_or_else(|| default.iter().map(|h| ((*h).to_owned(), 0)).collect());
        let mut any = false;
        let mut names: Vec<Box<str>> = Vec::new();
        let mut ok = true;
        for (header, at) in listed {
            if header == "*" {
                any = true;
                continue;
            }
            if !is_token(&header) {
                self.error_with_help(
                    at,
                    format!("`{header}` is not a header name"),
                    "use letters, digits and `-`, as in `x-request-id`",
                );
                ok = false;
                continue;
            }
            let header = header.to_ascii_lowercase();
            if !names.iter().any(|h| **h == *header) {
                names.push(header.into());
            }
        }
        ok.then_some((any, names))
    }

    fn max_age(&mut self, table: &DeTable<'_>) -> Option<i64> {
        let Some(value) = table.get("max_age") else {
            return Some(600);
        };
        let seconds = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        match seconds {
            Some(s) if (0..=MAX_MAX_AGE).contains(&s) => Some(s),
            _ => {
                let shown = match value.get_ref() {
                    DeValue::Integer(i) => format!("`{}`", i.as_str()),
                    other => kind(other).to_owned(),
                };
                self.error(
                    value.span().start,
                    format!("`max_age` must be a whole number of seconds from 0 to 86400, not {shown}"),
                );
                None
            }
        }
    }
}
