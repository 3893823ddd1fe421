//! Any text as an allowlist pattern: never panics, and a pattern that parses
//! normalises to itself.
#![no_main]

use corsd::core::OriginPattern;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(pattern) = text.parse::<OriginPattern>() {
        let again: OriginPattern = pattern.as_str().parse().expect("a normal form parses");
        assert_eq!(pattern, again);
    }
});
