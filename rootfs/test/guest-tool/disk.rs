//! Sequential file and block device throughput: reads or writes a number of bytes in
//! large blocks, optionally with O_DIRECT so the page cache is bypassed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Instant;

use crate::stream::{fill_pattern, Checksum, Transfer, CHUNK};

/// O_DIRECT transfers need buffers (and sizes) aligned to the logical block size.
const ALIGN: usize = 4096;

/// A CHUNK-sized buffer aligned to ALIGN, carved out of a larger Vec.
struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new() -> Self {
        let storage = vec![0u8; CHUNK + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        Self { storage, start }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + len]
    }
}

fn open(path: &str, write: bool, direct: bool) -> io::Result<File> {
    let flags = if direct { libc::O_DIRECT } else { 0 };
    OpenOptions::new()
        .read(!write)
        .write(write)
        .create(write)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {path}: {e}")))
}

/// Waits until `path` starts with `text`, reading its first block with O_DIRECT every
/// 200 ms (so a disk the host writes behind the guest's back is read afresh), for at
/// most `patience`. A mailbox the host can write while the guest's vsock is busy.
pub fn wait_for(path: &str, text: &str, patience: std::time::Duration) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    let mut buf = AlignedBuf::new();
    loop {
        let mut file = open(path, false, true)?;
        let n = file.read(buf.get(ALIGN))?;
        if buf.get(ALIGN)[..n].starts_with(text.as_bytes()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{path} did not start with {text:?} in time"),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Reads up to `limit` bytes (all of it when `None`) from the start of `path`.
/// `block` bytes per call (at most [`CHUNK`]).
pub fn read(
    path: &str,
    limit: Option<u64>,
    block: usize,
    direct: bool,
    check: bool,
) -> io::Result<Transfer> {
    let block = block.clamp(1, CHUNK) as u64;
    let mut file = open(path, false, direct)?;
    let mut buf = AlignedBuf::new();
    let mut sum = Checksum::new();
    let start = Instant::now();
    let mut got = 0u64;
    loop {
        let want = limit.map_or(block, |l| (l - got).min(block)) as usize;
        if want == 0 {
            break;
        }
        let n = file.read(buf.get(want))?;
        if n == 0 {
            break;
        }
        if check {
            sum.update(&buf.get(n)[..n]);
        }
        got += n as u64;
    }
    Ok(Transfer {
        bytes: got,
        sum: if check { sum.hex() } else { String::new() },
        elapsed: start.elapsed(),
    })
}

/// Writes `total` pattern bytes at the start of `path`, then waits for them to be stable
/// (fdatasync), which the elapsed time includes. Without `check` the first chunk of the
/// pattern is repeated and no sum is kept, so only the device is measured.
/// `block` bytes per call (at most [`CHUNK`]).
pub fn write(
    path: &str,
    total: u64,
    block: usize,
    direct: bool,
    check: bool,
) -> io::Result<Transfer> {
    let block = block.clamp(1, CHUNK) as u64;
    let mut file = open(path, true, direct)?;
    let mut buf = AlignedBuf::new();
    let mut sum = Checksum::new();
    fill_pattern(buf.get(CHUNK), 0);
    let start = Instant::now();
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(block) as usize;
        let data = buf.get(n);
        if check {
            fill_pattern(data, done);
            sum.update(data);
        }
        file.write_all(data)?;
        done += n as u64;
    }
    file.sync_data()?;
    Ok(Transfer {
        bytes: done,
        sum: if check { sum.hex() } else { String::new() },
        elapsed: start.elapsed(),
    })
}
