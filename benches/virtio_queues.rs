//! Benchmarks of the virtio request-processing paths (filled in below).
fn main() {}
