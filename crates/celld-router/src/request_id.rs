//! X-Vcap-Request-Id: a random (version 4) UUID per request, as gorouter's.
//! `celld_base::guid::new_guid` makes one getrandom(2) call and 17
//! allocations per id; at tens of thousands of requests a second the router
//! draws its randomness in blocks and writes the hex itself.

use std::cell::RefCell;

/// Ids per getrandom(2) call.
const BLOCK_IDS: usize = 64;

struct Pool {
    bytes: [u8; 16 * BLOCK_IDS],
    next: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; 16 * BLOCK_IDS], next: BLOCK_IDS }) };
}

/// A fresh version 4 UUID, lowercase, hyphenated.
pub(crate) fn new() -> String {
    let bytes = POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.next == BLOCK_IDS {
            // Short or failed reads (never for a ready pool): fall back to
            // celld-base's, which has its own fallback.
            if !fill(&mut p.bytes) {
                return None;
            }
            p.next = 0;
        }
        let i = p.next * 16;
        p.next += 1;
        p.bytes[i..i + 16].try_into().ok()
    });
    match bytes {
        Some(b) => shaped(b),
        None => celld_base::guid::new_guid(),
    }
}

fn fill(buf: &mut [u8]) -> bool {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    usize::try_from(n).is_ok_and(|n| n == buf.len())
}

fn shaped(mut b: [u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(char::from(HEX[usize::from(byte >> 4)]));
        s.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_v4_uuids_like_celld_bases() {
        let b = [0xab; 16];
        let mut expect = b;
        expect[6] = (expect[6] & 0x0f) | 0x40;
        expect[8] = (expect[8] & 0x3f) | 0x80;
        assert_eq!(shaped(b), celld_base::guid::guid_shaped(&expect));
        let ids: std::collections::HashSet<String> = (0..3 * BLOCK_IDS).map(|_| new()).collect();
        assert_eq!(ids.len(), 3 * BLOCK_IDS);
        for id in &ids {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
            assert!(parts[2].starts_with('4') && "89ab".contains(&parts[3][..1]), "{id}");
        }
    }
}
