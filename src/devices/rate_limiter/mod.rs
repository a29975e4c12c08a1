//! Rate limiters for the virtio devices (Firecracker's `rate_limiter` fields): a token
//! bucket for bytes and one for operations ([`bucket`]), configured as plain data
//! ([`config`]), and [`RateLimiter`], which a device consults on its event loop.
//!
//! How a device uses one ([`Throttle`]): before it takes a request or a frame it asks
//! [`Throttle::blocked`]; once it knows the request's real size it calls
//! [`Throttle::charge`] (its bytes, and one operation). A bucket may so go into debt by
//! one request, which delays the next. When the limiter says blocked it has armed its
//! `timerfd` for the moment enough tokens exist, and the device stops serving that
//! queue or direction, leaving the guest's buffers in the ring; the timer's event,
//! registered with the device's event-manager subscriber, brings the device back
//! ([`RateLimiter::on_timer`]). Nothing spins or sleeps.
//!
//! Only the event loop thread arms or reads the timer ([`timer`]): a change of limits
//! from the API ([`RateLimiter::update`]) replaces buckets and leaves the timer alone;
//! the device then wakes its queue through the queue's eventfd, and the loop looks
//! again. A device reset (on a vCPU thread) leaves the limiter as it is: the buckets
//! keep their budget, so a guest cannot earn tokens by resetting its device, and a
//! timer that fires for a queue that is gone finds nothing to serve.

mod bucket;
mod config;
mod timer;

use std::io;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

pub use bucket::TokenBucket;
pub use config::{BucketConfig, RateLimiterConfig, RateLimiterConfigError, MAX_REFILL_MS};
use timer::WakeTimer;

/// Errors making or changing a rate limiter.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// A bucket value that cannot work.
    #[error(transparent)]
    Config(#[from] RateLimiterConfigError),
    /// The timerfd could not be made.
    #[error("rate limiter timer")]
    Timer(#[source] io::Error),
    /// The device has no limiter of that kind.
    #[error("{device} has no {kind} rate limiter")]
    Unsupported {
        /// The device.
        device: &'static str,
        /// What was asked for.
        kind: LimiterKind,
    },
}

/// Which of a device's limiters a change is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimiterKind {
    /// A disk's requests.
    Disk,
    /// Frames to the guest.
    Receive,
    /// Frames from the guest.
    Transmit,
}

impl std::fmt::Display for LimiterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimiterKind::Disk => "disk",
            LimiterKind::Receive => "receive",
            LimiterKind::Transmit => "transmit",
        })
    }
}

/// What a device's queue processing asks before each request and tells after.
pub trait Throttle {
    /// Whether the device must stop taking requests for now. A limiter that says yes
    /// has arranged to wake the device when it may go on.
    fn blocked(&mut self) -> bool;
    /// A request of `bytes` was taken: charge them and one operation.
    fn charge(&mut self, bytes: u64);
}

/// No limit at all (devices without a limiter, tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct Unthrottled;

impl Throttle for Unthrottled {
    fn blocked(&mut self) -> bool {
        false
    }

    fn charge(&mut self, _bytes: u64) {}
}

/// A throttle for tests: lets `left` more requests through and records their charges.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Allow {
    /// Requests it still lets through.
    pub left: usize,
    /// The bytes each request was charged, in order.
    pub charged: Vec<u64>,
}

#[cfg(test)]
impl Throttle for Allow {
    fn blocked(&mut self) -> bool {
        self.left == 0
    }

    fn charge(&mut self, bytes: u64) {
        self.left = self.left.saturating_sub(1);
        self.charged.push(bytes);
    }
}

/// The bytes bucket and the operations bucket, each optional.
#[derive(Clone, Debug, Default)]
struct Buckets {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
}

impl Buckets {
    /// How long until both let a request through (zero: now).
    fn wait(&mut self, now: u64) -> Duration {
        let b = self
            .bandwidth
            .as_mut()
            .map_or(Duration::ZERO, |b| b.wait(now));
        let o = self.ops.as_mut().map_or(Duration::ZERO, |o| o.wait(now));
        b.max(o)
    }
}

/// Byte and operation buckets with the timer that wakes their device.
#[derive(Debug)]
pub struct RateLimiter {
    /// The limits in force (no bucket of size 0).
    config: RateLimiterConfig,
    buckets: Buckets,
    /// Registered with the device's subscriber even when nothing limits, so limits
    /// can be set on a running device.
    timer: WakeTimer,
    epoch: Instant,
}

impl RateLimiter {
    /// File descriptors a limiter holds: its timer.
    pub const FDS: usize = 1;

    /// A limiter with full buckets as `config` says (none: no limit).
    pub fn new(config: Option<&RateLimiterConfig>) -> Result<Self, RateLimiterError> {
        let config = config.copied().unwrap_or_default();
        config.validate()?;
        let mut limiter = Self {
            config: RateLimiterConfig::default(),
            buckets: Buckets::default(),
            timer: WakeTimer::new().map_err(RateLimiterError::Timer)?,
            epoch: Instant::now(),
        };
        limiter.replace(&config);
        Ok(limiter)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Put in a fresh, full bucket for each that `change` gives (none for one of size
    /// 0); keep the others.
    fn replace(&mut self, change: &RateLimiterConfig) {
        let now = self.now_ns();
        let fresh = |b: BucketConfig| b.limits().then(|| TokenBucket::new(&b, now));
        if let Some(b) = change.bandwidth {
            self.buckets.bandwidth = fresh(b);
        }
        if let Some(b) = change.ops {
            self.buckets.ops = fresh(b);
        }
        self.config = RateLimiterConfig::patched(Some(&self.config), change);
    }

    /// Change the limits of a running device: each bucket `change` gives is replaced by
    /// a full one (or removed, if of size 0); the rest stay. The limits then in force.
    pub fn update(
        &mut self,
        change: &RateLimiterConfig,
    ) -> Result<RateLimiterConfig, RateLimiterConfigError> {
        change.validate()?;
        self.replace(change);
        Ok(self.config)
    }

    /// The limits in force.
    pub fn config(&self) -> RateLimiterConfig {
        self.config
    }

    /// The timer, to register with the event loop (readable when it fired).
    pub fn timer(&self) -> &TimerFd {
        self.timer.fd()
    }

    /// The timer fired: take its event. The device then serves what waited.
    pub fn on_timer(&mut self) {
        self.timer.fired();
    }

    /// A line for a hang report: the limits and whether the device waits on them.
    pub fn describe(&self) -> String {
        if !self.config.limits() {
            return "unlimited".into();
        }
        let rate = |b: Option<BucketConfig>, unit: &str| {
            b.map(|b| format!("{:.0} {unit}/s", b.rate_per_sec()))
        };
        let limits: Vec<String> = [
            rate(self.config.bandwidth, "bytes"),
            rate(self.config.ops, "ops"),
        ]
        .into_iter()
        .flatten()
        .collect();
        // Looked at on copies: a report changes nothing.
        let state = match self.buckets.clone().wait(self.now_ns()) {
            Duration::ZERO => "open".to_string(),
            wait => format!("blocked for {wait:?} more"),
        };
        format!("{} ({state})", limits.join(", "))
    }
}

impl Throttle for RateLimiter {
    fn blocked(&mut self) -> bool {
        if !self.config.limits() {
            return false;
        }
        let now = self.now_ns();
        match self.buckets.wait(now) {
            Duration::ZERO => false,
            // A timer that cannot be armed would never wake the device: let it go on.
            wait => self.timer.wake_by(now, wait),
        }
    }

    fn charge(&mut self, bytes: u64) {
        let now = self.now_ns();
        if let Some(b) = self.buckets.bandwidth.as_mut() {
            b.charge(bytes, now);
        }
        if let Some(o) = self.buckets.ops.as_mut() {
            o.charge(1, now);
        }
    }
}

#[cfg(test)]
mod tests;
