//! The byte streams the tool moves: a deterministic pattern, a running checksum, and the
//! send-then-receive (or receive-then-send) exchange over any connected socket, timed.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Bytes per read or write call: large enough that system calls do not dominate.
pub const CHUNK: usize = 256 * 1024;

/// FNV-1a style sum over little-endian 64-bit words (one multiply per 8 bytes, so it
/// keeps up with the transport even in a debug build under emulation). Position-
/// sensitive: reordered or lost bytes change the sum. The chunking of `update` calls
/// does not matter; a partial last word is padded with zeros and the length is mixed in.
#[derive(Clone, Copy, Debug)]
pub struct Checksum {
    state: u64,
    pending: [u8; 8],
    pending_len: usize,
    total: u64,
}

const FNV_PRIME: u64 = 0x0100_0000_01b3;

impl Checksum {
    /// The empty stream's sum.
    pub fn new() -> Self {
        Self {
            state: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            pending_len: 0,
            total: 0,
        }
    }

    fn mix(&mut self, word: [u8; 8]) {
        self.state = (self.state ^ u64::from_le_bytes(word)).wrapping_mul(FNV_PRIME);
    }

    /// Adds `data` to the sum.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.pending_len > 0 {
            let take = (8 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 8 {
                return;
            }
            self.mix(self.pending);
            self.pending_len = 0;
        }
        let words = data.chunks_exact(8);
        let rest = words.remainder();
        for word in words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.mix(w);
        }
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The sum as 16 hex digits.
    pub fn hex(&self) -> String {
        let mut last = *self;
        let mut tail = [0u8; 8];
        tail[..last.pending_len].copy_from_slice(&last.pending[..last.pending_len]);
        last.mix(tail);
        last.mix(self.total.to_le_bytes());
        format!("{:016x}", last.state)
    }
}

/// The pattern's 8 bytes at word `index` (splitmix64 of the index), so any offset of
/// the stream has a known value whatever the chunking.
fn pattern_word(index: u64) -> [u8; 8] {
    let mut z = index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)).to_le_bytes()
}

/// Fills `buf` with the pattern bytes starting at stream offset `offset` (a multiple of 8).
pub fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, word) in buf.chunks_mut(8).enumerate() {
        let bytes = pattern_word(offset / 8 + i as u64);
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// What one direction of a transfer moved.
#[derive(Debug)]
pub struct Transfer {
    /// Bytes moved.
    pub bytes: u64,
    /// Their checksum (empty when checks are off).
    pub sum: String,
    /// Wall time from the first call to the last.
    pub elapsed: Duration,
}

impl Transfer {
    /// Prints the transfer as `PREFIX-bytes=..`, `-sum`, `-secs`, `-mibps` lines.
    pub fn print(&self, prefix: &str) {
        let secs = self.elapsed.as_secs_f64();
        let mibps = if secs > 0.0 {
            self.bytes as f64 / secs / 1_048_576.0
        } else {
            0.0
        };
        println!("{prefix}-bytes={}", self.bytes);
        println!("{prefix}-sum={}", self.sum);
        println!("{prefix}-secs={secs:.3}");
        println!("{prefix}-mibps={mibps:.1}");
    }
}

/// Writes `total` pattern bytes to `out`.
pub fn send(out: &mut impl Write, total: u64, check: bool) -> io::Result<Transfer> {
    let start = Instant::now();
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    // The pattern repeats every CHUNK bytes when checks are off, so the sender's own
    // cost does not limit a throughput measurement.
    fill_pattern(&mut buf, 0);
    while sent < total {
        let n = (total - sent).min(CHUNK as u64) as usize;
        if check {
            fill_pattern(&mut buf[..n], sent);
            sum.update(&buf[..n]);
        }
        out.write_all(&buf[..n])?;
        sent += n as u64;
    }
    out.flush()?;
    Ok(Transfer {
        bytes: sent,
        sum: if check { sum.hex() } else { String::new() },
        elapsed: start.elapsed(),
    })
}

/// Reads from `input` until `limit` bytes (or end of stream when `None`).
pub fn recv(input: &mut impl Read, limit: Option<u64>, check: bool) -> io::Result<Transfer> {
    let mut start = None;
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    loop {
        let want = limit.map_or(CHUNK as u64, |l| (l - got).min(CHUNK as u64)) as usize;
        if want == 0 {
            break;
        }
        let n = match input.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // The clock starts at the first byte: waiting for the peer is not transfer time.
        start.get_or_insert_with(Instant::now);
        if check {
            sum.update(&buf[..n]);
        }
        got += n as u64;
    }
    Ok(Transfer {
        bytes: got,
        sum: if check { sum.hex() } else { String::new() },
        elapsed: start.map_or(Duration::ZERO, |s| s.elapsed()),
    })
}

/// Sends back everything `conn` receives until end of stream; the bytes echoed.
pub fn echo<C: Read + Write>(conn: &mut C) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        conn.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Bytes of one request and of its answer in [`round_trips`].
pub const RR_SIZE: usize = 64;

/// `count` round trips of [`RR_SIZE`] bytes through an echoing peer, each answer
/// checked; the time they took.
pub fn round_trips<C: Read + Write>(conn: &mut C, count: u64) -> io::Result<Duration> {
    let mut request = [0u8; RR_SIZE];
    let mut answer = [0u8; RR_SIZE];
    let start = Instant::now();
    for i in 0..count {
        fill_pattern(&mut request, i * RR_SIZE as u64);
        conn.write_all(&request)?;
        conn.read_exact(&mut answer)?;
        if answer != request {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("round trip {i} came back changed"),
            ));
        }
    }
    Ok(start.elapsed())
}

/// Expected checksum of the first `total` pattern bytes.
pub fn pattern_sum(total: u64) -> String {
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < total {
        let n = (total - done).min(CHUNK as u64) as usize;
        fill_pattern(&mut buf[..n], done);
        sum.update(&buf[..n]);
        done += n as u64;
    }
    sum.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_stream_sums_like_the_sent_one() {
        let mut wire = Vec::new();
        let sent = send(&mut wire, 1_000_003, true).expect("a Vec accepts writes");
        let got = recv(&mut wire.as_slice(), None, true).expect("a slice reads");
        assert_eq!((got.bytes, got.sum), (sent.bytes, sent.sum));
    }

    #[test]
    fn pattern_sum_matches_a_sent_stream() {
        let mut wire = Vec::new();
        let sent = send(&mut wire, 300_000, true).expect("a Vec accepts writes");
        assert_eq!(pattern_sum(300_000), sent.sum);
    }

    #[test]
    fn one_flipped_byte_changes_the_sum() {
        let mut wire = Vec::new();
        let sent = send(&mut wire, 4096, true).expect("a Vec accepts writes");
        wire[1234] ^= 1;
        let got = recv(&mut wire.as_slice(), None, true).expect("a slice reads");
        assert_ne!(got.sum, sent.sum);
    }

    #[test]
    fn sum_does_not_depend_on_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut whole = Checksum::new();
        whole.update(&data);
        let mut pieces = Checksum::new();
        data.chunks(3).for_each(|c| pieces.update(c));
        assert_eq!(whole.hex(), pieces.hex());
    }

    #[test]
    fn trailing_zero_byte_changes_the_sum() {
        let mut short = Checksum::new();
        short.update(&[1, 2, 3]);
        let mut long = Checksum::new();
        long.update(&[1, 2, 3, 0]);
        assert_ne!(short.hex(), long.hex());
    }

    #[test]
    fn round_trips_through_an_echo_come_back_unchanged() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("a pair");
        let echo = std::thread::spawn(move || echo(&mut b));
        round_trips(&mut a, 50).expect("every answer matches");
        drop(a);
        assert_eq!(
            echo.join().expect("no panic").expect("echo ends at EOF"),
            3200
        );
    }

    #[test]
    fn recv_stops_at_its_limit() {
        let data = vec![7u8; 10_000];
        let got = recv(&mut data.as_slice(), Some(4000), false).expect("a slice reads");
        assert_eq!(got.bytes, 4000);
    }
}
