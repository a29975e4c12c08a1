//! The guest kernel's log, read out of guest memory after the guest failed.
//!
//! A sandbox guest boots with `quiet`, and a triple fault prints nothing at all; on AMD,
//! KVM even resets the vCPU before reporting KVM_EXIT_SHUTDOWN, so its registers are
//! lost. Guest RAM survives, and with it the kernel's printk ring buffer, which holds
//! every message whatever the console log level. This module finds the ring through the
//! `vmlinux` symbol table (`prb`, `log_buf`, `log_buf_len`) and decodes it.
//!
//! Layout (Linux 5.10 and later, `kernel/printk/printk_ringbuffer.h`): a descriptor
//! ring (`struct prb_desc`: state and id in one word, then the data block's logical
//! begin and next positions), a parallel `struct printk_info` array (sequence number,
//! timestamp, text length) and a data ring of blocks that start with their descriptor's
//! id and hold the text.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::symbols::{self, SymbolsError};

/// Linux x86_64 maps the kernel image here (`__START_KERNEL_map`); a `vmlinux` booted
/// through PVH runs at its link address, so its physical base is 0.
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// The direct map's base without memory randomization (4-level paging).
const DEFAULT_PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
/// Size of the direct map region (64 TiB with 4-level paging).
const DIRECT_MAP_SIZE: u64 = 64 << 40;

/// `struct prb_desc`: `state_var`, `text_blk_lpos.begin`, `text_blk_lpos.next`.
const DESC_SIZE: usize = 24;
/// `struct printk_info`: seq u64, ts_nsec u64, text_len u16, facility u8, flags:5 and
/// level:3, caller_id u32, then `dev_info` (16 + 48 bytes).
const INFO_SIZE: usize = 88;
const INFO_TS: usize = 8;
const INFO_TEXT_LEN: usize = 16;
/// The top two bits of `state_var` are the state, the rest the descriptor id.
const DESC_FLAGS_SHIFT: u32 = 62;
const DESC_ID_MASK: u64 = !(3 << DESC_FLAGS_SHIFT);
const DESC_COMMITTED: u64 = 1;
const DESC_FINALIZED: u64 = 2;
/// Upper bounds that keep a corrupted ring from making husk read gigabytes.
const MAX_COUNT_BITS: u32 = 22;
const MAX_DATA_BYTES: u32 = 64 << 20;

/// Why the log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GuestLogError {
    /// The kernel file has no usable symbol table.
    #[error(transparent)]
    Symbols(#[from] SymbolsError),
    /// A symbol the reader needs is missing (not a Linux kernel, or a very old one).
    #[error("the kernel has no `{0}` symbol")]
    MissingSymbol(&'static str),
    /// A pointer or size read from the guest makes no sense.
    #[error("the guest's printk ring is not readable ({0})")]
    Corrupt(&'static str),
}

/// Where the printk ring's roots are: kernel virtual addresses of variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSymbols {
    /// `prb`: pointer to the active `struct printk_ringbuffer`.
    pub prb: u64,
    /// `log_buf`: pointer to the data ring's bytes.
    pub log_buf: u64,
    /// `log_buf_len`: u32 size of the data ring.
    pub log_buf_len: u64,
    /// `page_offset_base`, present when the kernel's memory layout is dynamic.
    pub page_offset_base: Option<u64>,
}

impl LogSymbols {
    /// Reads the symbols from the `vmlinux` at `kernel`.
    pub fn from_kernel(kernel: &Path) -> Result<Self, GuestLogError> {
        let names = ["prb", "log_buf", "log_buf_len", "page_offset_base"];
        let found = symbols::lookup(kernel, &names)?;
        let need = |i: usize| found[i].ok_or(GuestLogError::MissingSymbol(names[i]));
        Ok(Self {
            prb: need(0)?,
            log_buf: need(1)?,
            log_buf_len: need(2)?,
            page_offset_base: found[3],
        })
    }
}

/// One record of the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Sequence number (records are returned in this order).
    pub seq: u64,
    /// Nanoseconds since boot.
    pub ts_nsec: u64,
    /// The message, without a trailing newline.
    pub text: String,
}

impl std::fmt::Display for LogRecord {
    /// The kernel console's format: `[    1.234567] text`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.ts_nsec / 1_000_000_000;
        let micros = self.ts_nsec % 1_000_000_000 / 1000;
        write!(f, "[{secs:5}.{micros:06}] {}", self.text)
    }
}

/// Guest memory seen through the kernel's virtual address map.
struct KernelMemory<'a> {
    memory: &'a GuestMemoryMmap,
    page_offset: u64,
}

impl KernelMemory<'_> {
    fn phys(&self, virt: u64) -> Option<u64> {
        if virt >= START_KERNEL_MAP {
            Some(virt - START_KERNEL_MAP)
        } else if (self.page_offset..self.page_offset + DIRECT_MAP_SIZE).contains(&virt) {
            Some(virt - self.page_offset)
        } else {
            None
        }
    }

    fn bytes(&self, virt: u64, len: usize) -> Result<Vec<u8>, GuestLogError> {
        let addr = self.phys(virt).ok_or(GuestLogError::Corrupt(
            "a pointer outside the kernel's maps",
        ))?;
        let mut buf = vec![0u8; len];
        self.memory
            .read_slice(&mut buf, GuestAddress(addr))
            .map_err(|_| GuestLogError::Corrupt("a pointer outside guest RAM"))?;
        Ok(buf)
    }

    fn u64(&self, virt: u64) -> Result<u64, GuestLogError> {
        let b = self.bytes(virt, 8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    fn u32(&self, virt: u64) -> Result<u32, GuestLogError> {
        let b = self.bytes(virt, 4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The records of the guest kernel's log, oldest first.
pub fn read(memory: &GuestMemoryMmap, syms: &LogSymbols) -> Result<Vec<LogRecord>, GuestLogError> {
    let boot = KernelMemory {
        memory,
        page_offset: DEFAULT_PAGE_OFFSET,
    };
    let page_offset = match syms.page_offset_base {
        Some(var) => boot.u64(var)?,
        None => DEFAULT_PAGE_OFFSET,
    };
    let mem = KernelMemory {
        memory,
        page_offset,
    };
    let rb = mem.u64(syms.prb)?;
    let count_bits = mem.u32(rb)?;
    if count_bits > MAX_COUNT_BITS {
        return Err(GuestLogError::Corrupt("descriptor count"));
    }
    let count = 1usize << count_bits;
    let data_len = mem.u32(syms.log_buf_len)?;
    if !data_len.is_power_of_two() || data_len > MAX_DATA_BYTES {
        return Err(GuestLogError::Corrupt("data ring size"));
    }
    let ring = Ring {
        descs: mem.bytes(mem.u64(rb + 8)?, count * DESC_SIZE)?,
        infos: mem.bytes(mem.u64(rb + 16)?, count * INFO_SIZE)?,
        data: mem.bytes(mem.u64(syms.log_buf)?, data_len as usize)?,
    };
    Ok(ring.records())
}

/// The three arrays of a printk ring, copied out of the guest.
struct Ring {
    descs: Vec<u8>,
    infos: Vec<u8>,
    data: Vec<u8>,
}

impl Ring {
    /// Every committed or finalized record whose data block still carries its id.
    fn records(&self) -> Vec<LogRecord> {
        let count = self.descs.len() / DESC_SIZE;
        let mut records: Vec<LogRecord> = (0..count).filter_map(|i| self.record(i)).collect();
        records.sort_by_key(|r| r.seq);
        records
    }

    fn record(&self, index: usize) -> Option<LogRecord> {
        let desc = self.descs.get(index * DESC_SIZE..(index + 1) * DESC_SIZE)?;
        let state_var = u64_at(desc, 0);
        let state = state_var >> DESC_FLAGS_SHIFT;
        let id = state_var & DESC_ID_MASK;
        let count = (self.descs.len() / DESC_SIZE) as u64;
        if !(state == DESC_COMMITTED || state == DESC_FINALIZED) || id % count != index as u64 {
            return None;
        }
        let info = self.infos.get(index * INFO_SIZE..(index + 1) * INFO_SIZE)?;
        let text_len = usize::from(u16::from_le_bytes([
            info[INFO_TEXT_LEN],
            info[INFO_TEXT_LEN + 1],
        ]));
        let block = self.block(u64_at(desc, 8), u64_at(desc, 16))?;
        // A block that no longer starts with this id was overwritten by newer records.
        if u64_at(block, 0) & DESC_ID_MASK != id {
            return None;
        }
        let text = &block[8..8 + text_len.min(block.len() - 8)];
        Some(LogRecord {
            seq: u64_at(info, 0),
            ts_nsec: u64_at(info, INFO_TS),
            text: String::from_utf8_lossy(text).trim_end().to_string(),
        })
    }

    /// The data block between logical positions `begin` and `next` (its id and text), as
    /// the kernel's `get_data()` finds it: in place, or at the ring's start when the block
    /// did not fit before the end. Data-less records (odd positions) have none.
    fn block(&self, begin: u64, next: u64) -> Option<&[u8]> {
        let size = self.data.len() as u64;
        let bits = size.trailing_zeros();
        if begin & 1 == 1 && next & 1 == 1 {
            return None;
        }
        let (start, len) = if begin >> bits == next >> bits && begin < next {
            (begin & (size - 1), next.wrapping_sub(begin))
        } else if begin.wrapping_add(size) >> bits == next >> bits {
            (0, next & (size - 1))
        } else {
            return None;
        };
        if len < 8 || start % 8 != 0 {
            return None;
        }
        self.data.get(start as usize..(start + len) as usize)
    }
}

/// The last `lines` records of the guest kernel's log, one per line in the console's
/// format, read through the symbols of `kernel`.
pub fn tail(
    memory: &GuestMemoryMmap,
    kernel: &Path,
    lines: usize,
) -> Result<String, GuestLogError> {
    let records = read(memory, &LogSymbols::from_kernel(kernel)?)?;
    let skip = records.len().saturating_sub(lines);
    Ok(records[skip..]
        .iter()
        .map(|r| format!("{r}\n"))
        .collect::<String>())
}

#[cfg(test)]
#[path = "guest_log_tests.rs"]
mod tests;
