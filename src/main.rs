//! The `vmback` binary: parse the command line, run, map errors to exit codes
//! (0 ok, 1 failure, 2 usage, 3 integrity problem found).

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = <cli::Cli as clap::Parser>::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmback: error: {e:#}");
            let usage = e
                .downcast_ref::<vmback::Error>()
                .is_some_and(|e| matches!(e, vmback::Error::Usage(_)));
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
