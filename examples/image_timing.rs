//! Scratch timing (not committed).
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let store = husk::image::ImageStore::open(Some(std::path::Path::new(&args[1]))).unwrap();
    let t = Instant::now();
    let image = if args[2] == "busybox" {
        store.ensure_busybox(true).unwrap()
    } else {
        store
            .import(std::path::Path::new(&args[2]), None, true)
            .unwrap()
    };
    eprintln!(
        "{} {} bytes in {:?} ({})",
        image.digest,
        image.size,
        t.elapsed(),
        image.fs_image.display()
    );
}
