//! Unit tests of `jailing`: the `husk vmm` arguments of root's and user-namespace jails.

use super::*;

/// The jail's `husk vmm` arguments as strings.
fn arg_strings(jail: &VmmJail) -> Vec<String> {
    jail.args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}
use crate::sandbox::{Sandbox, SandboxImage};

fn disk(path: &str, read_only: bool) -> BlockConfig {
    BlockConfig {
        path: path.into(),
        read_only,
        id: None,
        root: false,
        rate_limiter: None,
    }
}

#[test]
fn a_callers_taps_are_held_by_name_and_a_card_on_a_new_tap_neither_held_nor_unjailing() {
    let named = |tap: Option<&str>| crate::devices::virtio::net::NetConfig {
        tap: tap.map(str::to_string),
        ..Default::default()
    };
    let builder =
        Sandbox::builder(SandboxImage::default(), "/srv/vmlinux".into()).net(named(Some("ctap0")));
    let ids_dir = tempfile::tempdir().unwrap();
    let jail = VmmJail {
        ids: Some(JailIds::allocate(ids_dir.path()).unwrap()),
        dir: PathBuf::from("/run/husk/jails/1"),
        binds: Vec::new(),
        held: Vec::new(),
        held_taps: held_taps(builder.config()),
        slot_tap: None,
    };
    let args = arg_strings(&jail);
    assert_eq!(args[args.len() - 2..], ["--hold-tap", "ctap0"]);
    // A card without a TAP name gets one made for the jail (`launch::JailTaps`): it is
    // not held, and the sandbox is jailed as it would be without it.
    let jailed = jails(builder.config());
    let new_tap = builder.net(named(None));
    assert_eq!(held_taps(new_tap.config()), ["ctap0"]);
    assert_eq!(jails(new_tap.config()), jailed);
}

#[test]
fn a_user_namespace_jail_asks_for_userns_and_has_no_uid_slot() {
    let jail = VmmJail {
        ids: None,
        dir: PathBuf::from("/run/user/1000/husk-jails-1000/7-0"),
        binds: vec![writable(Path::new("/run/user/1000/husk-x"))],
        held: Vec::new(),
        held_taps: Vec::new(),
        slot_tap: Some("huskj3".into()),
    };
    assert_eq!(
        arg_strings(&jail),
        [
            "--jail",
            "/run/user/1000/husk-jails-1000/7-0",
            "--userns",
            "--bind",
            "/run/user/1000/husk-x:rw"
        ]
    );
    assert_eq!(jail.uid(), None);
    assert!(jail.hand_over(Path::new("/nonexistent")).is_ok());
}

#[test]
fn the_supervisor_is_told_the_slots_tap_and_lock() {
    let ids_dir = tempfile::tempdir().unwrap();
    let ids = JailIds::allocate(ids_dir.path()).unwrap();
    let tap = slot_tap_name(ids.uid).unwrap();
    let lock = ids.lock_path.display().to_string();
    let jail = VmmJail {
        ids: Some(ids),
        dir: PathBuf::from("/run/husk/jails/1"),
        binds: Vec::new(),
        held: Vec::new(),
        held_taps: Vec::new(),
        slot_tap: Some(tap.clone()),
    };
    let args = arg_strings(&jail);
    assert!(tap.starts_with("huskj"), "{tap}");
    assert_eq!(
        args[args.len() - 4..],
        ["--slot-tap", &tap, "--slot-lock", &lock]
    );
}

#[test]
fn a_callers_disks_are_held_with_their_access_and_bound_read_only() {
    let builder = Sandbox::builder(SandboxImage::default(), "/srv/vmlinux".into())
        .disk(disk("/srv/data.img", false))
        .disk(disk("/srv/seed.img", true));
    let ids_dir = tempfile::tempdir().unwrap();
    let jail = VmmJail {
        ids: Some(JailIds::allocate(ids_dir.path()).unwrap()),
        dir: PathBuf::from("/run/husk/jails/1"),
        binds: builder
            .config()
            .disks
            .iter()
            .map(|d| read_only(&d.path))
            .collect(),
        held: held_disks(builder.config()),
        held_taps: Vec::new(),
        slot_tap: None,
    };
    let args = arg_strings(&jail);
    let tail = &args[args.len() - 8..];
    assert_eq!(
        tail,
        [
            "--bind",
            "/srv/data.img",
            "--bind",
            "/srv/seed.img",
            "--hold",
            "/srv/data.img:rw",
            "--hold",
            "/srv/seed.img"
        ]
    );
}
