//! Byte sizes as Cloud Foundry prints them in logs and messages, and as its
//! manifests write them (`256M`, `1G`).

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

/// Why a manifest's byte size was refused; the words are Cloud Controller's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    /// No unit, or one CF does not know.
    Units,
    /// The number part is not a whole number.
    NonNumeric,
}

impl std::fmt::Display for SizeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Units => "must use a supported unit: B, K, KB, M, MB, G, GB, T, or TB",
            Self::NonNumeric => "is not a number",
        })
    }
}

/// A size as CF manifests write it (`512M`, `1G`, `1024K`, case-insensitive)
/// in whole megabytes, rounded down as Cloud Controller's byte converter does.
pub fn parse_cf_size_mb(s: &str) -> Result<u64, SizeError> {
    let upper = s.trim().to_ascii_uppercase();
    let digits_end = upper.find(|c: char| !c.is_ascii_digit() && c != '.' && c != '-').unwrap_or(upper.len());
    let (number, unit) = upper.split_at(digits_end);
    let bytes_per: u64 = match unit.trim() {
        "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        "T" | "TB" => 1 << 40,
        _ => return Err(SizeError::Units),
    };
    let n: u64 = number.parse().map_err(|_| SizeError::NonNumeric)?;
    n.checked_mul(bytes_per).map(|b| b >> 20).ok_or(SizeError::NonNumeric)
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

    #[test]
    fn manifest_sizes_like_cc() {
        assert_eq!(parse_cf_size_mb("256M"), Ok(256));
        assert_eq!(parse_cf_size_mb("1g"), Ok(1024));
        assert_eq!(parse_cf_size_mb("1GB"), Ok(1024));
        assert_eq!(parse_cf_size_mb("2048K"), Ok(2));
        assert_eq!(parse_cf_size_mb("1T"), Ok(1 << 20));
        assert_eq!(parse_cf_size_mb("256"), Err(SizeError::Units));
        assert_eq!(parse_cf_size_mb("200INVALID"), Err(SizeError::Units));
        assert_eq!(parse_cf_size_mb("1.5G"), Err(SizeError::NonNumeric));
        assert_eq!(parse_cf_size_mb("-1M"), Err(SizeError::NonNumeric));
        assert_eq!(parse_cf_size_mb("M"), Err(SizeError::NonNumeric));
    }
}
