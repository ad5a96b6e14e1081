//! `canto`: see `canto --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    canto::cli::main()
}
