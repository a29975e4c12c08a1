//! What a rate limiter is made of, as plain data (Firecracker's `rate_limiter` shape):
//! a bucket for bytes and one for operations, each optional. Kept in a device's
//! configuration, and so in a snapshot's `VmConfig` (postcard: no skipped fields).
//!
//! As in Firecracker, a bucket of `size` 0 limits nothing: in a change (an API `PATCH`)
//! it removes the device's bucket of that kind, and a configuration in force never
//! holds one ([`RateLimiterConfig::patched`] drops it).

use serde::{Deserialize, Serialize};

/// The longest refill time accepted, in milliseconds (49.7 days): with it a bucket's
/// exact arithmetic (tokens × nanoseconds, see `bucket`) fits in an `i128`.
pub const MAX_REFILL_MS: u64 = u32::MAX as u64;

/// One bucket: `size` tokens refilled over `refill_time` milliseconds, plus an optional
/// first burst spent once. `size` 0: no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens a full bucket holds (bytes or operations); 0 disables the bucket.
    pub size: u64,
    /// Tokens available once, before the bucket, never refilled.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill an empty bucket: 1 to [`MAX_REFILL_MS`] (any, when `size`
    /// is 0).
    pub refill_time: u64,
}

/// A device's limits: bytes (`bandwidth`) and requests or frames (`ops`). A missing
/// bucket does not limit (in a change: is left as it was).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default)]
    pub bandwidth: Option<BucketConfig>,
    /// Requests (blk, rng) or frames (net).
    #[serde(default)]
    pub ops: Option<BucketConfig>,
}

/// A bucket value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value}: {why}")]
pub struct RateLimiterConfigError {
    /// The field, as a path from the limiter (`bandwidth.refill_time`).
    pub field: &'static str,
    /// The refused value.
    pub value: u64,
    /// What it must be.
    pub why: &'static str,
}

/// The two buckets, for field names in errors.
#[derive(Clone, Copy)]
enum Bucket {
    Bandwidth,
    Ops,
}

impl BucketConfig {
    /// Whether this bucket limits anything (Firecracker: a 0-sized bucket does not).
    pub fn limits(&self) -> bool {
        self.size > 0
    }

    /// Check the refill time of a bucket that limits.
    fn validate(&self, bucket: Bucket) -> Result<(), RateLimiterConfigError> {
        if !self.limits() {
            return Ok(());
        }
        let field = match bucket {
            Bucket::Bandwidth => "bandwidth.refill_time",
            Bucket::Ops => "ops.refill_time",
        };
        let why = if self.refill_time == 0 {
            "a bucket refills over at least 1 ms (a size of 0 disables it)"
        } else if self.refill_time > MAX_REFILL_MS {
            "a bucket refills over at most 4294967295 ms"
        } else {
            return Ok(());
        };
        Err(RateLimiterConfigError {
            field,
            value: self.refill_time,
            why,
        })
    }

    /// Tokens per second this bucket lets through in the long run.
    pub fn rate_per_sec(&self) -> f64 {
        self.size as f64 * 1000.0 / self.refill_time.max(1) as f64
    }
}

impl RateLimiterConfig {
    /// Check every bucket given.
    pub fn validate(&self) -> Result<(), RateLimiterConfigError> {
        if let Some(b) = &self.bandwidth {
            b.validate(Bucket::Bandwidth)?;
        }
        if let Some(b) = &self.ops {
            b.validate(Bucket::Ops)?;
        }
        Ok(())
    }

    /// Whether any bucket limits.
    pub fn limits(&self) -> bool {
        self.bandwidth.is_some_and(|b| b.limits()) || self.ops.is_some_and(|b| b.limits())
    }

    /// `old` with the buckets `change` gives put in (a PATCH: a bucket not given stays
    /// as it was, one of size 0 goes). Buckets of size 0 in `old` go too.
    pub fn patched(old: Option<&Self>, change: &Self) -> Self {
        let old = old.copied().unwrap_or_default();
        let pick = |new: Option<BucketConfig>, old: Option<BucketConfig>| {
            new.or(old).filter(BucketConfig::limits)
        };
        Self {
            bandwidth: pick(change.bandwidth, old.bandwidth),
            ops: pick(change.ops, old.ops),
        }
    }

    /// This configuration as a device keeps it: without buckets that limit nothing,
    /// and `None` when nothing is left.
    pub fn in_force(config: Option<&Self>) -> Option<Self> {
        let config = Self::patched(None, &config.copied().unwrap_or_default());
        Some(config).filter(Self::limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, refill_time: u64) -> BucketConfig {
        BucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        }
    }

    #[test]
    fn a_zero_refill_time_is_refused_naming_the_bucket_and_value() {
        let c = RateLimiterConfig {
            bandwidth: Some(bucket(1, 100)),
            ops: Some(bucket(10, 0)),
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "ops.refill_time 0: a bucket refills over at least 1 ms (a size of 0 disables it)"
        );
    }

    #[test]
    fn a_refill_time_past_the_maximum_is_refused_naming_the_value() {
        let c = RateLimiterConfig {
            bandwidth: Some(bucket(1, MAX_REFILL_MS + 1)),
            ops: None,
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "bandwidth.refill_time 4294967296: a bucket refills over at most 4294967295 ms"
        );
    }

    #[test]
    fn a_zero_sized_bucket_is_valid_whatever_its_refill_time_and_limits_nothing() {
        let c = RateLimiterConfig {
            bandwidth: Some(bucket(0, 0)),
            ops: None,
        };
        assert_eq!(c.validate(), Ok(()));
        assert!(!c.limits());
        assert_eq!(RateLimiterConfig::in_force(Some(&c)), None);
    }

    #[test]
    fn firecrackers_json_shape_parses_and_unknown_fields_are_refused() {
        let c: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth": {"size": 1048576, "one_time_burst": 0, "refill_time": 125}}"#,
        )
        .unwrap();
        assert_eq!(c.bandwidth.map(|b| b.rate_per_sec()), Some(8_388_608.0));
        assert_eq!(c.ops, None);
        let e = serde_json::from_str::<RateLimiterConfig>(r#"{"iops": {}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `iops`"), "{e}");
    }

    #[test]
    fn a_config_survives_postcard() {
        let c = RateLimiterConfig {
            bandwidth: None,
            ops: Some(BucketConfig {
                size: 20,
                one_time_burst: Some(5),
                refill_time: 100,
            }),
        };
        let bytes = postcard::to_stdvec(&c).unwrap();
        assert_eq!(
            postcard::from_bytes::<RateLimiterConfig>(&bytes).unwrap(),
            c
        );
    }

    #[test]
    fn a_patch_replaces_only_the_buckets_it_gives() {
        let old = RateLimiterConfig {
            bandwidth: Some(bucket(1, 1)),
            ops: Some(bucket(2, 2)),
        };
        let change = RateLimiterConfig {
            bandwidth: Some(bucket(3, 3)),
            ops: None,
        };
        let new = RateLimiterConfig::patched(Some(&old), &change);
        assert_eq!(new.bandwidth, Some(bucket(3, 3)));
        assert_eq!(new.ops, Some(bucket(2, 2)));
    }

    #[test]
    fn a_patch_with_a_zero_sized_bucket_removes_that_bucket_only() {
        let old = RateLimiterConfig {
            bandwidth: Some(bucket(1, 1)),
            ops: Some(bucket(2, 2)),
        };
        let change = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(0, 0)),
        };
        let new = RateLimiterConfig::patched(Some(&old), &change);
        assert_eq!(new.bandwidth, Some(bucket(1, 1)));
        assert_eq!(new.ops, None);
    }
}
