//! The timer-driven limiter: when it blocks, arms, fires and opens again.

use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::*;

fn bytes_per(size: u64, refill_time: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: Some(BucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        }),
        ops: None,
    }
}

fn ops_per(size: u64, refill_time: u64) -> RateLimiterConfig {
    RateLimiterConfig {
        bandwidth: None,
        ops: bytes_per(size, refill_time).bandwidth,
    }
}

/// Whether the limiter's timer fires within a generous bound (an event, not a time).
fn timer_fires(limiter: &RateLimiter) -> bool {
    let epoll = Epoll::new().unwrap();
    let fd = limiter.timer().as_raw_fd();
    let ev = EpollEvent::new(EventSet::IN, 1);
    epoll.ctl(ControlOperation::Add, fd, ev).unwrap();
    let mut events = [EpollEvent::default(); 1];
    epoll.wait(30_000, &mut events).unwrap() == 1
}

#[test]
fn no_config_never_blocks() {
    let mut l = RateLimiter::new(None).unwrap();
    l.charge(u64::MAX);
    assert!(!l.blocked());
    assert_eq!(l.describe(), "unlimited");
}

#[test]
fn a_spent_bucket_blocks_and_its_timer_fires_then_it_opens() {
    let mut l = RateLimiter::new(Some(&bytes_per(1000, 1))).unwrap();
    assert!(!l.blocked());
    l.charge(1500);
    assert!(l.blocked());
    assert!(l.describe().contains("blocked"), "{}", l.describe());
    assert!(timer_fires(&l));
    l.on_timer();
    assert!(!l.blocked());
}

#[test]
fn an_ops_bucket_counts_requests_whatever_their_size() {
    let mut l = RateLimiter::new(Some(&ops_per(2, 60_000))).unwrap();
    l.charge(1 << 30);
    assert!(!l.blocked());
    // The second empties the bucket (a few nanoseconds of refill may keep it open),
    // the third takes it into debt.
    l.charge(0);
    l.charge(1);
    assert!(l.blocked());
}

#[test]
fn a_patch_with_a_full_bucket_opens_a_blocked_limiter_and_keeps_the_other_bucket() {
    let mut l = RateLimiter::new(Some(&RateLimiterConfig {
        bandwidth: bytes_per(1, 60_000).bandwidth,
        ops: ops_per(5, 1000).ops,
    }))
    .unwrap();
    l.charge(100);
    assert!(l.blocked());
    let new = l.update(&bytes_per(1 << 20, 100)).unwrap();
    assert!(!l.blocked());
    assert_eq!(new.ops, ops_per(5, 1000).ops);
    assert_eq!(new.bandwidth, bytes_per(1 << 20, 100).bandwidth);
}

#[test]
fn a_zero_sized_bucket_in_a_patch_removes_the_limit_and_opens_the_limiter() {
    let mut l = RateLimiter::new(Some(&bytes_per(1, 60_000))).unwrap();
    l.charge(100);
    assert!(l.blocked());
    let new = l.update(&bytes_per(0, 0)).unwrap();
    assert_eq!(new, RateLimiterConfig::default());
    assert!(!l.blocked());
    assert_eq!(l.describe(), "unlimited");
}

#[test]
fn a_zero_sized_bucket_at_creation_limits_nothing() {
    let mut l = RateLimiter::new(Some(&ops_per(0, 1000))).unwrap();
    l.charge(u64::MAX);
    l.charge(u64::MAX);
    assert!(!l.blocked());
    assert_eq!(l.config(), RateLimiterConfig::default());
}

#[test]
fn a_bad_patch_is_refused_and_changes_nothing() {
    let mut l = RateLimiter::new(Some(&bytes_per(10, 100))).unwrap();
    let e = l.update(&ops_per(5, 0)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ops.refill_time 0: a bucket refills over at least 1 ms (a size of 0 disables it)"
    );
    assert_eq!(l.config(), bytes_per(10, 100));
}

#[test]
fn a_bad_config_is_refused_at_creation() {
    let e = RateLimiter::new(Some(&bytes_per(10, MAX_REFILL_MS + 1))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bandwidth.refill_time 4294967296: a bucket refills over at most 4294967295 ms"
    );
}
