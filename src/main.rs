//! The `vmback` binary: parse the command line, dispatch to the library, map errors
//! to exit codes (0 ok, 1 failure, 2 usage, 3 integrity problem found).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use vmback::cli::{Cli, Command};
use vmback::export::ExportOptions;
use vmback::image;
use vmback::inspect::{human, inspect, render};

fn main() -> ExitCode {
    let args = Cli::parse();
    match run(args) {
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

/// Runs the parsed command line.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting up worker threads")?;
    }
    match cli.command {
        Command::Inspect { image, json } => {
            let disk = image::open(&image)?;
            let report = inspect(&disk)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render(&report));
            }
        }
        Command::Export {
            image,
            format,
            output,
            force,
            json,
        } => {
            let disk = image::open(&image)?;
            for w in disk.warnings() {
                eprintln!("vmback: warning: {w}");
            }
            let stats = vmback::export::export(&disk, &output, &ExportOptions { format, force })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                    "export": stats, "source_bytes_read": disk.bytes_read() }))?
                );
            } else {
                eprintln!(
                    "exported {} ({} data, {} written, {} read from source files) to {} in {:.2}s",
                    human(stats.virtual_size),
                    human(stats.data_bytes),
                    human(stats.written_bytes),
                    human(disk.bytes_read()),
                    stats.output.display(),
                    stats.duration.as_secs_f64()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
