//! Synthetic policies for the benchmarks and the load harness (shared with
//! `#[path]`): `n` entries, alternately exact origins (`https://app-{i}.example.com`)
//! and wildcards (`https://*.t{i}.example.net`), scoped to `api.example.com`.

/// The text of an `n`-entry policy.
pub fn policy_text(n: usize) -> String {
    let mut text = String::with_capacity(n * 48);
    text.push_str("label = \"synthetic\"\n");
    text.push_str("[cors]\nallow_headers = [\"content-type\", \"x-requested-with\", \"authorization\"]\n");
    text.push_str("[scope]\nhosts = [\"api.example.com\"]\n");
    for i in 0..n {
        if i % 2 == 0 {
            text.push_str(&format!("[[entries]]\norigin = \"https://app-{i}.example.com\"\n"));
        } else {
            text.push_str(&format!("[[entries]]\norigin = \"https://*.t{i}.example.net\"\n"));
        }
    }
    text
}
