//! Shadow decisions (DESIGN.md section 15): a candidate policy decides the
//! same request as the live one, and the two answers are compared on what a
//! gateway sends back. Only the live decision is ever enforced.

use super::decide::{Decision, Verdict};

/// How a candidate's decision differs from the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Change {
    /// The same answer: verdict, status and response headers.
    Same,
    /// Live allowed (or it was not CORS), the candidate denies.
    NewlyDenied,
    /// Live denied, the candidate allows (or finds it not CORS).
    NewlyAllowed,
    /// Any other difference: allow against not_cors, the status, or a
    /// response header's name or value.
    Changed,
}

impl Change {
    /// Every change, in label order.
    pub const ALL: [Change; 4] = [Change::Same, Change::NewlyDenied, Change::NewlyAllowed, Change::Changed];

    /// As metrics, logs, metadata and `corsd check --json` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Same => "same",
            Change::NewlyDenied => "newly_denied",
            Change::NewlyAllowed => "newly_allowed",
            Change::Changed => "changed",
        }
    }
}

/// A candidate's decision of the request the live policy decided.
#[derive(Debug)]
pub struct Shadowed<'a> {
    /// The candidate's decision; never enforced.
    pub decision: Decision<'a>,
    /// How it differs from the live one.
    pub change: Change,
}

/// Compares `candidate` with `live`, both decisions of one request. A
/// different reason or matched entry with the same answer is
/// [`Change::Same`].
pub fn compare(live: &Decision<'_>, candidate: &Decision<'_>) -> Change {
    use Verdict::{Allow, Deny, NotCors};
    match (live.verdict, candidate.verdict) {
        (Allow | NotCors, Deny) => Change::NewlyDenied,
        (Deny, Allow | NotCors) => Change::NewlyAllowed,
        _ if live.verdict == candidate.verdict && live.answer == candidate.answer && same_headers(live, candidate) => {
            Change::Same
        }
        _ => Change::Changed,
    }
}

/// The response headers, names, values and their order, are the same.
fn same_headers(live: &Decision<'_>, candidate: &Decision<'_>) -> bool {
    live.response_headers
        .iter()
        .map(|h| (h.name, &*h.value, h.append))
        .eq(candidate.response_headers.iter().map(|h| (h.name, &*h.value, h.append)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Policy, Request, decide};

    fn policy(origins: &[&str], extra: &str) -> Policy {
        let mut text = String::from(extra);
        for o in origins {
            text.push_str(&format!("[[entries]]\norigin = \"{o}\"\n"));
        }
        match Policy::compile("t.toml", text.as_bytes()) {
            Ok(c) => c.policy,
            Err(e) => unreachable!("{}", e.display("t.toml")),
        }
    }

    fn request(origin: Option<&str>) -> Request<'_> {
        Request {
            origin,
            authority: "api.example.com",
            path: "/",
            ..Request::get("")
        }
    }

    fn change(live: &Policy, candidate: &Policy, origin: Option<&str>) -> Change {
        let r = request(origin);
        compare(&decide(live, &r), &decide(candidate, &r))
    }

    #[test]
    fn each_change_by_what_the_gateway_sends() {
        let a = policy(&["https://a.example.com"], "");
        let ab = policy(&["https://a.example.com", "https://b.example.com"], "");
        let wildcard = policy(&["https://*.example.com"], "");
        let exposing = policy(&["https://a.example.com"], "[cors]\nexpose_headers = [\"x-id\"]\n");
        assert_eq!(change(&a, &ab, Some("https://b.example.com")), Change::NewlyAllowed);
        assert_eq!(change(&ab, &a, Some("https://b.example.com")), Change::NewlyDenied);
        assert_eq!(change(&a, &ab, Some("https://c.example.com")), Change::Same);
        // Another entry allows it, with the same headers: the same answer.
        assert_eq!(change(&a, &wildcard, Some("https://a.example.com")), Change::Same);
        assert_eq!(change(&a, &exposing, Some("https://a.example.com")), Change::Changed);
        assert_eq!(change(&a, &ab, None), Change::Same);
    }
}
