//! `diskseal-agent`: parse, run, map errors to exit codes (0 ok, 1 verification failed, 2 error).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    diskseal_agent::cli::main()
}
