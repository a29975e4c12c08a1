//! Detached sandboxes from one template: `run -d` until the service runs (warm vs
//! `crun run -d`), `exec` into a running one, `husk fork`, and what N idle clones of
//! one template cost: PSS per clone and what their guests dirtied, from each monitor's
//! /proc/PID/smaps, and the host's memory in use.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::common::crun::{check, crun_cmd, ms, timed};
use super::common::{median, meminfo_kib};
use super::stages::spread;

fn husk_cmd(husk: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(husk);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

/// `run -d` warm (`--no-pool`), `run -d` adopting a parked sandbox of a pool of 1 (its
/// refill awaited before each), and `crun run -d`, each until the service runs,
/// `rounds` times in rotating order; then `exec true` into the warm one and crun's.
pub fn detached_rounds(husk: &str, crun: &str, service: &str, rounds: usize) {
    check(&mut husk_cmd(
        husk,
        &[
            "pool", "add", "--kernel", "vmlinux", "--size", "1", "busybox",
        ],
    ));
    let (mut h, mut p, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let (mut he, mut ce) = (Vec::new(), Vec::new());
    let mut adopted = 0;
    for round in 0..rounds {
        let (name, pooled, id) = (
            format!("svc{round}"),
            format!("pooled{round}"),
            format!("svc-{round}"),
        );
        let run_d = |name: &str, pool: &[&str]| {
            let mut args = vec!["run", "-d", "--name", name, "--kernel", "vmlinux"];
            args.extend_from_slice(pool);
            args.extend_from_slice(&["busybox", "--", "sleep", "100000"]);
            timed(&mut husk_cmd(husk, &args))
        };
        super::wait_parked(husk);
        for step in 0..3 {
            match (round + step) % 3 {
                0 => h.push(run_d(&name, &["--no-pool"])),
                1 => {
                    p.push(run_d(&pooled, &[]));
                    // Its replacement is not parked yet: it took the parked one.
                    adopted += usize::from(super::parked(husk) == 0);
                }
                _ => c.push(timed(&mut crun_cmd(
                    crun,
                    &["run", "-d", "--no-pivot", "--bundle", service, &id],
                ))),
            }
        }
        he.push(timed(&mut husk_cmd(husk, &["exec", &name, "true"])));
        ce.push(timed(&mut crun_cmd(crun, &["exec", &id, "true"])));
        check(&mut husk_cmd(husk, &["rm", "-f", &name, &pooled]));
        check(&mut crun_cmd(crun, &["delete", "-f", &id]));
    }
    check(&mut husk_cmd(husk, &["pool", "rm", "busybox"]));
    let ratio = |a: &[f64], b: &[f64]| median(a.to_vec()) / median(b.to_vec());
    println!();
    println!("`run -d` until the service runs, median (min–max) ms of {rounds}:");
    println!(
        "  husk warm {}   husk from a pool of 1 {}   crun {}",
        spread(&h),
        spread(&p),
        spread(&c),
    );
    println!(
        "  warm/crun {:.2}   pooled/crun {:.2}   pooled runs that took the parked sandbox: {adopted} of {}",
        ratio(&h, &c),
        ratio(&p, &c),
        p.len()
    );
    println!(
        "`exec true` into it: husk {}   crun {}   husk/crun {:.2}",
        spread(&he),
        spread(&ce),
        ratio(&he, &ce)
    );
}

/// `husk fork` of a running sandbox, `rounds` times (each clone removed after).
pub fn fork_rounds(husk: &str, rounds: usize) {
    check(&mut husk_cmd(
        husk,
        &[
            "run",
            "-d",
            "--name",
            "origin",
            "--kernel",
            "vmlinux",
            "busybox",
            "--",
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i; sleep 1; done",
        ],
    ));
    let mut times = Vec::new();
    for round in 0..rounds {
        let name = format!("fork{round}");
        times.push(timed(&mut husk_cmd(
            husk,
            &["fork", "origin", "--name", &name],
        )));
        check(&mut husk_cmd(husk, &["exec", &name, "true"]));
        check(&mut husk_cmd(husk, &["rm", "-f", &name]));
    }
    check(&mut husk_cmd(husk, &["rm", "-f", "origin"]));
    println!();
    println!(
        "`husk fork` of a running sandbox (snapshot, copy, restore, agent answers), ms: {}",
        spread(&times)
    );
}

/// Kilobytes of `field` summed over the mappings of `pid` that `keep` selects.
fn smaps_kib(pid: u32, keep: impl Fn(&str) -> bool, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut selected = false;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            selected = keep(line);
        } else if selected && first == format!("{field}:") {
            total += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// The host's memory in use (MemTotal - MemAvailable), KiB.
fn host_used_kib() -> u64 {
    meminfo_kib("MemTotal:").saturating_sub(meminfo_kib("MemAvailable:"))
}

fn monitor_pid(runtime: &Path, name: &str) -> u32 {
    let text = std::fs::read_to_string(runtime.join(name).join("state.json")).expect("state.json");
    let state: serde_json::Value = serde_json::from_str(&text).expect("state.json is JSON");
    state["monitor_pid"].as_u64().expect("monitor_pid") as u32
}

/// The children of every thread of `pid` (a detached sandbox's `husk vmm` is a child
/// of whichever monitor thread spawned it).
/// Every descendant of `pid`: a jailed sandbox's VMM is its supervisor's child, a
/// grandchild of the monitor.
fn children(pid: u32) -> Vec<u32> {
    let direct = |pid: u32| -> Vec<u32> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    };
    let mut all = direct(pid);
    let mut i = 0;
    while i < all.len() {
        let more = direct(all[i]);
        all.extend(more);
        i += 1;
    }
    all
}

/// Start `n` idle detached sandboxes from the template, measure, remove them.
pub fn clones(husk: &str, runtime: &Path, n: usize) {
    let before = host_used_kib();
    let started = Instant::now();
    for i in 0..n {
        check(&mut husk_cmd(
            husk,
            &[
                "run",
                "-d",
                "--name",
                &format!("idle{i}"),
                "--kernel",
                "vmlinux",
                "busybox",
                "--",
                "sleep",
                "100000",
            ],
        ));
    }
    let elapsed = started.elapsed();
    // Let the guests settle (idle timers, the agent's first work) before measuring.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = host_used_kib();
    let guest = |line: &str| line.ends_with("/snapshot/memory");
    let (mut pss, mut dirtied, mut beyond) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        // The sandbox's processes: its monitor and the monitor's `husk vmm`.
        let monitor = monitor_pid(runtime, &format!("idle{i}"));
        let mut pids = children(monitor);
        pids.push(monitor);
        let total: u64 = pids.iter().map(|&p| smaps_kib(p, |_| true, "Pss")).sum();
        let dirty: u64 = pids.iter().map(|&p| smaps_kib(p, guest, "Anonymous")).sum();
        let (total, dirty) = (total as f64, dirty as f64);
        pss.push(total / 1024.0);
        dirtied.push(dirty / 1024.0);
        beyond.push((total - dirty) / 1024.0);
    }
    for i in 0..n {
        check(&mut husk_cmd(husk, &["rm", "-f", &format!("idle{i}")]));
    }
    println!(
        "N={n:>2} idle clones: PSS per clone (its monitor and VMM processes) {} MiB, of which pages its guest dirtied {} MiB, \
         beyond them {} MiB; host memory in use +{:.1} MiB per clone; {:.2} clones/s ({:.0} ms each)",
        spread(&pss),
        spread(&dirtied),
        spread(&beyond),
        (after.saturating_sub(before)) as f64 / 1024.0 / n as f64,
        n as f64 / elapsed.as_secs_f64(),
        ms(elapsed) / n as f64,
    );
}
