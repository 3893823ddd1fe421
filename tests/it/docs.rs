//! Every offline example in the README and docs/ (the `console` blocks:
//! `corsd validate`, `check`, `diff`, `entries --dry-run`, `envoy-config`,
//! help) runs here, and its output must be what the page shows, so the
//! docs cannot drift from the binary.

#[test]
fn the_examples_in_the_docs_print_what_they_show() {
    trycmd::TestCases::new()
        .register_bin("corsd", std::path::Path::new(env!("CARGO_BIN_EXE_corsd")))
        .case("README.md")
        .case("docs/*.md");
}
