//! The `corsd` binary; everything lives in the library.

/// mimalloc: compiling a large policy is allocation-heavy, and it keeps the
/// resident memory of the compiled index low.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    corsd::cli::main()
}
