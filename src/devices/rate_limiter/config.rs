//! What a rate limiter is made of, as plain data (Firecracker's `rate_limiter` shape):
//! a bucket for bytes and one for operations, each optional. Kept in a device's
//! configuration, and so in a snapshot's `VmConfig` (postcard: no skipped fields).

use serde::{Deserialize, Serialize};

/// One bucket: `size` tokens refilled over `refill_time` milliseconds, plus an optional
/// first burst spent once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens a full bucket holds (bytes or operations); at least 1.
    pub size: u64,
    /// Tokens available once, before the bucket, never refilled.
    #[serde(default)]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill an empty bucket; at least 1.
    pub refill_time: u64,
}

/// A device's limits: bytes (`bandwidth`) and requests or frames (`ops`). A missing
/// bucket does not limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes.
    #[serde(default)]
    pub bandwidth: Option<BucketConfig>,
    /// Requests (blk) or frames (net).
    #[serde(default)]
    pub ops: Option<BucketConfig>,
}

/// A bucket value that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value}: {why}")]
pub struct RateLimiterConfigError {
    /// The field, as a path from the limiter (`bandwidth.size`).
    pub field: &'static str,
    /// The refused value.
    pub value: u64,
    /// What it must be.
    pub why: &'static str,
}

impl BucketConfig {
    /// Check size and refill time; `name` is the bucket's field (`bandwidth`, `ops`).
    fn validate(&self, name: Bucket) -> Result<(), RateLimiterConfigError> {
        if self.size == 0 {
            return Err(RateLimiterConfigError {
                field: name.field("size"),
                value: 0,
                why: "a bucket holds at least one token",
            });
        }
        if self.refill_time == 0 {
            return Err(RateLimiterConfigError {
                field: name.field("refill_time"),
                value: 0,
                why: "a bucket refills over at least 1 ms",
            });
        }
        Ok(())
    }

    /// Tokens per second this bucket lets through in the long run.
    pub fn rate_per_sec(&self) -> f64 {
        self.size as f64 * 1000.0 / self.refill_time.max(1) as f64
    }
}

/// The two buckets, for field names in errors.
#[derive(Clone, Copy)]
enum Bucket {
    Bandwidth,
    Ops,
}

impl Bucket {
    fn field(self, leaf: &'static str) -> &'static str {
        match (self, leaf) {
            (Bucket::Bandwidth, "size") => "bandwidth.size",
            (Bucket::Bandwidth, _) => "bandwidth.refill_time",
            (Bucket::Ops, "size") => "ops.size",
            (Bucket::Ops, _) => "ops.refill_time",
        }
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
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// `old` with the buckets `change` gives replaced (a PATCH: a bucket not given
    /// stays as it was).
    pub fn patched(old: Option<&Self>, change: &Self) -> Self {
        let old = old.copied().unwrap_or_default();
        Self {
            bandwidth: change.bandwidth.or(old.bandwidth),
            ops: change.ops.or(old.ops),
        }
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
    fn a_zero_size_is_refused_naming_the_bucket_and_value() {
        let c = RateLimiterConfig {
            bandwidth: Some(bucket(0, 100)),
            ops: None,
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "bandwidth.size 0: a bucket holds at least one token"
        );
    }

    #[test]
    fn a_zero_refill_time_is_refused_naming_the_bucket_and_value() {
        let c = RateLimiterConfig {
            bandwidth: Some(bucket(1, 100)),
            ops: Some(bucket(10, 0)),
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "ops.refill_time 0: a bucket refills over at least 1 ms"
        );
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
}
