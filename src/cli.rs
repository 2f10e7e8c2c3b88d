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
    /// Show what a disk image is: format, virtual size, every layer of its chain, and
    /// its partitions and filesystems (type, label, size, used and free space).
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
    /// List volumes, or a directory inside a guest filesystem of an image.
    #[command(
        after_help = "Paths are <volume>/<path>: p1, p2, ... by partition number, or whole for a\npartitionless disk.\n\nExamples:\n  vmback ls disk.vmdk                 # the volumes\n  vmback ls disk.vmdk p2/Windows -l   # a directory, long format\n  vmback ls disk.qcow2 whole/etc --json"
    )]
    Ls {
        /// The image file.
        image: PathBuf,
        /// A path `<volume>/<path in the guest>`; omit to list the volumes.
        path: Option<String>,
        /// Long format: type and mode, links, owner, size, modification time.
        #[arg(short = 'l', long)]
        long: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a file from a guest filesystem of an image to standard output.
    #[command(
        after_help = "Examples:\n  vmback cat disk.vhdx p2/Windows/System32/drivers/etc/hosts\n  vmback cat disk.qcow2 whole/etc/fstab"
    )]
    Cat {
        /// The image file.
        image: PathBuf,
        /// The file, as `<volume>/<path in the guest>`.
        path: String,
    },
    /// Copy files or directory trees out of a guest filesystem of an image.
    #[command(
        after_help = "Existing files in the target are never overwritten; symlinks are recreated,\nnever followed; names a guest could use to escape the target ('..', '/', NUL)\nare refused and reported.\n\nExamples:\n  vmback get disk.vmdk p2/Users/alice/Documents --target ./restore\n  vmback get disk.qcow2 whole/etc/fstab whole/etc/hosts --target /tmp/r"
    )]
    Get {
        /// The image file.
        image: PathBuf,
        /// Paths as `<volume>/<path in the guest>`.
        #[arg(required = true)]
        paths: Vec<String>,
        /// Directory to restore into (created if missing).
        #[arg(long, short = 't', value_name = "DIR")]
        target: PathBuf,
        /// Also restore owner uid/gid (needs root).
        #[arg(long)]
        owner: bool,
        /// Print a JSON report.
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
