//! `husk run busybox -- true` measured as a whole and by stage, warm (from a template)
//! and cold (`--cold`, a kernel boot), against `crun run`; and the tables of medians.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::common::crun::{ms, CrunSample};
use super::common::median;

/// One `husk run`: wall time and the `--timings` JSON.
pub struct HuskSample {
    pub wall_ms: f64,
    pub timings: serde_json::Value,
}

impl HuskSample {
    pub fn field(&self, path: &[&str]) -> Option<f64> {
        let mut v = &self.timings;
        for key in path {
            v = v.get(key)?;
        }
        v.as_f64()
    }
}

/// How `husk run` starts its sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the image's own template, its container made ahead (the default).
    Prepared,
    /// From the plain template (`--no-prepared`).
    Plain,
    /// A kernel boot (`--cold`).
    Cold,
    /// A parked sandbox claimed from a pool (`husk pool add`); the others pass
    /// `--no-pool`.
    Pooled,
}

/// `husk run [--no-prepared|--cold] busybox -- true` once.
pub fn husk_once(husk: &str, timings: &Path, start: Start) -> HuskSample {
    let _ = std::fs::remove_file(timings);
    let flag = match start {
        Start::Prepared => Some("--no-pool"),
        Start::Plain => Some("--no-prepared"),
        Start::Cold => Some("--cold"),
        Start::Pooled => None,
    };
    let mut cmd = Command::new(husk);
    cmd.args(["run", "--kernel", "vmlinux", "--timings"])
        .arg(timings)
        .args(flag)
        .args(["busybox", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let start = Instant::now();
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let wall_ms = ms(start.elapsed());
    assert!(status.success(), "{cmd:?} failed: {status}");
    let text = std::fs::read_to_string(timings).expect("husk wrote its timings");
    HuskSample {
        wall_ms,
        timings: serde_json::from_str(&text).expect("timings are JSON"),
    }
}

/// Median, minimum and maximum, as `med (min–max)`.
pub fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.1} ({:.1}–{:.1})", median(v.to_vec()), min, max)
}

/// The headline: wall time spawn → exit of each, with min/max and the ratios.
pub fn report_wall(
    pooled: &[HuskSample],
    warm: &[HuskSample],
    plain: &[HuskSample],
    cold: &[HuskSample],
    crun: &[CrunSample],
) {
    let wall = |v: &[HuskSample]| v.iter().map(|s| s.wall_ms).collect::<Vec<f64>>();
    let (w, p, c) = (wall(warm), wall(plain), wall(cold));
    let pw = wall(pooled);
    let r: Vec<f64> = crun.iter().map(|s| s.run_wall_ms).collect();
    let (mw, mp, mc, mr) = (
        median(w.clone()),
        median(p.clone()),
        median(c.clone()),
        median(r.clone()),
    );
    println!();
    println!(
        "`husk run busybox -- true`, spawn -> exit, median (min–max) ms of {} rounds:",
        w.len()
    );
    println!("  husk, claimed from a pool of 1   {}", spread(&pw));
    println!("  husk warm (image template)       {}", spread(&w));
    println!("  husk --no-prepared (plain one)   {}", spread(&p));
    println!("  husk --cold (boot)               {}", spread(&c));
    println!("  crun run                         {}", spread(&r));
    let claimed = |key: &str| {
        median(
            pooled
                .iter()
                .filter_map(|s| s.field(&["sandbox", key]))
                .collect(),
        )
    };
    println!(
        "  pooled: claimed (command started) at {:.1} ms, exit code at {:.1} ms (medians from husk's start)",
        claimed("claimed_ms"),
        claimed("process_exited_ms")
    );
    println!(
        "  pooled/crun {:.2}   warm/crun {:.2}   plain/crun {:.2}   cold/crun {:.2}   warm/plain {:.3}   warm/cold {:.3}",
        median(pw) / mr,
        mw / mr,
        mp / mr,
        mc / mr,
        mw / mp,
        mw / mc
    );
}

/// A crun step that matches a husk stage, if any.
type Peer = Option<fn(&CrunSample) -> f64>;

/// Stage by stage, cumulative from the sandbox's start, warm and cold side by side.
pub fn report_stages(
    warm: &[HuskSample],
    plain: &[HuskSample],
    cold: &[HuskSample],
    crun: &[CrunSample],
) {
    let h =
        |s: &[HuskSample], path: &[&str]| median(s.iter().filter_map(|x| x.field(path)).collect());
    let c = |f: fn(&CrunSample) -> f64| median(crun.iter().map(f).collect());
    println!();
    println!(
        "{:<46} {:>10} {:>10} {:>10} {:>10}",
        "stage (median ms, cumulative)", "warm", "plain", "cold", "crun"
    );
    let rows: [(&str, &[&str], Peer); 10] = [
        (
            "agent initramfs ready (cached)",
            &["sandbox", "initramfs_ready_ms"],
            None,
        ),
        (
            "template found, snapshot read and checked",
            &["sandbox", "snapshot_loaded_ms"],
            None,
        ),
        (
            "VMM spawned and jailed, asked to restore/boot",
            &["sandbox", "vm_requested_ms"],
            None,
        ),
        (
            "VM running (restored / kernel loaded)",
            &["sandbox", "vm_running_ms"],
            None,
        ),
        (
            "agent answered (handshake)",
            &["sandbox", "agent_answered_ms"],
            None,
        ),
        (
            "agent ready (warm: identity taken)",
            &["sandbox", "agent_ready_ms"],
            None,
        ),
        ("Run sent", &["sandbox", "run_sent_ms"], None),
        (
            "process started (crun: create+start)",
            &["sandbox", "process_started_ms"],
            Some(|s| s.started_ms),
        ),
        (
            "process exited",
            &["sandbox", "process_exited_ms"],
            Some(|s| s.exited_ms),
        ),
        (
            "torn down (crun: + delete)",
            &["torn_down_ms"],
            Some(|s| s.deleted_ms),
        ),
    ];
    for (name, path, peer) in rows {
        let peer = peer.map_or_else(|| "-".to_string(), |f| format!("{:.1}", c(f)));
        println!(
            "{name:<46} {:>10.1} {:>10.1} {:>10.1} {peer:>10}",
            h(warm, path),
            h(plain, path),
            h(cold, path)
        );
    }
    println!();
    println!("inside the VMM (median ms from the VMM's start; warm and plain = restore):");
    for (name, path) in [
        (
            "memory mapped (warm) / kernel loaded (cold), devices built",
            &["vm", "timeline", "guest_loaded_ms"][..],
        ),
        (
            "KVM VM ready (warm: + VM state)",
            &["vm", "timeline", "kvm_ready_ms"],
        ),
        (
            "vCPUs created (warm: + vCPU and device state)",
            &["vm", "timeline", "vcpus_created_ms"],
        ),
        (
            "  of which the working set mapped (warm), ms",
            &["vm", "timeline", "prefault_ms"],
        ),
        (
            "  working set pages mapped (warm)",
            &["vm", "timeline", "prefaulted_pages"],
        ),
        (
            "first guest instruction (first KVM_RUN)",
            &["vm", "timeline", "first_kvm_run_ms"],
        ),
        (
            "VMM CPU time outside guest mode",
            &["vm", "process", "vmm_cpu_ms"],
        ),
        (
            "VMM RSS excl. guest RAM (KiB)",
            &["vm", "process", "vmm_rss_kib"],
        ),
        (
            "  of which anonymous, not shared (KiB)",
            &["vm", "process", "vmm_anon_kib"],
        ),
        (
            "guest RAM resident (KiB)",
            &["vm", "process", "guest_rss_kib"],
        ),
    ] {
        println!(
            "  {name:<58} {:>10.1} {:>10.1} {:>10.1}",
            h(warm, path),
            h(plain, path),
            h(cold, path)
        );
    }
    let outside = |v: &[HuskSample]| {
        median(
            v.iter()
                .filter_map(|s| Some(s.wall_ms - s.field(&["torn_down_ms"])?))
                .collect(),
        )
    };
    println!(
        "husk outside the sandbox (process start, store, exit: wall - torn down): warm {:.1}, plain {:.1}, cold {:.1}",
        outside(warm),
        outside(plain),
        outside(cold)
    );
    println!(
        "crun steps (median ms): create {:.1}, start {:.1}, run to exit seen {:.1}, delete {:.1}; `crun --version` alone {:.1}",
        c(|s| s.created_ms),
        c(|s| s.started_ms - s.created_ms),
        c(|s| s.exited_ms - s.started_ms),
        c(|s| s.deleted_ms - s.exited_ms),
        c(|s| s.exec_ms)
    );
}
