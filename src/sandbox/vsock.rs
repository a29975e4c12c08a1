//! The host end of a hybrid vsock connection: a Unix socket to the VMM's vsock device,
//! then `CONNECT <port>\n`, answered with `OK <host port>\n` once the guest accepted.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to wait for the VMM's `OK` once CONNECT is sent.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors while connecting to a guest port.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The guest did not accept in time.
    #[error(
        "guest port {port} did not accept a connection through {uds} within {waited:?}: {last}"
    )]
    Timeout {
        /// The guest port.
        port: u32,
        /// The VMM's vsock socket.
        uds: String,
        /// How long we tried.
        waited: Duration,
        /// The last failure.
        last: String,
    },
}

/// Connect once: returns the stream when the guest accepted.
pub fn connect_once(uds: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    // The VMM answers at once when nothing listens (the guest resets the request); a
    // slow guest that is listening may take long to accept, so wait for it.
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    // Read the reply byte by byte so nothing after the newline is consumed.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "closed before OK",
            ));
        }
        line.push(byte[0]);
        if line.len() > 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
    let reply = String::from_utf8_lossy(&line);
    if !reply.starts_with("OK ") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("reply {:?}", reply.trim()),
        ));
    }
    stream.set_read_timeout(None)?;
    Ok(stream)
}

/// Connect, retrying every `interval` until `timeout` (the guest may still be booting).
pub fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
    interval: Duration,
) -> Result<UnixStream, ConnectError> {
    let start = Instant::now();
    loop {
        match connect_once(uds, port) {
            Ok(stream) => return Ok(stream),
            Err(e) if start.elapsed() >= timeout => {
                return Err(ConnectError::Timeout {
                    port,
                    uds: uds.display().to_string(),
                    waited: start.elapsed(),
                    last: e.to_string(),
                })
            }
            Err(_) => std::thread::sleep(interval),
        }
    }
}

/// Read one line (used by tests of peers that speak the same handshake).
pub fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn fake_vmm(
        reply: &'static str,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::thread::JoinHandle<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let request = read_line(&mut s).unwrap();
            s.write_all(reply.as_bytes()).unwrap();
            s.write_all(b"payload").unwrap();
            request
        });
        (dir, path, handle)
    }

    #[test]
    fn handshake_sends_connect_and_leaves_payload_unread() {
        let (_dir, path, handle) = fake_vmm("OK 1073741824\n");
        let mut stream = connect_once(&path, 1024).unwrap();
        assert_eq!(handle.join().unwrap(), "CONNECT 1024\n");
        let mut payload = [0u8; 7];
        stream.read_exact(&mut payload).unwrap();
        assert_eq!(&payload, b"payload");
    }

    #[test]
    fn refused_reply_is_an_error() {
        let (_dir, path, _handle) = fake_vmm("NO\n");
        assert!(connect_once(&path, 1024).is_err());
    }

    #[test]
    fn missing_socket_times_out_naming_port_and_socket() {
        let err = connect(
            Path::new("/nonexistent/v.sock"),
            1024,
            Duration::ZERO,
            Duration::ZERO,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("guest port 1024") && text.contains("/nonexistent/v.sock"),
            "{text}"
        );
    }
}
