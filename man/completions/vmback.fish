# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_vmback_global_optspecs
    string join \n threads= h/help V/version
end

function __fish_vmback_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_vmback_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_vmback_using_subcommand
    set -l cmd (__fish_vmback_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c vmback -n "__fish_vmback_needs_command" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_needs_command" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_needs_command" -s V -l version -d 'Print version'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "inspect" -d 'Show what a disk image is: format, virtual size, every layer of its chain, and its partitions and filesystems (type, label, size, used and free space)'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "ls" -d 'List volumes, or a directory inside a guest filesystem of an image or of a restore point'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "cat" -d 'Write a file from a guest filesystem of an image or of a restore point to standard output'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "get" -d 'Copy files or directory trees out of a guest filesystem of an image or of a restore point'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "restore" -d 'Restore files, directory trees or whole disks from a restore point'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "export" -d 'Write the whole virtual disk of an image or of a restore point to a file'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "init" -d 'Create a repository'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "backup" -d 'Back up all disks of one VM into a new restore point'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "run" -d 'Back up many VMs from a job file: limits per host and per datastore, staggered fulls, retries, a report, retention'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "snapshots" -d 'List the restore points of a repository'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "forget" -d 'Apply a retention policy: remove restore points no rule keeps (per VM)'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "gc" -d 'Remove chunks and indexes no restore point references'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "unlock" -d 'List repository locks; remove stale ones (or all, with --all)'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "verify" -d 'Check a repository: every referenced chunk exists; with --read-data, every chunk decompresses and hashes to its name'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "mount" -d 'Mount restore points of a repository, or an image file, read-only (FUSE)'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "umount" -d 'Unmount a `vmback mount`'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmback -n "__fish_vmback_using_subcommand inspect" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand inspect" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand inspect" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand ls" -l vm -d 'Repository: only restore points of this VM (the path then starts at the restore point, or at the disk with --at)' -r
complete -c vmback -n "__fish_vmback_using_subcommand ls" -l at -d 'Only the newest restore point at or before TIME: "2026-11-20 03:00" (local time zone) or RFC 3339 with Z or an offset (2026-11-20T03:00:00Z)' -r
complete -c vmback -n "__fish_vmback_using_subcommand ls" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand ls" -s l -l long -d 'Long format: type and mode, links, owner, size, modification time'
complete -c vmback -n "__fish_vmback_using_subcommand ls" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand ls" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand cat" -l vm -d 'Repository: only restore points of this VM (the path then starts at the restore point, or at the disk with --at)' -r
complete -c vmback -n "__fish_vmback_using_subcommand cat" -l at -d 'Only the newest restore point at or before TIME: "2026-11-20 03:00" (local time zone) or RFC 3339 with Z or an offset (2026-11-20T03:00:00Z)' -r
complete -c vmback -n "__fish_vmback_using_subcommand cat" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand cat" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand get" -l vm -d 'Repository: only restore points of this VM (paths then start at the restore point, or at the disk with --at)' -r
complete -c vmback -n "__fish_vmback_using_subcommand get" -l at -d 'Only the newest restore point at or before TIME: "2026-11-20 03:00" (local time zone) or RFC 3339 with Z or an offset (2026-11-20T03:00:00Z)' -r
complete -c vmback -n "__fish_vmback_using_subcommand get" -s t -l target -d 'Directory to restore into (created if missing)' -r -F
complete -c vmback -n "__fish_vmback_using_subcommand get" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand get" -l owner -d 'Also restore owner uid/gid (needs root)'
complete -c vmback -n "__fish_vmback_using_subcommand get" -l overwrite -l force -d 'Replace existing files and symlinks in the target (atomically)'
complete -c vmback -n "__fish_vmback_using_subcommand get" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand get" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand restore" -s t -l target -d 'Directory to restore files into (created if missing), or the file or device a whole disk is written to' -r -F
complete -c vmback -n "__fish_vmback_using_subcommand restore" -l vm -d 'Only restore points of this VM (for `latest`, a name or --at)' -r
complete -c vmback -n "__fish_vmback_using_subcommand restore" -l at -d 'Only the newest restore point at or before TIME: "2026-11-20 03:00" (local time zone) or RFC 3339 with Z or an offset (2026-11-20T03:00:00Z)' -r
complete -c vmback -n "__fish_vmback_using_subcommand restore" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand restore" -l overwrite -l force -d 'Replace existing files (or an existing disk image file)'
complete -c vmback -n "__fish_vmback_using_subcommand restore" -l owner -d 'Also restore owner uid/gid (needs root)'
complete -c vmback -n "__fish_vmback_using_subcommand restore" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand restore" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand export" -l vm -d 'Repository: only restore points of this VM (DISK then starts at the restore point, or is the disk alone with --at)' -r
complete -c vmback -n "__fish_vmback_using_subcommand export" -l at -d 'Only the newest restore point at or before TIME: "2026-11-20 03:00" (local time zone) or RFC 3339 with Z or an offset (2026-11-20T03:00:00Z)' -r
complete -c vmback -n "__fish_vmback_using_subcommand export" -s f -l format -d 'Output format' -r -f -a "raw\t'Raw, sparse'
qcow2\t'qcow2 v3 (QEMU/KVM)'
vmdk\t'VMDK (VMware): monolithicSparse (default) or streamOptimized'
vhd\t'VHD (Virtual PC, Hyper-V, Azure): dynamic (default) or fixed'
vhdx\t'VHDX (Hyper-V): dynamic (default) or fixed'"
complete -c vmback -n "__fish_vmback_using_subcommand export" -l subformat -d 'Variant of the format, as qemu-img\'s `-o subformat=` (vmdk: monolithicSparse, streamOptimized; vhd, vhdx: dynamic, fixed)' -r -f -a "dynamic\t'VHD / VHDX: blocks allocated as data is met (default)'
fixed\t'VHD / VHDX: every block present, the file as large as the disk'
monolithicSparse\t'VMDK: one sparse file, grains allocated as data is met (default)'
streamOptimized\t'VMDK: compressed grains in one stream, for OVF/OVA and vSphere import'"
complete -c vmback -n "__fish_vmback_using_subcommand export" -s o -l output -d 'Output file (a block device only with --format raw)' -r -F
complete -c vmback -n "__fish_vmback_using_subcommand export" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand export" -l align -d 'Round a fixed VHD up to a whole number of MiB (Azure and other cloud imports require it); the added tail reads as zeros'
complete -c vmback -n "__fish_vmback_using_subcommand export" -l force -l overwrite -d 'Replace an existing output file'
complete -c vmback -n "__fish_vmback_using_subcommand export" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand export" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vmback -n "__fish_vmback_using_subcommand init" -l chunk-size -d 'Bytes per chunk: a power of two from 64KiB to 64MiB. 256KiB keeps incrementals of scattered small writes small; larger chunks make fulls a little faster' -r
complete -c vmback -n "__fish_vmback_using_subcommand init" -l compression-level -d 'zstd level for chunks (1 fastest .. 22 smallest). Default: level 1 with its match finder tuned for chunks (hash log 16, min match 5), which stores about what level 3 stores in ~70% of its time' -r
complete -c vmback -n "__fish_vmback_using_subcommand init" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand init" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l vm -d 'The VM\'s name: restore points of one name form one history' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l uuid -d 'The VM\'s UUID (optional; checked against earlier restore points)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l host -d 'Host the VM runs on (metadata)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l datastore -d 'Datastore(s) the disks live on (metadata; repeatable)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l tag -d 'A tag for the restore point (repeatable)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l dirty-bitmap -d 'Track changes with the NBD dirty bitmap NAME ([diskN=]NAME; repeatable)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l changed-extents -d 'Track changes with a JSON list of changed extents ([diskN=]FILE; repeatable)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l pre-hook -d 'Command run before the capture (e.g. freeze the guest); failing aborts' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l post-hook -d 'Command run after the capture, always (also on failure, and when SIGINT, SIGTERM or SIGHUP stops the backup; a second signal exits at once)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l hook-timeout -d 'How long a hook may run before it is killed, e.g. 90s, 10m (bare numbers are seconds)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l limit-read -d 'Limit reads from the sources, e.g. 200MiB/s' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l full -d 'Read every disk completely (no change tracking; dedup still applies)'
complete -c vmback -n "__fish_vmback_using_subcommand backup" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand backup" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand run" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand run" -l dry-run -d 'Print the plan (order, slot, full or incremental per VM and why); back up nothing and write nothing to the repository (not even a lock)'
complete -c vmback -n "__fish_vmback_using_subcommand run" -l json -d 'Print the report (or the plan) as JSON'
complete -c vmback -n "__fish_vmback_using_subcommand run" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand snapshots" -l vm -d 'Only this VM\'s restore points' -r
complete -c vmback -n "__fish_vmback_using_subcommand snapshots" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand snapshots" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand snapshots" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l vm -d 'Only this VM\'s restore points' -r
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l keep-last -d 'Keep the N newest restore points' -r
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l keep-hourly -d 'Keep the newest restore point of each of the N most recent hours that have one' -r
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l keep-daily -d 'Keep the newest of each of the N most recent days' -r
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l keep-weekly -d 'Keep the newest of each of the N most recent ISO weeks' -r
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l keep-monthly -d 'Keep the newest of each of the N most recent months' -r
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l keep-yearly -d 'Keep the newest of each of the N most recent years' -r
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l allow-empty -d 'Allow a policy to remove a VM\'s last restore point'
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l dry-run -d 'Print the plan; remove nothing'
complete -c vmback -n "__fish_vmback_using_subcommand forget" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand forget" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand gc" -l grace -d 'Keep unreferenced objects younger than this before the oldest running backup (covers clock skew between hosts), e.g. 30m, 2h' -r
complete -c vmback -n "__fish_vmback_using_subcommand gc" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand gc" -l dry-run -d 'Report what would be removed; remove nothing'
complete -c vmback -n "__fish_vmback_using_subcommand gc" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand gc" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand unlock" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand unlock" -l all -d 'Remove every lock, also live ones'
complete -c vmback -n "__fish_vmback_using_subcommand unlock" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand verify" -l vm -d 'Only restore points of this VM (for `latest`, a name or --at)' -r
complete -c vmback -n "__fish_vmback_using_subcommand verify" -l at -d 'Only the newest restore point at or before TIME: "2026-11-20 03:00" (local time zone) or RFC 3339 with Z or an offset (2026-11-20T03:00:00Z)' -r
complete -c vmback -n "__fish_vmback_using_subcommand verify" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand verify" -l read-data -d 'Also read, decompress and re-hash every chunk'
complete -c vmback -n "__fish_vmback_using_subcommand verify" -l filesystems -d 'Also open every volume\'s filesystem and walk its directory tree (metadata only): proof that each restore point can give files back'
complete -c vmback -n "__fish_vmback_using_subcommand verify" -l json -d 'Print the result as JSON on standard output instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand verify" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand mount" -l vm -d 'Only this VM\'s restore points' -r
complete -c vmback -n "__fish_vmback_using_subcommand mount" -l snapshot -d 'Only this restore point (its name, an id prefix, or `latest`)' -r
complete -c vmback -n "__fish_vmback_using_subcommand mount" -l at -d 'Only the newest restore point at or before TIME: "2026-11-20 03:00" (local time zone) or RFC 3339 with Z or an offset (2026-11-20T03:00:00Z)' -r
complete -c vmback -n "__fish_vmback_using_subcommand mount" -l cache-size -d 'Memory for decompressed chunks, shared by all disks of the mount' -r
complete -c vmback -n "__fish_vmback_using_subcommand mount" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand mount" -l allow-other -d 'Let other users see the mount (the guest\'s owners and modes then apply)'
complete -c vmback -n "__fish_vmback_using_subcommand mount" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand umount" -l threads -d 'Worker threads for parallel work (default: one per core)' -r
complete -c vmback -n "__fish_vmback_using_subcommand umount" -l lazy -d 'Detach now even if files are still open there (lazy unmount)'
complete -c vmback -n "__fish_vmback_using_subcommand umount" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "inspect" -d 'Show what a disk image is: format, virtual size, every layer of its chain, and its partitions and filesystems (type, label, size, used and free space)'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "ls" -d 'List volumes, or a directory inside a guest filesystem of an image or of a restore point'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "cat" -d 'Write a file from a guest filesystem of an image or of a restore point to standard output'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "get" -d 'Copy files or directory trees out of a guest filesystem of an image or of a restore point'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "restore" -d 'Restore files, directory trees or whole disks from a restore point'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "export" -d 'Write the whole virtual disk of an image or of a restore point to a file'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "init" -d 'Create a repository'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "backup" -d 'Back up all disks of one VM into a new restore point'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "run" -d 'Back up many VMs from a job file: limits per host and per datastore, staggered fulls, retries, a report, retention'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "snapshots" -d 'List the restore points of a repository'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "forget" -d 'Apply a retention policy: remove restore points no rule keeps (per VM)'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "gc" -d 'Remove chunks and indexes no restore point references'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "unlock" -d 'List repository locks; remove stale ones (or all, with --all)'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "verify" -d 'Check a repository: every referenced chunk exists; with --read-data, every chunk decompresses and hashes to its name'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "mount" -d 'Mount restore points of a repository, or an image file, read-only (FUSE)'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "umount" -d 'Unmount a `vmback mount`'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get restore export init backup run snapshots forget gc unlock verify mount umount help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
