//! Link-time layout of the `husk` binary: the functions a `husk vmm` runs, serving its
//! API, running a guest's I/O, restoring a snapshot and starting up, hottest first
//! (link/vmm-hot-symbols.txt, written by scripts/vmm-hot-symbols), are placed together
//! at the front of its code, so that a VMM process keeps a few 64 KiB windows of code
//! resident instead of pages scattered over the whole binary (docs/design.md,
//! "Memory"). Names the binary no longer has are skipped.

use std::path::Path;

fn main() {
    let order = "link/vmm-hot-symbols.txt";
    println!("cargo::rerun-if-changed={order}");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let path = Path::new(&dir).join(order);
    println!(
        "cargo::rustc-link-arg-bin=husk=-Wl,--symbol-ordering-file={}",
        path.display()
    );
    println!("cargo::rustc-link-arg-bin=husk=-Wl,--no-warn-symbol-ordering");
}
