//! HTTP/1.1 on the API socket, as little as a REST client needs: one request at a time
//! per connection, headers parsed by `httparse`, a body of `Content-Length` bytes, and
//! keep-alive. Everything a client sends is bounded (header bytes, body bytes), so a
//! hostile or broken client costs a bounded amount of memory and gets a 4xx.

use std::io::{self, Read, Write};

/// Most bytes of a request line and its headers.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most bytes of a request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most headers in a request.
const MAX_HEADERS: usize = 32;

/// A request read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, `PATCH`...
    pub method: String,
    /// The path, without a query string.
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
    /// The client asked to close the connection after this request.
    pub close: bool,
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// A JSON body, if any.
    pub body: Option<String>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
        }
    }

    /// 200 OK with `json`.
    pub fn ok(json: String) -> Self {
        Self {
            status: 200,
            body: Some(json),
        }
    }

    /// `status` with `{"fault_message": message}`.
    pub fn fault(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "fault_message": message }).to_string();
        Self {
            status,
            body: Some(body),
        }
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection failed or closed mid-request.
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
    /// The request is not HTTP/1.x the parser accepts.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The headers are longer than [`MAX_HEADER_BYTES`].
    #[error("request headers are longer than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLong,
    /// The body is longer than [`MAX_BODY_BYTES`].
    #[error("request body of {0} bytes is longer than {MAX_BODY_BYTES} bytes")]
    BodyTooLong(usize),
}

impl HttpError {
    /// The response a client gets for this error, if the connection still works.
    pub fn response(&self) -> Option<Response> {
        match self {
            Self::Io(_) => None,
            Self::Malformed(m) => Some(Response::fault(400, &format!("malformed request: {m}"))),
            Self::HeadersTooLong => Some(Response::fault(431, &self.to_string())),
            Self::BodyTooLong(_) => Some(Response::fault(413, &self.to_string())),
        }
    }
}

/// Read one request from `stream`; `Ok(None)` when the client closed between requests.
/// `pending` carries bytes read past the previous request on this connection.
pub fn read_request<S: Read>(
    stream: &mut S,
    pending: &mut Vec<u8>,
) -> Result<Option<Request>, HttpError> {
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, length, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(pending) {
            Ok(httparse::Status::Complete(len)) => {
                let fields = head_fields(&parsed)?;
                break (len, fields.0, fields.1, fields.2, fields.3);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(HttpError::Malformed(e.to_string())),
        }
        if pending.len() > MAX_HEADER_BYTES {
            return Err(HttpError::HeadersTooLong);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return match pending.is_empty() {
                true => Ok(None),
                false => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            };
        }
        pending.extend_from_slice(&chunk[..n]);
    };
    if length > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLong(length));
    }
    pending.drain(..head_len);
    while pending.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        pending.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = pending.drain(..length).collect();
    Ok(Some(Request {
        method,
        path,
        body,
        close,
    }))
}

/// Method, path (query dropped), Content-Length and `Connection: close` of a head.
fn head_fields(
    parsed: &httparse::Request<'_, '_>,
) -> Result<(String, String, usize, bool), HttpError> {
    let method = parsed.method.unwrap_or_default().to_string();
    let target = parsed.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    let mut length = 0;
    let mut close = parsed.version == Some(0);
    for header in parsed.headers.iter() {
        let value = String::from_utf8_lossy(header.value);
        if header.name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed(
                "chunked bodies are not supported: send Content-Length".into(),
            ));
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    Ok((method, path, length, close))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

/// Write `response` (with `Connection: close` when `close`).
pub fn write_response<S: Write>(
    stream: &mut S,
    response: &Response,
    close: bool,
) -> io::Result<()> {
    let body = response.body.as_deref().unwrap_or("");
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    head.push_str("Server: husk\r\n");
    if response.body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8]) -> Vec<Result<Option<Request>, String>> {
        let mut stream = bytes;
        let mut pending = Vec::new();
        let mut out = Vec::new();
        loop {
            let r = read_request(&mut stream, &mut pending).map_err(|e| e.to_string());
            let stop = !matches!(r, Ok(Some(_)));
            out.push(r);
            if stop {
                return out;
            }
        }
    }

    #[test]
    fn two_requests_on_one_connection_are_read_in_turn() {
        let wire =
            b"PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}\
                     GET /?x=1 HTTP/1.1\r\n\r\n";
        let got = read_all(wire);
        let first = got[0].as_ref().unwrap().as_ref().unwrap();
        assert_eq!(
            (first.method.as_str(), first.path.as_str()),
            ("PUT", "/machine-config")
        );
        assert_eq!(first.body, b"{}");
        let second = got[1].as_ref().unwrap().as_ref().unwrap();
        assert_eq!((second.method.as_str(), second.path.as_str()), ("GET", "/"));
        assert!(matches!(got[2], Ok(None)));
    }

    #[test]
    fn an_oversized_body_is_refused_before_it_is_read() {
        let wire = format!(
            "PUT /drives/a HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let got = read_all(wire.as_bytes());
        assert_eq!(
            got[0].as_ref().unwrap_err(),
            &format!(
                "request body of {} bytes is longer than {MAX_BODY_BYTES} bytes",
                MAX_BODY_BYTES + 1
            )
        );
    }

    #[test]
    fn endless_headers_are_refused() {
        let mut wire = b"GET / HTTP/1.1\r\n".to_vec();
        while wire.len() < MAX_HEADER_BYTES + 100 {
            wire.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let got = read_all(&wire);
        assert!(got[0].is_err());
    }

    #[test]
    fn a_request_cut_short_is_an_error_not_a_request() {
        let got = read_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"st");
        assert!(got[0].as_ref().unwrap_err().contains("reading the request"));
    }

    #[test]
    fn a_response_carries_its_length_and_type() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::fault(400, "bad"), false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"fault_message\":\"bad\"}"));
    }

    proptest::proptest! {
        /// Any bytes from a client end in a request, an error or the end of the
        /// connection, never a panic.
        #[test]
        fn arbitrary_client_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let _ = read_all(&bytes);
        }
    }
}
