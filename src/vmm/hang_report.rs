//! Where each vCPU is, asked for from another thread while the VM runs: a hung guest is
//! reported with its vCPUs' instruction pointers (named through the kernel's symbols) and
//! whether they sit halted, waiting for an interrupt.
//!
//! A reader raises the request's generation and kicks every vCPU thread; each thread,
//! out of KVM_RUN, notices the new generation, records its registers and goes back in.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use kvm_ioctls::VcpuFd;

/// `KVM_MP_STATE_HALTED`: the vCPU executed HLT and waits for an interrupt.
const MP_STATE_HALTED: u32 = 3;
/// RFLAGS.IF: maskable interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

/// One vCPU's registers of interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuPlace {
    /// The vCPU's index.
    pub id: u8,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags register.
    pub rflags: u64,
    /// Privilege level (CS.RPL): 0 kernel, 3 user.
    pub cpl: u16,
    /// KVM's multiprocessing state (`KVM_MP_STATE_*`), if it could be read.
    pub mp_state: Option<u32>,
}

impl VcpuPlace {
    /// Reads the state of `fd` (on its own thread, out of KVM_RUN).
    pub fn read(id: u8, fd: &VcpuFd) -> Option<Self> {
        let regs = fd.get_regs().ok()?;
        let sregs = fd.get_sregs().ok()?;
        Some(Self {
            id,
            rip: regs.rip,
            rsp: regs.rsp,
            rflags: regs.rflags,
            cpl: sregs.cs.selector & 3,
            mp_state: fd.get_mp_state().ok().map(|m| m.mp_state),
        })
    }

    /// Whether the vCPU waits in HLT.
    pub fn halted(&self) -> bool {
        self.mp_state == Some(MP_STATE_HALTED)
    }

    /// A report line; `symbol` names the RIP (`name+0xoff`) when known.
    pub fn describe(&self, symbol: Option<&str>) -> String {
        let place = match symbol {
            Some(name) => format!(" ({name})"),
            None => String::new(),
        };
        let mode = if self.cpl == 3 { "user" } else { "kernel" };
        let state = if self.halted() { ", halted" } else { "" };
        let interrupts = if self.rflags & RFLAGS_IF != 0 {
            "on"
        } else {
            "off"
        };
        format!(
            "vcpu{}: rip {:#x}{place} rsp {:#x}, {mode} mode{state}, interrupts {interrupts}",
            self.id, self.rip, self.rsp
        )
    }
}

impl fmt::Display for VcpuPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(None))
    }
}

/// Per vCPU: the generation answered last and what was read.
type Answers = Vec<(u64, Option<VcpuPlace>)>;

/// Requests and answers of vCPU states, shared by a VM's vCPU threads.
#[derive(Default)]
pub struct StateBoard {
    /// The generation asked for last (0: never). Changed only under the `answers` lock,
    /// read without it: a kick that is not a state request (a stop, a profiler sample)
    /// costs the vCPU one atomic load.
    wanted: AtomicU64,
    answers: Mutex<Answers>,
    answered: Condvar,
}

impl StateBoard {
    /// A board for `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        Self {
            wanted: AtomicU64::new(0),
            answers: Mutex::new(vec![(0, None); vcpus]),
            answered: Condvar::new(),
        }
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks every vCPU for its state; returns the generation to wait for. The caller
    /// then kicks the vCPU threads.
    pub fn request(&self) -> u64 {
        let _answers = self.answers();
        self.wanted.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Called by vCPU `id` out of KVM_RUN: answers a pending request with `read()`.
    pub fn answer_if_asked(&self, id: u8, read: impl FnOnce() -> Option<VcpuPlace>) {
        if self.wanted.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut answers = self.answers();
        let wanted = self.wanted.load(Ordering::Acquire);
        let Some(slot) = answers.get_mut(usize::from(id)) else {
            return;
        };
        if slot.0 < wanted {
            *slot = (wanted, read());
            self.answered.notify_all();
        }
    }

    /// Waits up to `timeout` for every vCPU to answer `generation`; returns the answers
    /// (a vCPU that did not answer, or could not read its registers, is left out).
    pub fn collect(&self, generation: u64, timeout: Duration) -> Vec<VcpuPlace> {
        let (answers, _) = self
            .answered
            .wait_timeout_while(self.answers(), timeout, |a| {
                a.iter().any(|(g, _)| *g < generation)
            })
            .unwrap_or_else(|e| e.into_inner());
        answers
            .iter()
            .filter(|(g, _)| *g >= generation)
            .filter_map(|(_, s)| *s)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn state(id: u8) -> VcpuPlace {
        VcpuPlace {
            id,
            rip: 0xffff_ffff_8100_1000,
            rsp: 0xffff_c900_0000_3f00,
            rflags: RFLAGS_IF | 2,
            cpl: 0,
            mp_state: Some(MP_STATE_HALTED),
        }
    }

    #[test]
    fn every_vcpu_answers_a_request_once() {
        let board = Arc::new(StateBoard::new(2));
        let generation = board.request();
        let answering = board.clone();
        let t = std::thread::spawn(move || {
            for id in 0..2 {
                answering.answer_if_asked(id, || Some(state(id)));
                // A second pass in the same generation does not read again.
                answering.answer_if_asked(id, || panic!("read twice"));
            }
        });
        let states = board.collect(generation, Duration::from_secs(10));
        t.join().expect("answering thread");
        assert_eq!(states, vec![state(0), state(1)]);
    }

    #[test]
    fn a_silent_vcpu_is_left_out_after_the_timeout() {
        let board = StateBoard::new(2);
        let generation = board.request();
        board.answer_if_asked(1, || Some(state(1)));
        let states = board.collect(generation, Duration::from_millis(20));
        assert_eq!(states, vec![state(1)]);
    }

    #[test]
    fn an_old_answer_does_not_satisfy_a_new_request() {
        let board = StateBoard::new(1);
        let first = board.request();
        board.answer_if_asked(0, || Some(state(0)));
        assert_eq!(board.collect(first, Duration::ZERO).len(), 1);
        let second = board.request();
        assert!(board.collect(second, Duration::from_millis(10)).is_empty());
    }

    #[test]
    fn an_unknown_vcpu_is_ignored() {
        let board = StateBoard::new(1);
        board.request();
        board.answer_if_asked(7, || panic!("no such vCPU"));
    }

    #[test]
    fn describe_names_the_place_and_the_wait() {
        let line = state(0).describe(Some("default_idle+0x1e"));
        assert_eq!(
            line,
            "vcpu0: rip 0xffffffff81001000 (default_idle+0x1e) rsp 0xffffc90000003f00, \
             kernel mode, halted, interrupts on"
        );
    }
}
