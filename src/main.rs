//! The `corsd` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    corsd::cli::main()
}
