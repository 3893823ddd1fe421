//! The load harness (`examples/load.rs`) still works: a few seconds of it in
//! smoke mode, against the debug build of corsd. It asserts no timing; the
//! harness itself fails on any wrong answer or RPC error.

use std::process::Command;

#[test]
fn load_harness_smoke() {
    let debug_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let harness = debug_dir.join("examples/load");
    assert!(
        harness.is_file(),
        "cargo test builds examples; {} is missing",
        harness.display()
    );
    let out = Command::new(&harness)
        .args(["--smoke", "--corsd", env!("CARGO_BIN_EXE_corsd"), "--entries", "1000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "harness failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "CheckOrigin / Health throughput",
        "handler p99",
        "resident memory of corsd",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
}
