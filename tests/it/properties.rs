//! Invariants of the core, checked on generated inputs.

use corsd::core::origin::{RequestOrigin, parse_request_origin};
use corsd::core::{OriginPattern, Policy, Request, Verdict, decide};
use proptest::prelude::*;

/// Labels from a tiny alphabet, so generated origins often meet the entries.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[ab]{1,2}",
        1 => "[aB-]{1,3}",
        1 => Just("xn--f".to_owned()),
        1 => Just("xn--bcher-kva".to_owned()),
        1 => "[0-9]{1,3}",
        1 => Just(String::new()),
    ]
}

fn host() -> impl Strategy<Value = String> {
    (prop::collection::vec(label(), 1..5), prop::bool::weighted(0.1))
        .prop_map(|(labels, dot)| format!("{}{}", labels.join("."), if dot { "." } else { "" }))
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![4 => Just(String::new()), 1 => Just(":443".to_owned()), 1 => Just(":8443".to_owned())]
}

fn origin() -> impl Strategy<Value = String> {
    (prop_oneof![Just("https"), Just("http"), Just("HTTPS")], host(), port())
        .prop_map(|(scheme, host, port)| format!("{scheme}://{host}{port}"))
}

/// Pattern texts: origins, with a wildcard in front now and then, and a
/// registrable base under  so wildcards can be valid.
fn pattern_text() -> impl Strategy<Value = String> {
    (prop::bool::weighted(0.4), origin()).prop_map(|(star, origin)| {
        let origin = format!("{origin}.com")
            .replace(":443.com", ".com:443")
            .replace(":8443.com", ".com:8443");
        if star {
            origin.replacen("://", "://*.", 1)
        } else {
            origin
        }
    })
}

/// Whether `origin` is a true subdomain of `base` as a browser serialises one:
/// lowercase labels, each well formed, ending in `.base`.
fn is_true_subdomain(host: &str, base: &str) -> bool {
    let Some(below) = host.strip_suffix(base).and_then(|h| h.strip_suffix('.')) else {
        return false;
    };
    !below.is_empty()
        && below.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && idna::domain_to_ascii_cow(below.as_bytes(), idna::AsciiDenyList::URL).is_ok_and(|a| a == below)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn normalising_twice_changes_nothing(text in pattern_text()) {
        if let Ok(once) = text.parse::<OriginPattern>() {
            let twice: OriginPattern = once.as_str().parse().unwrap();
            prop_assert_eq!(once, twice);
        }
    }

    #[test]
    fn a_wildcard_never_matches_its_own_base(base in "corsd[a-z]{1,5}\\.(com|co\\.uk|example)", sub in "[a-z]{1,5}") {
        let text = format!("[[entries]]\norigin = \"https://*.{base}\"\n");
        let policy = Policy::compile("p", text.as_bytes()).unwrap().policy;
        let own = format!("https://{base}");
        let below = format!("https://{sub}.{base}");
        prop_assert_eq!(decide(&policy, &request(&own)).verdict, Verdict::Deny);
        prop_assert_eq!(decide(&policy, &request(&below)).verdict, Verdict::Allow);
    }

    #[test]
    fn only_equal_entries_or_true_subdomains_are_allowed(
        patterns in prop::collection::vec(pattern_text(), 1..8),
        origins in prop::collection::vec(origin(), 1..16),
    ) {
        let mut text = String::new();
        for p in &patterns {
            text.push_str(&format!("[[entries]]\norigin = \"{p}\"\n"));
        }
        let Ok(compiled) = Policy::compile("p", text.as_bytes()) else { return Ok(()) };
        let policy = compiled.policy;
        for origin in origins.iter().map(|o| format!("{o}.com")) {
            let decision = decide(&policy, &request(&origin));
            let Some(entry) = decision.matched else {
                prop_assert_ne!(decision.verdict, Verdict::Allow);
                continue;
            };
            prop_assert_eq!(decision.verdict, Verdict::Allow);
            let pattern = entry.pattern.as_str();
            if pattern == origin {
                continue;
            }
            let Ok(RequestOrigin::Tuple(t)) = parse_request_origin(&origin) else {
                return Err(TestCaseError::fail(format!("{origin} matched {pattern} but does not parse")));
            };
            let (scheme, rest) = pattern.split_once("://*.").unwrap();
            let (base, want_port) = match rest.rsplit_once(':') {
                Some((b, p)) => (b, Some(p.parse::<u16>().unwrap())),
                None => (rest, None),
            };
            prop_assert_eq!(t.scheme, scheme);
            prop_assert_eq!(t.port, want_port);
            prop_assert!(is_true_subdomain(t.host, base), "{} matched {}", origin, pattern);
        }
    }

    /// Beside any wildcards, every exact entry allows its own origin, and
    /// matches it rather than a wildcard.
    #[test]
    fn every_exact_entry_allows_its_own_origin(patterns in prop::collection::vec(pattern_text(), 1..8)) {
        let mut text = String::new();
        for p in &patterns {
            text.push_str(&format!("[[entries]]\norigin = \"{p}\"\n"));
        }
        let Ok(compiled) = Policy::compile("p", text.as_bytes()) else { return Ok(()) };
        let policy = compiled.policy;
        for entry in policy.entries().iter().filter(|e| !e.pattern.as_str().contains("://*.")) {
            let origin = entry.pattern.as_str();
            if parse_request_origin(origin).is_err() {
                continue;
            }
            let decision = decide(&policy, &request(origin));
            prop_assert_eq!(decision.verdict, Verdict::Allow, "{}", origin);
            prop_assert_eq!(decision.matched_pattern(), origin);
        }
    }

    #[test]
    fn request_origins_never_panic(value in ".{0,400}") {
        let _ = parse_request_origin(&value);
    }

    #[test]
    fn patterns_never_panic(value in "(https?|chrome-extension|moz-extension|file|\\PC{0,6})(://)?\\PC{0,80}") {
        let _ = value.parse::<OriginPattern>();
    }

    #[test]
    fn policy_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Policy::compile("fuzz", &bytes);
    }

    #[test]
    fn policy_text_never_panics(text in "(\\[\\[?(entries|cors|scope)\\]\\]?\n|[a-z_]{1,14} = (\"\\PC{0,30}\"|[0-9-]{1,8}|true|\\[\"[A-Za-z*-]{0,8}\"\\])\n){0,12}") {
        let _ = Policy::compile("fuzz", text.as_bytes());
    }

    #[test]
    fn decisions_never_panic(
        origin in prop::option::of(".{0,60}"),
        method in "[A-Za-z]{0,8}",
        request_method in prop::option::of(".{0,12}"),
        headers in prop::collection::vec(".{0,40}", 0..4),
        authority in ".{0,30}",
        path in ".{0,30}",
    ) {
        let policy = Policy::compile("p", b"[scope]\nhosts = [\"api.example.com\"]\npaths = [\"/v1\"]\n[[entries]]\norigin = \"https://*.example.com\"\n").unwrap().policy;
        let r = Request {
            origin: origin.as_deref(),
            several_origins: false,
            method: &method,
            request_method: request_method.as_deref(),
            request_headers: &headers,
            request_private_network: false,
            scheme: "https",
            authority: &authority,
            path: &path,
        };
        let _ = decide(&policy, &r);
    }
}

fn request(origin: &str) -> Request<'_> {
    Request {
        authority: "api.test",
        path: "/",
        ..Request::get(origin)
    }
}
