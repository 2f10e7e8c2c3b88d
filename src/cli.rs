//! Command-line definitions (clap derive). They live in the library so that the man
//! pages and shell completions in `man/` are generated from them (see
//! `tests/man.rs`); the binary's `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::export::ExportFormat;

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
