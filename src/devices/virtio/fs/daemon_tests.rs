//! The frontend against a real `virtiofsd` (no KVM needed): guest RAM on a memfd, the
//! queues built in it by hand, one FUSE_INIT request through the request queue, the
//! daemon's answer in the used ring and its call on the transport's irqfd itself.
//! Needs virtiofsd where husk finds it (`scripts/test` installs it).

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Fs, FsConfig};
use crate::devices::virtio::descriptor::test_util::{linked, queue, r, used, w};
use crate::devices::virtio::{feature, Interrupt, VirtioDevice, INT_VRING, VIRTIO_F_VERSION_1};
use crate::sandbox::virtiofsd::{Daemon, SANDBOX_ENV};
use crate::sandbox::Volume;

const FUSE_INIT: u32 = 26;
const REQUEST: u64 = 0x40000;
const REPLY: u64 = 0x41000;

/// fuse_in_header (40 bytes) and fuse_init_in (16 bytes) for protocol 7.31.
fn init_request() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&56u32.to_le_bytes());
    b.extend_from_slice(&FUSE_INIT.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // unique
    b.extend_from_slice(&[0u8; 24]); // nodeid, uid, gid, pid, extlen, padding
    for v in [7u32, 31, 0, 0] {
        b.extend_from_slice(&v.to_le_bytes()); // major, minor, readahead, flags
    }
    b
}

#[test]
fn fuse_init_goes_through_virtiofsd_and_its_call_raises_the_interrupt() {
    let shared = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    // No namespaces: this test may run in a container.
    std::env::set_var(SANDBOX_ENV, "none");
    let volume = Volume {
        host: shared.path().into(),
        guest: "/data".into(),
        read_only: false,
    };
    let daemon = Daemon::start(&volume, runtime.path(), 0).unwrap();
    let ram = crate::memory::create(
        crate::memory::MIN_MEMORY_MIB,
        crate::memory::Sharing::WithDaemons,
    )
    .unwrap();
    let mem = ram.memory.clone();
    let config = FsConfig {
        socket: daemon.socket().into(),
        tag: "t".into(),
    };
    let fs = Arc::new(Mutex::new(Fs::new(config).unwrap()));
    let (_hiprio_mock, hiprio) = queue(&mem, 0x10000, 16);
    let (mock, requests) = queue(&mem, 0x20000, 16);
    mem.write_slice(&init_request(), GuestAddress(REQUEST))
        .unwrap();
    mock.add_desc_chains(&linked(&[r(REQUEST, 56), w(REPLY, 80)], 0), 0)
        .unwrap();
    let kicks = [
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    ];
    let kick = kicks[1].try_clone().unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    {
        let mut fs = fs.lock().unwrap();
        fs.set_acked_features(feature(VIRTIO_F_VERSION_1));
        let [k0, k1] = kicks;
        fs.activate(mem.clone(), irq.clone(), vec![(hiprio, k0), (requests, k1)])
            .unwrap();
    }
    kick.write(1).unwrap();
    assert_eq!(irq.status() & INT_VRING, INT_VRING, "set for the daemon");
    // Bounded: the daemon answers in milliseconds; nothing here measures it.
    let mut signalled = false;
    for _ in 0..500 {
        signalled = irq.eventfd().read().is_ok();
        if signalled {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(runtime.path().join("virtiofsd-0.log")).unwrap_or_default();
    assert!(
        signalled,
        "the daemon signals the irqfd; virtiofsd log: {log}"
    );
    let (id, len) = used(&mock, 0);
    assert_eq!(id, 0);
    let error: i32 = mem.read_obj(GuestAddress(REPLY + 4)).unwrap();
    let major: u32 = mem.read_obj(GuestAddress(REPLY + 16)).unwrap();
    assert_eq!((error, major), (0, 7), "reply of {len} bytes");
}
