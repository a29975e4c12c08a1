//! virtio-rng request processing, free of device state so it runs on test memory.

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryMmap, ReadVolatile};

use crate::devices::rate_limiter::Throttle;
use crate::devices::virtio::descriptor::{Chain, DescriptorError};
use crate::devices::virtio::queues::{drain_throttled, Drained, QueueError};

/// Most bytes given for one request; the driver asks again for more.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most descriptors in one request.
const MAX_DESCRIPTORS: usize = 64;

/// Fill the device-writable buffers of one chain from `source`; returns bytes written.
///
/// A chain with a device-readable buffer is answered with 0 bytes (there is no
/// status field to report it); a chain that is not inside guest memory is an error.
pub fn fill_request<R: ReadVolatile>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    source: &mut R,
) -> Result<u32, DescriptorError> {
    let chain = Chain::parse(chain, mem, MAX_DESCRIPTORS)?;
    if !chain.readable.is_empty() {
        log::debug!("virtio-rng: chain {} has readable buffers", chain.head);
        return Ok(0);
    }
    let mut left = MAX_REQUEST_BYTES;
    let mut written = 0usize;
    for buf in &chain.writable {
        let len = (buf.len as usize).min(left);
        if len == 0 {
            break;
        }
        // An entropy source that fails is a host problem: give what we have.
        match mem.read_exact_volatile_from(buf.addr, source, len) {
            Ok(()) => written += len,
            Err(e) => {
                log::warn!("virtio-rng: entropy read failed: {e}");
                break;
            }
        }
        left -= len;
    }
    Ok(u32::try_from(written).expect("at most MAX_REQUEST_BYTES"))
}

/// Serve up to `budget` requests of the rng queue (index 0), each once `throttle` lets
/// it through; each is charged the bytes it was given and one operation. A request
/// the throttle holds back stays in the ring.
pub fn process_queue<R: ReadVolatile>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    source: &mut R,
    budget: usize,
    throttle: &mut impl Throttle,
) -> Result<Drained, QueueError> {
    drain_throttled(queue, mem, 0, budget, throttle, |chain| {
        let written = fill_request(mem, chain, source).map_err(|e| QueueError::Request {
            index: 0,
            source: Box::new(e),
        })?;
        Ok((written, u64::from(written)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::rate_limiter::{Allow, Unthrottled};
    use crate::devices::virtio::descriptor::test_util::*;
    use virtio_queue::QueueT;

    fn run(
        descs: &[virtio_queue::desc::RawDescriptor],
    ) -> (Result<Drained, QueueError>, (u32, u32)) {
        let mem = memory();
        let (mock, mut q) = queue(&mem, 0, 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let src = vec![0xa5u8; 2 * MAX_REQUEST_BYTES];
        let r = process_queue(&mut q, &mem, &mut src.as_slice(), 16, &mut Unthrottled);
        (r, used(&mock, 0))
    }

    #[test]
    fn writable_buffers_are_filled_from_source() {
        let mem = memory();
        let (mock, mut q) = queue(&mem, 0, 16);
        mock.add_desc_chains(&linked(&[w(0x10000, 8), w(0x20000, 8)], 0), 0)
            .unwrap();
        let r = process_queue(
            &mut q,
            &mem,
            &mut [7u8; 16].as_slice(),
            16,
            &mut Unthrottled,
        )
        .unwrap();
        assert_eq!(
            r,
            Drained {
                used: 1,
                notify: true,
                more: false
            }
        );
        assert_eq!(used(&mock, 0), (0, 16));
        assert_eq!(
            mem.read_obj::<u64>(vm_memory::GuestAddress(0x20000))
                .unwrap(),
            0x0707_0707_0707_0707
        );
    }

    #[test]
    fn large_request_is_capped() {
        let (r, u) = run(&linked(&[w(0x10000, 0x20000)], 0));
        assert!(r.is_ok());
        assert_eq!(u, (0, MAX_REQUEST_BYTES as u32));
    }

    #[test]
    fn readable_buffer_gets_zero_bytes() {
        let (r, u) = run(&linked(&[r(0x10000, 8)], 0));
        assert!(r.is_ok());
        assert_eq!(u, (0, 0));
    }

    #[test]
    fn buffer_outside_memory_is_a_queue_error() {
        let (r, _) = run(&linked(&[w(0x1_0000_0000, 8)], 0));
        assert!(matches!(r, Err(QueueError::Request { index: 0, .. })));
    }

    #[test]
    fn avail_index_jump_past_queue_size_is_a_ring_error() {
        let mem = memory();
        let (mock, mut q) = queue(&mem, 0, 16);
        mock.avail().idx().store(100);
        let r = process_queue(&mut q, &mem, &mut [0u8; 8].as_slice(), 16, &mut Unthrottled);
        assert!(matches!(r, Err(QueueError::Ring { index: 0, .. })));
    }

    #[test]
    fn budget_leaves_remaining_chains_for_later() {
        let mem = memory();
        let (mock, mut q) = queue(&mem, 0, 16);
        mock.add_desc_chains(&[w(0x10000, 4), w(0x11000, 4), w(0x12000, 4)], 0)
            .unwrap();
        let r =
            process_queue(&mut q, &mem, &mut [1u8; 64].as_slice(), 2, &mut Unthrottled).unwrap();
        assert_eq!(
            r,
            Drained {
                used: 2,
                notify: true,
                more: true
            }
        );
        assert_eq!(q.next_avail(), 2);
    }

    #[test]
    fn a_blocked_throttle_leaves_requests_in_the_ring_and_each_is_charged_its_bytes() {
        let mem = memory();
        let (mock, mut q) = queue(&mem, 0, 16);
        mock.add_desc_chains(&[w(0x10000, 24), w(0x11000, 40), w(0x12000, 8)], 0)
            .unwrap();
        let mut throttle = Allow {
            left: 2,
            ..Allow::default()
        };
        let src = [3u8; 128];
        let r = process_queue(&mut q, &mem, &mut src.as_slice(), 16, &mut throttle).unwrap();
        assert_eq!(
            r,
            Drained {
                used: 2,
                notify: true,
                more: false
            }
        );
        assert_eq!(throttle.charged, [24, 40]);
        assert_eq!(q.next_avail(), 2);
        assert_eq!(used(&mock, 1), (1, 40));
    }

    #[test]
    fn a_request_with_a_readable_buffer_is_charged_nothing() {
        let mem = memory();
        let (mock, mut q) = queue(&mem, 0, 16);
        mock.add_desc_chains(&linked(&[r(0x10000, 8)], 0), 0)
            .unwrap();
        let mut throttle = Allow {
            left: 1,
            ..Allow::default()
        };
        process_queue(&mut q, &mem, &mut [0u8; 8].as_slice(), 16, &mut throttle).unwrap();
        assert_eq!(throttle.charged, [0]);
    }
}
