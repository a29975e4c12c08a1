//! The virtio-net header (`struct virtio_net_hdr_v1`, virtio 1.2 §5.1.6) and the
//! offloads negotiated with the driver.
//!
//! Each frame either way starts with this 12-byte header. The TAP takes and gives the
//! same header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12), so with offloads a guest's
//! partially checksummed or 64 KiB TSO frame goes to the host kernel as it is, and the
//! host's large frames come back in one piece. The guest's TX header is checked against
//! what it negotiated ([`Offloads::check_tx`]) and rebuilt in host memory before the
//! TAP sees it, so the host kernel never gets an offload the guest did not ask for, nor
//! a header the guest changes after the check.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};

use crate::devices::virtio::feature;

/// Length of `struct virtio_net_hdr_v1` (with `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame either way without the header: a 64 KiB GSO packet with its Ethernet
/// header (the host's `GSO_MAX_SIZE`, as Linux's virtio-net and tun assume).
pub const MAX_FRAME: usize = 65550;

/// `flags`: the checksum from `csum_start` on must be filled in.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was checked (RX only).
pub const F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` bit: the TCP stream has ECN (CWR) set.
pub const GSO_ECN: u8 = 0x80;

/// `TUNSETOFFLOAD` flags (`linux/if_tun.h`): what the TAP may hand us.
const TUN_F_CSUM: u32 = 0x01;
const TUN_F_TSO4: u32 = 0x02;
const TUN_F_TSO6: u32 = 0x04;
const TUN_F_TSO_ECN: u32 = 0x08;

/// The offload features a device offers (with MAC and EVENT_IDX beside them).
pub const OFFERED: u64 = feature(VIRTIO_NET_F_CSUM)
    | feature(VIRTIO_NET_F_GUEST_CSUM)
    | feature(VIRTIO_NET_F_GUEST_TSO4)
    | feature(VIRTIO_NET_F_GUEST_TSO6)
    | feature(VIRTIO_NET_F_GUEST_ECN)
    | feature(VIRTIO_NET_F_HOST_TSO4)
    | feature(VIRTIO_NET_F_HOST_TSO6)
    | feature(VIRTIO_NET_F_HOST_ECN)
    | feature(VIRTIO_NET_F_MRG_RXBUF);

/// A decoded `virtio_net_hdr_v1`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    /// `F_NEEDS_CSUM`, `F_DATA_VALID`.
    pub flags: u8,
    /// `GSO_*`, possibly with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Buffers a received frame spans (MRG_RXBUF; 1 otherwise).
    pub num_buffers: u16,
}

impl NetHeader {
    /// Decode the header's little-endian bytes.
    pub fn from_bytes(b: &[u8; NET_HDR_LEN]) -> Self {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }

    /// Encode the header.
    pub fn to_bytes(self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// Why a guest's TX header was refused (the frame is dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A flag the guest may not set on TX.
    #[error("TX header flags {0:#x} not allowed")]
    Flags(u8),
    /// A GSO type that was not negotiated (or does not exist).
    #[error("TX GSO type {0:#x} not negotiated")]
    GsoType(u8),
    /// GSO without a segment size or without a partial checksum.
    #[error("TX GSO frame without segment size or checksum offload")]
    Gso,
    /// The checksum field lies beyond the frame.
    #[error("TX checksum at {start}+{offset} outside a {len}-byte frame")]
    Checksum {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length without the header.
        len: usize,
    },
}

/// The offloads in effect, from the features the driver accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    acked: u64,
}

impl Offloads {
    /// The offloads of `acked` features (dependencies of virtio 1.2 §5.1.3.1 applied:
    /// an offload whose prerequisite is missing counts as not negotiated).
    pub fn from_acked(acked: u64) -> Self {
        Self { acked }
    }

    fn has(self, bit: u32) -> bool {
        self.acked & feature(bit) != 0
    }

    /// The guest sends partially checksummed frames (VIRTIO_NET_F_CSUM).
    pub fn tx_csum(self) -> bool {
        self.has(VIRTIO_NET_F_CSUM)
    }

    fn tx_gso(self, gso: u8) -> bool {
        self.tx_csum()
            && match gso {
                GSO_TCPV4 => self.has(VIRTIO_NET_F_HOST_TSO4),
                GSO_TCPV6 => self.has(VIRTIO_NET_F_HOST_TSO6),
                _ => false,
            }
    }

    /// The guest takes partially checksummed frames (VIRTIO_NET_F_GUEST_CSUM).
    pub fn rx_csum(self) -> bool {
        self.has(VIRTIO_NET_F_GUEST_CSUM)
    }

    /// Received frames may span several buffers (VIRTIO_NET_F_MRG_RXBUF).
    pub fn mergeable(self) -> bool {
        self.has(VIRTIO_NET_F_MRG_RXBUF)
    }

    /// The `TUNSETOFFLOAD` flags for what the guest accepts on RX.
    pub fn tap_flags(self) -> u32 {
        if !self.rx_csum() {
            return 0;
        }
        let mut flags = TUN_F_CSUM;
        if self.has(VIRTIO_NET_F_GUEST_TSO4) {
            flags |= TUN_F_TSO4;
        }
        if self.has(VIRTIO_NET_F_GUEST_TSO6) {
            flags |= TUN_F_TSO6;
        }
        if flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 && self.has(VIRTIO_NET_F_GUEST_ECN) {
            flags |= TUN_F_TSO_ECN;
        }
        flags
    }

    /// Check the header the guest put before a TX frame of `len` bytes and return the
    /// one to hand the TAP. Without VIRTIO_NET_F_CSUM the guest's header means nothing
    /// and an empty one goes out.
    pub fn check_tx(self, hdr: &NetHeader, len: usize) -> Result<NetHeader, HeaderError> {
        if !self.tx_csum() {
            return Ok(NetHeader::default());
        }
        // DATA_VALID is an RX flag; a driver that sets it on TX gets it ignored.
        let flags = hdr.flags & !F_DATA_VALID;
        if flags & !F_NEEDS_CSUM != 0 {
            return Err(HeaderError::Flags(hdr.flags));
        }
        let mut out = NetHeader {
            flags,
            ..NetHeader::default()
        };
        if flags & F_NEEDS_CSUM != 0 {
            let end = usize::from(hdr.csum_start) + usize::from(hdr.csum_offset) + 2;
            if end > len {
                return Err(HeaderError::Checksum {
                    start: hdr.csum_start,
                    offset: hdr.csum_offset,
                    len,
                });
            }
            out.csum_start = hdr.csum_start;
            out.csum_offset = hdr.csum_offset;
        }
        let gso = hdr.gso_type & !GSO_ECN;
        if gso == GSO_NONE && hdr.gso_type & GSO_ECN == 0 {
            return Ok(out);
        }
        let ecn_ok = hdr.gso_type & GSO_ECN == 0 || self.has(VIRTIO_NET_F_HOST_ECN);
        if !self.tx_gso(gso) || !ecn_ok {
            return Err(HeaderError::GsoType(hdr.gso_type));
        }
        if hdr.gso_size == 0 || flags & F_NEEDS_CSUM == 0 {
            return Err(HeaderError::Gso);
        }
        out.gso_type = hdr.gso_type;
        out.gso_size = hdr.gso_size;
        out.hdr_len = hdr.hdr_len.min(u16::try_from(len).unwrap_or(u16::MAX));
        Ok(out)
    }

    /// Make the header the TAP wrote for an RX frame fit for the guest: `num_buffers`
    /// set, and without VIRTIO_NET_F_GUEST_CSUM no flags or GSO fields at all.
    pub fn rx_header(self, tap: &NetHeader, num_buffers: u16) -> NetHeader {
        match self.rx_csum() {
            true => NetHeader {
                num_buffers,
                ..*tap
            },
            false => NetHeader {
                num_buffers,
                ..NetHeader::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn all() -> Offloads {
        Offloads::from_acked(OFFERED)
    }

    fn tso4(gso_size: u16) -> NetHeader {
        NetHeader {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 66,
            gso_size,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    #[test]
    fn header_round_trips_through_bytes() {
        let h = NetHeader {
            num_buffers: 3,
            ..tso4(1448)
        };
        assert_eq!(NetHeader::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn a_tso_frame_of_a_guest_that_negotiated_it_passes_without_num_buffers() {
        let h = NetHeader {
            num_buffers: 9,
            ..tso4(1448)
        };
        assert_eq!(all().check_tx(&h, 65000), Ok(tso4(1448)));
    }

    #[test]
    fn a_tso_frame_without_host_tso4_is_refused() {
        let acked = OFFERED & !feature(VIRTIO_NET_F_HOST_TSO4);
        let e = Offloads::from_acked(acked).check_tx(&tso4(1448), 65000);
        assert_eq!(e, Err(HeaderError::GsoType(GSO_TCPV4)));
    }

    #[test]
    fn without_csum_the_guest_header_is_replaced_by_an_empty_one() {
        let none = Offloads::from_acked(0);
        assert_eq!(none.check_tx(&tso4(1448), 100), Ok(NetHeader::default()));
    }

    #[test]
    fn a_checksum_beyond_the_frame_is_refused() {
        let h = NetHeader {
            gso_type: GSO_NONE,
            gso_size: 0,
            ..tso4(0)
        };
        assert!(matches!(
            all().check_tx(&h, 40),
            Err(HeaderError::Checksum { .. })
        ));
    }

    #[test]
    fn gso_with_a_zero_segment_size_is_refused() {
        assert_eq!(all().check_tx(&tso4(0), 65000), Err(HeaderError::Gso));
    }

    #[test]
    fn ecn_without_host_ecn_is_refused() {
        let acked = OFFERED & !feature(VIRTIO_NET_F_HOST_ECN);
        let h = NetHeader {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..tso4(1448)
        };
        let e = Offloads::from_acked(acked).check_tx(&h, 65000);
        assert_eq!(e, Err(HeaderError::GsoType(GSO_TCPV4 | GSO_ECN)));
    }

    #[test]
    fn tap_gets_tso_only_with_guest_csum() {
        let no_csum = OFFERED & !feature(VIRTIO_NET_F_GUEST_CSUM);
        assert_eq!(Offloads::from_acked(no_csum).tap_flags(), 0);
        assert_eq!(
            all().tap_flags(),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
    }

    #[test]
    fn rx_header_of_a_guest_without_guest_csum_has_only_num_buffers() {
        let h = Offloads::from_acked(0).rx_header(&tso4(1448), 1);
        assert_eq!(
            h,
            NetHeader {
                num_buffers: 1,
                ..NetHeader::default()
            }
        );
    }

    proptest! {
        /// Whatever a guest writes, an accepted header never carries more than its
        /// features allow, and its checksum field lies inside the frame.
        #[test]
        fn accepted_tx_headers_stay_within_the_negotiated_offloads(
            raw in any::<[u8; NET_HDR_LEN]>(),
            acked in any::<u64>(),
            len in 0usize..=MAX_FRAME,
        ) {
            let offloads = Offloads::from_acked(acked & OFFERED);
            if let Ok(h) = offloads.check_tx(&NetHeader::from_bytes(&raw), len) {
                prop_assert_eq!(h.num_buffers, 0);
                prop_assert_eq!(h.flags & !F_NEEDS_CSUM, 0);
                prop_assert!(h.flags == 0 || offloads.tx_csum());
                let gso = h.gso_type & !GSO_ECN;
                prop_assert!(gso == GSO_NONE || offloads.tx_gso(gso));
                prop_assert!(gso == GSO_NONE || h.gso_size > 0);
                let csum_end = usize::from(h.csum_start) + usize::from(h.csum_offset) + 2;
                prop_assert!(h.flags == 0 || csum_end <= len);
                prop_assert!(usize::from(h.hdr_len) <= len);
            }
        }
    }
}
