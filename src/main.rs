//! The `diskseal` command: parse, run, map errors to exit codes (0 ok, 1 verification failed, 2 error).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
