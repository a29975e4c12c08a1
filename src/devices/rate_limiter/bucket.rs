//! One token bucket, as pure arithmetic on a clock the caller reads (nanoseconds since
//! any fixed point), so it is tested without timers.
//!
//! `size` tokens refill linearly over `refill_time`: `size / refill_time` tokens per
//! unit of time, never more than `size` held. A `one_time_burst` is a second pool
//! spent before the bucket and never refilled. The bucket starts full.
//!
//! The budget is kept exactly, in *token-nanoseconds*: one token is `refill_ns` units,
//! and each nanosecond adds `size` units. Refilling, charging and the wait until the
//! budget is positive again are then integer operations without rounding, so a long
//! run moves exactly `size` tokens per `refill_time` after the first full bucket. With
//! a refill time of at most [`MAX_REFILL_MS`] a full bucket fits in an `i128`; past
//! that (never in a validated configuration) the arithmetic saturates.
//!
//! A charge may take the budget below zero (debt): a device checks
//! [`TokenBucket::blocked`] before it takes a request and charges the request's real
//! size afterwards, so the debt is at most one request, and it delays the next.

use std::time::Duration;

use super::config::BucketConfig;
#[cfg(doc)]
use super::config::RateLimiterConfig;
#[cfg(any(doc, test))]
use super::config::MAX_REFILL_MS;

/// Nanoseconds per millisecond (`refill_time` is in milliseconds).
const NS_PER_MS: i128 = 1_000_000;

/// A token bucket with its budget at some instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens a full bucket holds.
    size: u64,
    /// Nanoseconds to refill an empty bucket: also the units one token is worth.
    refill_ns: i128,
    /// The budget in token-nanoseconds, at most `full`; negative in debt.
    credit: i128,
    /// `size * refill_ns`: a full bucket.
    full: i128,
    /// What is left of the one-time burst.
    burst: u64,
    /// When `credit` was last brought up to date.
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ns`. `config` should limit, with a valid refill time (see
    /// [`RateLimiterConfig::validate`]); a zero is taken as 1 rather than divided by.
    pub fn new(config: &BucketConfig, now_ns: u64) -> Self {
        let size = config.size.max(1);
        let refill_ns = i128::from(config.refill_time.max(1)) * NS_PER_MS;
        let full = i128::from(size).saturating_mul(refill_ns);
        Self {
            size,
            refill_ns,
            credit: full,
            full,
            burst: config.one_time_burst.unwrap_or(0),
            last_ns: now_ns,
        }
    }

    /// Add what the time since the last update refilled, up to a full bucket. A clock
    /// that goes backwards adds nothing.
    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        let added = i128::from(elapsed).saturating_mul(i128::from(self.size));
        self.credit = self.credit.saturating_add(added).min(self.full);
    }

    /// Whether a request must wait: no burst left and no positive budget.
    pub fn blocked(&mut self, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.burst == 0 && self.credit <= 0
    }

    /// How long until the bucket lets a request through (zero when it does now).
    pub fn wait(&mut self, now_ns: u64) -> Duration {
        if !self.blocked(now_ns) {
            return Duration::ZERO;
        }
        // The first nanosecond at which credit + ns * size > 0.
        let ns = (-self.credit) / i128::from(self.size) + 1;
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Spend `tokens`: the one-time burst first, then the budget, which may go into
    /// debt.
    pub fn charge(&mut self, tokens: u64, now_ns: u64) {
        self.refill(now_ns);
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let rest = i128::from(tokens - from_burst).saturating_mul(self.refill_ns);
        self.credit = self.credit.saturating_sub(rest);
    }

    /// Whole tokens available now, burst included (negative in debt).
    pub fn tokens(&mut self, now_ns: u64) -> i128 {
        self.refill(now_ns);
        self.credit.div_euclid(self.refill_ns) + i128::from(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1_000_000;

    fn bucket(size: u64, refill_ms: u64, burst: Option<u64>) -> TokenBucket {
        let config = BucketConfig {
            size,
            one_time_burst: burst,
            refill_time: refill_ms,
        };
        TokenBucket::new(&config, 0)
    }

    #[test]
    fn a_new_bucket_is_full_and_open() {
        let mut b = bucket(1000, 100, None);
        assert_eq!(b.tokens(0), 1000);
        assert!(!b.blocked(0));
    }

    #[test]
    fn spending_the_whole_bucket_blocks_until_one_token_refilled() {
        let mut b = bucket(1000, 100, None);
        b.charge(1000, 0);
        assert!(b.blocked(0));
        // 1000 tokens per 100 ms: one token per 100 µs.
        assert_eq!(b.wait(0), Duration::from_nanos(1));
        assert!(!b.blocked(1));
        assert_eq!(b.tokens(100_000), 1);
    }

    #[test]
    fn debt_delays_the_next_request_by_its_size() {
        let mut b = bucket(1000, 100, None);
        b.charge(1500, 0);
        assert_eq!(b.tokens(0), -500);
        // 500 tokens of debt take 50 ms to repay, then one more nanosecond.
        assert_eq!(b.wait(0), Duration::from_nanos(50 * MS + 1));
        assert!(b.blocked(50 * MS));
        assert!(!b.blocked(50 * MS + 1));
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_never_refilled() {
        let mut b = bucket(100, 10, Some(1000));
        assert_eq!(b.tokens(0), 1100);
        b.charge(1050, 0);
        assert_eq!(b.tokens(0), 50);
        assert_eq!(b.tokens(3_600_000 * MS), 100);
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_size_after_a_long_idle() {
        let mut b = bucket(100, 10, None);
        b.charge(30, 0);
        assert_eq!(b.tokens(u64::MAX), 100);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut b = bucket(100, 10, None);
        b.charge(100, 50 * MS);
        assert_eq!(b.tokens(10 * MS), 0);
        assert!(b.blocked(10 * MS));
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        let mut b = bucket(u64::MAX, u64::MAX, Some(u64::MAX));
        b.charge(u64::MAX, u64::MAX);
        b.charge(u64::MAX, u64::MAX);
        // The second charge emptied the (saturated) bucket exactly: one nanosecond of
        // refill opens it again.
        assert_eq!(b.wait(u64::MAX), Duration::from_nanos(1));
    }

    #[test]
    fn the_largest_valid_bucket_counts_exactly() {
        let mut b = bucket(u64::MAX, MAX_REFILL_MS, None);
        b.charge(u64::MAX, 0);
        assert_eq!(b.tokens(0), 0);
        assert_eq!(b.tokens(MAX_REFILL_MS * MS / 2), i128::from(u64::MAX / 2));
        assert_eq!(b.tokens(MAX_REFILL_MS * MS), i128::from(u64::MAX));
    }

    /// A device that takes a request of `sizes[i]` tokens as soon as the bucket lets it
    /// (at the instant its timer would fire), for `rounds` requests; the bucket and the
    /// time the last one was taken.
    fn saturate(b: &mut TokenBucket, sizes: &[u64], rounds: usize) -> (u64, u64) {
        let (mut now, mut total) = (0u64, 0u64);
        for i in 0..rounds {
            now += u64::try_from(b.wait(now).as_nanos()).expect("small waits");
            b.charge(sizes[i % sizes.len()], now);
            total += sizes[i % sizes.len()];
        }
        (total, now)
    }

    proptest! {
        #[test]
        fn tokens_never_exceed_size_plus_burst(
            size in 1u64..1 << 30,
            refill_ms in 1u64..10_000,
            burst in proptest::option::of(0u64..1 << 30),
            steps in proptest::collection::vec((0u64..1 << 36, 0u64..1 << 31), 1..50),
        ) {
            let mut b = bucket(size, refill_ms, burst);
            let mut now = 0;
            for (dt, charge) in steps {
                now += dt;
                prop_assert!(b.tokens(now) <= i128::from(size) + i128::from(burst.unwrap_or(0)));
                if !b.blocked(now) {
                    b.charge(charge, now);
                }
            }
        }

        #[test]
        fn debt_is_at_most_one_request_and_is_paid_back(
            size in 1u64..1 << 20,
            refill_ms in 1u64..1000,
            sizes in proptest::collection::vec(1u64..1 << 20, 1..20),
        ) {
            let mut b = bucket(size, refill_ms, None);
            let max_request = i128::from(*sizes.iter().max().expect("one size at least"));
            let mut now = 0;
            for s in sizes {
                now += u64::try_from(b.wait(now).as_nanos()).expect("small waits");
                prop_assert!(!b.blocked(now));
                b.charge(s, now);
                prop_assert!(b.tokens(now) >= -max_request);
            }
            // Left alone for one refill time past the debt, the bucket is full again.
            let later = now + u64::try_from(b.wait(now).as_nanos()).expect("small") + refill_ms * MS;
            prop_assert_eq!(b.tokens(later), i128::from(size));
        }

        #[test]
        fn the_long_run_rate_is_size_per_refill_time(
            size in 1u64..1 << 24,
            refill_ms in 1u64..2000,
            sizes in proptest::collection::vec(1u64..1 << 16, 1..8),
        ) {
            let mut b = bucket(size, refill_ms, None);
            let (total, elapsed_ns) = saturate(&mut b, &sizes, 2000);
            let refilled = u128::from(elapsed_ns) * u128::from(size) / u128::from(refill_ms * MS);
            let max_request = u128::from(*sizes.iter().max().expect("one size"));
            // Never more than the refill in that time, the first full bucket and the
            // debt of one request...
            prop_assert!(u128::from(total) <= refilled + u128::from(size) + max_request);
            // ...and never less than the refill: the device was let through at the
            // first nanosecond the budget allowed.
            prop_assert!(u128::from(total) >= refilled);
        }
    }
}
