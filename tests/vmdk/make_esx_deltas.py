#!/usr/bin/env python3
"""Hand-built ESXi VMDK deltas for tests/vmdk.rs (qemu-img cannot create these).

Writes into DIR (argv[1]):
  base.vmdk + base-flat.vmdk     monolithicFlat base, 4 MiB of seeded bytes, CID 12345678
  se.vmdk + se-sesparse.vmdk     seSparse delta over base (layout per QEMU block/vmdk.c;
                                 no real ESXi sample is available): allocated, zero,
                                 unmapped and unallocated grains, a grain index > 4095
  cowd.vmdk + cowd-delta.vmdk    vmfsSparse (COWD) delta over base, 512-byte grains,
                                 a second grain table left unallocated
  zero.vmdk                      monolithicFlat descriptor with a FLAT and a ZERO extent
  *.expected                     the virtual disk each descriptor must read as
"""
import os
import random
import struct
import sys

d = sys.argv[1]
SECTOR = 512
CAP = 8192  # sectors: 4 MiB
rng = random.Random(20240611)
base = bytearray(rng.randbytes(CAP * SECTOR))


def write(name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def descriptor(cid, parent_cid, create_type, extents, hint=None):
    lines = ["# Disk DescriptorFile", "version=1", f"CID={cid:08x}",
             f"parentCID={parent_cid:08x}", f'createType="{create_type}"']
    if hint:
        lines.append(f'parentFileNameHint="{hint}"')
    lines.append("# Extent description")
    lines += extents
    lines += ["", "# The Disk Data Base", "#DDB", 'ddb.adapterType = "lsilogic"']
    return ("\r\n".join(lines) + "\r\n").encode()


write("base-flat.vmdk", base)
write("base.vmdk", descriptor(0x12345678, 0xFFFFFFFF, "monolithicFlat",
                              [f'RW {CAP} FLAT "base-flat.vmdk" 0']))
write("base.expected", base)

# --- SESPARSE ---------------------------------------------------------------
GRAIN = 8 * SECTOR
gts = (CAP + 8 * 4096 - 1) // (8 * 4096)
gd_size = -(-(gts * 8) // SECTOR)
gd_size = -(-gd_size // 2048) * 2048
gt_size = -(-(gts * 64) // 2048) * 2048
gd_off, gt_off = 4096, 4096 + gd_size
bitmap_off = gt_off + gt_size
backmap_off = bitmap_off + 2048
grains_off = backmap_off + 2048
const = [0xCAFEBABE, 0x200000001, CAP, 8, 64, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2048, 2048,
         gd_off, gd_size, gt_off, gt_size, bitmap_off, 2048, backmap_off, 2048,
         grains_off, 8192]
img = bytearray(grains_off * SECTOR + 4100 * GRAIN)
img[0:len(const) * 8] = struct.pack("<26Q", *const)
img[SECTOR:SECTOR + 8] = struct.pack("<Q", 0xCAFECAFE)
img[gd_off * SECTOR:gd_off * SECTOR + 8] = struct.pack("<Q", 0x1000000000000000 | 0)


def allocated(index):
    return (3 << 60) | ((index & 0xFFF) << 48) | (index >> 12)


expected = bytearray(base)
entries = {0: ("data", 5), 1: ("zero", 2), 2: ("zero", 1), 4: ("data", 0),
           10: ("data", 4097), 1023: ("data", 1)}
for grain, (kind, arg) in entries.items():
    at = gt_off * SECTOR + grain * 8
    span = slice(grain * GRAIN, (grain + 1) * GRAIN)
    if kind == "zero":
        img[at:at + 8] = struct.pack("<Q", arg << 60)
        expected[span] = bytes(GRAIN)
    else:
        img[at:at + 8] = struct.pack("<Q", allocated(arg))
        payload = bytes([(grain * 7 + 1) & 0xFF]) * GRAIN
        where = grains_off * SECTOR + arg * GRAIN
        img[where:where + GRAIN] = payload
        expected[span] = payload
write("se-sesparse.vmdk", img)
write("se.vmdk", descriptor(0x0BADCAFE, 0x12345678, "seSparse",
                            [f'RW {CAP} SESPARSE "se-sesparse.vmdk"'], hint="base.vmdk"))
write("se.expected", expected)

# --- COWD (VMFSSPARSE) ------------------------------------------------------
gte = 4096
n_gd = -(-CAP // gte)  # 512-byte grains: 2 grain tables
gd_at, gt0_at = 4, 8
data_at = gt0_at + gte * 4 // SECTOR
hdr = struct.pack("<4s7I", b"COWD", 1, 3, CAP, 1, gd_at, n_gd, data_at + 3)
img = bytearray(hdr.ljust(2048, b"\0"))
img = img.ljust((data_at + 3) * SECTOR, b"\0")
img[gd_at * SECTOR:gd_at * SECTOR + 8] = struct.pack("<2I", gt0_at, 0)
expected = bytearray(base)
for i, grain in enumerate([0, 7, 4095]):
    img[gt0_at * SECTOR + grain * 4:gt0_at * SECTOR + grain * 4 + 4] = struct.pack("<I", data_at + i)
    payload = bytes([0xC0 + i]) * SECTOR
    img[(data_at + i) * SECTOR:(data_at + i + 1) * SECTOR] = payload
    expected[grain * SECTOR:(grain + 1) * SECTOR] = payload
write("cowd-delta.vmdk", img)
write("cowd.vmdk", descriptor(0x0C0DC0D0, 0x12345678, "vmfsSparse",
                              [f'RW {CAP} VMFSSPARSE "cowd-delta.vmdk"'], hint="base.vmdk"))
write("cowd.expected", expected)

# --- FLAT + ZERO extents ----------------------------------------------------
write("zero.vmdk", descriptor(0x2E50, 0xFFFFFFFF, "monolithicFlat",
                              ['RW 4000 FLAT "base-flat.vmdk" 100', "RW 192 ZERO"]))
write("zero.expected", bytes(base[100 * SECTOR:4100 * SECTOR]) + bytes(192 * SECTOR))
