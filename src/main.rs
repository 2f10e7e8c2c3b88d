//! The `vmback` binary: parse the command line, dispatch to the library, map errors
//! to exit codes (0 ok, 1 failure, 2 usage, 3 integrity problem found).

use std::io::{stdout, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use vmback::browse::DiskView;
use vmback::cli::{Cli, Command};
use vmback::export::ExportOptions;
use vmback::image;
use vmback::inspect::{human, inspect, render};

fn main() -> ExitCode {
    let args = Cli::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
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
/// `vmback ls ... | head` closes our stdout early: not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("setting up worker threads")?;
    }
    match cli.command {
        Command::Inspect { image, json } => {
            let disk = Arc::new(image::open(&image)?);
            let report = inspect(&disk)?;
            if json {
                writeln!(stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                write!(stdout(), "{}", render(&report))?;
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
        Command::Ls {
            image,
            path,
            long,
            json,
        } => {
            let disk = Arc::new(image::open(&image)?);
            let view = DiskView::new(disk, &image.display().to_string())?;
            let out = &mut stdout().lock();
            match path {
                None => vmback::ls::list_volumes(&view, json, out)?,
                Some(p) => {
                    let failed = vmback::ls::list_path(&view, &p, long, json, out)?;
                    for f in &failed {
                        eprintln!("vmback: cannot read {f}");
                    }
                    if !failed.is_empty() {
                        return Ok(ExitCode::from(1));
                    }
                }
            }
        }
        Command::Get {
            image,
            paths,
            target,
            owner,
            json,
        } => {
            let disk = Arc::new(image::open(&image)?);
            let view = DiskView::new(disk, &image.display().to_string())?;
            let report =
                vmback::get::get(&view, &paths, &target, &vmback::get::GetOptions { owner })?;
            if json {
                writeln!(stdout(), "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                for e in &report.errors {
                    eprintln!("vmback: {e}");
                }
                eprintln!(
                    "restored {} files, {} directories, {} symlinks, {} hard links ({}) into {}{}",
                    report.files,
                    report.dirs,
                    report.symlinks,
                    report.hardlinks,
                    human(report.bytes),
                    target.display(),
                    if report.skipped > 0 {
                        format!("; {} entries failed (listed above)", report.skipped)
                    } else {
                        String::new()
                    }
                );
            }
            if report.skipped > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Cat { image, path } => {
            let disk = Arc::new(image::open(&image)?);
            let view = DiskView::new(disk, &image.display().to_string())?;
            vmback::ls::cat(&view, &path, &mut stdout().lock())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
