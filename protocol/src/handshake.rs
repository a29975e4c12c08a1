//! The host's half of the handshake, so the VMM side does not re-implement it: read the
//! agent's Hello, check the version, answer HelloAck (or Error, naming both versions).

use std::io::{Read, Write};

use crate::frame::{read_message, write_message};
use crate::message::Message;
use crate::{check_version, ProtocolError, PROTOCOL_VERSION};

/// What the agent said in its Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The agent's crate version.
    pub agent_version: String,
    /// The sandbox generation that answered (see [`Message::Hello`]).
    pub generation: u64,
}

/// Performs the host side of the handshake on a fresh connection and returns the
/// agent's greeting. On a version mismatch the agent is told with an Error message
/// before [`ProtocolError::VersionMismatch`] is returned.
pub fn host_handshake<S: Read + Write>(stream: &mut S) -> Result<Greeting, ProtocolError> {
    let (version, greeting) = match read_message(stream)? {
        Message::Hello {
            version,
            agent_version,
            generation,
        } => (
            version,
            Greeting {
                agent_version,
                generation,
            },
        ),
        Message::Error { message } => return Err(ProtocolError::Refused(message)),
        other => return Err(ProtocolError::Unexpected(format!("{other:?}"))),
    };
    if let Err(e) = check_version(version) {
        write_message(
            stream,
            &Message::Error {
                message: e.to_string(),
            },
        )?;
        return Err(e);
    }
    write_message(
        stream,
        &Message::HelloAck {
            version: PROTOCOL_VERSION,
        },
    )?;
    Ok(greeting)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A stream that reads `input` and records what is written.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn agent_says(message: &Message) -> Duplex {
        let mut input = Vec::new();
        write_message(&mut input, message).expect("encodes");
        Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        }
    }

    fn host_wrote(stream: &Duplex) -> Message {
        read_message(&mut stream.output.as_slice()).expect("host wrote a message")
    }

    #[test]
    fn matching_hello_is_acknowledged() {
        let mut stream = agent_says(&Message::Hello {
            version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            generation: 2,
        });
        let greeting = Greeting {
            agent_version: "0.1.0".into(),
            generation: 2,
        };
        assert_eq!(host_handshake(&mut stream).expect("handshake"), greeting);
        assert_eq!(
            host_wrote(&stream),
            Message::HelloAck {
                version: PROTOCOL_VERSION
            }
        );
    }

    #[test]
    fn version_mismatch_tells_the_agent_and_fails() {
        let theirs = PROTOCOL_VERSION + 1;
        let mut stream = agent_says(&Message::Hello {
            version: theirs,
            agent_version: "9.9.9".into(),
            generation: 0,
        });
        let err = host_handshake(&mut stream).unwrap_err();
        assert!(
            matches!(err, ProtocolError::VersionMismatch { theirs: t, .. } if t == theirs),
            "{err}"
        );
        assert!(
            matches!(host_wrote(&stream), Message::Error { message } if message.contains(&format!("peer's is {theirs}")))
        );
    }

    #[test]
    fn other_first_message_is_unexpected() {
        let mut stream = agent_says(&Message::Shutdown);
        let err = host_handshake(&mut stream).unwrap_err();
        assert_eq!(err.to_string(), "unexpected message: Shutdown");
    }
}
