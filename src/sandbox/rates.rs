//! Rate limits of a sandbox's devices as `husk run` and [`super::SandboxConfig`] give
//! them: a byte rate such as `10M/s` (`--disk-rate`, `--net-rate`), turned into the
//! token bucket of the device's limiter (`devices::rate_limiter`): one second's worth
//! of bytes, refilled over a second, so a device moves at most that many bytes in any
//! second after its first.

use std::fmt;
use std::str::FromStr;

use crate::devices::rate_limiter::{BucketConfig, RateLimiterConfig};

/// Milliseconds a bucket takes to refill: one second.
const REFILL_MS: u64 = 1000;

/// A rate in bytes per second (more than 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ByteRate(u64);

/// A rate that cannot be read; names the value given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate {value:?}: {why} (a number of bytes per second with an optional K, M or G, such as 10M/s)")]
pub struct RateError {
    /// What was given.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl ByteRate {
    /// `bytes` per second; `None` for 0.
    pub fn new(bytes: u64) -> Option<Self> {
        (bytes > 0).then_some(Self(bytes))
    }

    /// Bytes per second.
    pub fn bytes_per_sec(self) -> u64 {
        self.0
    }

    /// The limiter of a device held to this rate.
    pub fn limiter(self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: Some(BucketConfig {
                size: self.0,
                one_time_burst: None,
                refill_time: REFILL_MS,
            }),
            ops: None,
        }
    }
}

/// The limiter of a device held to `rate`, if any.
pub fn limiter(rate: Option<ByteRate>) -> Option<RateLimiterConfig> {
    rate.map(ByteRate::limiter)
}

impl FromStr for ByteRate {
    type Err = RateError;

    /// `N/s`, `NK/s`, `NM/s` or `NG/s` (powers of 1024; `KiB`, `MB`... also read as
    /// those, in any case).
    fn from_str(s: &str) -> Result<Self, RateError> {
        let bad = |why| RateError {
            value: s.into(),
            why,
        };
        let amount = s
            .trim()
            .strip_suffix("/s")
            .ok_or_else(|| bad("it must end in /s"))?;
        let upper = amount.to_ascii_uppercase();
        let unit = upper.trim_end_matches('B').trim_end_matches('I');
        let (digits, scale) = match unit.char_indices().last() {
            Some((i, 'K')) => (&unit[..i], 1u64 << 10),
            Some((i, 'M')) => (&unit[..i], 1 << 20),
            Some((i, 'G')) => (&unit[..i], 1 << 30),
            _ => (unit, 1),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("not a whole number of bytes"));
        }
        let n: u64 = digits.parse().map_err(|_| bad("too large"))?;
        let bytes = n.checked_mul(scale).ok_or_else(|| bad("too large"))?;
        Self::new(bytes).ok_or_else(|| bad("must be more than 0"))
    }
}

impl fmt::Display for ByteRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let units = [(1u64 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
        match units
            .iter()
            .find(|(scale, _)| self.0.is_multiple_of(*scale))
        {
            Some((scale, unit)) => write!(f, "{}{unit}/s", self.0 / scale),
            None => write!(f, "{}/s", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Result<u64, String> {
        s.parse::<ByteRate>()
            .map(ByteRate::bytes_per_sec)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn rates_read_bytes_with_binary_suffixes() {
        assert_eq!(rate("1000/s"), Ok(1000));
        assert_eq!(rate("512K/s"), Ok(512 << 10));
        assert_eq!(rate("10M/s"), Ok(10 << 20));
        assert_eq!(rate("10MiB/s"), Ok(10 << 20));
        assert_eq!(rate("2gb/s"), Ok(2 << 30));
    }

    #[test]
    fn a_rate_without_per_second_is_named() {
        assert_eq!(
            rate("10M").unwrap_err(),
            "rate \"10M\": it must end in /s (a number of bytes per second with an \
             optional K, M or G, such as 10M/s)"
        );
    }

    #[test]
    fn zero_fractions_junk_and_overflow_are_refused() {
        assert!(rate("0/s").unwrap_err().contains("must be more than 0"));
        assert!(rate("1.5M/s").unwrap_err().contains("not a whole number"));
        assert!(rate("M/s").unwrap_err().contains("not a whole number"));
        assert!(rate("10T/s").unwrap_err().contains("rate \"10T/s\""));
        assert!(rate("99999999999999G/s").unwrap_err().contains("too large"));
    }

    #[test]
    fn a_rate_is_a_one_second_bucket_of_its_bytes() {
        let limiter = "4M/s".parse::<ByteRate>().unwrap().limiter();
        let bucket = limiter.bandwidth.unwrap();
        assert_eq!((bucket.size, bucket.refill_time), (4 << 20, 1000));
        assert_eq!(limiter.ops, None);
        assert!(limiter.validate().is_ok());
    }

    #[test]
    fn a_rate_shows_in_its_largest_whole_unit() {
        assert_eq!("10240K/s".parse::<ByteRate>().unwrap().to_string(), "10M/s");
        assert_eq!("1000/s".parse::<ByteRate>().unwrap().to_string(), "1000/s");
    }
}
