//! The state file: a fixed header, then one postcard-encoded body.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "HUSKSNAP"
//!      8     4  format version, u32 little endian (FORMAT_VERSION)
//!     12     8  body length in bytes, u64 little endian
//!     20    32  sha256 of the body
//!     52     …  body: postcard(StateFile { husk_version, fingerprint, state })
//! ```
//! A reader checks each in that order, so a foreign, truncated, corrupt or too new file
//! is refused with what is wrong before anything in it is decoded. The decoder is
//! postcard over serde types with bounded fields: hostile bytes give an error, never a
//! panic (see the property test).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fingerprint::Fingerprint;
use crate::vmm::persist::MicrovmState;

/// The first bytes of every husk state file.
pub const MAGIC: &[u8; 8] = b"HUSKSNAP";
/// The layout of the body; bumped on any change of the state types (2: disks and
/// network cards carry their rate limiters; 3: the entropy device carries its; 4: the
/// i8042 and its keyboard).
pub const FORMAT_VERSION: u32 = 4;
/// Header length.
pub const HEADER_LEN: usize = 52;
/// Largest body a reader accepts (a state with 32 vCPUs is a few hundred KiB).
pub const MAX_BODY: u64 = 64 << 20;

/// Errors reading a state file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The file does not start with the magic.
    #[error("not a husk snapshot (no HUSKSNAP header)")]
    Magic,
    /// Another version of the format.
    #[error("snapshot format version {found} ≠ this husk's {FORMAT_VERSION}")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// The file is shorter than its header says.
    #[error("snapshot state is truncated: {have} of {want} bytes")]
    Truncated {
        /// Bytes present.
        have: u64,
        /// Bytes the header announces.
        want: u64,
    },
    /// The file is longer than its header says, or the body is implausibly large.
    #[error("snapshot state has {extra} bytes after its body")]
    Trailing {
        /// Extra bytes.
        extra: u64,
    },
    /// The body's checksum does not match.
    #[error("snapshot state is corrupt: its sha256 does not match")]
    Checksum,
    /// The body does not decode.
    #[error("snapshot state does not decode: {0}")]
    Decode(String),
    /// The state could not be encoded.
    #[error("cannot encode the snapshot state: {0}")]
    Encode(String),
}

/// The body of a state file.
#[derive(Serialize, Deserialize)]
pub struct StateFile {
    /// The husk version that wrote it (for messages; the format version decides).
    pub husk_version: String,
    /// Where it may be restored.
    pub fingerprint: Fingerprint,
    /// The VM.
    pub state: MicrovmState,
}

/// Encode `file` with its header.
pub fn encode(file: &StateFile) -> Result<Vec<u8>, FormatError> {
    let body = postcard::to_stdvec(file).map_err(|e| FormatError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body));
    out.extend_from_slice(&body);
    Ok(out)
}

/// Check the header and checksum of `bytes` and decode the body.
pub fn decode(bytes: &[u8]) -> Result<StateFile, FormatError> {
    let body = check(bytes)?;
    postcard::from_bytes(body).map_err(|e| FormatError::Decode(e.to_string()))
}

/// The body of `bytes` once magic, version, length and checksum are right.
fn check(bytes: &[u8]) -> Result<&[u8], FormatError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FormatError::Magic);
    }
    let have = bytes.len() as u64;
    let header = bytes.get(..HEADER_LEN).ok_or(FormatError::Truncated {
        have,
        want: HEADER_LEN as u64,
    })?;
    let found = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if found != FORMAT_VERSION {
        return Err(FormatError::Version { found });
    }
    let len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let want = (HEADER_LEN as u64).saturating_add(len);
    if len > MAX_BODY || have < want {
        return Err(FormatError::Truncated { have, want });
    }
    if have > want {
        return Err(FormatError::Trailing { extra: have - want });
    }
    let body = &bytes[HEADER_LEN..];
    if Sha256::digest(body).as_slice() != &header[20..52] {
        return Err(FormatError::Checksum);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(body));
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_foreign_file_is_not_a_snapshot() {
        assert_eq!(check(b"\x7fELF....").unwrap_err(), FormatError::Magic);
    }

    #[test]
    fn another_format_version_is_named() {
        let mut bytes = framed(b"body");
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            check(&bytes).unwrap_err().to_string(),
            "snapshot format version 7 ≠ this husk's 4"
        );
    }

    #[test]
    fn a_truncated_file_says_how_much_is_missing() {
        let bytes = framed(b"some body");
        let err = check(&bytes[..bytes.len() - 4]).unwrap_err();
        assert_eq!(err, FormatError::Truncated { have: 57, want: 61 });
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let mut bytes = framed(b"some body");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(check(&bytes).unwrap_err(), FormatError::Checksum);
    }

    #[test]
    fn a_checksummed_body_that_is_no_state_does_not_decode() {
        let bytes = framed(&[0xff; 40]);
        assert!(matches!(decode(&bytes), Err(FormatError::Decode(_))));
    }

    #[test]
    fn a_huge_announced_length_is_refused_without_allocating() {
        let mut bytes = framed(b"x");
        bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(check(&bytes), Err(FormatError::Truncated { .. })));
    }

    proptest::proptest! {
        /// Whatever bytes a hostile or damaged file holds, decoding ends in an error or
        /// a state, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode(&bytes);
            let _ = decode(&framed(&bytes));
        }
    }
}
