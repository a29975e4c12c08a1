//! The device benchmark's tables: medians per VMM, ratios to QEMU (of the medians and
//! per round), KVM's counters.

use std::collections::BTreeMap;

use super::median;

/// One workload's figures for one VMM (or the host), by name, in MiB/s; plus the exits
/// and KVM's counters (`kvm ...`).
pub(crate) type Figures = BTreeMap<String, f64>;

/// Prefix of the rows from KVM's counters.
pub(crate) const KVM_ROW: &str = "kvm ";

/// Another husk beside the main column: its medians, against QEMU's, and husk's
/// against it (with `no-seccomp`, what the filters cost: on/off).
pub(crate) fn report_beside(
    workload: &str,
    label: &str,
    husk: &[Figures],
    other: &[Figures],
    qemu: &[Figures],
) {
    println!(
        "{:<28} {:>10} {:>10} {:>11} {:>11}",
        format!("{workload}: {label}"),
        label,
        "qemu",
        format!("{label}/qemu"),
        format!("husk/{label}")
    );
    for key in keys_of(other).filter(|k| k != "exits") {
        let (h, o, q) = (
            median_of(husk, &key),
            median_of(other, &key),
            median_of(qemu, &key),
        );
        let width = if key.starts_with(KVM_ROW) { 52 } else { 28 };
        println!(
            "{key:<width$} {o:>10.1} {q:>10.1} {:>11.2} {:>11.2}",
            o / q,
            h / o
        );
    }
}

/// Two columns side by side, each with its label: medians, their ratio and the
/// median of each round's ratio (KVM's counters left out).
pub(crate) fn report_pair(workload: &str, a: (&str, &[Figures]), b: (&str, &[Figures])) {
    let ((la, a), (lb, b)) = (a, b);
    println!(
        "{:<28} {:>10} {:>10} {:>11} {:>11}",
        format!("{workload}: {la} / {lb}"),
        la,
        lb,
        "ratio",
        "per round"
    );
    let keys = keys_of(a).filter(|k| k != "exits" && !k.starts_with(KVM_ROW));
    for key in keys {
        let (x, y) = (median_of(a, &key), median_of(b, &key));
        let round = paired(a, b, &key);
        println!(
            "{key:<28} {x:>10.1} {y:>10.1} {:>11.2} {round:>11.2}",
            x / y
        );
    }
}

/// The row names of the first run.
fn keys_of(runs: &[Figures]) -> impl Iterator<Item = String> {
    runs.first()
        .map_or(Vec::new(), |f| f.keys().cloned().collect())
        .into_iter()
}

/// The median of each round's ratio `a/b` (the two runs of a round are close in time,
/// so drift of the test host between rounds cancels out).
fn paired(a: &[Figures], b: &[Figures], key: &str) -> f64 {
    let ratios = a
        .iter()
        .zip(b)
        .filter_map(|(x, y)| Some(x.get(key)? / y.get(key)?))
        .collect();
    median(ratios)
}

fn median_of(runs: &[Figures], key: &str) -> f64 {
    median(runs.iter().filter_map(|f| f.get(key).copied()).collect())
}

pub(crate) fn report(
    workload: &str,
    mib: u64,
    husk: &[Figures],
    qemu: &[Figures],
    bound: &[Figures],
    idle: f64,
) {
    println!();
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>11} {:>11} {:>11}",
        format!("{workload} MiB/s, ops/s (median)"),
        "husk",
        "qemu",
        "host",
        "husk/qemu",
        "per round",
        "husk/host"
    );
    let keys: Vec<String> = keys_of(husk).filter(|k| k != "exits").collect();
    for key in keys.iter().filter(|k| !k.starts_with(KVM_ROW)) {
        let (h, q, b) = (
            median_of(husk, key),
            median_of(qemu, key),
            median_of(bound, key),
        );
        println!(
            "{key:<28} {h:>10.1} {q:>10.1} {b:>10.1} {:>11.2} {:>11.2} {:>11.2}",
            h / q,
            paired(husk, qemu, key),
            h / b
        );
    }
    let kvm: Vec<&String> = keys.iter().filter(|k| k.starts_with(KVM_ROW)).collect();
    if !kvm.is_empty() {
        println!(
            "{:<52} {:>10} {:>10} {:>11}",
            format!("{workload}: KVM's counters of the VM (median)"),
            "husk",
            "qemu",
            "husk/qemu"
        );
    }
    for key in kvm {
        let (h, q) = (median_of(husk, key), median_of(qemu, key));
        println!("{key:<52} {h:>10.2} {q:>10.2} {:>11.2}", h / q);
    }
    // Every workload moves `mib` each way (blk: written, then read).
    let moved = (mib * 2) as f64;
    let exits = median_of(husk, "exits");
    println!(
        "husk VM exits to the VMM: {exits:.0} in the boot, {:.0} beyond an idle boot, {:.1} per MiB moved",
        exits - idle,
        (exits - idle) / moved
    );
}
