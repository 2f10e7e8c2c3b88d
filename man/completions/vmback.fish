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

complete -c vmback -n "__fish_vmback_needs_command" -l threads -d 'Worker threads for parallel work (default: all cores)' -r
complete -c vmback -n "__fish_vmback_needs_command" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_needs_command" -s V -l version -d 'Print version'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "inspect" -d 'Show what a disk image is: format, virtual size, every layer of its chain, and its partitions and filesystems (type, label, size, used and free space)'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "ls" -d 'List volumes, or a directory inside a guest filesystem of an image'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "cat" -d 'Write a file from a guest filesystem of an image to standard output'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "get" -d 'Copy files or directory trees out of a guest filesystem of an image'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "export" -d 'Write the whole virtual disk of an image to a file'
complete -c vmback -n "__fish_vmback_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c vmback -n "__fish_vmback_using_subcommand inspect" -l threads -d 'Worker threads for parallel work (default: all cores)' -r
complete -c vmback -n "__fish_vmback_using_subcommand inspect" -l json -d 'Print JSON instead of text'
complete -c vmback -n "__fish_vmback_using_subcommand inspect" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand ls" -l threads -d 'Worker threads for parallel work (default: all cores)' -r
complete -c vmback -n "__fish_vmback_using_subcommand ls" -s l -l long -d 'Long format: type and mode, links, owner, size, modification time'
complete -c vmback -n "__fish_vmback_using_subcommand ls" -l json -d 'Print JSON'
complete -c vmback -n "__fish_vmback_using_subcommand ls" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand cat" -l threads -d 'Worker threads for parallel work (default: all cores)' -r
complete -c vmback -n "__fish_vmback_using_subcommand cat" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand get" -s t -l target -d 'Directory to restore into (created if missing)' -r -F
complete -c vmback -n "__fish_vmback_using_subcommand get" -l threads -d 'Worker threads for parallel work (default: all cores)' -r
complete -c vmback -n "__fish_vmback_using_subcommand get" -l owner -d 'Also restore owner uid/gid (needs root)'
complete -c vmback -n "__fish_vmback_using_subcommand get" -l json -d 'Print a JSON report'
complete -c vmback -n "__fish_vmback_using_subcommand get" -s h -l help -d 'Print help'
complete -c vmback -n "__fish_vmback_using_subcommand export" -s f -l format -d 'Output format' -r -f -a "raw\t'Raw, sparse'"
complete -c vmback -n "__fish_vmback_using_subcommand export" -s o -l output -d 'Output file (or block device)' -r -F
complete -c vmback -n "__fish_vmback_using_subcommand export" -l threads -d 'Worker threads for parallel work (default: all cores)' -r
complete -c vmback -n "__fish_vmback_using_subcommand export" -l force -d 'Replace an existing output file'
complete -c vmback -n "__fish_vmback_using_subcommand export" -l json -d 'Print a JSON summary'
complete -c vmback -n "__fish_vmback_using_subcommand export" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get export help" -f -a "inspect" -d 'Show what a disk image is: format, virtual size, every layer of its chain, and its partitions and filesystems (type, label, size, used and free space)'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get export help" -f -a "ls" -d 'List volumes, or a directory inside a guest filesystem of an image'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get export help" -f -a "cat" -d 'Write a file from a guest filesystem of an image to standard output'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get export help" -f -a "get" -d 'Copy files or directory trees out of a guest filesystem of an image'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get export help" -f -a "export" -d 'Write the whole virtual disk of an image to a file'
complete -c vmback -n "__fish_vmback_using_subcommand help; and not __fish_seen_subcommand_from inspect ls cat get export help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
