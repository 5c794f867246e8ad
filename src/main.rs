fn main() -> std::process::ExitCode {
    prio_processor::cli::main()
}
