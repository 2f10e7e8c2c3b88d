"""Content for the backup benchmark (tests/bench/backup.rs): the guest files of the
day-0 disk, and the day-1 changes made through the mounted guest filesystems.

  backup_data.py tree ROOT FLAVOUR SEED TARGET_BYTES   a tree for mkntfs/mke2fs -d
  backup_data.py day1 SEED FLAVOUR=MOUNTPOINT ...      change 1-2% of the files

Both print a JSON summary. Everything is seeded: the same arguments give the same
bytes (filesystem metadata such as timestamps aside).
"""
import json, math, os, random, sys

# Content kinds: text-like (logs, documents, source: compresses ~3x), executable-like
# (4 KiB pages of random, strings, mostly-zero and table data: ~1.5x), random (media,
# archives: incompressible).
KIND = {}
for e in ".txt .log .xml .csv .html .json .ini .conf .md .c .h .py .inf .cat".split():
    KIND[e] = "text"
for e in ".jpg .png .mp4 .mkv .zip .gz .cab .msu .deb .xz .pdf".split():
    KIND[e] = "rand"


def kind_of(path):
    return KIND.get(os.path.splitext(path)[1], "bin")

_lines = None
def lines():
    global _lines
    if _lines is None:
        r = random.Random(7)
        syl = "ka to ri en sa mo lu pe ra ni vo de shi ar el un co ma ter ion".split()
        words = ["".join(r.choice(syl) for _ in range(r.randint(1, 4))) for _ in range(6000)]
        hosts = ["web%02d" % i for i in range(12)]
        svcs = "sshd cron kernel nginx postgres systemd app worker svchost lsass".split()
        _lines = [
            "%d %s %s[%d]: %s" % (r.randrange(1_700_000_000, 1_730_000_000), r.choice(hosts),
                                  r.choice(svcs), r.randint(100, 99999),
                                  " ".join(r.choices(words, k=r.randint(4, 14))))
            for _ in range(50000)
        ]
    return _lines

def gen_text(r, n):
    parts, size = [], 0
    pool = lines()
    while size < n:
        s = "\n".join(r.choices(pool, k=64)) + "\n"
        parts.append(s)
        size += len(s)
    return "".join(parts).encode()[:n]

def gen_bin(r, n):
    out = bytearray()
    while len(out) < n:
        k = r.random()
        if k < 0.4:
            out += r.randbytes(4096)
        elif k < 0.7:
            out += gen_text(r, 4096)
        elif k < 0.85:
            p = bytearray(4096)
            for _ in range(16):
                p[r.randrange(4096)] = r.randrange(256)
            out += p
        else:
            rec = r.randbytes(12)
            out += b"".join(rec + i.to_bytes(4, "little") for i in range(256))
    return bytes(out[:n])

def gen(kind, r, n):
    if kind == "text":
        return gen_text(r, n)
    if kind == "rand":
        return r.randbytes(n)
    return gen_bin(r, n)

def small_size(r):
    return int(min(16 << 20, max(300, r.lognormvariate(math.log(64 << 10), 1.5))))

# (weight, directory pattern, subdirectories, extensions)
PROFILES = {
    "ntfs": [
        (18, "Windows/System32/{s}", 12, [".dll", ".dll", ".exe", ".sys", ".ini", ".xml"]),
        (10, "Windows/WinSxS/amd64_pkg{s}", 60, [".dll", ".cat", ".xml"]),
        (14, "Program Files/App{s}", 20, [".dll", ".exe", ".xml", ".json", ".png"]),
        (16, "Users/alice/Documents/{s}", 15, [".txt", ".csv", ".html", ".pdf", ".xml"]),
        (10, "Users/alice/Pictures/{s}", 8, [".jpg", ".png"]),
        (12, "Users/alice/AppData/Local/App{s}/Cache", 10, [".db", ".json", ".jpg", ""]),
        (10, "ProgramData/App{s}/Logs", 8, [".log", ".txt"]),
        (10, "Windows/Installer/{s}", 6, [".cab", ".msu", ".exe"]),
    ],
    "ext4": [
        (22, "usr/lib/x86_64-linux-gnu/{s}", 10, [".so", ".so", ".a"]),
        (14, "usr/share/doc/pkg{s}", 80, [".txt", ".html", ".gz", ".md"]),
        (10, "usr/bin", 1, [""]),
        (12, "var/log/{s}", 6, [".log", ".gz"]),
        (12, "var/lib/svc{s}", 6, [".db", ".json"]),
        (14, "home/bob/photos/{s}", 10, [".jpg"]),
        (16, "home/bob/src/proj{s}", 12, [".c", ".h", ".py", ".o", ".md"]),
    ],
}

# Large files: (path, kind, MiB, seed). The installer has the same bytes on both
# partitions (a duplicate across filesystems).
LARGE = {
    "ntfs": [
        ("Users/alice/Documents/Outlook/alice.pst", "bin", 96, 11),
        ("ProgramData/AppDB/db/app.mdf", "bin", 64, 12),
        ("Users/alice/Downloads/setup-installer.exe", "rand", 40, 99),
        ("Users/alice/Videos/clip1.mp4", "rand", 48, 13),
        ("Users/alice/Videos/clip2.mp4", "rand", 48, 14),
        ("Windows/Logs/CBS/CBS.log", "text", 24, 15),
    ],
    "ext4": [
        ("var/lib/postgresql/base/16384/1259", "bin", 64, 21),
        ("home/bob/videos/talk.mkv", "rand", 96, 22),
        ("var/log/syslog", "text", 32, 23),
        ("home/bob/Downloads/setup-installer.exe", "rand", 40, 99),
        ("opt/app/lib/libbig.so", "bin", 32, 24),
    ],
}
# Day 1: the database rewritten page by page, the log appended to.
DB = {"ntfs": "Users/alice/Documents/Outlook/alice.pst", "ext4": "var/lib/postgresql/base/16384/1259"}
LOG = {"ntfs": "Windows/Logs/CBS/CBS.log", "ext4": "var/log/syslog"}

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

def pick_profile(r, flavour):
    profiles = PROFILES[flavour]
    w, pattern, subdirs, exts = r.choices(profiles, weights=[p[0] for p in profiles])[0]
    return pattern.format(s=r.randrange(subdirs)), r.choice(exts)


def tree(root, flavour, seed, target):
    """Writes the large files, then small files of every profile until TARGET bytes."""
    r = random.Random(seed)
    total, files = 0, []
    for path, kind, mib, s in LARGE[flavour]:
        write(os.path.join(root, path), gen(kind, random.Random(s), mib << 20))
        total += mib << 20
    syl = "win app core net sys io ui gfx db log cfg res".split()
    n = 0
    while total < target:
        d, ext = pick_profile(r, flavour)
        name = "%s%05d%s" % (r.choice(syl), n, ext)
        n += 1
        if files and r.random() < 0.06:
            # A duplicate: the same bytes under another name (same extension).
            src = r.choice(files)
            data = open(src, "rb").read()
            name = "%s%05d%s" % (r.choice(syl), n, os.path.splitext(src)[1])
        else:
            data = gen(KIND.get(ext, "bin"), r, small_size(r))
        p = os.path.join(root, d, name)
        write(p, data)
        files.append(p)
        total += len(data)
    print(json.dumps({"files": len(files) + len(LARGE[flavour]), "bytes": total}))


def day1(seed, mounts):
    """Changes 1-2% of the files of each mounted filesystem: appends, rewrites, 48
    database pages rewritten in place (+4 MiB appended), 2 MiB appended to a log, a
    few new files and a 16 MiB download."""
    summary = {}
    for arg in mounts:
        flavour, root = arg.split("=", 1)
        r = random.Random(seed + len(flavour))
        files = []
        for d, dirs, names in os.walk(root):
            dirs.sort()
            for nm in sorted(names):
                p = os.path.join(d, nm)
                if os.path.isfile(p) and not os.path.islink(p):
                    files.append(os.path.relpath(p, root))
        n = len(files)
        special = {DB[flavour], LOG[flavour]}
        k = round(n * 0.012)
        chosen = r.sample([f for f in files if f not in special], k)
        n_app = int(k * 0.55)
        written = 0
        for f in chosen[:n_app]:
            kind = kind_of(f)
            add = r.randint(1 << 10, 64 << 10) if kind == "text" else r.randint(4 << 10, 256 << 10)
            with open(os.path.join(root, f), "ab") as fh:
                fh.write(gen(kind, r, add))
            written += add
        for f in chosen[n_app:]:
            p = os.path.join(root, f)
            size = max(300, int(os.path.getsize(p) * r.uniform(0.8, 1.2)))
            with open(p, "wb") as fh:
                fh.write(gen(kind_of(f), r, size))
            written += size
        with open(os.path.join(root, DB[flavour]), "r+b") as fh:
            pages = os.fstat(fh.fileno()).st_size // 8192
            for _ in range(48):
                fh.seek(r.randrange(pages) * 8192)
                fh.write(gen_bin(r, 8192))
                written += 8192
            fh.seek(0, 2)
            fh.write(gen_bin(r, 4 << 20))
            written += 4 << 20
        with open(os.path.join(root, LOG[flavour]), "ab") as fh:
            fh.write(gen_text(r, 2 << 20))
            written += 2 << 20
        new = max(3, round(n * 0.003))
        for i in range(new):
            d, ext = pick_profile(r, flavour)
            data = gen(KIND.get(ext, "bin"), r, small_size(r))
            write(os.path.join(root, d, "new%04d%s" % (i, ext)), data)
            written += len(data)
        dl = "Users/alice/Downloads/update.msu" if flavour == "ntfs" else "var/cache/apt/archives/pkg.deb"
        write(os.path.join(root, dl), r.randbytes(16 << 20))
        written += 16 << 20
        new += 1
        changed = k + 2 + new
        summary[flavour] = {"files": n, "appended": n_app, "rewritten": k - n_app,
                            "database_pages": 48, "logs_appended": 1, "new": new,
                            "changed_files": changed, "changed_percent": round(100 * changed / n, 2),
                            "bytes_written": written}
    print(json.dumps(summary))


if __name__ == "__main__":
    if sys.argv[1] == "tree":
        tree(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif sys.argv[1] == "day1":
        day1(int(sys.argv[2]), sys.argv[3:])
    else:
        sys.exit("usage: backup_data.py tree ROOT FLAVOUR SEED BYTES | day1 SEED FLAVOUR=DIR...")
