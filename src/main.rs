fn main() -> std::process::ExitCode {
    corsd::cli::main()
}
