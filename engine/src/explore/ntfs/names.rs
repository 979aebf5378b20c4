//! NTFS names and times as tessera shows them.

use crate::explore::Timestamp;

/// Bytes of a name stored as UTF-16 (little-endian `bytes`), as WTF-8: UTF-8, except that a
/// surrogate without its pair (Windows allows those in names) is written as the three bytes
/// UTF-8's scheme gives its code point (`ED A0 80`..`ED BF BF`). No valid UTF-8 holds those
/// bytes, so every NTFS name keeps a distinct byte string that resolves back to it, and the
/// listing shows it escaped (`--json` adds the hex) as it does an ext4 name that is not
/// UTF-8; nothing is replaced by U+FFFD, which would make two names one.
pub(super) fn wtf8(bytes: &[u8]) -> Vec<u8> {
    let units = bytes
        .chunks_exact(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]));
    let mut out = Vec::with_capacity(bytes.len() * 3 / 2);
    for unit in char::decode_utf16(units) {
        match unit {
            Ok(c) => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Err(e) => {
                let u = e.unpaired_surrogate();
                out.extend_from_slice(&[
                    0xe0 | (u >> 12) as u8,
                    0x80 | ((u >> 6) & 0x3f) as u8,
                    0x80 | (u & 0x3f) as u8,
                ]);
            }
        }
    }
    out
}

/// 100-nanosecond intervals from 1601-01-01 to 1970-01-01.
const UNIX_EPOCH_IN_NT: u64 = 116_444_736_000_000_000;

/// An NTFS time (100-ns intervals since 1601-01-01 UTC) as a Unix timestamp; times before
/// 1970 have negative seconds and nanoseconds counted forwards.
pub(super) fn nt_time(t: u64) -> Timestamp {
    let since = i128::from(t) - i128::from(UNIX_EPOCH_IN_NT);
    let secs = since.div_euclid(10_000_000);
    let rest = since.rem_euclid(10_000_000);
    Timestamp {
        // |secs| < 2^64 / 10^7 < 2^41: always fits.
        secs: secs as i64,
        // 0 <= rest < 10^7.
        nanos: u32::try_from(rest * 100).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(units: &[u16]) -> Vec<u8> {
        units.iter().flat_map(|u| u.to_le_bytes()).collect()
    }

    #[test]
    fn names_are_utf8_and_lone_surrogates_stay_distinct() {
        let name: Vec<u16> = "données été 日本".encode_utf16().collect();
        assert_eq!(wtf8(&le(&name)), "données été 日本".as_bytes());
        // A pair is one character; a lone high or low surrogate its own three bytes.
        assert_eq!(wtf8(&le(&[0xd83d, 0xde00])), "😀".as_bytes());
        assert_eq!(wtf8(&le(&[0x61, 0xd800])), [b'a', 0xed, 0xa0, 0x80]);
        assert_eq!(wtf8(&le(&[0xdfff])), [0xed, 0xbf, 0xbf]);
        assert_ne!(wtf8(&le(&[0xd800])), wtf8(&le(&[0xd801])));
    }

    #[test]
    fn nt_times_convert_on_both_sides_of_1970() {
        assert_eq!(nt_time(UNIX_EPOCH_IN_NT), Timestamp { secs: 0, nanos: 0 });
        assert_eq!(
            nt_time(UNIX_EPOCH_IN_NT + 15_000_000_123),
            Timestamp {
                secs: 1500,
                nanos: 12_300
            }
        );
        assert_eq!(
            nt_time(UNIX_EPOCH_IN_NT - 5),
            Timestamp {
                secs: -1,
                nanos: 999_999_500
            }
        );
        assert_eq!(nt_time(0).secs, -11_644_473_600);
        assert!(nt_time(u64::MAX).secs > 0);
    }
}
