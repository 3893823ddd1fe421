//! The decision table through the core's `decide`.

use crate::common;

use corsd::core::{Policy, decide};

#[test]
fn decision_table() {
    let policies: std::collections::HashMap<String, Policy> = common::policies()
        .into_iter()
        .map(|(name, text)| (name, Policy::compile("case", text.as_bytes()).unwrap().policy))
        .collect();
    common::replay(|_, r, _| {
        let d = decide(&policies[&r.policy], &r.request());
        Some(common::Outcome {
            verdict: d.verdict.as_str().to_owned(),
            reason: d.reason.as_str().to_owned(),
            status: u32::from(d.answer.respond_status()),
            preflight: d.preflight,
            matched: d.matched_pattern().to_owned(),
            headers: d
                .response_headers
                .iter()
                .map(|h| (h.name.as_str().to_owned(), h.value.to_string(), h.append))
                .collect(),
            version: d.policy_version.to_owned(),
        })
    });
}

#[derive(serde::Deserialize)]
struct Patterns {
    valid: Vec<(String, String)>,
    invalid: Vec<(String, String)>,
}

#[test]
fn pattern_table() {
    let text = std::fs::read_to_string(common::cases_dir().join("patterns.toml")).unwrap();
    let table: Patterns = toml::from_str(&text).unwrap();
    let mut failures = Vec::new();
    for (input, want) in &table.valid {
        match input.parse::<corsd::core::OriginPattern>() {
            Ok(p) if p.as_str() == want => {}
            Ok(p) => failures.push(format!("{input:?} normalised to {p}, want {want}")),
            Err(e) => failures.push(format!("{input:?} refused: {e}")),
        }
    }
    for (input, message) in &table.invalid {
        match input.parse::<corsd::core::OriginPattern>() {
            Ok(p) => failures.push(format!("{input:?} accepted as {p}")),
            Err(e) if e.to_string() == *message => {}
            Err(e) => failures.push(format!("{input:?}: message {:?}, want {message:?}", e.to_string())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
