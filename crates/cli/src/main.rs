//! The `waypost` command. Everything lives in the `waypost_cli` library; see its docs.

fn main() -> std::process::ExitCode {
    waypost_cli::main()
}
