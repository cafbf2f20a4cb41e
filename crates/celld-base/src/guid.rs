//! Cloud Foundry-shaped guids (8-4-4-4-12 lowercase hex): random ones for new
//! instances, tasks and epochs, and the formatting any derived id shares.

/// A random (version 4) UUID, as Cloud Foundry's guids are.
pub fn new_guid() -> String {
    let mut b = [0u8; 16];
    // getrandom(2) never returns short for 16 bytes once the pool is ready;
    // fall back to time and pid bits so a guid is always produced.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 16 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        b = (t ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    guid_shaped(&b)
}

/// Bytes as lowercase hex (digests, checksums, guids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first 16 bytes of `bytes` (fewer if shorter), guid-shaped.
pub fn guid_shaped(bytes: &[u8]) -> String {
    let h = hex(&bytes[..bytes.len().min(16)]);
    let part = |r: std::ops::Range<usize>| h.get(r).unwrap_or_default();
    format!("{}-{}-{}-{}-{}", part(0..8), part(8..12), part(12..16), part(16..20), part(20..32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_guids_are_version_4() {
        let g = new_guid();
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
        // RFC 4122's variant, as Locket owners and CF guids carry it.
        assert!(matches!(&g[19..20], "8" | "9" | "a" | "b"), "{g}");
        assert_ne!(new_guid(), g);
    }
}
