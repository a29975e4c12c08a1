//! `husk-guest-tool`: the measuring end of husk's device tests and benchmarks. It runs
//! inside the guest (AF_VSOCK, disks) and on the host side (the hybrid vsock Unix
//! sockets, TCP over the TAP), moves a deterministic byte pattern and prints what it
//! saw as `COMMAND-key=value` lines: bytes, checksum, seconds and MiB/s per direction.
//!
//! Connecting commands send first and then receive; listening commands receive first
//! and then send. `--recv eof` (the default) reads until the peer half-closes, which it
//! does with `--half-close`.

mod disk;
mod flood;
mod pty;
mod sock;
mod stream;

use std::fs::File;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
usage: husk-guest-tool COMMAND ARGS [OPTIONS]
  vsock-listen PORT          accept one AF_VSOCK connection (guest side)
  vsock-connect CID PORT     connect over AF_VSOCK (CID 2 is the host)
  uds-connect PATH PORT      host side of husk's vsock: CONNECT PORT through PATH
  uds-listen PATH            host side: accept a guest connection on PATH (<uds>_<port>)
  uds-hold PATH              host side: accept every connection on PATH and hold it
                             open, unread, until killed
  vsock-flood CID PORT       --count N non-blocking AF_VSOCK connects at once; prints
                             how many connected, were refused, failed or were pending
                             after --patience; with --hold keeps them until killed
  wait-for PATH TEXT         wait (--patience) until PATH starts with TEXT (O_DIRECT)
  tcp-listen PORT            accept one TCP connection
  tcp-connect ADDR PORT      connect over TCP
  read-file PATH             read PATH sequentially (--bytes N, default all)
  write-file PATH            write --bytes N pattern bytes at the start of PATH
  pattern-sum N              the checksum of the first N pattern bytes
  pty-run ROWS COLS [STEP...] -- CMD ARGS...
                             run CMD on a new ROWS x COLS terminal, copy its output,
                             and when it prints WHEN do a STEP (WHEN=resize:RxC or
                             WHEN=type:TEXT, \r = Enter, ^C = Ctrl-C); exits with
                             CMD's code
  run-as UID GID -- CMD ARGS...
                             exec CMD as UID:GID with no supplementary groups (host
                             side: an unprivileged caller)
options: --send N  --recv N|eof  --half-close  --no-check  --direct  --bytes N
         --count N  --hold
         --block N (read-file/write-file: bytes per call, default 256K; prints -iops)
         --echo (listening commands: send back everything received, until EOF)
         --rr N (connecting commands: N round trips of 64 bytes, TCP_NODELAY;
                 prints -rr-per-sec)
         --patience SECS (how long connects retry, default 300)
sizes take K, M or G (binary) suffixes";

/// Command-line options shared by the commands.
#[derive(Debug)]
struct Options {
    send: u64,
    recv: Option<u64>,
    half_close: bool,
    check: bool,
    direct: bool,
    bytes: Option<u64>,
    patience: Duration,
    count: usize,
    hold: bool,
    block: Option<usize>,
    echo: bool,
    rr: u64,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Parses `64M`, `4K`, `1G` or a plain byte count.
fn size(text: &str) -> io::Result<u64> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 1 << 10),
        Some((i, 'M' | 'm')) => (&text[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| bad(format!("bad size {text:?}")))
}

/// Splits `args` into positional arguments and options.
fn parse(args: &[String]) -> io::Result<(Vec<String>, Options)> {
    let mut opts = Options {
        send: 0,
        recv: None,
        half_close: false,
        check: true,
        direct: false,
        bytes: None,
        patience: Duration::from_secs(300),
        count: 1,
        hold: false,
        block: None,
        echo: false,
        rr: 0,
    };
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| bad(format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--send" => opts.send = size(&value()?)?,
            "--recv" => {
                let v = value()?;
                opts.recv = if v == "eof" { None } else { Some(size(&v)?) };
            }
            "--bytes" => opts.bytes = Some(size(&value()?)?),
            "--patience" => opts.patience = Duration::from_secs(size(&value()?)?),
            "--count" => opts.count = number(&value()?)?,
            "--hold" => opts.hold = true,
            "--block" => opts.block = Some(number(&value()?)?),
            "--echo" => opts.echo = true,
            "--rr" => opts.rr = number(&value()?)?,
            "--half-close" => opts.half_close = true,
            "--no-check" => opts.check = false,
            "--direct" => opts.direct = true,
            s if s.starts_with("--") => return Err(bad(format!("unknown option {s}"))),
            _ => positional.push(arg.clone()),
        }
    }
    Ok((positional, opts))
}

fn number<T: std::str::FromStr>(text: &str) -> io::Result<T> {
    text.parse()
        .map_err(|_| bad(format!("bad number {text:?}")))
}

/// Sends then receives on `conn` (the connecting side's order); with `--rr`, round
/// trips instead.
fn send_then_recv(cmd: &str, mut conn: File, opts: &Options) -> io::Result<()> {
    if opts.rr > 0 {
        sock::no_delay(&conn);
        let secs = stream::round_trips(&mut conn, opts.rr)?.as_secs_f64();
        println!("{cmd}-rr-count={}", opts.rr);
        println!("{cmd}-rr-secs={secs:.3}");
        println!("{cmd}-rr-per-sec={:.1}", opts.rr as f64 / secs.max(1e-9));
        return Ok(());
    }
    stream::send(&mut conn, opts.send, opts.check)?.print(&format!("{cmd}-send"));
    if opts.half_close {
        sock::half_close(&conn)?;
    }
    stream::recv(&mut conn, opts.recv, opts.check)?.print(&format!("{cmd}-recv"));
    Ok(())
}

/// Receives then sends on `conn` (the listening side's order); with `--echo`, sends
/// back what it receives.
fn recv_then_send(cmd: &str, mut conn: File, opts: &Options) -> io::Result<()> {
    if opts.echo {
        sock::no_delay(&conn);
        println!("{cmd}-echo-bytes={}", stream::echo(&mut conn)?);
        return Ok(());
    }
    stream::recv(&mut conn, opts.recv, opts.check)?.print(&format!("{cmd}-recv"));
    stream::send(&mut conn, opts.send, opts.check)?.print(&format!("{cmd}-send"));
    if opts.half_close {
        sock::half_close(&conn)?;
    }
    Ok(())
}

fn run(cmd: &str, pos: &[String], opts: &Options) -> io::Result<()> {
    let patience = opts.patience;
    match (cmd, pos) {
        ("vsock-listen", [port]) => recv_then_send(cmd, sock::vsock_accept(number(port)?)?, opts),
        ("vsock-connect", [cid, port]) => {
            let conn = sock::vsock_connect(number(cid)?, number(port)?, patience)?;
            send_then_recv(cmd, conn, opts)
        }
        ("uds-connect", [path, port]) => {
            let (conn, host_port) = sock::uds_connect(path, number(port)?, patience)?;
            println!("{cmd}-host-port={host_port}");
            send_then_recv(cmd, conn, opts)
        }
        ("uds-listen", [path]) => recv_then_send(cmd, sock::uds_accept(path)?, opts),
        ("uds-hold", [path]) => sock::uds_hold(path),
        ("vsock-flood", [cid, port]) => {
            let out = flood::flood(number(cid)?, number(port)?, opts.count, patience)?;
            out.print();
            if opts.hold {
                println!("{cmd}-holding=yes");
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Ok(())
        }
        ("wait-for", [path, text]) => disk::wait_for(path, text, patience),
        ("tcp-listen", [port]) => recv_then_send(cmd, sock::tcp_accept(number(port)?)?, opts),
        ("tcp-connect", [addr, port]) => {
            let conn = sock::tcp_connect(addr, number(port)?, patience)?;
            send_then_recv(cmd, conn, opts)
        }
        ("read-file", [path]) => {
            let block = opts.block.unwrap_or(stream::CHUNK);
            let t = disk::read(path, opts.bytes, block, opts.direct, opts.check)?;
            t.print(cmd);
            print_iops(cmd, &t, opts.block);
            Ok(())
        }
        ("write-file", [path]) => {
            let total = opts
                .bytes
                .ok_or_else(|| bad("write-file needs --bytes".into()))?;
            let block = opts.block.unwrap_or(stream::CHUNK);
            let t = disk::write(path, total, block, opts.direct, opts.check)?;
            t.print(cmd);
            print_iops(cmd, &t, opts.block);
            Ok(())
        }
        ("pattern-sum", [n]) => {
            println!("{cmd}={}", stream::pattern_sum(size(n)?));
            Ok(())
        }
        _ => Err(bad(format!("bad arguments for {cmd:?}\n{USAGE}"))),
    }
}

/// With `--block`, the calls per second a transfer made.
fn print_iops(cmd: &str, t: &stream::Transfer, block: Option<usize>) {
    if let Some(block) = block {
        let ops = t.bytes as f64 / block.max(1) as f64;
        println!("{cmd}-iops={:.1}", ops / t.elapsed.as_secs_f64().max(1e-9));
    }
}

/// `pty-run ROWS COLS [STEP...] -- CMD...`: its own parser, as CMD has options of its own.
fn pty_run(args: &[String]) -> io::Result<i32> {
    let split = args
        .iter()
        .position(|a| a == "--")
        .ok_or_else(|| bad(format!("pty-run needs -- before the command\n{USAGE}")))?;
    let (head, command) = (&args[..split], &args[split + 1..]);
    let [rows, cols, steps @ ..] = head else {
        return Err(bad(format!("pty-run needs ROWS and COLS\n{USAGE}")));
    };
    let steps = steps
        .iter()
        .map(|s| pty::parse_step(s))
        .collect::<io::Result<Vec<_>>>()?;
    pty::run(number(rows)?, number(cols)?, command, steps)
}

/// `run-as UID GID -- CMD...`: returns only when the exec failed.
fn run_as(args: &[String]) -> io::Error {
    use std::os::unix::process::CommandExt;
    let [uid, gid, dashes, cmd, cmd_args @ ..] = args else {
        return bad(format!("run-as needs UID GID -- CMD\n{USAGE}"));
    };
    if dashes != "--" {
        return bad(format!("run-as needs -- before the command\n{USAGE}"));
    }
    let (Ok(uid), Ok(gid)) = (number::<u32>(uid), number::<u32>(gid)) else {
        return bad(format!("run-as: bad UID or GID\n{USAGE}"));
    };
    // std drops the supplementary groups when it changes the uid as root.
    std::process::Command::new(cmd)
        .args(cmd_args)
        .gid(gid)
        .uid(uid)
        .exec()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if cmd == "run-as" {
        eprintln!("husk-guest-tool run-as: {}", run_as(rest));
        return ExitCode::from(126);
    }
    if cmd == "pty-run" {
        return match pty_run(rest) {
            Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
            Err(e) => {
                eprintln!("husk-guest-tool pty-run: {e}");
                ExitCode::from(125)
            }
        };
    }
    let result = parse(rest).and_then(|(pos, opts)| run(cmd, &pos, &opts));
    match result {
        Ok(()) => {
            println!("{cmd}-status=ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{cmd}-status=error");
            eprintln!("husk-guest-tool {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(size("64M").expect("valid"), 64 << 20);
        assert_eq!(size("4k").expect("valid"), 4096);
        assert_eq!(size("123").expect("valid"), 123);
    }

    #[test]
    fn garbage_size_is_refused() {
        assert!(size("12Q").is_err());
    }

    #[test]
    fn recv_eof_means_until_end_of_stream() {
        let args: Vec<String> = ["5", "--recv", "eof", "--send", "1K"]
            .map(String::from)
            .to_vec();
        let (pos, opts) = parse(&args).expect("valid options");
        assert_eq!(
            (pos, opts.recv, opts.send),
            (vec!["5".to_string()], None, 1024)
        );
    }
}
