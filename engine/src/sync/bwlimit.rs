//! A token bucket on transferred bytes (`--bwlimit`): at most `rate` bytes per second on
//! average, with a burst of one second's worth.

use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket refilled at `rate` bytes per second (at least 1).
    pub fn new(rate: u64) -> Self {
        let rate = rate.max(1) as f64;
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// Takes `bytes` tokens, sleeping until the bucket has refilled enough.
    pub fn take(&mut self, bytes: u64) {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        self.tokens -= bytes as f64;
        if self.tokens < 0.0 {
            std::thread::sleep(Duration::from_secs_f64(-self.tokens / self.rate));
        }
    }
}

#[expect(clippy::cast_sign_loss, reason = "the value is checked to be positive")]
/// Parses `50M`, `1.5G`, `800K`, `1000` (bytes per second; binary multiples).
pub fn parse_rate(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&t[..i], 1 << 20),
        (i, 'G' | 'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let value: f64 = num.parse().ok()?;
    (value.is_finite() && value > 0.0).then_some((value * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("50M"), Some(50 << 20));
        assert_eq!(parse_rate("1000"), Some(1000));
        assert_eq!(parse_rate("2k"), Some(2048));
        assert_eq!(parse_rate("x"), None);
        assert_eq!(parse_rate("-1M"), None);
    }

    #[test]
    fn bucket_limits_rate() {
        let mut b = TokenBucket::new(1 << 20);
        let start = Instant::now();
        for _ in 0..3 {
            b.take(1 << 20);
        }
        // One second of burst, then two more seconds' worth.
        assert!(start.elapsed() >= Duration::from_millis(1900));
    }
}
