//! Boot benchmark.
fn main() {}
