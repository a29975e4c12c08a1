//! Throughput of the virtio request-processing paths on in-memory queues.
//!
//! No KVM and no guest: a driver is simulated by writing descriptor chains into guest
//! memory, and each device's processing function is timed. Prints requests/s and MiB/s;
//! never asserts on time. Run with `cargo bench --bench virtio_queues`.

use std::io::Read;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk::devices::rate_limiter::Unthrottled;
use husk::devices::virtio::block::{self, BlockConfig, Disk};
use husk::devices::virtio::net;
use husk::devices::virtio::rng;
use husk::devices::virtio::vsock::{
    Header, Muxer, VsockConfig, FIRST_STREAM_TOKEN, HDR_LEN, HOST_CID,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 256;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const RUN_FOR: Duration = Duration::from_millis(700);

/// A split ring whose descriptor table holds `QSIZE / chain_len` fixed chains; each
/// batch re-offers them through the available ring, as a driver would.
struct Ring {
    base: u64,
    chains: u16,
    chain_len: u16,
    avail_idx: u16,
}

impl Ring {
    /// `layout(chain, j)` gives (addr, len, flags) of descriptor `j` of chain `chain`.
    fn new(
        mem: &GuestMemoryMmap,
        base: u64,
        chain_len: u16,
        layout: impl Fn(u16, u16) -> (u64, u32, u16),
    ) -> Self {
        let chains = QSIZE / chain_len;
        for c in 0..chains {
            for j in 0..chain_len {
                let (addr, len, mut flags) = layout(c, j);
                let i = c * chain_len + j;
                let next = if j + 1 < chain_len {
                    flags |= F_NEXT;
                    i + 1
                } else {
                    0
                };
                let at = base + 16 * u64::from(i);
                mem.write_obj(addr, GuestAddress(at)).expect("desc");
                mem.write_obj(len, GuestAddress(at + 8)).expect("desc");
                mem.write_obj(flags, GuestAddress(at + 12)).expect("desc");
                mem.write_obj(next, GuestAddress(at + 14)).expect("desc");
            }
        }
        Self {
            base,
            chains,
            chain_len,
            avail_idx: 0,
        }
    }

    fn avail(&self) -> u64 {
        self.base + 16 * u64::from(QSIZE)
    }

    fn used(&self) -> u64 {
        self.avail() + 0x1000
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).expect("queue");
        q.try_set_desc_table_address(GuestAddress(self.base))
            .expect("desc");
        q.try_set_avail_ring_address(GuestAddress(self.avail()))
            .expect("avail");
        q.try_set_used_ring_address(GuestAddress(self.used()))
            .expect("used");
        q.set_ready(true);
        q
    }

    /// Offer the next `count` chains, in order (the device completes them in order).
    fn offer(&mut self, mem: &GuestMemoryMmap, count: u16) -> usize {
        for i in 0..count {
            let n = self.avail_idx.wrapping_add(i);
            let head = (n % self.chains) * self.chain_len;
            let slot = u64::from(n % QSIZE);
            mem.write_obj(head, GuestAddress(self.avail() + 4 + 2 * slot))
                .expect("ring");
        }
        self.avail_idx = self.avail_idx.wrapping_add(count);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .expect("idx");
        usize::from(count)
    }

    /// Offer every chain once.
    fn offer_all(&mut self, mem: &GuestMemoryMmap) -> usize {
        self.offer(mem, self.chains)
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("memory")
}

/// Data buffer of chain `c` (64 KiB apart, from 1 MiB).
fn data(c: u16) -> u64 {
    0x10_0000 + u64::from(c) * 0x1_0000
}

/// Run `batch` (which returns requests done) for RUN_FOR and print the rates.
fn report(name: &str, bytes_per_req: usize, mut batch: impl FnMut() -> usize) {
    report_bytes(name, || {
        let n = batch();
        (n, (n * bytes_per_req) as u64)
    });
}

/// Like [`report`], for batches that return (requests, payload bytes).
fn report_bytes(name: &str, mut batch: impl FnMut() -> (usize, u64)) {
    let (start, mut reqs, mut bytes) = (Instant::now(), 0usize, 0u64);
    while start.elapsed() < RUN_FOR {
        let (r, b) = batch();
        reqs += r;
        bytes += b;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = reqs as f64 / secs;
    let mib = bytes as f64 / secs / f64::from(1 << 20);
    println!("{name:<42} {rate:>12.0} req/s {mib:>10.1} MiB/s");
}

fn bench_rng(size: u32, urandom: bool) {
    let mem = memory();
    let mut ring = Ring::new(&mem, 0, 1, |c, _| (data(c), size, F_WRITE));
    let mut q = ring.queue();
    let mut file = std::fs::File::open("/dev/urandom").expect("urandom");
    let zeros = vec![0u8; 1 << 26];
    let name = format!(
        "rng {} KiB ({})",
        size >> 10,
        if urandom { "urandom" } else { "memory source" }
    );
    report(&name, size as usize, || {
        let n = ring.offer_all(&mem);
        let r = match urandom {
            true => rng::process_queue(&mut q, &mem, &mut file, n, &mut Unthrottled),
            false => rng::process_queue(&mut q, &mem, &mut zeros.as_slice(), n, &mut Unthrottled),
        };
        r.expect("rng").used
    });
}

fn bench_block(size: u32, write: bool, img: &str) {
    let mem = memory();
    let mut ring = Ring::new(&mem, 0, 3, |c, j| match j {
        0 => (0x8000 + u64::from(c) * 16, 16, 0),
        1 => (data(c), size, if write { 0 } else { F_WRITE }),
        _ => (0xc000 + u64::from(c), 1, F_WRITE),
    });
    let sectors_per_req = u64::from(size / 512);
    let disk_sectors = (64u64 << 20) / 512;
    let mut sector = 0u64;
    let mut q = ring.queue();
    let config = BlockConfig {
        path: img.into(),
        read_only: false,
        id: None,
        root: false,
        rate_limiter: None,
    };
    let mut disk = Disk::open(&config).expect("disk");
    let name = format!(
        "blk {} {} KiB (tmpfs)",
        if write { "write" } else { "read" },
        size >> 10
    );
    report(&name, size as usize, || {
        for c in 0..ring.chains {
            let hdr = 0x8000 + u64::from(c) * 16;
            mem.write_obj(u32::from(write), GuestAddress(hdr))
                .expect("hdr");
            mem.write_obj(sector, GuestAddress(hdr + 8)).expect("hdr");
            sector = (sector + sectors_per_req) % (disk_sectors - sectors_per_req);
        }
        let n = ring.offer_all(&mem);
        block::process_queue(&mut q, &mem, &mut disk, n, &mut Unthrottled)
            .expect("blk")
            .used
    });
}

/// A host listener at `<uds>_52` whose accepted stream is drained by a thread.
fn vsock_host(uds: &str, received: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let listener = UnixListener::bind(format!("{uds}_52")).expect("bind");
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 18];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            received.fetch_add(n as u64, Ordering::Relaxed);
        }
    })
}

fn write_pkt(mem: &GuestMemoryMmap, at: u64, op: u16, len: u32) {
    let h = Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1000,
        dst_port: 52,
        len,
        type_: 1,
        op,
        buf_alloc: 1 << 20,
        ..Default::default()
    };
    mem.write_slice(&h.to_bytes(), GuestAddress(at))
        .expect("hdr");
}

/// The token of the newest host socket that is ready (a new one is writable at once).
fn stream_token(muxer: &Muxer) -> Option<u32> {
    let ready = muxer.ready().into_iter().map(|(token, _)| token);
    ready.filter(|&t| t >= FIRST_STREAM_TOKEN).max()
}

fn bench_vsock_tx(size: u32) {
    let mem = memory();
    let uds = format!("/tmp/husk-bench-vsock-{}.sock", std::process::id());
    let received = Arc::new(AtomicU64::new(0));
    let host = vsock_host(&uds, received.clone());
    let mut muxer = Muxer::new(&VsockConfig::new(3, uds.clone())).expect("muxer");
    let mut tx = Ring::new(&mem, 0, 2, |c, j| match j {
        0 => (0x8000 + u64::from(c) * 64, HDR_LEN as u32, 0),
        _ => (data(c), size, 0),
    });
    let mut rx = Ring::new(&mem, 0x20000, 1, |c, _| {
        (0x300_0000 + u64::from(c) * 0x1000, 4096, F_WRITE)
    });
    let (mut txq, mut rxq) = (tx.queue(), rx.queue());
    write_pkt(&mem, 0x8000, 1, 0);
    tx.offer_all(&mem);
    muxer.process_tx(&mut txq, &mem).expect("connect");
    let token = stream_token(&muxer).unwrap_or_else(|| panic!("no connection to {uds}_52"));
    // The RESPONSE tells the guest the host's buffer: never send more per batch.
    rx.offer_all(&mem);
    let got = muxer.process_rx(&mut rxq, &mem).expect("response").used;
    rx.offer(&mem, u16::try_from(got).expect("at most a ring"));
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(0x300_0000))
        .expect("response");
    let buf_alloc = Header::from_bytes(&raw).buf_alloc;
    let per_batch =
        u16::try_from((buf_alloc / size).clamp(1, u32::from(tx.chains))).expect("small");
    (0..tx.chains).for_each(|c| write_pkt(&mem, 0x8000 + u64::from(c) * 64, 5, size));
    let mut sent = 0u64;
    report(
        &format!("vsock tx {} KiB (to Unix socket)", size >> 10),
        size as usize,
        || {
            let got = muxer.process_rx(&mut rxq, &mem).expect("rx").used;
            rx.offer(&mem, u16::try_from(got).expect("at most a ring"));
            let n = tx.offer(&mem, per_batch);
            muxer.process_tx(&mut txq, &mem).expect("tx");
            sent += n as u64 * u64::from(size);
            // Wait for the host reader, so the guest never outruns its credit.
            let deadline = Instant::now() + Duration::from_secs(5);
            while received.load(Ordering::Relaxed) < sent {
                assert!(
                    Instant::now() < deadline,
                    "vsock connection stalled (reset?)"
                );
                muxer.on_stream_event(token, false, true);
                std::thread::yield_now();
            }
            n
        },
    );
    drop(muxer);
    let _ = host.join();
    let _ = std::fs::remove_file(format!("{uds}_52"));
}

fn bench_net_tx(size: u32) {
    let mem = memory();
    let (mut dev, host) = UnixDatagram::pair().expect("pair");
    dev.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 17];
        while host.recv(&mut buf).is_ok() {}
    });
    let mut ring = Ring::new(&mem, 0, 1, |c, _| {
        (data(c), size + net::NET_HDR_LEN as u32, 0)
    });
    let mut q = ring.queue();
    report(
        &format!("net tx {size} B frames (to socket)"),
        size as usize,
        || {
            let n = ring.offer_all(&mem);
            net::process_tx(
                &mut q,
                &mem,
                &mut dev,
                net::Offloads::default(),
                n,
                &mut Unthrottled,
            )
            .expect("tx")
            .used
        },
    );
}

/// Payload bytes the device put in the last `count` used entries of `ring`.
fn used_payload(mem: &GuestMemoryMmap, ring: &Ring, next_used: u16, count: usize, hdr: u32) -> u64 {
    (0..count)
        .map(|i| {
            let slot = u64::from(next_used.wrapping_add(i as u16) % QSIZE);
            let len: u32 = mem
                .read_obj(GuestAddress(ring.used() + 8 + 8 * slot))
                .expect("used");
            u64::from(len.saturating_sub(hdr))
        })
        .sum()
}

/// A host client connected to guest port 1024 that writes without pause.
fn vsock_rx_setup(
    mem: &GuestMemoryMmap,
    muxer: &mut Muxer,
    (rx, rxq): (&mut Ring, &mut Queue),
    uds: &str,
) -> (u32, u32) {
    let mut client = std::os::unix::net::UnixStream::connect(uds).expect("connect");
    std::io::Write::write_all(&mut client, b"CONNECT 1024\n").expect("connect line");
    muxer.accept();
    let token = stream_token(muxer).unwrap_or_else(|| panic!("no host client on {uds}"));
    muxer.on_stream_event(token, true, false);
    rx.offer(mem, 1);
    muxer.process_rx(rxq, mem).expect("request");
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(0x100_0000))
        .expect("request");
    let host_port = Header::from_bytes(&raw).src_port;
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(&client);
        std::io::BufRead::read_line(&mut reader, &mut line).expect("OK line");
        let chunk = vec![0x5au8; 1 << 16];
        while std::io::Write::write_all(&mut client, &chunk).is_ok() {}
    });
    (token, host_port)
}

fn guest_pkt(mem: &GuestMemoryMmap, op: u16, host_port: u32, fwd_cnt: u32) {
    let h = Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1024,
        dst_port: host_port,
        type_: 1,
        op,
        buf_alloc: 1 << 20,
        fwd_cnt,
        ..Default::default()
    };
    mem.write_slice(&h.to_bytes(), GuestAddress(0x8000))
        .expect("hdr");
}

fn bench_vsock_rx(buf: u32) {
    let mem = memory();
    let uds = format!("/tmp/husk-bench-vsock-rx-{}.sock", std::process::id());
    let mut muxer = Muxer::new(&VsockConfig::new(3, uds.clone())).expect("muxer");
    let mut rx = Ring::new(&mem, 0x20000, 1, |c, _| {
        (0x100_0000 + u64::from(c) * 0x1_1000, buf, F_WRITE)
    });
    let mut tx = Ring::new(&mem, 0, 1, |_, _| (0x8000, HDR_LEN as u32, 0));
    let (mut rxq, mut txq) = (rx.queue(), tx.queue());
    let (token, host_port) = vsock_rx_setup(&mem, &mut muxer, (&mut rx, &mut rxq), &uds);
    guest_pkt(&mem, 2, host_port, 0);
    tx.offer(&mem, 1);
    muxer.process_tx(&mut txq, &mem).expect("response");
    let mut fwd = 0u32;
    report_bytes(
        &format!("vsock rx {} KiB buffers (from Unix socket)", buf >> 10),
        || {
            let next_used = rxq.next_used();
            rx.offer(&mem, QSIZE - (rx.avail_idx.wrapping_sub(next_used)));
            muxer.on_stream_event(token, true, false);
            let n = muxer.process_rx(&mut rxq, &mem).expect("rx").used;
            let bytes = used_payload(&mem, &rx, next_used, n, HDR_LEN as u32);
            fwd = fwd.wrapping_add(bytes as u32);
            guest_pkt(&mem, 6, host_port, fwd);
            tx.offer(&mem, 1);
            muxer.process_tx(&mut txq, &mem).expect("credit update");
            (n, bytes)
        },
    );
    drop(muxer);
}

fn bench_net_rx(size: usize) {
    let mem = memory();
    let (mut dev, host) = UnixDatagram::pair().expect("pair");
    dev.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let frame = vec![0u8; net::NET_HDR_LEN + size];
        while host.send(&frame).is_ok() {}
    });
    let mut ring = Ring::new(&mem, 0, 1, |c, _| (data(c), 2048, F_WRITE));
    let mut q = ring.queue();
    let mut state = net::RxState::default();
    report(
        &format!("net rx {size} B frames (from socket)"),
        size,
        || {
            let next_used = q.next_used();
            ring.offer(&mem, QSIZE - ring.avail_idx.wrapping_sub(next_used));
            state.readable = true;
            net::process_rx(
                &mut q,
                &mem,
                &mut dev,
                &mut state,
                usize::from(QSIZE),
                &mut Unthrottled,
            )
            .expect("rx")
            .used
        },
    );
}

fn main() {
    println!("virtio request processing, in-memory queues (size {QSIZE}), {RUN_FOR:?} per line");
    bench_rng(4096, true);
    bench_rng(4096, false);
    let img = format!("/dev/shm/husk-bench-{}.img", std::process::id());
    std::fs::write(&img, vec![0u8; 64 << 20]).expect("image");
    bench_block(4096, false, &img);
    bench_block(65536, false, &img);
    bench_block(4096, true, &img);
    bench_block(65536, true, &img);
    let _ = std::fs::remove_file(&img);
    bench_vsock_tx(4096);
    bench_vsock_tx(65536);
    bench_vsock_rx(4096);
    bench_vsock_rx(65536 + HDR_LEN as u32);
    bench_net_tx(1500);
    bench_net_rx(1500);
}
