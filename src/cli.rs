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
    /// Write the whole virtual disk of an image or of a restore point to a file.
    #[command(
        after_help = "SOURCE is an image file, or a repository followed by the disk of a restore point\nin the path grammar: <vm>/<restore point>/<disk> or <id>/<disk>, where the\nrestore point is a name, an id prefix or `latest`.\n\nExamples:\n  vmback export disk.vhdx --format raw -o disk.raw\n  vmback export /srv/vmback web01/latest/disk0 -o web01.raw\n  vmback export /srv/vmback 3fa2c1d0/disk1 -o data.raw"
    )]
    Export {
        /// The image file (its parent chain is followed), or a repository.
        source: PathBuf,
        /// With a repository: the disk, as `<vm>/<restore point>/<disk>` or `<id>/<disk>`.
        disk: Option<String>,
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
    /// Create a repository.
    #[command(
        after_help = "The chunk size and compression level are fixed for the life of the repository.\n\nExamples:\n  vmback init /srv/vmback\n  vmback init /srv/vmback --chunk-size 4MiB --compression-level 6"
    )]
    Init {
        /// Directory for the repository (created; must be empty if it exists).
        repo: PathBuf,
        /// Bytes per chunk: a power of two from 64KiB to 64MiB.
        #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
        chunk_size: u64,
        /// zstd level for chunks (1 fastest .. 22 smallest).
        #[arg(long, value_name = "LEVEL", default_value_t = crate::repo::config::DEFAULT_ZSTD_LEVEL,
              value_parser = clap::value_parser!(i32).range(1..=22))]
        compression_level: i32,
    },
    /// Back up all disks of one VM into a new restore point.
    #[command(after_help = BACKUP_HELP)]
    Backup(Box<BackupArgs>),
    /// List the restore points of a repository.
    #[command(
        after_help = "Examples:\n  vmback snapshots /srv/vmback\n  vmback snapshots /srv/vmback --vm web01 --json"
    )]
    Snapshots {
        /// The repository.
        repo: PathBuf,
        /// Only this VM's restore points.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a repository: every referenced chunk exists; with --read-data, every
    /// chunk decompresses and hashes to its name.
    #[command(
        after_help = "Exit code 3 when anything is missing or damaged; the report names the\nrestore points, disks and disk offsets that use each bad chunk.\n\nExamples:\n  vmback verify /srv/vmback\n  vmback verify /srv/vmback --read-data\n  vmback verify /srv/vmback web01/latest --read-data --json"
    )]
    Verify {
        /// The repository.
        repo: PathBuf,
        /// Only this restore point (`<vm>/<restore point>`, an id prefix, or `latest`).
        snapshot: Option<String>,
        /// Also read, decompress and re-hash every chunk.
        #[arg(long)]
        read_data: bool,
        /// Only restore points of this VM (for `latest`).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mount restore points of a repository, or an image file, read-only (FUSE).
    #[command(after_help = MOUNT_HELP)]
    Mount {
        /// A repository, or an image file (raw, VMDK, VHD, VHDX, qcow2).
        source: PathBuf,
        /// An existing directory to mount on.
        mountpoint: PathBuf,
        /// Only this VM's restore points.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// Only this restore point (its name, an id prefix, or `latest`).
        #[arg(long, value_name = "ID")]
        snapshot: Option<String>,
        /// Memory for decompressed chunks, shared by all disks of the mount.
        #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
        cache_size: u64,
        /// Let other users see the mount (the guest's owners and modes then apply).
        #[arg(long)]
        allow_other: bool,
    },
    /// Unmount a `vmback mount`.
    #[command(
        after_help = "Refuses mount points that are not vmback mounts. As root this is umount(2);\notherwise it runs fusermount3 -u. The `vmback mount` process then exits.\n\nExamples:\n  vmback umount /mnt/backups\n  vmback umount --lazy /mnt/backups   # detach now, even if files are open"
    )]
    Umount {
        /// Where it is mounted.
        mountpoint: PathBuf,
        /// Detach now even if files are still open there (lazy unmount).
        #[arg(long)]
        lazy: bool,
    },
}

const BACKUP_HELP: &str = "\
Change tracking, per disk: --dirty-bitmap (an NBD export's qemu:dirty-bitmap),
--changed-extents (a JSON list of {\"offset\",\"length\"}, VMware's changedArea or Hyper-V
RCT ranges), or automatically the differencing layer when the previous restore point
captured the base of the current chain. Otherwise the whole disk is read and only new
chunks are stored. Anything that does not line up falls back to a full read, with a
warning.

Hooks get VMBACK_PHASE (pre/post), VMBACK_VM, VMBACK_VM_UUID, VMBACK_HOST,
VMBACK_DATASTORES, VMBACK_REPO, VMBACK_SOURCES and, after the capture, VMBACK_STATUS
(success/failure).

Examples:
  vmback backup /srv/vmback --vm web01 /var/lib/libvirt/images/web01.qcow2
  vmback backup /srv/vmback --vm web01 --dirty-bitmap b0 'nbd+unix:///web01?socket=/run/web01.sock'
  vmback backup /srv/vmback --vm db1 --changed-extents disk1=changes.json os.vmdk data.vmdk
  vmback backup /srv/vmback --vm app --pre-hook 'virsh domfsfreeze app' \\
      --post-hook 'virsh domfsthaw app' --limit-read 200MiB/s app.qcow2";

const MOUNT_HELP: &str = "\
A repository shows the path grammar of every vmback command:
  <vm>/<restore point>/disk0.img        the raw virtual disk (qemu-img, hypervisors)
  <vm>/<restore point>/disk0/<volume>/  the guest's files (volumes p1, p2, ... or whole)
  <vm>/latest                           symlink to the newest restore point
Restore points are also reachable, unlisted, by id prefix (<vm>/<id>/, <id>/).
Backups that finish while mounted appear when the directory is listed again.

An image file shows disk.img (its raw virtual disk) and <volume>/ at the top, the
paths `vmback ls IMAGE` takes: a guestmount without an appliance.

Nothing is parsed until a path is visited; everything is read-only and cached by
the kernel. Guest names holding '/' or NUL cannot be shown and are left out (with a
message). Errors reach programs as EIO, with the path and cause on stderr. Runs in
the foreground (--threads sets the FUSE threads); Ctrl-C, SIGTERM, `vmback umount`
or `fusermount3 -u` unmounts.

Examples:
  vmback mount /srv/vmback /mnt/backups
  vmback mount /srv/vmback /mnt/web01 --vm web01 --snapshot latest
  qemu-img create -f qcow2 -F raw -b /mnt/backups/web01/latest/disk0.img run.qcow2
  vmback mount disk.vmdk /mnt/disk && ls /mnt/disk/p2/Users";

/// Parses sizes and rates with units (`1MiB`, `200MiB/s`).
fn parse_size(s: &str) -> Result<u64, String> {
    crate::backup::ratelimit::parse_size(s)
}

/// Arguments of `vmback backup` (boxed in [`Command`]: they are many).
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The repository.
    pub repo: PathBuf,
    /// Source disks in order (disk0, disk1, ...): image files (raw, VMDK, VHD, VHDX,
    /// qcow2, with their chains), block devices, or NBD URIs
    /// (nbd+unix:///EXPORT?socket=PATH, nbd://HOST[:PORT]/EXPORT).
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    /// The VM's name: restore points of one name form one history.
    #[arg(long, value_name = "NAME")]
    pub vm: String,
    /// The VM's UUID (optional; checked against earlier restore points).
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<String>,
    /// Host the VM runs on (metadata).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Datastore(s) the disks live on (metadata; repeatable).
    #[arg(long = "datastore", value_name = "NAME")]
    pub datastores: Vec<String>,
    /// A tag for the restore point (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Track changes with the NBD dirty bitmap NAME ([diskN=]NAME; repeatable).
    #[arg(long = "dirty-bitmap", value_name = "[DISK=]NAME")]
    pub dirty_bitmaps: Vec<String>,
    /// Track changes with a JSON list of changed extents ([diskN=]FILE; repeatable).
    #[arg(long = "changed-extents", value_name = "[DISK=]FILE")]
    pub changed_extents: Vec<String>,
    /// Read every disk completely (no change tracking; dedup still applies).
    #[arg(long)]
    pub full: bool,
    /// Command run before the capture (e.g. freeze the guest); failing aborts.
    #[arg(long, value_name = "CMD")]
    pub pre_hook: Option<String>,
    /// Command run after the capture, always (also on failure).
    #[arg(long, value_name = "CMD")]
    pub post_hook: Option<String>,
    /// Seconds a hook may run before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub hook_timeout: u64,
    /// Limit reads from the sources, e.g. 200MiB/s.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub limit_read: Option<u64>,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}
