//! Byte sizes as Cloud Foundry prints them in logs and messages.

/// Sizes as Cloud Foundry's logs print them (`215B`, `1.2K`, `3.5M`).
pub fn byte_size(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (unit, suffix) in UNITS {
        if n >= unit {
            let v = format!("{:.1}", n as f64 / unit as f64);
            return format!("{}{suffix}", v.strip_suffix(".0").unwrap_or(&v));
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_cf() {
        assert_eq!(byte_size(215), "215B");
        assert_eq!(byte_size(1024), "1K");
        assert_eq!(byte_size(1229), "1.2K");
        assert_eq!(byte_size(3_670_016), "3.5M");
        assert_eq!(byte_size(0), "0B");
    }
}
