//! Telling zip, tar and gzipped tar apart by their first bytes, never by the
//! name: packages come from users, and the daemon checks uploads with this too.

use super::error::ArchiveError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    Tar,
    TarGz,
}

/// Tells the format from the first bytes: zip local/end/spanning signatures,
/// the gzip magic, or a tar header (the `ustar` magic, a valid header
/// checksum, or an all-zero end-of-archive block).
pub fn sniff(head: &[u8]) -> Result<Format, ArchiveError> {
    if head.is_empty() {
        return Err(ArchiveError::Empty);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") || head.starts_with(b"PK\x07\x08") {
        return Ok(Format::Zip);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Format::TarGz);
    }
    if let Some(block) = head.get(..512) {
        if block.get(257..262) == Some(b"ustar") || block.iter().all(|&b| b == 0) || tar_checksum_ok(block) {
            return Ok(Format::Tar);
        }
    }
    Err(ArchiveError::UnknownFormat)
}

/// A v7 tar header has no magic; its checksum (bytes 148..156, octal) is the
/// sum of the header's bytes with that field read as spaces.
fn tar_checksum_ok(block: &[u8]) -> bool {
    let Some(field) = block.get(148..156) else { return false };
    let digits: Vec<u8> = field.iter().copied().skip_while(|&b| b == b' ').take_while(|b| b.is_ascii_digit()).collect();
    let Some(want) = std::str::from_utf8(&digits).ok().and_then(|s| u32::from_str_radix(s, 8).ok()) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { u32::from(b' ') } else { u32::from(b) })
        .sum();
    !digits.is_empty() && sum == want
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::RawTar;

    #[test]
    fn lifecycle_archive_sniffs_formats_by_magic() {
        assert!(matches!(sniff(b""), Err(ArchiveError::Empty)));
        assert_eq!(sniff(b"PK\x03\x04rest").unwrap(), Format::Zip);
        assert_eq!(sniff(b"PK\x05\x06").unwrap(), Format::Zip);
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]).unwrap(), Format::TarGz);
        assert_eq!(sniff(&RawTar::default().file("a", b"x", 0o644).finish()).unwrap(), Format::Tar);
        assert_eq!(sniff(&[0u8; 1024]).unwrap(), Format::Tar);
        // A v7 header: no "ustar", but a valid checksum.
        let mut v7 = RawTar::default().file("a", b"x", 0o644).finish();
        v7[257..265].fill(0);
        let sum: u32 =
            v7[..512].iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
        v7[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(sniff(&v7).unwrap(), Format::Tar);
        assert!(matches!(sniff(b"hello world, not an archive"), Err(ArchiveError::UnknownFormat)));
        assert!(matches!(sniff(&[7u8; 600]), Err(ArchiveError::UnknownFormat)));
    }
}
