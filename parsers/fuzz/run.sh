#!/usr/bin/env bash
# Runs every fuzz target of vmback-parsers for SECONDS each (default 60).
#
#   parsers/fuzz/run.sh [SECONDS]
#
# Installs cargo-fuzz when missing. RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the
# nightly-only sanitizer flags on a stable toolchain. Each target starts from its
# own corpus directory (parsers/fuzz/corpus/<target>, kept between runs, ignored
# by git), seeded with small images made by qemu-img when qemu-img is installed
# and with matching files of the conformance corpus (../shared/corpus) when present.
# Crashes land in parsers/fuzz/artifacts/<target>/; the script exits non-zero if
# any target found one.
set -euo pipefail

SECONDS_EACH=${1:-60}
FUZZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$FUZZ_DIR/../.." && pwd)
CORPUS_SHARED="$ROOT/../shared/corpus"
cd "$FUZZ_DIR/.."   # the parsers crate: cargo fuzz finds fuzz/ below it

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

# seed_fs TARGET DIR: small volumes made by the real tools (guest filesystem and
# partition-table targets). The guestfs target takes one leading byte that picks the
# adapter (0 ext4, 1 ntfs, 2 fat).
seed_fs() {
    local target=$1 dir=$2 tmp
    tmp=$(mktemp -d)
    truncate -s 1M "$tmp/ext4" "$tmp/fat" "$tmp/gpt"
    command -v mke2fs >/dev/null && mke2fs -q -F -t ext4 "$tmp/ext4" 2>/dev/null || true
    command -v mkfs.vfat >/dev/null && mkfs.vfat -F 12 "$tmp/fat" >/dev/null 2>&1 || true
    command -v sgdisk >/dev/null && sgdisk -n 1:34:1000 "$tmp/gpt" >/dev/null 2>&1 || true
    zstd -dc "$ROOT/fixtures/ntfs/sample.ntfs.zst" 2>/dev/null | head -c 1048576 >"$tmp/ntfs" || true
    case $target in
    guestfs)
        { printf '\000'; cat "$tmp/ext4"; } >"$dir/ext4"
        { printf '\001'; cat "$tmp/ntfs"; } >"$dir/ntfs"
        { printf '\002'; cat "$tmp/fat"; } >"$dir/fat"
        ;;
    *) cp "$tmp/ext4" "$tmp/fat" "$tmp/gpt" "$tmp/ntfs" "$dir/" ;;
    esac
    rm -rf "$tmp"
}

# seed_for TARGET DIR: puts a few small sample inputs for TARGET into DIR.
seed_for() {
    local target=$1 dir=$2
    case $target in
    guestfs | fs_superblocks | mbr_gpt)
        seed_fs "$target" "$dir"
        return
        ;;
    esac
    local fmts=()
    case $target in
    *qcow2*) fmts=(qcow2) ;;
    *vhdx*) fmts=(vhdx) ;;
    *vhd*) fmts=(vpc) ;;
    *vmdk*) fmts=(vmdk) ;;
    *) fmts=(qcow2 vhdx vpc vmdk) ;; # probe and other format-independent targets
    esac
    if command -v qemu-img >/dev/null; then
        local tmp
        tmp=$(mktemp -d)
        head -c 65536 /dev/urandom >"$tmp/src.raw"
        truncate -s 1M "$tmp/src.raw"
        for f in "${fmts[@]}"; do
            local opts=()
            [[ $f == vmdk ]] && opts=(-o subformat=streamOptimized)
            [[ $f == qcow2 ]] && opts=(-o cluster_size=4k)
            [[ $f == vhdx ]] && opts=(-o block_size=1M)
            if qemu-img convert -q -f raw -O "$f" "${opts[@]}" "$tmp/src.raw" "$tmp/seed.$f" 2>/dev/null; then
                # Headers and tables live in the first MiB; keep seeds small.
                head -c 1048576 "$tmp/seed.$f" >"$dir/qemu-$f"
            fi
        done
        rm -rf "$tmp"
    fi
    if [[ -d $CORPUS_SHARED ]]; then
        local pat=""
        case $target in
        *qcow2*) pat='*.qcow2' ;;
        *vhdx*) pat='*.vhdx*' ;;
        *vhd*) pat='*.vhd*' ;;
        *vmdk*) pat='*.vmdk*' ;;
        esac
        if [[ -n $pat ]]; then
            while IFS= read -r f; do
                local name
                name=$(basename "$f")
                case $f in
                *.zst) zstd -dc "$f" 2>/dev/null | head -c 1048576 >"$dir/corpus-${name%.zst}" || true ;;
                *.bz2) bzip2 -dc "$f" 2>/dev/null | head -c 1048576 >"$dir/corpus-${name%.bz2}" || true ;;
                *.gz) gzip -dc "$f" 2>/dev/null | head -c 1048576 >"$dir/corpus-${name%.gz}" || true ;;
                *) head -c 1048576 "$f" >"$dir/corpus-$name" ;;
                esac
            done < <(find "$CORPUS_SHARED" -name "$pat" -size -64M)
        fi
    fi
}

failed=()
for src in "$FUZZ_DIR"/fuzz_targets/*.rs; do
    t=$(basename "$src" .rs)
    corpus="$FUZZ_DIR/corpus/$t"
    if [[ ! -d $corpus ]]; then
        mkdir -p "$corpus"
        seed_for "$t" "$corpus"
    fi
    echo "=== fuzzing $t for ${SECONDS_EACH}s ($(find "$corpus" -type f | wc -l) corpus inputs)"
    if ! cargo fuzz run "$t" "$corpus" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -max_len=1048576; then
        failed+=("$t")
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz targets with findings: ${failed[*]} (see $FUZZ_DIR/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${SECONDS_EACH}s without findings"
