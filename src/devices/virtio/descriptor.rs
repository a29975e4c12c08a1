//! Descriptor chains checked before a device trusts them.
//!
//! `virtio_queue::DescriptorChain` already bounds loops (a chain yields at most queue-size
//! descriptors) and stops on unreadable descriptors. On top of that, [`Chain::parse`]
//! rejects chains that are too long, that put a device-readable buffer after a
//! device-writable one (virtio 1.2 §2.7.4.2) or whose buffers leave guest memory, so the
//! devices only copy to and from ranges known to be valid.

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Errors in a guest-provided descriptor chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DescriptorError {
    /// The chain has no descriptor (bad head index or unreadable descriptor table).
    #[error("descriptor chain {head} is empty")]
    Empty {
        /// Head index.
        head: u16,
    },
    /// More descriptors than the device accepts.
    #[error("descriptor chain {head} is longer than {max} descriptors")]
    TooLong {
        /// Head index.
        head: u16,
        /// Limit.
        max: usize,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("descriptor chain {head} has a readable buffer after a writable one")]
    ReadableAfterWritable {
        /// Head index.
        head: u16,
    },
    /// A buffer is not entirely inside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The buffers are shorter than the access.
    #[error("buffers hold {have} bytes, {need} needed")]
    TooShort {
        /// Bytes the buffers hold past the offset.
        have: usize,
        /// Bytes requested.
        need: usize,
    },
}

/// One guest buffer, known to be inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A parsed descriptor chain: readable buffers, then writable ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Index of the head descriptor, returned in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Buffer>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Buffer>,
}

impl Chain {
    /// Check `chain` against `mem` and collect its buffers (at most `max` of them).
    pub fn parse(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        max: usize,
    ) -> Result<Self, DescriptorError> {
        let head = chain.head_index();
        let mut parsed = Chain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        for (count, desc) in chain.enumerate() {
            if count >= max {
                return Err(DescriptorError::TooLong { head, max });
            }
            let buf = Buffer {
                addr: desc.addr(),
                len: desc.len(),
            };
            if !mem.check_range(buf.addr, buf.len as usize, Permissions::ReadWrite) {
                return Err(DescriptorError::OutsideMemory {
                    addr: buf.addr.0,
                    len: buf.len,
                });
            }
            if desc.is_write_only() {
                parsed.writable.push(buf);
            } else if parsed.writable.is_empty() {
                parsed.readable.push(buf);
            } else {
                return Err(DescriptorError::ReadableAfterWritable { head });
            }
        }
        if parsed.readable.is_empty() && parsed.writable.is_empty() {
            return Err(DescriptorError::Empty { head });
        }
        Ok(parsed)
    }
}

/// Total length of `bufs`.
pub fn total_len(bufs: &[Buffer]) -> usize {
    bufs.iter().map(|b| b.len as usize).sum()
}

/// The part of `bufs` that covers bytes `offset..offset + len`, as buffers.
pub fn sub_range(
    bufs: &[Buffer],
    offset: usize,
    len: usize,
) -> Result<Vec<Buffer>, DescriptorError> {
    Ok(sub_ranges(bufs, offset, len)?.collect())
}

/// [`sub_range`] without collecting: the buffers one at a time, for a copy that needs
/// no list of them (a header read or written once per packet) or a list that gathers
/// the ranges of several chains.
pub fn sub_ranges(
    bufs: &[Buffer],
    offset: usize,
    len: usize,
) -> Result<SubRanges<'_>, DescriptorError> {
    let have = total_len(bufs).saturating_sub(offset);
    if have < len {
        return Err(DescriptorError::TooShort { have, need: len });
    }
    Ok(SubRanges {
        bufs: bufs.iter(),
        skip: offset,
        left: len,
    })
}

/// The buffers of a byte range of a chain's buffers ([`sub_ranges`]).
pub struct SubRanges<'b> {
    bufs: std::slice::Iter<'b, Buffer>,
    /// Bytes still to skip before the range.
    skip: usize,
    /// Bytes of the range not yet yielded.
    left: usize,
}

impl Iterator for SubRanges<'_> {
    type Item = Buffer;

    fn next(&mut self) -> Option<Buffer> {
        while self.left > 0 {
            let b = self.bufs.next()?;
            let blen = b.len as usize;
            if self.skip >= blen {
                self.skip -= blen;
                continue;
            }
            let take = (blen - self.skip).min(self.left);
            // Cannot overflow: the buffer was checked to lie inside guest memory.
            let addr = GuestAddress(b.addr.0 + self.skip as u64);
            self.left -= take;
            self.skip = 0;
            let len = u32::try_from(take).expect("take is at most a u32 buffer length");
            return Some(Buffer { addr, len });
        }
        None
    }
}

/// Copy bytes `offset..offset + dst.len()` of `bufs` into `dst`.
pub fn read_bytes(
    mem: &GuestMemoryMmap,
    bufs: &[Buffer],
    offset: usize,
    dst: &mut [u8],
) -> Result<(), DescriptorError> {
    let mut done = 0;
    for b in sub_ranges(bufs, offset, dst.len())? {
        let end = done + b.len as usize;
        mem.read_slice(&mut dst[done..end], b.addr).map_err(|_| {
            DescriptorError::OutsideMemory {
                addr: b.addr.0,
                len: b.len,
            }
        })?;
        done = end;
    }
    Ok(())
}

/// Copy `src` into bytes `offset..offset + src.len()` of `bufs`.
pub fn write_bytes(
    mem: &GuestMemoryMmap,
    bufs: &[Buffer],
    offset: usize,
    src: &[u8],
) -> Result<(), DescriptorError> {
    let mut done = 0;
    for b in sub_ranges(bufs, offset, src.len())? {
        let end = done + b.len as usize;
        mem.write_slice(&src[done..end], b.addr)
            .map_err(|_| DescriptorError::OutsideMemory {
                addr: b.addr.0,
                len: b.len,
            })?;
        done = end;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Hand-built virtqueues on in-memory guest memory.
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// 1 MiB of guest memory at 0.
    pub fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A readable descriptor.
    pub fn r(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, 0, 0))
    }

    /// A writable descriptor.
    pub fn w(addr: u64, len: u32) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0))
    }

    /// A descriptor with explicit flags and next index.
    pub fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Link `descs` into one chain (NEXT flags and indices from `first`).
    pub fn linked(descs: &[RawDescriptor], first: u16) -> Vec<RawDescriptor> {
        let last = descs.len() - 1;
        descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let d = Descriptor::from(*d);
                let (flags, next) = match i == last {
                    true => (d.flags() & !(VRING_DESC_F_NEXT as u16), 0),
                    false => (d.flags() | VRING_DESC_F_NEXT as u16, first + i as u16 + 1),
                };
                RawDescriptor::from(Descriptor::new(d.addr().0, d.len(), flags, next))
            })
            .collect()
    }

    /// A mock queue of `size` at `base` and the device-side `Queue` for it.
    pub fn queue(
        mem: &GuestMemoryMmap,
        base: u64,
        size: u16,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), size);
        let q = mock.create_queue().unwrap();
        (mock, q)
    }

    /// An image file in /dev/shm (tmpfs), removed on drop.
    pub struct TempImage(pub std::path::PathBuf);

    impl TempImage {
        /// A file of `len` bytes of `fill`.
        pub fn new(len: usize, fill: u8) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let path = format!("/dev/shm/husk-img-{}-{n}", std::process::id());
            std::fs::write(&path, vec![fill; len]).unwrap();
            Self(path.into())
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Used ring entry `i` as (id, len).
    pub fn used(mock: &MockSplitQueue<'_, GuestMemoryMmap>, i: usize) -> (u32, u32) {
        let e = mock.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use virtio_queue::QueueOwnedT;

    fn parse_first(descs: &[virtio_queue::desc::RawDescriptor]) -> Result<Chain, DescriptorError> {
        let mem = memory();
        let (mock, mut q) = queue(&mem, 0, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let chain = q.iter(&mem).unwrap().next().unwrap();
        Chain::parse(chain, &mem, 8)
    }

    #[test]
    fn readable_then_writable_chain_parses() {
        let c = parse_first(&linked(&[r(0x1000, 16), w(0x2000, 1)], 0)).unwrap();
        assert_eq!(
            c.readable,
            vec![Buffer {
                addr: GuestAddress(0x1000),
                len: 16
            }]
        );
        assert_eq!(
            c.writable,
            vec![Buffer {
                addr: GuestAddress(0x2000),
                len: 1
            }]
        );
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let e = parse_first(&linked(&[w(0x1000, 16), r(0x2000, 1)], 0));
        assert_eq!(e, Err(DescriptorError::ReadableAfterWritable { head: 0 }));
    }

    #[test]
    fn buffer_outside_memory_is_rejected() {
        let e = parse_first(&linked(&[r(0xff000, 0x2000)], 0));
        assert_eq!(
            e,
            Err(DescriptorError::OutsideMemory {
                addr: 0xff000,
                len: 0x2000
            })
        );
    }

    #[test]
    fn buffer_with_wrapping_address_is_rejected() {
        let e = parse_first(&linked(&[r(u64::MAX - 4, 16)], 0));
        assert_eq!(
            e,
            Err(DescriptorError::OutsideMemory {
                addr: u64::MAX - 4,
                len: 16
            })
        );
    }

    #[test]
    fn looping_chain_is_too_long() {
        let f = VRING_DESC_F_NEXT_U16;
        let e = parse_first(&[raw(0x1000, 4, f, 1), raw(0x1000, 4, f, 0)]);
        assert_eq!(e, Err(DescriptorError::TooLong { head: 0, max: 8 }));
    }

    #[test]
    fn head_index_past_queue_is_empty() {
        let mem = memory();
        let (mock, mut q) = queue(&mem, 0, 16);
        mock.avail().ring().ref_at(0).unwrap().store(200);
        mock.avail().idx().store(1);
        let chain = q.iter(&mem).unwrap().next().unwrap();
        assert_eq!(
            Chain::parse(chain, &mem, 8),
            Err(DescriptorError::Empty { head: 200 })
        );
    }

    #[test]
    fn indirect_table_outside_memory_ends_chain_empty() {
        let indirect = VRING_DESC_F_INDIRECT_U16;
        let e = parse_first(&[raw(0x4000_0000, 64, indirect, 0)]);
        assert_eq!(e, Err(DescriptorError::Empty { head: 0 }));
    }

    #[test]
    fn bytes_span_buffers() {
        let mem = memory();
        let bufs = [
            Buffer {
                addr: GuestAddress(0x1000),
                len: 2,
            },
            Buffer {
                addr: GuestAddress(0x3000),
                len: 4,
            },
        ];
        write_bytes(&mem, &bufs, 1, &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 6];
        read_bytes(&mem, &bufs, 0, &mut out).unwrap();
        assert_eq!(out, [0, 1, 2, 3, 4, 0]);
    }

    #[test]
    fn read_past_buffers_is_too_short() {
        let mem = memory();
        let bufs = [Buffer {
            addr: GuestAddress(0x1000),
            len: 2,
        }];
        let e = read_bytes(&mem, &bufs, 1, &mut [0u8; 4]);
        assert_eq!(e, Err(DescriptorError::TooShort { have: 1, need: 4 }));
    }

    proptest::proptest! {
        /// Any byte range of any buffers, read through [`read_bytes`] and listed by
        /// [`sub_range`], is exactly those bytes of the buffers laid end to end.
        #[test]
        fn a_range_of_buffers_is_those_bytes_end_to_end(
            lens in proptest::collection::vec(0u32..40, 1..6),
            start in 0usize..200,
            want in 0usize..200,
        ) {
            let mem = memory();
            // Buffer i at 0x1000 * (i + 1), filled with bytes that name their place.
            let bufs: Vec<Buffer> = lens.iter().enumerate().map(|(i, &len)| Buffer {
                addr: GuestAddress(0x1000 * (i as u64 + 1)),
                len,
            }).collect();
            let mut flat = Vec::new();
            for (i, b) in bufs.iter().enumerate() {
                let bytes: Vec<u8> = (0..b.len).map(|j| (i as u32 * 40 + j) as u8).collect();
                mem.write_slice(&bytes, b.addr).unwrap();
                flat.extend(bytes);
            }
            let mut out = vec![0u8; want];
            let read = read_bytes(&mem, &bufs, start, &mut out);
            let listed = sub_range(&bufs, start, want);
            let have = flat.len().saturating_sub(start);
            if want <= have {
                let from = start.min(flat.len());
                proptest::prop_assert_eq!(read, Ok(()));
                proptest::prop_assert_eq!(&out[..], &flat[from..from + want]);
                let listed = listed.unwrap();
                proptest::prop_assert_eq!(total_len(&listed), want);
                proptest::prop_assert!(listed.iter().all(|b| b.len > 0));
            } else {
                let short = || DescriptorError::TooShort { have, need: want };
                proptest::prop_assert_eq!(read, Err(short()));
                proptest::prop_assert_eq!(listed, Err(short()));
            }
        }
    }

    const VRING_DESC_F_INDIRECT_U16: u16 =
        virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
    const VRING_DESC_F_NEXT_U16: u16 =
        virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
}
