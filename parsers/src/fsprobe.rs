//! Filesystem detection by signature (never by partition type byte, which guests
//! routinely get wrong): the first bytes of a volume in, a filesystem kind and label
//! out. Callers pass at least [`FS_PROBE_BYTES`] bytes when the volume is that large.

/// How many bytes from the start of a volume `probe_fs` looks at.
pub const FS_PROBE_BYTES: usize = 4096;

/// Filesystems and volume contents we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ntfs,
    Ext2,
    Ext3,
    Ext4,
    Fat12,
    Fat16,
    Fat32,
    ExFat,
    Xfs,
    LinuxSwap,
    LvmPv,
}

impl FsKind {
    /// Short name as `blkid` prints it.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ntfs => "ntfs",
            FsKind::Ext2 => "ext2",
            FsKind::Ext3 => "ext3",
            FsKind::Ext4 => "ext4",
            FsKind::Fat12 => "fat12",
            FsKind::Fat16 => "fat16",
            FsKind::Fat32 => "fat32",
            FsKind::ExFat => "exfat",
            FsKind::Xfs => "xfs",
            FsKind::LinuxSwap => "swap",
            FsKind::LvmPv => "LVM2_member",
        }
    }
}

/// What the signature scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSignature {
    pub kind: FsKind,
    /// Label where it sits in the first bytes (ext, FAT); NTFS keeps its label in
    /// the MFT, so it is filled in by the filesystem layer, not here.
    pub label: Option<String>,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn text(b: &[u8], at: usize, len: usize) -> Option<String> {
    let raw = b.get(at..at + len)?;
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]).trim_end().to_string();
    (!s.is_empty()).then_some(s)
}

/// Identifies the filesystem whose first bytes are `head`.
pub fn probe_fs(head: &[u8]) -> Option<FsSignature> {
    let boot_sig = head.get(510..512) == Some(&[0x55, 0xaa]);
    if head.get(3..11) == Some(b"NTFS    ") {
        return Some(FsSignature {
            kind: FsKind::Ntfs,
            label: None,
        });
    }
    if head.get(3..11) == Some(b"EXFAT   ") {
        return Some(FsSignature {
            kind: FsKind::ExFat,
            label: None,
        });
    }
    // ext2/3/4: superblock at 1024, s_magic at +0x38.
    if le16(head, 1024 + 0x38) == Some(0xef53) {
        let compat = le32(head, 1024 + 0x5c).unwrap_or(0);
        let incompat = le32(head, 1024 + 0x60).unwrap_or(0);
        let ro_compat = le32(head, 1024 + 0x64).unwrap_or(0);
        // ext4-only features: extents 0x40, 64bit 0x80, flex_bg 0x200, huge_file/dir_nlink/extra_isize in ro_compat.
        let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 || ro_compat & (0x8 | 0x20 | 0x40) != 0
        {
            FsKind::Ext4
        } else if compat & 0x4 != 0 {
            FsKind::Ext3
        } else {
            FsKind::Ext2
        };
        return Some(FsSignature {
            kind,
            label: text(head, 1024 + 0x78, 16),
        });
    }
    if boot_sig && head.get(82..90) == Some(b"FAT32   ") {
        return Some(FsSignature {
            kind: FsKind::Fat32,
            label: text(head, 71, 11).filter(|l| l != "NO NAME"),
        });
    }
    if boot_sig {
        match head.get(54..62) {
            Some(b"FAT12   ") => {
                return Some(FsSignature {
                    kind: FsKind::Fat12,
                    label: text(head, 43, 11).filter(|l| l != "NO NAME"),
                })
            }
            Some(b"FAT16   ") | Some(b"FAT     ") => {
                return Some(FsSignature {
                    kind: FsKind::Fat16,
                    label: text(head, 43, 11).filter(|l| l != "NO NAME"),
                })
            }
            _ => {}
        }
    }
    if head.get(0..4) == Some(b"XFSB") {
        return Some(FsSignature {
            kind: FsKind::Xfs,
            label: text(head, 108, 12),
        });
    }
    if head.get(512..520) == Some(b"LABELONE") {
        return Some(FsSignature {
            kind: FsKind::LvmPv,
            label: None,
        });
    }
    if head.get(4086..4096) == Some(b"SWAPSPACE2") {
        return Some(FsSignature {
            kind: FsKind::LinuxSwap,
            label: text(head, 1024 + 28, 16),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_variants_by_features() {
        let mut b = vec![0u8; 4096];
        b[1024 + 0x38..1024 + 0x3a].copy_from_slice(&0xef53u16.to_le_bytes());
        b[1024 + 0x78..1024 + 0x7c].copy_from_slice(b"root");
        assert_eq!(
            probe_fs(&b),
            Some(FsSignature {
                kind: FsKind::Ext2,
                label: Some("root".into())
            })
        );
        b[1024 + 0x5c] = 0x4;
        assert_eq!(probe_fs(&b).unwrap().kind, FsKind::Ext3);
        b[1024 + 0x60] = 0x40;
        assert_eq!(probe_fs(&b).unwrap().kind, FsKind::Ext4);
    }

    #[test]
    fn fat_and_ntfs() {
        let mut b = vec![0u8; 4096];
        b[510] = 0x55;
        b[511] = 0xaa;
        b[82..90].copy_from_slice(b"FAT32   ");
        b[71..82].copy_from_slice(b"ESP        ");
        assert_eq!(
            probe_fs(&b),
            Some(FsSignature {
                kind: FsKind::Fat32,
                label: Some("ESP".into())
            })
        );
        b[3..11].copy_from_slice(b"NTFS    ");
        assert_eq!(probe_fs(&b).unwrap().kind, FsKind::Ntfs);
    }

    #[test]
    fn short_or_empty_input_is_none() {
        assert_eq!(probe_fs(&[]), None);
        assert_eq!(probe_fs(&[0u8; 100]), None);
    }
}
