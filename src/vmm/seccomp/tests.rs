//! The filters at work, each in a forked child (a kill must not end the test binary).
#![allow(
    unsafe_code,
    reason = "the tests fork a child to be killed and wait for it"
)]

use seccompiler::SeccompAction;

use super::lists::{process_rules, thread_rules};
use super::*;

const FORBIDDEN: &[libc::c_long] = &[
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_ptrace,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_chroot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_kexec_load,
    libc::SYS_bpf,
    libc::SYS_process_vm_writev,
    libc::SYS_setuid,
    libc::SYS_keyctl,
];

#[test]
fn every_list_compiles_to_a_filter() {
    let programs = [
        compile(
            "process",
            process_rules(false),
            SeccompAction::KillProcess,
            SeccompAction::Allow,
        ),
        compile(
            "vcpu",
            thread_rules(ThreadKind::Vcpu, false),
            SeccompAction::KillProcess,
            SeccompAction::Allow,
        ),
        compile(
            "devices",
            thread_rules(ThreadKind::Devices, false),
            SeccompAction::KillProcess,
            SeccompAction::Allow,
        ),
    ];
    for program in programs {
        assert!(!program.unwrap().is_empty());
    }
}

#[test]
fn no_list_allows_running_a_program_or_changing_the_process() {
    let lists = [
        process_rules(false),
        thread_rules(ThreadKind::Vcpu, false),
        thread_rules(ThreadKind::Devices, false),
    ];
    for (i, r) in lists.iter().enumerate() {
        for forbidden in FORBIDDEN {
            assert!(
                !r.contains_key(forbidden),
                "list {i} allows syscall {forbidden}"
            );
        }
    }
    // The threads that serve the guest open no files and make no threads.
    for kind in [ThreadKind::Vcpu, ThreadKind::Devices] {
        let r = thread_rules(kind, true);
        for call in [
            libc::SYS_openat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_bind,
            libc::SYS_unlinkat,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_register,
        ] {
            assert!(!r.contains_key(&call), "{kind:?} allows syscall {call}");
        }
    }
}

/// Run `body` in a forked child with the process filter and `thread`'s (if any)
/// installed in `Kill` mode; the child's wait status.
fn in_filtered_child(thread: Option<ThreadKind>, body: fn() -> i32) -> i32 {
    in_child(thread, false, body)
}

/// `in_filtered_child` in a process started for vhost-net (`vhost`) or not.
fn in_child(thread: Option<ThreadKind>, vhost: bool, body: fn() -> i32) -> i32 {
    // SAFETY: fork in a test; the child installs filters, runs `body` and leaves with
    // _exit, touching no lock another thread of the parent may hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        set_mode(Mode::Kill);
        set_vhost_net(vhost);
        let code = match apply_process().and_then(|()| thread.map_or(Ok(()), apply)) {
            Ok(()) => body(),
            Err(_) => 90,
        };
        // SAFETY: leaving the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child, with a valid status pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    status
}

fn killed_by_sigsys(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

#[test]
fn executing_a_program_kills_the_process() {
    let status = in_filtered_child(None, || {
        let path = c"/bin/true";
        let argv = [path.as_ptr(), std::ptr::null()];
        // SAFETY: NUL-terminated strings and a NULL-terminated argv.
        unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
        4
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn making_a_process_kills_it_but_threads_still_start() {
    let status = in_filtered_child(None, || {
        // Threads go through clone3 (refused with ENOSYS) and then clone.
        let thread = std::thread::spawn(|| 7).join();
        if thread.ok() != Some(7) {
            return 5;
        }
        // SAFETY: fork; the child (if the filter let it be) leaves at once.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        6
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn a_network_socket_kills_but_a_unix_one_is_allowed() {
    let status = in_filtered_child(None, || {
        if std::os::unix::net::UnixDatagram::unbound().is_err() {
            return 5;
        }
        // SAFETY: socket takes plain integers.
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        6
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn a_vcpu_thread_may_not_open_files() {
    let ok = in_filtered_child(Some(ThreadKind::Vcpu), || {
        // Its own work: eventfds, writes, time.
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK);
        match evt.and_then(|e| e.write(1)) {
            Ok(()) => 0,
            Err(_) => 5,
        }
    });
    assert!(
        libc::WIFEXITED(ok) && libc::WEXITSTATUS(ok) == 0,
        "status {ok:#x}"
    );
    let status = in_filtered_child(Some(ThreadKind::Vcpu), || {
        drop(std::fs::File::open("/proc/self/status"));
        6
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn the_device_loop_may_make_arm_wait_for_and_read_a_rate_limiters_timer() {
    use crate::devices::rate_limiter::{BucketConfig, RateLimiter, RateLimiterConfig, Throttle};
    use std::os::fd::AsRawFd;
    let status = in_filtered_child(Some(ThreadKind::Devices), || {
        let bytes = BucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: 1,
        };
        let config = RateLimiterConfig {
            bandwidth: Some(bytes),
            ops: None,
        };
        // timerfd_create and fcntl.
        let Ok(mut limiter) = RateLimiter::new(Some(&config)) else {
            return 5;
        };
        limiter.charge(2);
        // timerfd_settime.
        if !limiter.blocked() {
            return 6;
        }
        let mut fd = libc::pollfd {
            fd: limiter.timer().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        if unsafe { libc::poll(&mut fd, 1, 10_000) } != 1 {
            return 7;
        }
        // read.
        limiter.on_timer();
        0
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
}

#[test]
fn an_ioctl_outside_the_list_kills() {
    let status = in_filtered_child(Some(ThreadKind::Devices), || {
        // TIOCSTI (push a byte into a terminal's input) is not on any list.
        let byte = 0u8;
        // SAFETY: an ioctl on stdin with a valid pointer; it is refused anyway.
        unsafe { libc::ioctl(0, libc::TIOCSTI, &byte) };
        6
    });
    assert!(killed_by_sigsys(status), "status {status:#x}");
}

#[test]
fn log_mode_comes_from_the_environment_only_instead_of_kill() {
    // The mode is process-wide and set once: checked in a child.
    // SAFETY: as in `in_filtered_child`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        std::env::set_var("HUSK_SECCOMP", "log");
        set_mode(Mode::Kill);
        let code = if mode() == Mode::Log { 0 } else { 1 };
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: as above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
}

/// A vhost request (VHOST_GET_FEATURES, type 0xAF) on a closed fd, from a vCPU: EBADF
/// when the process was started for vhost-net, a kill when it was not.
fn vhost_request_from_a_vcpu() -> i32 {
    let mut features = 0u64;
    // SAFETY: an ioctl on a closed fd with a valid pointer; it fails or is refused.
    let ret = unsafe { libc::ioctl(999, 0x8008_af00, &mut features) };
    let ebadf = ret < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF);
    if ebadf {
        7
    } else {
        8
    }
}

#[test]
fn vhost_requests_pass_only_in_a_process_started_for_vhost_net() {
    let refused = in_filtered_child(Some(ThreadKind::Vcpu), vhost_request_from_a_vcpu);
    assert!(killed_by_sigsys(refused), "status {refused:#x}");
    let with_flag = in_child(Some(ThreadKind::Vcpu), true, vhost_request_from_a_vcpu);
    assert!(
        libc::WIFEXITED(with_flag) && libc::WEXITSTATUS(with_flag) == 7,
        "status {with_flag:#x}"
    );
    // The device loop never gets them.
    for vhost in [false, true] {
        let devices = thread_rules(ThreadKind::Devices, vhost);
        let plain = thread_rules(ThreadKind::Devices, false);
        assert_eq!(
            devices[&libc::SYS_ioctl].len(),
            plain[&libc::SYS_ioctl].len()
        );
    }
}

#[test]
fn a_filtered_process_not_started_for_vhost_net_refuses_such_a_card_by_name() {
    let status = in_filtered_child(None, || {
        let config = crate::devices::virtio::net::NetConfig {
            vhost: true,
            ..Default::default()
        };
        match crate::devices::virtio::net::Net::new(config) {
            Err(e) if e.to_string().contains("--vhost-net") => 0,
            _ => 1,
        }
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status:#x}"
    );
}
