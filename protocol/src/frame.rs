//! Framing: `len: u32 LE | kind: u8 | payload`, where `len` counts the kind byte and the
//! payload and never exceeds [`MAX_FRAME_LEN`].
//!
//! A control frame's payload is one JSON [`Message`]; a data frame's payload is the
//! process id (u32 LE) followed by the raw bytes. The length is checked before anything
//! is allocated, so a hostile or broken peer cannot make the reader allocate more than
//! one maximum frame.

use std::io::{ErrorKind, Read, Write};

use crate::message::{Message, ProcessId};
use crate::{ProtocolError, MAX_FRAME_LEN};

/// What a frame's payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A JSON control message.
    Control = 1,
    /// Host → agent stdin bytes.
    Stdin = 2,
    /// Agent → host stdout (or terminal) bytes.
    Stdout = 3,
    /// Agent → host stderr bytes.
    Stderr = 4,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Result<Self, ProtocolError> {
        match byte {
            1 => Ok(Self::Control),
            2 => Ok(Self::Stdin),
            3 => Ok(Self::Stdout),
            4 => Ok(Self::Stderr),
            other => Err(ProtocolError::UnknownKind(other)),
        }
    }
}

/// One frame as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The kind byte.
    pub kind: FrameKind,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Reads exactly `buf.len()` bytes; `Ok(n < len)` only when the stream ended early.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<usize, ProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Reads one frame. A clean end of stream before the first byte is
/// [`ProtocolError::Closed`]; an end inside a frame is [`ProtocolError::Truncated`].
/// The frame is consumed whole before its kind is checked, so after an
/// [`ProtocolError::UnknownKind`] the stream is still in step.
pub fn read_frame(reader: &mut impl Read) -> Result<Frame, ProtocolError> {
    let mut header = [0u8; 4];
    match read_full(reader, &mut header)? {
        0 => return Err(ProtocolError::Closed),
        4 => {}
        got => return Err(ProtocolError::Truncated { got, want: 4 }),
    }
    let len = u32::from_le_bytes(header);
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let want = len as usize;
    let mut body = vec![0u8; want];
    let got = read_full(reader, &mut body)?;
    if got < want {
        return Err(ProtocolError::Truncated {
            got: got + 4,
            want: want + 4,
        });
    }
    let kind = FrameKind::from_byte(body[0])?;
    body.remove(0);
    Ok(Frame {
        kind,
        payload: body,
    })
}

/// Writes one frame with a single `write_all`, then flushes.
pub fn write_frame(writer: &mut impl Write, frame: &Frame) -> Result<(), ProtocolError> {
    let len = frame.payload.len() + 1;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or(ProtocolError::MessageTooLarge(len))?;
    let mut buf = Vec::with_capacity(len + 4);
    buf.extend_from_slice(&len32.to_le_bytes());
    buf.push(frame.kind as u8);
    buf.extend_from_slice(&frame.payload);
    writer.write_all(&buf)?;
    writer.flush()?;
    Ok(())
}

fn data_frame(kind: FrameKind, process: ProcessId, data: &[u8]) -> Frame {
    let mut payload = Vec::with_capacity(data.len() + 4);
    payload.extend_from_slice(&process.to_le_bytes());
    payload.extend_from_slice(data);
    Frame { kind, payload }
}

fn split_data(payload: &[u8]) -> Result<(ProcessId, Vec<u8>), ProtocolError> {
    match payload.split_first_chunk::<4>() {
        Some((id, data)) => Ok((ProcessId::from_le_bytes(*id), data.to_vec())),
        None => Err(ProtocolError::ShortDataFrame(payload.len())),
    }
}

impl Message {
    /// Encodes the message as one frame.
    pub fn to_frame(&self) -> Result<Frame, ProtocolError> {
        let frame = match self {
            Message::Stdin { process, data } => data_frame(FrameKind::Stdin, *process, data),
            Message::Stdout { process, data } => data_frame(FrameKind::Stdout, *process, data),
            Message::Stderr { process, data } => data_frame(FrameKind::Stderr, *process, data),
            control => Frame {
                kind: FrameKind::Control,
                payload: serde_json::to_vec(control)?,
            },
        };
        if frame.payload.len() >= MAX_FRAME_LEN as usize {
            return Err(ProtocolError::MessageTooLarge(frame.payload.len()));
        }
        Ok(frame)
    }

    /// Decodes a frame into a message.
    pub fn from_frame(frame: &Frame) -> Result<Self, ProtocolError> {
        match frame.kind {
            FrameKind::Control => Ok(serde_json::from_slice(&frame.payload)?),
            FrameKind::Stdin => {
                split_data(&frame.payload).map(|(process, data)| Message::Stdin { process, data })
            }
            FrameKind::Stdout => {
                split_data(&frame.payload).map(|(process, data)| Message::Stdout { process, data })
            }
            FrameKind::Stderr => {
                split_data(&frame.payload).map(|(process, data)| Message::Stderr { process, data })
            }
        }
    }
}

/// Encodes and writes one message.
pub fn write_message(writer: &mut impl Write, message: &Message) -> Result<(), ProtocolError> {
    write_frame(writer, &message.to_frame()?)
}

/// Reads and decodes one message.
pub fn read_message(reader: &mut impl Read) -> Result<Message, ProtocolError> {
    Message::from_frame(&read_frame(reader)?)
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
