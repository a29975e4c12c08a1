//! The API's rate limiter fields as a client sends them: parsed, refused naming the
//! field and the value, and turned into the devices' configuration.

use super::*;
use crate::api::model::{BootSource, Drive, EntropyDevice, FullVmConfiguration, NetworkInterface};
use crate::api::parse;

/// A `PUT /drives/data` body with `limiter` as its `rate_limiter`.
fn drive_body(limiter: &str) -> String {
    format!(
        r#"{{"drive_id": "data", "path_on_host": "/proc/self/exe", "is_root_device": false,
            "is_read_only": true, "rate_limiter": {limiter}}}"#
    )
}

fn put_drive(limiter: &str) -> Result<(), ApiError> {
    let drive: Drive = parse(drive_body(limiter).as_bytes())?;
    Resources::default().put_drive("data", drive)
}

fn error(result: Result<(), ApiError>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn firecrackers_limiter_becomes_the_disks_buckets() {
    let drive: Drive = parse(
        drive_body(
            r#"{"bandwidth": {"size": 262144, "one_time_burst": 1048576, "refill_time": 125},
                "ops": {"size": 100, "refill_time": 1000}}"#,
        )
        .as_bytes(),
    )
    .unwrap();
    let config = optional_limiter("rate_limiter", drive.rate_limiter.as_ref()).unwrap();
    let expected = RateLimiterConfig {
        bandwidth: Some(BucketConfig {
            size: 262_144,
            one_time_burst: Some(1 << 20),
            refill_time: 125,
        }),
        ops: Some(BucketConfig {
            size: 100,
            one_time_burst: None,
            refill_time: 1000,
        }),
    };
    assert_eq!(config, Some(expected));
    assert_eq!(
        api_limiter(&expected).and_then(|l| l.bandwidth),
        drive.rate_limiter.and_then(|l| l.bandwidth)
    );
}

#[test]
fn an_unknown_field_in_a_bucket_is_refused_naming_it() {
    let e = error(put_drive(
        r#"{"bandwidth": {"size": 1, "refill_time": 1, "burst": 5}}"#,
    ));
    assert!(e.contains("unknown field `burst`"), "{e}");
}

#[test]
fn an_unknown_bucket_is_refused_naming_it() {
    let e = error(put_drive(r#"{"iops": {"size": 1, "refill_time": 1}}"#));
    assert!(e.contains("unknown field `iops`"), "{e}");
}

#[test]
fn a_negative_size_is_refused_naming_the_field_and_value() {
    let e = error(put_drive(
        r#"{"bandwidth": {"size": -1, "refill_time": 100}}"#,
    ));
    assert!(
        e.contains("size -1: a token bucket's size is a whole number, 0 or more"),
        "{e}"
    );
}

#[test]
fn a_refill_time_given_as_text_is_refused_naming_the_field_and_value() {
    let e = error(put_drive(r#"{"ops": {"size": 10, "refill_time": "100"}}"#));
    assert!(e.contains(r#"refill_time "100": a token bucket's"#), "{e}");
}

#[test]
fn a_fractional_burst_is_refused_naming_the_field_and_value() {
    let e = error(put_drive(
        r#"{"ops": {"size": 10, "refill_time": 100, "one_time_burst": 2.5}}"#,
    ));
    assert!(e.contains("one_time_burst 2.5: a token bucket's"), "{e}");
}

#[test]
fn a_zero_refill_time_on_a_drive_is_refused_with_the_whole_field_path() {
    let e = error(put_drive(
        r#"{"bandwidth": {"size": 4096, "refill_time": 0}}"#,
    ));
    assert_eq!(
        e,
        "rate_limiter.bandwidth.refill_time 0: a bucket refills over at least 1 ms \
         (a size of 0 disables it)"
    );
}

#[test]
fn a_refill_time_too_long_on_a_network_card_is_refused_with_the_whole_field_path() {
    let card: NetworkInterface = parse(
        br#"{"iface_id": "eth0", "host_dev_name": "tap0",
             "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 4294967296}}}"#,
    )
    .unwrap();
    let e = Resources::default().put_net("eth0", card).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tx_rate_limiter.ops.refill_time 4294967296: a bucket refills over at most \
         4294967295 ms"
    );
}

#[test]
fn a_zero_sized_bucket_is_accepted_and_shown_as_no_limit() {
    let drive: Drive = parse(
        drive_body(r#"{"bandwidth": {"size": 0, "refill_time": 0}, "ops": null}"#).as_bytes(),
    )
    .unwrap();
    let config = optional_limiter("rate_limiter", drive.rate_limiter.as_ref()).unwrap();
    assert_eq!(config.map(|c| c.limits()), Some(false));
    assert_eq!(config.and_then(|c| api_limiter(&c)), None);
}

#[test]
fn a_null_burst_is_no_burst() {
    let drive: Drive = parse(
        drive_body(r#"{"ops": {"size": 5, "refill_time": 10, "one_time_burst": null}}"#).as_bytes(),
    )
    .unwrap();
    let ops = drive.rate_limiter.and_then(|l| l.ops);
    assert_eq!(ops.map(|b| b.one_time_burst), Some(None));
}

/// A `PUT /entropy` body with `limiter` as its `rate_limiter`.
fn entropy(limiter: &str) -> EntropyDevice {
    parse(format!(r#"{{"rate_limiter": {limiter}}}"#).as_bytes()).unwrap()
}

#[test]
fn a_zero_refill_time_on_the_entropy_device_is_refused_with_the_whole_field_path() {
    let e = Resources::default()
        .set_entropy(entropy(r#"{"bandwidth": {"size": 64, "refill_time": 0}}"#))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "rate_limiter.bandwidth.refill_time 0: a bucket refills over at least 1 ms \
         (a size of 0 disables it)"
    );
}

#[test]
fn the_entropy_limiter_reaches_the_vms_configuration() {
    let mut r = Resources::default();
    r.set_boot(BootSource {
        kernel_image_path: "/proc/self/exe".into(),
        initrd_path: None,
        boot_args: None,
    })
    .unwrap();
    r.set_entropy(entropy(
        r#"{"bandwidth": {"size": 1024, "refill_time": 250}}"#,
    ))
    .unwrap();
    let bandwidth = r
        .vm_config()
        .unwrap()
        .rng_rate_limiter
        .and_then(|l| l.bandwidth);
    assert_eq!(
        bandwidth,
        Some(BucketConfig {
            size: 1024,
            one_time_burst: None,
            refill_time: 250,
        })
    );
}

#[test]
fn a_config_files_entropy_limiter_is_checked() {
    let full = FullVmConfiguration {
        entropy: Some(entropy(r#"{"ops": {"size": 1, "refill_time": 0}}"#)),
        ..FullVmConfiguration::default()
    };
    let e = Resources::from_file(full).unwrap_err();
    assert!(
        e.to_string().starts_with("rate_limiter.ops.refill_time 0"),
        "{e}"
    );
}
