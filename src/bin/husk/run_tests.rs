//! `husk run`'s argument parsing: volumes and rates.

use clap::Parser;

use crate::{Cli, Command};

fn run_args(args: &[&str]) -> Result<super::RunArgs, clap::Error> {
    let argv = ["husk", "run"].iter().chain(args).copied();
    match Cli::try_parse_from(argv)?.command {
        Command::Run(args) => Ok(*args),
        _ => panic!("not a run command"),
    }
}

#[test]
fn repeated_v_options_give_volumes_in_order() {
    let args = run_args(&["-v", "/a:/x", "--volume", "/b:/y:ro", "busybox"]).unwrap();
    let got: Vec<_> = args
        .volumes
        .iter()
        .map(|v| (v.host.display().to_string(), v.guest.as_str(), v.read_only))
        .collect();
    assert_eq!(got, [("/a".into(), "/x", false), ("/b".into(), "/y", true)]);
}

#[test]
fn a_bad_volume_mode_is_a_usage_error_naming_it() {
    let err = run_args(&["-v", "/a:/x:rx", "busybox"]).err().unwrap();
    assert!(
        err.to_string().contains(r#"mode "rx" is not ro or rw"#),
        "{err}"
    );
}

#[test]
fn a_relative_guest_path_is_a_usage_error() {
    let err = run_args(&["-v", "/a:x", "busybox"]).err().unwrap();
    assert!(err.to_string().contains("must be absolute"), "{err}");
}

#[test]
fn v_after_the_image_belongs_to_the_command() {
    let args = run_args(&["busybox", "ls", "-v", "/a:/x"]).unwrap();
    assert!(args.volumes.is_empty());
}

#[test]
fn rates_parse_into_bytes_per_second() {
    let args = run_args(&[
        "--disk-rate",
        "10M/s",
        "--net",
        "link",
        "--net-rate",
        "512K/s",
        "busybox",
    ])
    .unwrap();
    let bytes = |r: Option<husk::sandbox::ByteRate>| r.map(|r| r.bytes_per_sec());
    assert_eq!(bytes(args.disk_rate), Some(10 << 20));
    assert_eq!(bytes(args.net_rate), Some(512 << 10));
    assert!(args.network().is_ok());
}

#[test]
fn a_bad_rate_is_a_usage_error_naming_the_value() {
    let err = run_args(&["--disk-rate", "10M", "busybox"]).err().unwrap();
    let err = err.to_string();
    assert!(err.contains(r#"rate "10M": it must end in /s"#), "{err}");
    assert!(err.contains("--disk-rate"), "{err}");
}

#[test]
fn a_net_rate_without_a_network_is_refused() {
    let args = run_args(&["--net-rate", "1M/s", "busybox"]).unwrap();
    assert_eq!(
        args.network().err().as_deref(),
        Some("--net-rate needs a network: --net link or --net nat")
    );
}

#[test]
fn net_vhost_needs_a_network_and_takes_no_rate() {
    let args = run_args(&["--net-vhost", "busybox"]).unwrap();
    assert_eq!(
        args.network().err().as_deref(),
        Some("--net-vhost needs a network: --net link or --net nat")
    );
    let args = run_args(&[
        "--net",
        "link",
        "--net-vhost",
        "--net-rate",
        "1M/s",
        "busybox",
    ]);
    let err = args.unwrap().network().unwrap_err();
    assert!(err.contains("takes no --net-rate"), "{err}");
    let args = run_args(&["--net", "link", "--net-vhost", "busybox"]).unwrap();
    assert!(args.net_vhost);
    assert_eq!(args.network(), Ok((true, None)));
}
