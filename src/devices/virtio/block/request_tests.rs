//! Tests of block request processing on in-memory queues and a tmpfs image.
use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::rate_limiter::Unthrottled;
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::descriptor::test_util::*;

/// The disk of a test image.
fn open_disk(img: &TempImage, read_only: bool) -> Disk {
    let config = BlockConfig {
        path: img.0.clone(),
        read_only,
        id: Some("husk-serial".into()),
        root: false,
        rate_limiter: None,
    };
    Disk::open(&config).unwrap()
}

const HDR: u64 = 0x8000;
const STATUS: u64 = 0x9000;
const DATA: u64 = 0x10000;

/// Write a request header at HDR.
fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    mem.write_obj(kind, GuestAddress(HDR)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
}

/// Run one chain; returns (queue result, used len, status byte).
fn run(mem: &GuestMemoryMmap, disk: &mut Disk, descs: &[RawDescriptor]) -> (bool, u32, u8) {
    let (mock, mut q) = queue(mem, 0, 16);
    mock.add_desc_chains(&linked(descs, 0), 0).unwrap();
    let ok = process_queue(&mut q, mem, disk, 16, &mut Unthrottled).is_ok();
    (ok, used(&mock, 0).1, status_at(mem, STATUS))
}

/// Header, one data buffer, status.
fn rw_request(data_desc: RawDescriptor) -> Vec<RawDescriptor> {
    vec![r(HDR, 16), data_desc, w(STATUS, 1)]
}

#[test]
fn read_copies_sectors_and_reports_ok() {
    let img = TempImage::new(4096, 0x5a);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_IN, 2);
    let r = run(&mem, &mut disk, &rw_request(w(DATA, 1024)));
    assert_eq!(r, (true, 1025, VIRTIO_BLK_S_OK as u8));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 1023)).unwrap(), 0x5a);
}

#[test]
fn write_stores_guest_data_in_image() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_OUT, 1);
    mem.write_slice(&[0xc3; 512], GuestAddress(DATA)).unwrap();
    let r = run(&mem, &mut disk, &rw_request(r(DATA, 512)));
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_OK as u8));
    assert_eq!(std::fs::read(&img.0).unwrap()[512..1024], [0xc3; 512]);
    assert_eq!(std::fs::read(&img.0).unwrap()[1024], 0);
}

#[test]
fn write_to_read_only_disk_is_ioerr_and_leaves_image() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, true));
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    mem.write_slice(&[0xc3; 512], GuestAddress(DATA)).unwrap();
    let r = run(&mem, &mut disk, &rw_request(r(DATA, 512)));
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_IOERR as u8));
    assert_eq!(std::fs::read(&img.0).unwrap(), vec![0; 4096]);
}

#[test]
fn read_past_end_is_ioerr() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_IN, 7);
    let r = run(&mem, &mut disk, &rw_request(w(DATA, 1024)));
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_IOERR as u8));
}

#[test]
fn sector_that_overflows_bytes_is_ioerr() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_IN, u64::MAX);
    let r = run(&mem, &mut disk, &rw_request(w(DATA, 512)));
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_IOERR as u8));
}

#[test]
fn partial_sector_read_is_ioerr() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let r = run(&mem, &mut disk, &rw_request(w(DATA, 100)));
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_IOERR as u8));
}

#[test]
fn read_with_device_readable_data_is_ioerr() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let r = run(&mem, &mut disk, &rw_request(r(DATA, 512)));
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_IOERR as u8));
}

#[test]
fn short_header_is_ioerr() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    let r = run(&mem, &mut disk, &[r(HDR, 8), w(STATUS, 1)]);
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_IOERR as u8));
}

#[test]
fn unknown_type_is_unsupp() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, 99, 0);
    let r = run(&mem, &mut disk, &[r(HDR, 16), w(STATUS, 1)]);
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_UNSUPP as u8));
}

#[test]
fn flush_reports_ok() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let r = run(&mem, &mut disk, &[r(HDR, 16), w(STATUS, 1)]);
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_OK as u8));
}

#[test]
fn get_id_writes_serial() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    let r = run(&mem, &mut disk, &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)]);
    assert_eq!(r, (true, 21, VIRTIO_BLK_S_OK as u8));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..12], b"husk-serial\0");
}

#[test]
fn discard_on_tmpfs_reads_back_zeroes() {
    let img = TempImage::new(4096, 0xff);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    mem.write_obj(2u64, GuestAddress(DATA)).unwrap();
    mem.write_obj(2u32, GuestAddress(DATA + 8)).unwrap();
    let r = run(&mem, &mut disk, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_OK as u8));
    assert_eq!(std::fs::read(&img.0).unwrap()[1024..2048], [0; 1024]);
    assert_eq!(std::fs::read(&img.0).unwrap()[2048], 0xff);
}

#[test]
fn write_zeroes_on_tmpfs_reads_back_zeroes() {
    let img = TempImage::new(4096, 0xff);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
    mem.write_obj(1u32, GuestAddress(DATA + 8)).unwrap();
    let r = run(&mem, &mut disk, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_OK as u8));
    assert_eq!(std::fs::read(&img.0).unwrap()[..512], [0; 512]);
}

#[test]
fn discard_with_unknown_flag_is_unsupp() {
    let img = TempImage::new(4096, 0xff);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    mem.write_obj(1u32, GuestAddress(DATA + 8)).unwrap();
    mem.write_obj(1u32, GuestAddress(DATA + 12)).unwrap();
    let r = run(&mem, &mut disk, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_UNSUPP as u8));
}

#[test]
fn discard_on_read_only_disk_is_unsupp() {
    let img = TempImage::new(4096, 0xff);
    let (mem, mut disk) = (memory(), open_disk(&img, true));
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    let r = run(&mem, &mut disk, &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)]);
    assert_eq!(r, (true, 1, VIRTIO_BLK_S_UNSUPP as u8));
}

#[test]
fn chain_without_status_byte_is_a_queue_error() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let r = run(&mem, &mut disk, &[r(HDR, 16)]);
    assert!(!r.0);
}

#[test]
fn data_outside_memory_is_a_queue_error() {
    let img = TempImage::new(4096, 0);
    let (mem, mut disk) = (memory(), open_disk(&img, false));
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let r = run(&mem, &mut disk, &rw_request(w(0xffe00, 0x1000)));
    assert!(!r.0);
}
