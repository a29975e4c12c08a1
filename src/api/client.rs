//! The caller's side of the API socket: one request at a time over a Unix socket
//! connection, the response's status and JSON body read back (headers parsed by
//! `httparse`, the body bounded).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Most bytes of a response body the client reads.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Errors of an API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the exchange broke.
    #[error("API socket {socket}: {source}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The response is not one this client understands.
    #[error("API socket {socket}: bad response: {message}")]
    BadResponse {
        /// The socket.
        socket: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The VMM answered with an error.
    #[error("{method} {path}: {status}: {message}")]
    Refused {
        /// The method.
        method: String,
        /// The path.
        path: String,
        /// The status.
        status: u16,
        /// The VMM's `fault_message`.
        message: String,
    },
}

/// A client of one VMM's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl ApiClient {
    /// A client of the API on `socket`; each call waits at most `timeout` (`None`: as
    /// long as the request takes, e.g. a snapshot of a large VM).
    pub fn new(socket: &Path, timeout: Option<Duration>) -> Self {
        Self {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> ClientError + '_ {
        move |source| ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }

    /// Send `method path` with `body` (JSON) and return the response's JSON body
    /// (`Null` for 204); a status of 300 or more is [`ClientError::Refused`].
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let mut conn = UnixStream::connect(&self.socket).map_err(self.io())?;
        conn.set_read_timeout(self.timeout).map_err(self.io())?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).map_err(self.io())?;
        let mut raw = Vec::new();
        conn.take(MAX_RESPONSE_BYTES as u64)
            .read_to_end(&mut raw)
            .map_err(self.io())?;
        let (status, json) = self.parse(&raw)?;
        if status >= 300 {
            let message = json
                .get("fault_message")
                .and_then(|m| m.as_str())
                .map_or_else(|| json.to_string(), str::to_string);
            return Err(ClientError::Refused {
                method: method.into(),
                path: path.into(),
                status,
                message,
            });
        }
        Ok(json)
    }

    fn parse(&self, raw: &[u8]) -> Result<(u16, serde_json::Value), ClientError> {
        let bad = |message: String| ClientError::BadResponse {
            socket: self.socket.clone(),
            message,
        };
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(raw) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Err(bad("truncated".into())),
            Err(e) => return Err(bad(e.to_string())),
        };
        let status = response.code.unwrap_or(0);
        let body = &raw[head..];
        let json = if body.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| bad(format!("body is not JSON: {e}")))?
        };
        Ok((status, json))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A server that answers one connection with `reply` and returns what it read.
    fn one_shot(
        reply: &'static str,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut pending = Vec::new();
            let request = crate::api::http::read_request(&mut conn, &mut pending)
                .unwrap()
                .unwrap();
            conn.write_all(reply.as_bytes()).unwrap();
            format!(
                "{} {} {}",
                request.method,
                request.path,
                String::from_utf8_lossy(&request.body)
            )
        });
        (dir, path, server)
    }

    #[test]
    fn a_call_sends_the_body_and_reads_the_json_back() {
        let (_dir, path, server) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"state\":\"Ok\"}\n");
        let client = ApiClient::new(&path, Some(Duration::from_secs(10)));
        let body = serde_json::json!({"a": 1});
        let json = client.call("PUT", "/x", Some(&body)).unwrap();
        assert_eq!(json["state"], "Ok");
        assert_eq!(server.join().unwrap(), "PUT /x {\"a\":1}");
    }

    #[test]
    fn a_fault_becomes_an_error_with_its_message() {
        let (_dir, path, _server) = one_shot(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 27\r\n\r\n{\"fault_message\":\"no way\"}\n",
        );
        let client = ApiClient::new(&path, Some(Duration::from_secs(10)));
        let err = client.call("PATCH", "/vm", None).unwrap_err();
        assert_eq!(err.to_string(), "PATCH /vm: 400: no way");
    }
}
