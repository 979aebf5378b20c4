//! The units operators write sizes, shares and samples in: one parser for the command line
//! and the job files (SPEC.md §26.1), so `64K` or `5%` means the same everywhere.

use crate::error::{Error, Result};
use crate::ops::check::SampleSize;

/// Parses a share: `10%`, `0.1`, or a number above 1 read as percent. Must lie in 0..=100 %.
pub fn parse_fraction(s: &str) -> Result<f64> {
    let t = s.trim();
    let v: f64 = t
        .trim_end_matches('%')
        .parse()
        .map_err(|_| Error::Usage(format!("{s:?} is not a percentage (e.g. 10%)")))?;
    let f = if t.ends_with('%') || v > 1.0 {
        v / 100.0
    } else {
        v
    };
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(Error::Usage(format!("{s:?} is outside 0%..100%")))
    }
}

/// Parses sizes like `65536`, `64K`, `64KiB`, `1M`, `1MiB`, `8G` (binary units).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| Error::Usage(format!("{s:?} is not a size (examples: 64K, 1M)")))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(Error::Usage(format!(
                "{s:?} has an unknown unit (use K, M or G)"
            )))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| Error::Usage(format!("{s:?} is too large")))
}

/// Parses a verify sample: a share (`5%`, `0.05`) or an amount of stored data (`10GiB`).
pub fn parse_sample(s: &str) -> Result<SampleSize> {
    let t = s.trim();
    let looks_like_share = t.ends_with('%') || (t.contains('.') && t.parse::<f64>().is_ok());
    if looks_like_share {
        let f = parse_fraction(t)?;
        if f <= 0.0 {
            return Err(Error::Usage(format!(
                "sample {s:?} would read nothing; give a share above 0%"
            )));
        }
        return Ok(SampleSize::Share(f));
    }
    match parse_size(t) {
        Ok(0) => Err(Error::Usage(format!(
            "sample {s:?} would read nothing; give a size above 0"
        ))),
        Ok(n) => Ok(SampleSize::Bytes(n)),
        Err(_) => Err(Error::Usage(format!(
            "sample {s:?} is neither a share of the objects (e.g. 5%) nor an amount of stored data (e.g. 10GiB)"
        ))),
    }
}

/// `17 B`, `1.50 KiB`, `300.00 MiB`: a byte count as the CLI and the dashboard print it
/// (binary units, two decimals).
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_shares_and_samples_parse_and_bad_ones_are_usage_errors() {
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert!((parse_fraction("5%").unwrap() - 0.05).abs() < 1e-12);
        assert_eq!(parse_sample("5%").unwrap(), SampleSize::Share(0.05));
        assert_eq!(parse_sample("10G").unwrap(), SampleSize::Bytes(10 << 30));
        for bad in ["", "5X", "0", "0%", "-1", "101%"] {
            assert!(parse_sample(bad).is_err(), "{bad}");
        }
        assert!(parse_size("99999999999999G").is_err());
    }
}
