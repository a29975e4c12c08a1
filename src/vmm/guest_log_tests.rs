//! Tests of the printk ring reader on a ring built by hand in guest memory.

use super::*;
use crate::boot::symbols::tests::tiny_elf;

/// Physical addresses of the fake kernel's variables and arrays.
const PRB_VAR: u64 = 0x1000;
const LOG_BUF_VAR: u64 = 0x1008;
const LOG_BUF_LEN_VAR: u64 = 0x1010;
const RB: u64 = 0x2000;
const DESCS: u64 = 0x3000;
const INFOS: u64 = 0x4000;
const DATA: u64 = 0x10000;
const DATA_LEN: u64 = 256;
/// Four descriptors.
const COUNT_BITS: u32 = 2;

fn kvirt(phys: u64) -> u64 {
    START_KERNEL_MAP + phys
}

fn symbols() -> LogSymbols {
    LogSymbols {
        prb: kvirt(PRB_VAR),
        log_buf: kvirt(LOG_BUF_VAR),
        log_buf_len: kvirt(LOG_BUF_LEN_VAR),
        page_offset_base: None,
    }
}

/// An empty ring: the data ring is reached through the direct map, the rest through the
/// kernel image map, as in a kernel that moved its log buffer.
fn ring_memory() -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mmap");
    let put = |addr: u64, value: u64| mem.write_obj(value, GuestAddress(addr)).expect("write");
    put(PRB_VAR, kvirt(RB));
    put(LOG_BUF_VAR, DEFAULT_PAGE_OFFSET + DATA);
    put(LOG_BUF_LEN_VAR, DATA_LEN);
    put(RB, u64::from(COUNT_BITS));
    put(RB + 8, kvirt(DESCS));
    put(RB + 16, kvirt(INFOS));
    mem
}

/// Writes descriptor `id` in `state` with its info and, unless data-less, its block at
/// data-ring offset `begin % DATA_LEN` (or 0 when `next` is in the following wrap).
fn add(mem: &GuestMemoryMmap, id: u64, state: u64, seq: u64, lpos: (u64, u64), text: &str) {
    let index = id % (1 << COUNT_BITS);
    let desc = DESCS + index * DESC_SIZE as u64;
    let info = INFOS + index * INFO_SIZE as u64;
    let put = |addr: u64, value: u64| mem.write_obj(value, GuestAddress(addr)).expect("write");
    put(desc, (state << DESC_FLAGS_SHIFT) | id);
    put(desc + 8, lpos.0);
    put(desc + 16, lpos.1);
    put(info, seq);
    put(info + INFO_TS as u64, seq * 500_000_000);
    mem.write_obj(text.len() as u16, GuestAddress(info + INFO_TEXT_LEN as u64))
        .expect("write");
    if lpos.0 & 1 == 0 {
        let same_wrap = lpos.0 / DATA_LEN == lpos.1 / DATA_LEN;
        let offset = if same_wrap { lpos.0 % DATA_LEN } else { 0 };
        put(DATA + offset, id);
        mem.write_slice(text.as_bytes(), GuestAddress(DATA + offset + 8))
            .expect("write");
    }
}

fn texts(records: &[LogRecord]) -> Vec<&str> {
    records.iter().map(|r| r.text.as_str()).collect()
}

#[test]
fn records_come_in_sequence_order_including_a_wrapped_block() {
    let mem = ring_memory();
    let wrap = 5 * DATA_LEN;
    add(
        &mem,
        5,
        DESC_FINALIZED,
        5,
        (wrap + 240, wrap + DATA_LEN + 32),
        "wrapped to the start",
    );
    add(
        &mem,
        2,
        DESC_FINALIZED,
        2,
        (wrap + 160, wrap + 184),
        "older line\n",
    );
    let records = read(&mem, &symbols()).expect("read");
    assert_eq!(texts(&records), vec!["older line", "wrapped to the start"]);
}

#[test]
fn reserved_and_data_less_records_are_skipped() {
    let mem = ring_memory();
    add(&mem, 1, DESC_COMMITTED, 1, (0, 16), "kept");
    add(&mem, 2, 0, 2, (16, 32), "being written");
    add(&mem, 3, DESC_FINALIZED, 3, (1, 1), "");
    assert_eq!(texts(&read(&mem, &symbols()).expect("read")), vec!["kept"]);
}

#[test]
fn a_block_overwritten_by_a_newer_record_is_dropped() {
    let mem = ring_memory();
    add(&mem, 1, DESC_FINALIZED, 1, (0, 16), "old");
    add(&mem, 6, DESC_FINALIZED, 6, (DATA_LEN, DATA_LEN + 16), "new");
    assert_eq!(texts(&read(&mem, &symbols()).expect("read")), vec!["new"]);
}

#[test]
fn an_implausible_descriptor_count_is_refused() {
    let mem = ring_memory();
    mem.write_obj(40u32, GuestAddress(RB)).expect("write");
    let err = read(&mem, &symbols()).expect_err("corrupt");
    assert_eq!(
        err.to_string(),
        "the guest's printk ring is not readable (descriptor count)"
    );
}

#[test]
fn a_record_prints_like_the_kernel_console() {
    let record = LogRecord {
        seq: 0,
        ts_nsec: 1_500_000_999,
        text: "Run /init as init process".into(),
    };
    assert_eq!(
        record.to_string(),
        "[    1.500000] Run /init as init process"
    );
}

#[test]
fn tail_finds_the_ring_through_the_kernel_symbols_and_keeps_the_last_lines() {
    let mem = ring_memory();
    add(&mem, 1, DESC_FINALIZED, 1, (0, 16), "one");
    add(&mem, 2, DESC_FINALIZED, 2, (16, 32), "two");
    add(&mem, 3, DESC_FINALIZED, 3, (32, 48), "three");
    let elf = tempfile::NamedTempFile::new().expect("temp");
    let syms = symbols();
    let table = [
        ("prb", syms.prb),
        ("log_buf", syms.log_buf),
        ("log_buf_len", syms.log_buf_len),
    ];
    std::fs::write(elf.path(), tiny_elf(&table)).expect("write");
    let tail = tail(&mem, elf.path(), 2).expect("tail");
    assert_eq!(tail, "[    1.000000] two\n[    1.500000] three\n");
}

#[test]
fn a_kernel_without_printk_symbols_is_named_as_such() {
    let elf = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(elf.path(), tiny_elf(&[("prb", 1)])).expect("write");
    let err = LogSymbols::from_kernel(elf.path()).expect_err("missing");
    assert_eq!(err.to_string(), "the kernel has no `log_buf` symbol");
}
