//! Any bytes as a policy file: compiling never panics, and every diagnostic
//! points at a real line.
#![no_main]

use corsd::core::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    match Policy::compile("fuzz.toml", data) {
        Ok(compiled) => {
            for w in &compiled.warnings {
                assert!((w.line as usize) <= lines);
            }
        }
        Err(error) => {
            assert!(!error.diagnostics.is_empty());
            for d in &error.diagnostics {
                assert!(d.line >= 1 && (d.line as usize) <= lines, "{d:?}");
            }
        }
    }
});
