//! Command-line definitions (clap derive) and dispatch. Thin: each command calls the
//! library and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vmback::export::{ExportFormat, ExportOptions};
use vmback::image;
use vmback::inspect::{human, inspect, render};

/// Image-level backup of virtual machine disks, with granular restore.
#[derive(Debug, Parser)]
#[command(name = "vmback", version, about, long_about = None)]
pub struct Cli {
    /// Worker threads for parallel work (default: all cores).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a disk image is: format, virtual size, every layer of its chain.
    #[command(
        after_help = "Examples:\n  vmback inspect disk.vmdk\n  vmback inspect --json overlay.qcow2"
    )]
    Inspect {
        /// The image file (raw, VMDK, VHD, VHDX, qcow2) or block device.
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the whole virtual disk of an image to a file.
    #[command(after_help = "Examples:\n  vmback export disk.vhdx --format raw -o disk.raw")]
    Export {
        /// The image file (its parent chain is followed).
        image: PathBuf,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value = "raw")]
        format: ExportFormat,
        /// Output file (or block device).
        #[arg(long, short = 'o', value_name = "OUT")]
        output: PathBuf,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
