//! The protocol between the husk host (the VMM) and `husk-agent`, PID 1 of the guest.
//!
//! One connection carries frames in both directions: a 4-byte little-endian length, a
//! 1-byte kind and a payload (see [`frame`]). Control messages are JSON; stdio data
//! travels as raw bytes behind a process id. Both sides depend on this crate, so the
//! message set and the version number live in one place. `docs/protocol.md` describes
//! the wire format and the sequence of a run.

pub mod frame;
pub mod handshake;
pub mod message;

pub use frame::{read_frame, read_message, write_frame, write_message, Frame, FrameKind};
pub use handshake::{host_handshake, Greeting};
pub use message::{
    CpuQuota, DiskSize, ExitStatus, ImageSpec, Limits, Message, ProcessId, TtySize, VolumeMount,
    WritableLayer,
};

/// The protocol version. Bump it on any change to a message or to the framing; peers
/// with different versions refuse each other at the handshake.
pub const PROTOCOL_VERSION: u32 = 9;

/// The AF_VSOCK port the agent listens on inside the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// The largest frame (kind byte plus payload) either side accepts, 1 MiB.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// The largest stdio chunk a sender puts in one data frame (64 KiB), well below
/// [`MAX_FRAME_LEN`].
pub const MAX_DATA_CHUNK: usize = 64 * 1024;

/// Stdin bytes of one process the host may have sent and the agent (or a detached
/// sandbox's monitor) not yet acknowledged with [`Message::StdinAck`] (1 MiB, 16
/// chunks). A window of at least one chunk.
pub const STDIN_WINDOW: u64 = 1 << 20;

/// Errors of reading, writing, encoding or decoding frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The underlying stream failed.
    #[error("protocol stream i/o")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream cleanly between two frames.
    #[error("peer closed the connection")]
    Closed,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the frame announced.
        want: usize,
    },
    /// A frame announced a length beyond [`MAX_FRAME_LEN`].
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// A frame announced a length of zero (no room for the kind byte).
    #[error("empty frame (length 0)")]
    EmptyFrame,
    /// The kind byte names no known frame kind.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A data frame is shorter than its 4-byte process id.
    #[error("data frame of {0} bytes has no room for its process id")]
    ShortDataFrame(usize),
    /// A control frame's JSON did not parse as a message.
    #[error("bad control message")]
    BadJson(#[from] serde_json::Error),
    /// A message is too large to fit in one frame.
    #[error("message of {0} bytes does not fit in one frame")]
    MessageTooLarge(usize),
    /// The peer sent a message that makes no sense at this point.
    #[error("unexpected message: {0}")]
    Unexpected(String),
    /// The peer refused the connection with an Error message.
    #[error("refused by the peer: {0}")]
    Refused(String),
    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: ours is {ours}, the peer's is {theirs}")]
    VersionMismatch {
        /// This side's version.
        ours: u32,
        /// The peer's version.
        theirs: u32,
    },
}

/// Checks a peer's announced version against [`PROTOCOL_VERSION`].
pub fn check_version(theirs: u32) -> Result<(), ProtocolError> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_version_is_accepted() {
        assert!(check_version(PROTOCOL_VERSION).is_ok());
    }

    #[test]
    fn version_mismatch_error_names_both_versions() {
        let err = check_version(PROTOCOL_VERSION + 1).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("ours is {PROTOCOL_VERSION}")),
            "{text}"
        );
        assert!(
            text.contains(&format!("peer's is {}", PROTOCOL_VERSION + 1)),
            "{text}"
        );
    }
}
