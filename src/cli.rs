//! Command-line definitions (clap derive). They live in the library so that the man
//! pages and shell completions in `man/` are generated from them (see
//! `tests/man.rs`); the binary's `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::export::{ExportFormat, Subformat};

/// Image-level backup of virtual machine disks, with granular restore.
#[derive(Debug, Parser)]
#[command(name = "vmback", version, about, long_about = None, after_help = TOP_HELP)]
pub struct Cli {
    /// Worker threads for parallel work (default: one per core).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

/// The top command's help: the restore point names, exit codes, examples.
pub const TOP_HELP: &str = "\
Restore points are named <vm>/<restore point> (its name, e.g. 2026-11-21T030000Z,
or latest), by id or unique id prefix (4+ hex digits), or by time with --at (the
newest at or before it). Sizes and rates take units (64KiB, 4MiB, 200MiB/s),
durations too (90s, 30m, 2h, 1d). Progress shows on a terminal only.

Exit codes:
  0  success
  1  failure (ls, get, restore: some entries failed, the others were done)
  2  usage error
  3  integrity problem found (verify)
  128+N  backup, run, export, get or restore stopped by signal N (130 SIGINT, 143
         SIGTERM, 129 SIGHUP); the file being written is removed

Examples:
  vmback init /srv/vmback
  vmback backup /srv/vmback --vm web01 /var/lib/libvirt/images/web01.qcow2
  vmback snapshots /srv/vmback
  vmback restore /srv/vmback web01/latest disk0/p1/etc/hosts --target ./r
  vmback mount /srv/vmback /mnt/backups";

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
        /// Print the result as JSON on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List volumes, or a directory inside a guest filesystem of an image or of a
    /// restore point.
    #[command(after_help = LS_HELP)]
    Ls {
        /// The image file, or a repository.
        image: PathBuf,
        /// Image: `<volume>/<path in the guest>`, omit to list the volumes. Repository:
        /// `<vm>/<restore point>/<disk>/<volume>/<path>`, or a prefix of it.
        path: Option<String>,
        /// Repository: only restore points of this VM (the path then starts at the
        /// restore point, or at the disk with --at).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[arg(long, value_name = "TIME", value_parser = parse_at, help = AT_HELP)]
        at: Option<jiff::Timestamp>,
        /// Long format: type and mode, links, owner, size, modification time.
        #[arg(short = 'l', long)]
        long: bool,
        /// Print the result as JSON on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a file from a guest filesystem of an image or of a restore point to
    /// standard output.
    #[command(
        after_help = "Examples:\n  vmback cat disk.vhdx p2/Windows/System32/drivers/etc/hosts\n  vmback cat disk.qcow2 whole/etc/fstab\n  vmback cat /srv/vmback web01/latest/disk0/p1/etc/fstab\n  vmback cat /srv/vmback --vm web01 --at '2026-11-20 03:00' disk0/p1/etc/fstab"
    )]
    Cat {
        /// The image file, or a repository.
        image: PathBuf,
        /// The file: `<volume>/<path in the guest>` in an image,
        /// `<vm>/<restore point>/<disk>/<volume>/<path>` in a repository.
        path: String,
        /// Repository: only restore points of this VM (the path then starts at the
        /// restore point, or at the disk with --at).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[arg(long, value_name = "TIME", value_parser = parse_at, help = AT_HELP)]
        at: Option<jiff::Timestamp>,
    },
    /// Copy files or directory trees out of a guest filesystem of an image or of a
    /// restore point.
    #[command(
        after_help = "Existing files in the target are kept unless --overwrite; symlinks are\nrecreated, never followed; names a guest could use to escape the target ('..',\n'/', NUL) are refused and reported.\n\nExamples:\n  vmback get disk.vmdk p2/Users/alice/Documents --target ./restore\n  vmback get disk.qcow2 whole/etc/fstab whole/etc/hosts --target /tmp/r\n  vmback get /srv/vmback web01/latest/disk0/p1/etc --target ./r\n  vmback get /srv/vmback --vm web01 --at '2026-11-20 03:00' disk0/p1/etc -t ./r"
    )]
    Get {
        /// The image file, or a repository.
        image: PathBuf,
        /// Paths as `<volume>/<path in the guest>` in an image,
        /// `<vm>/<restore point>/<disk>/<volume>/<path>` in a repository.
        #[arg(required = true)]
        paths: Vec<String>,
        /// Repository: only restore points of this VM (paths then start at the
        /// restore point, or at the disk with --at).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[arg(long, value_name = "TIME", value_parser = parse_at, help = AT_HELP)]
        at: Option<jiff::Timestamp>,
        /// Directory to restore into (created if missing).
        #[arg(long, short = 't', value_name = "DIR")]
        target: PathBuf,
        /// Also restore owner uid/gid (needs root).
        #[arg(long)]
        owner: bool,
        /// Replace existing files and symlinks in the target (atomically).
        #[arg(long, visible_alias = "force")]
        overwrite: bool,
        /// Print the result as JSON on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Restore files, directory trees or whole disks from a restore point.
    #[command(
        after_help = "PATH is <disk>/<volume>/<path in the guest> (e.g. disk0/p2/Users/alice), or just\n<disk> to restore the whole disk as a sparse raw image to --target (a file or a\nblock device). Files keep their metadata, symlinks are recreated and never\nfollowed, nothing is written outside --target, existing files are kept unless\n--overwrite. A damaged chunk fails only the files that use it.\n\nExamples:\n  vmback restore /srv/vmback web01/latest disk0/p1/etc/hosts --target ./r\n  vmback restore /srv/vmback 3fa2c1d0 disk0/p2/Users/alice --target /tmp/alice\n  vmback restore /srv/vmback web01/2026-11-21T030000Z disk1 --target /dev/vg0/web01-data\n  vmback restore /srv/vmback web01 --at '2026-11-20 03:00' disk0/p1/etc --target ./r"
    )]
    Restore {
        /// The repository.
        repo: PathBuf,
        /// The restore point: `<vm>/<restore point>`, an id or unique prefix, or
        /// `latest`. With --at: the VM, or left out (the first PATH comes here) when
        /// --vm names the VM or the repository holds one.
        snapshot: String,
        /// What to restore: `<disk>/<volume>/<path>`, or `<disk>` for the whole disk.
        #[arg(required_unless_present = "at")]
        paths: Vec<String>,
        /// Directory to restore files into (created if missing), or the file or device
        /// a whole disk is written to.
        #[arg(long, short = 't', value_name = "DIR|FILE")]
        target: PathBuf,
        /// Only restore points of this VM (for `latest`, a name or --at).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[arg(long, value_name = "TIME", value_parser = parse_at, help = AT_HELP)]
        at: Option<jiff::Timestamp>,
        /// Replace existing files (or an existing disk image file).
        #[arg(long, visible_alias = "force")]
        overwrite: bool,
        /// Also restore owner uid/gid (needs root).
        #[arg(long)]
        owner: bool,
        /// Print the result as JSON on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the whole virtual disk of an image or of a restore point to a file.
    #[command(
        after_help = EXPORT_HELP
    )]
    Export {
        /// The image file (its parent chain is followed), or a repository.
        source: PathBuf,
        /// With a repository: the disk, as `<vm>/<restore point>/<disk>` or `<id>/<disk>`
        /// (with --at: `<vm>/<disk>`, or `<disk>` with --vm).
        disk: Option<String>,
        /// Repository: only restore points of this VM (DISK then starts at the restore
        /// point, or is the disk alone with --at).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[arg(long, value_name = "TIME", value_parser = parse_at, help = AT_HELP)]
        at: Option<jiff::Timestamp>,
        /// Output format.
        #[arg(long, short = 'f', value_enum, default_value = "raw")]
        format: ExportFormat,
        /// Variant of the format, as qemu-img's `-o subformat=` (vmdk: monolithicSparse,
        /// streamOptimized; vhd, vhdx: dynamic, fixed).
        #[arg(long, value_enum, value_name = "SUBFORMAT", ignore_case = true)]
        subformat: Option<Subformat>,
        /// Round a fixed VHD up to a whole number of MiB (Azure and other cloud
        /// imports require it); the added tail reads as zeros.
        #[arg(long)]
        align: bool,
        /// Output file (a block device only with --format raw).
        #[arg(long, short = 'o', value_name = "OUT")]
        output: PathBuf,
        /// Replace an existing output file.
        #[arg(long, visible_alias = "overwrite")]
        force: bool,
        /// Print the result as JSON on standard output instead of text.
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
        /// Bytes per chunk: a power of two from 64KiB to 64MiB. 256KiB keeps incrementals
        /// of scattered small writes small; larger chunks make fulls a little faster.
        #[arg(long, value_name = "SIZE", default_value = crate::repo::config::DEFAULT_CHUNK_SIZE_ARG,
              value_parser = parse_size)]
        chunk_size: u64,
        /// zstd level for chunks (1 fastest .. 22 smallest). Default: level 1 with
        /// its match finder tuned for chunks (hash log 16, min match 5), which stores
        /// about what level 3 stores in ~70% of its time.
        #[arg(long, value_name = "LEVEL", value_parser = clap::value_parser!(i32).range(1..=22))]
        compression_level: Option<i32>,
    },
    /// Back up all disks of one VM into a new restore point.
    #[command(after_help = BACKUP_HELP)]
    Backup(Box<BackupArgs>),
    /// Back up many VMs from a job file: limits per host and per datastore,
    /// staggered fulls, retries, a report, retention.
    #[command(after_help = RUN_HELP)]
    Run {
        /// The job file (TOML; see the example below and `fixtures/example-job.toml`).
        jobfile: PathBuf,
        /// Print the plan (order, slot, full or incremental per VM and why); back up
        /// nothing and write nothing to the repository (not even a lock).
        #[arg(long)]
        dry_run: bool,
        /// Print the report (or the plan) as JSON.
        #[arg(long)]
        json: bool,
    },
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
        /// Print the result as JSON on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Apply a retention policy: remove restore points no rule keeps (per VM).
    #[command(
        after_help = "Each --keep-* rule keeps the newest restore point of each of the N most recent\nhours/days/ISO weeks/months/years that have one (UTC); --keep-last keeps the N\nnewest. The reasons are printed. A VM's last restore point is kept unless\n--allow-empty. Only manifests are removed: run `vmback gc` to reclaim space.\nRestore points given by id are removed whatever the policy.\n\nExamples:\n  vmback forget /srv/vmback --keep-daily 7 --keep-weekly 4 --keep-monthly 12 --dry-run\n  vmback forget /srv/vmback --vm web01 --keep-last 3\n  vmback forget /srv/vmback 3fa2c1d0"
    )]
    Forget {
        /// The repository.
        repo: PathBuf,
        /// Restore points to remove explicitly (ids or unique prefixes).
        snapshots: Vec<String>,
        /// Only this VM's restore points.
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        /// Keep the N newest restore points.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: usize,
        /// Keep the newest restore point of each of the N most recent hours that have one.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_hourly: usize,
        /// Keep the newest of each of the N most recent days.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: usize,
        /// Keep the newest of each of the N most recent ISO weeks.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: usize,
        /// Keep the newest of each of the N most recent months.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: usize,
        /// Keep the newest of each of the N most recent years.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_yearly: usize,
        /// Allow a policy to remove a VM's last restore point.
        #[arg(long)]
        allow_empty: bool,
        /// Print the plan; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove chunks and indexes no restore point references.
    #[command(
        after_help = "Safe while backups run: objects younger than the oldest running backup (minus\nthe grace period) are kept, and a backup refreshes any chunk it reuses. See the\nprotocol in src/repo/gc.rs.\n\nExamples:\n  vmback gc /srv/vmback --dry-run\n  vmback gc /srv/vmback --grace 2h"
    )]
    Gc {
        /// The repository.
        repo: PathBuf,
        /// Keep unreferenced objects younger than this before the oldest running
        /// backup (covers clock skew between hosts), e.g. 30m, 2h.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON on standard output instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List repository locks; remove stale ones (or all, with --all).
    #[command(
        after_help = "A lock is stale when its process is gone (same host) or it was not refreshed\nfor 30 minutes. Removing a live lock lets gc or forget run beside an operation\nthat relies on it: only use --all when you are sure nothing is running.\n\nExamples:\n  vmback unlock /srv/vmback\n  vmback unlock /srv/vmback --all"
    )]
    Unlock {
        /// The repository.
        repo: PathBuf,
        /// Remove every lock, also live ones.
        #[arg(long)]
        all: bool,
    },
    /// Check a repository: every referenced chunk exists; with --read-data, every
    /// chunk decompresses and hashes to its name.
    #[command(
        after_help = "Exit code 3 when anything is missing or damaged; the report names the\nrestore points, disks and disk offsets that use each bad chunk.\n\nExamples:\n  vmback verify /srv/vmback\n  vmback verify /srv/vmback --read-data\n  vmback verify /srv/vmback web01/latest --read-data --json\n  vmback verify /srv/vmback --vm web01 --at '2026-11-20 03:00' --filesystems\n  vmback verify /srv/vmback --filesystems"
    )]
    Verify {
        /// The repository.
        repo: PathBuf,
        /// Only this restore point (`<vm>/<restore point>`, an id prefix, or `latest`;
        /// with --at: the VM, or nothing when --vm names it).
        snapshot: Option<String>,
        /// Also read, decompress and re-hash every chunk.
        #[arg(long)]
        read_data: bool,
        /// Also open every volume's filesystem and walk its directory tree (metadata
        /// only): proof that each restore point can give files back.
        #[arg(long)]
        filesystems: bool,
        /// Only restore points of this VM (for `latest`, a name or --at).
        #[arg(long, value_name = "NAME")]
        vm: Option<String>,
        #[arg(long, value_name = "TIME", value_parser = parse_at, help = AT_HELP)]
        at: Option<jiff::Timestamp>,
        /// Print the result as JSON on standard output instead of text.
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
        #[arg(long, value_name = "TIME", value_parser = parse_at, help = AT_HELP,
              conflicts_with = "snapshot")]
        at: Option<jiff::Timestamp>,
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

const EXPORT_HELP: &str = "\
SOURCE is an image file, or a repository followed by the disk of a restore point
in the path grammar: <vm>/<restore point>/<disk> or <id>/<disk>, where the
restore point is a name, an id prefix or `latest`.

Only data is read, and all-zero data is never written: raw output is sparse,
containers allocate nothing for it. A size that is not a whole number of 512-byte
sectors is rounded up for the containers. The output is written as
OUT.vmback-partial and renamed when complete.

Examples:
  vmback export disk.vhdx --format raw -o disk.raw
  vmback export /srv/vmback web01/latest/disk0 -o web01.raw
  vmback export /srv/vmback 3fa2c1d0/disk1 -o data.raw
  vmback export disk.qcow2 --format vmdk --subformat streamOptimized -o disk.vmdk
  vmback export disk.vmdk --format vhd --subformat fixed --align -o azure.vhd
  vmback export /srv/vmback web01/latest/disk0 --format vhdx -o web01.vhdx
  vmback export /srv/vmback web01/disk0 --at '2026-11-20 03:00' -o web01.raw";

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

const RUN_HELP: &str = "\
The job file names the repository, limits, defaults and the VMs. It is checked
completely before anything runs: an unknown key, a missing source, a limit of 0 or
a duplicate VM name is an error naming the file, line and key. Relative paths are
taken from the job file's directory, and hooks run there.

At most max_concurrent backups run at once, at most max_per_host on one host and
max_per_datastore on one datastore (a VM whose disks span datastores counts against
each); a slot never stays idle while a VM that fits waits. A VM whose next backup is
a full (no restore point yet, full_every reached, change tracking unusable) does not
start beside another full on its host unless nothing else can start. A failed VM is
retried after its backoff without holding a slot; the others go on. limit_read is
one budget shared by all running backups. After the backups each VM's keep policy
is applied; gc_after = true then runs gc if nothing failed.

Hooks get VMBACK_JOB (the job file), VMBACK_ATTEMPT (1, 2, ...) besides those of
`vmback backup` (VMBACK_PHASE, VMBACK_VM, VMBACK_VM_UUID, VMBACK_HOST,
VMBACK_DATASTORES, VMBACK_REPO, VMBACK_SOURCES, VMBACK_STATUS).

The report (per VM: result, attempts, method, bytes read and new, duration, error)
goes to stdout; --json adds every attempt's ready, start and end times. Exit code 1
when any VM failed after its retries.

Example job file:
  repository = \"/srv/vmback\"
  [limits]
  max_concurrent = 4
  max_per_host = 2
  max_per_datastore = 2
  limit_read = \"200MiB/s\"
  [defaults]
  retries = 2
  retry_backoff = \"30s\"
  full_every = 7
  keep = { last = 7, daily = 14, weekly = 8 }
  pre_hook = \"virsh domfsfreeze $VMBACK_VM\"
  post_hook = \"virsh domfsthaw $VMBACK_VM\"
  [[vm]]
  name = \"web01\"
  host = \"kvm1\"
  datastores = [\"ds1\"]
  [[vm.disk]]
  source = \"/var/lib/libvirt/images/web01.qcow2\"
  tracking = \"auto\"   # auto | differencing | dirty-bitmap | changed-extents | full

Examples:
  vmback run nightly.toml --dry-run
  vmback run nightly.toml
  vmback run nightly.toml --json > report.json";

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
  vmback mount /srv/vmback /mnt/web01 --vm web01 --at '2026-11-20 03:00'
  qemu-img create -f qcow2 -F raw -b /mnt/backups/web01/latest/disk0.img run.qcow2
  vmback mount disk.vmdk /mnt/disk && ls /mnt/disk/p2/Users";

/// Help of `--at`, the same for every command that picks a restore point.
const AT_HELP: &str =
    "Only the newest restore point at or before TIME: \"2026-11-20 03:00\" (local \
     time zone) or RFC 3339 with Z or an offset (2026-11-20T03:00:00Z)";

/// Paths of `ls` in an image and in a repository.
const LS_HELP: &str = "\
An image's paths are <volume>/<path>: p1, p2, ... by partition number, or whole for
a partitionless disk. A repository's are the path grammar
<vm>/<restore point>/<disk>/<volume>/<path>; its prefixes list the VMs' restore
points, a restore point's disks, a disk's volumes.

Examples:
  vmback ls disk.vmdk                 # the volumes
  vmback ls disk.vmdk p2/Windows -l   # a directory, long format
  vmback ls disk.qcow2 whole/etc --json
  vmback ls /srv/vmback web01         # web01's restore points
  vmback ls /srv/vmback web01/latest/disk0/p1/etc
  vmback ls /srv/vmback --vm web01 --at '2026-11-20 03:00' disk0/p1/etc";

/// Parses `--at` times (see [`crate::repo::parse_at`]).
fn parse_at(s: &str) -> Result<jiff::Timestamp, String> {
    crate::repo::parse_at(s)
}

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
    /// Command run after the capture, always (also on failure, and when SIGINT,
    /// SIGTERM or SIGHUP stops the backup; a second signal exits at once).
    #[arg(long, value_name = "CMD")]
    pub post_hook: Option<String>,
    /// How long a hook may run before it is killed, e.g. 90s, 10m (bare numbers are
    /// seconds).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub hook_timeout: std::time::Duration,
    /// Limit reads from the sources, e.g. 200MiB/s.
    #[arg(long, value_name = "RATE", value_parser = parse_size)]
    pub limit_read: Option<u64>,
    /// Print the result as JSON on standard output instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Parses durations: `500ms`, `90s`, `30m`, `2h`, `1d`, or seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 30m, 2h, 1d"))?;
    let (mult, millis) = match unit.trim() {
        "ms" => (1, true),
        "" | "s" => (1, false),
        "m" => (60, false),
        "h" => (3600, false),
        "d" => (86400, false),
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h, d)")),
    };
    let v = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: out of range"))?;
    Ok(if millis {
        std::time::Duration::from_millis(v)
    } else {
        std::time::Duration::from_secs(v)
    })
}
