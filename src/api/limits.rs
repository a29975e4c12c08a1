//! The API's rate limiters (Firecracker's `rate_limiter`, `rx_rate_limiter` and
//! `tx_rate_limiter`): checked and turned into the devices' configuration, and the
//! `PATCH` requests that change them on a running VM.

use super::model::{PartialDrive, PartialNetworkInterface, RateLimiter, TokenBucket};
use super::resources::{drive_serial, Resources};
use super::ApiError;
use crate::devices::rate_limiter::{BucketConfig, LimiterKind, RateLimiterConfig};
use crate::vmm::{LimiterTarget, RunningVm, VmError};

fn bucket(b: &TokenBucket) -> BucketConfig {
    BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time: b.refill_time,
    }
}

fn api_bucket(b: &BucketConfig) -> TokenBucket {
    TokenBucket {
        size: b.size,
        one_time_burst: b.one_time_burst,
        refill_time: b.refill_time,
    }
}

/// A limiter of the API as husk's configuration, checked; `field` names it in errors
/// (`rate_limiter.bandwidth.refill_time 0: ...`). Buckets of size 0 stay in it: in a
/// change they remove a limit.
pub fn limiter_config(field: &str, l: &RateLimiter) -> Result<RateLimiterConfig, ApiError> {
    let config = RateLimiterConfig {
        bandwidth: l.bandwidth.as_ref().map(bucket),
        ops: l.ops.as_ref().map(bucket),
    };
    config
        .validate()
        .map_err(|e| ApiError::BadRequest(format!("{field}.{e}")))?;
    Ok(config)
}

/// [`limiter_config`] of a limiter that may be absent.
pub fn optional_limiter(
    field: &str,
    l: Option<&RateLimiter>,
) -> Result<Option<RateLimiterConfig>, ApiError> {
    l.map(|l| limiter_config(field, l)).transpose()
}

/// Limits in force as the API shows them; `None` when nothing limits.
pub fn api_limiter(config: &RateLimiterConfig) -> Option<RateLimiter> {
    let config = RateLimiterConfig::in_force(Some(config))?;
    Some(RateLimiter {
        bandwidth: config.bandwidth.as_ref().map(api_bucket),
        ops: config.ops.as_ref().map(api_bucket),
    })
}

/// What a refused change says: the client's mistakes are 400s, the VMM's 500s.
fn refused(e: VmError) -> ApiError {
    let message = crate::error_chain(&e);
    match e {
        VmError::NoDevice { .. } | VmError::RateLimiter { .. } => ApiError::BadRequest(message),
        _ => ApiError::Internal(message),
    }
}

/// `PATCH /drives/{id}` on a running VM: new limits for its requests, the only change
/// husk makes to a running drive. Without `rate_limiter` it only checks the drive.
pub fn patch_drive(
    vm: &mut RunningVm,
    resources: &mut Resources,
    id: &str,
    d: PartialDrive,
) -> Result<(), ApiError> {
    if d.drive_id != id {
        return Err(ApiError::BadRequest(format!(
            "drive_id {}: does not match the path's {id}",
            d.drive_id
        )));
    }
    if d.path_on_host.is_some() {
        return Err(ApiError::BadRequest(
            "path_on_host: changing a running drive's file is not supported; \
             snapshot the VM and load it with the new file"
                .into(),
        ));
    }
    let change = optional_limiter("rate_limiter", d.rate_limiter.as_ref())?.unwrap_or_default();
    let serial = drive_serial(id);
    let now = vm
        .update_rate_limiter(LimiterTarget::Disk(&serial), &change)
        .map_err(refused)?;
    if let Some(drive) = resources.drives.iter_mut().find(|o| o.drive_id == id) {
        drive.rate_limiter = api_limiter(&now);
    }
    Ok(())
}

/// `PATCH /network-interfaces/{id}` on a running VM: new limits for either direction.
/// Without either it only checks the interface.
pub fn patch_net(
    vm: &mut RunningVm,
    resources: &mut Resources,
    id: &str,
    n: PartialNetworkInterface,
) -> Result<(), ApiError> {
    if n.iface_id != id {
        return Err(ApiError::BadRequest(format!(
            "iface_id {}: does not match the path's {id}",
            n.iface_id
        )));
    }
    // Both checked before either is applied.
    let rx = optional_limiter("rx_rate_limiter", n.rx_rate_limiter.as_ref())?;
    let tx = optional_limiter("tx_rate_limiter", n.tx_rate_limiter.as_ref())?;
    // The receive side is asked even without a change: that checks the card.
    let rx_now = vm
        .update_rate_limiter(
            LimiterTarget::Net(id, LimiterKind::Receive),
            &rx.unwrap_or_default(),
        )
        .map_err(refused)?;
    let tx_now = match tx {
        Some(tx) => Some(
            vm.update_rate_limiter(LimiterTarget::Net(id, LimiterKind::Transmit), &tx)
                .map_err(refused)?,
        ),
        None => None,
    };
    if let Some(card) = resources.nets.iter_mut().find(|o| o.iface_id == id) {
        if rx.is_some() {
            card.rx_rate_limiter = api_limiter(&rx_now);
        }
        if let Some(now) = tx_now {
            card.tx_rate_limiter = api_limiter(&now);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
