//! Container detection by content, never by file name. The caller passes the first
//! bytes of the file (at least [`PROBE_HEAD_BYTES`] when the file is that long) and the
//! last 512 bytes (the VHD footer of a fixed VHD lives only there).

/// How many bytes of the file head `probe` wants.
pub const PROBE_HEAD_BYTES: usize = 4096;

/// What a file looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probed {
    /// qcow2 ("QFI\xfb").
    Qcow2,
    /// VHDX ("vhdxfile" file type identifier at 0).
    Vhdx,
    /// VHD with a footer copy at 0 (dynamic or differencing).
    VhdDynamic,
    /// VHD with only the trailing footer (fixed).
    VhdFixed,
    /// VMDK hosted sparse extent ("KDMV") with or without an embedded descriptor.
    VmdkSparse,
    /// ESXi VMFSSPARSE / COWD extent ("COWD").
    VmdkCowd,
    /// VMDK text descriptor.
    VmdkDescriptor,
    /// Anything else is a raw disk.
    Raw,
}

/// Classifies a file from its head and its last 512 bytes (`tail` may be empty for
/// files shorter than 512 bytes).
pub fn probe(head: &[u8], tail: &[u8]) -> Probed {
    if head.starts_with(b"QFI\xfb") {
        Probed::Qcow2
    } else if head.starts_with(b"vhdxfile") {
        Probed::Vhdx
    } else if head.starts_with(b"conectix") {
        Probed::VhdDynamic
    } else if head.starts_with(b"KDMV") {
        Probed::VmdkSparse
    } else if head.starts_with(b"COWD") {
        Probed::VmdkCowd
    } else if looks_like_vmdk_descriptor(head) {
        Probed::VmdkDescriptor
    } else if tail.len() == 512 && tail.starts_with(b"conectix") {
        Probed::VhdFixed
    } else if tail.len() == 512 && tail[1..].starts_with(b"conectix") {
        // Old Virtual PC wrote a 511-byte footer.
        Probed::VhdFixed
    } else {
        Probed::Raw
    }
}

/// A VMDK descriptor is text that starts with the "# Disk DescriptorFile" comment or
/// at least has a `version=` line and a `createType=` line within its first block.
pub fn looks_like_vmdk_descriptor(head: &[u8]) -> bool {
    let text = &head[..head.len().min(PROBE_HEAD_BYTES)];
    if text.starts_with(b"# Disk DescriptorFile") {
        return true;
    }
    // A descriptor is plain text: reject anything with NUL before the first 512 bytes.
    let first = &text[..text.len().min(512)];
    if first.contains(&0) {
        return false;
    }
    let s = String::from_utf8_lossy(text);
    s.lines().any(|l| l.trim_start().starts_with("createType"))
        && s.lines().any(|l| l.trim_start().starts_with("version"))
}
