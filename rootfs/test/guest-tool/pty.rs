//! `pty-run`: drive a command on a pseudo-terminal the way a user at a terminal would,
//! to test `husk run -it` / `husk exec -it` end to end: the terminal's size, a resize
//! (SIGWINCH), typed input in raw mode and Ctrl-C.
//!
//! The command gets a new session whose controlling terminal is the pty's slave (stdin,
//! stdout and stderr); the tool copies everything it prints to stdout and answers
//! prompts: when the output contains `WHEN`, it does the next step (resize the window
//! or type bytes). It exits with the command's exit code (128+N for a signal).
#![allow(
    unsafe_code,
    reason = "openpty, setsid, TIOCSCTTY and TIOCSWINSZ have no safe std wrapper"
)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

/// One scripted step: once the output so far contains `when`, do `action`.
pub struct Step {
    /// The text to wait for.
    pub when: String,
    /// What to do then.
    pub action: Action,
}

/// What a step does.
pub enum Action {
    /// Resize the window to rows x cols.
    Resize(u16, u16),
    /// Type these bytes.
    Type(Vec<u8>),
}

/// Parses `WHEN=resize:RxC` or `WHEN=type:TEXT` (`\r` and `^C` in TEXT are Enter and
/// Ctrl-C).
pub fn parse_step(text: &str) -> io::Result<Step> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad step {text:?}"));
    let (when, action) = text.split_once('=').ok_or_else(bad)?;
    let action = if let Some(size) = action.strip_prefix("resize:") {
        let (rows, cols) = size.split_once('x').ok_or_else(bad)?;
        Action::Resize(
            rows.parse().map_err(|_| bad())?,
            cols.parse().map_err(|_| bad())?,
        )
    } else if let Some(typed) = action.strip_prefix("type:") {
        Action::Type(
            typed
                .replace("\\r", "\r")
                .replace("^C", "\x03")
                .into_bytes(),
        )
    } else {
        return Err(bad());
    };
    Ok(Step {
        when: when.to_string(),
        action,
    })
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Runs `command` on a new `rows` x `cols` pty, doing `steps` in order; returns the
/// command's exit code.
pub fn run(rows: u16, cols: u16, command: &[String], steps: Vec<Step>) -> io::Result<i32> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no command"))?;
    let (mut master, slave) = open_pty(rows, cols)?;
    let mut command_line = Command::new(program);
    command_line
        .args(args)
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave.try_clone()?);
    // SAFETY: between fork and exec only async-signal-safe calls: setsid, and ioctl on
    // the inherited stdin (the slave) to make it the controlling terminal.
    unsafe {
        command_line.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command_line.spawn()?;
    // Only the command may hold the slave now, so reads end (EIO) when it exits.
    drop(command_line);
    drop(slave);
    let mut seen = Vec::new();
    let mut steps = steps.into_iter().peekable();
    let mut buf = [0u8; 4096];
    let mut stdout = io::stdout();
    loop {
        // EIO: every slave fd is closed, the command has ended.
        let n = match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => return Err(e),
        };
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
        seen.extend_from_slice(&buf[..n]);
        while let Some(step) = steps.next_if(|s| contains(&seen, s.when.as_bytes())) {
            // Later steps wait for text that comes after this point.
            seen.clear();
            match step.action {
                Action::Resize(rows, cols) => set_size(&master, rows, cols)?,
                Action::Type(bytes) => master.write_all(&bytes)?,
            }
        }
    }
    let status = child.wait()?;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn open_pty(rows: u16, cols: u16) -> io::Result<(File, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let size = winsize(rows, cols);
    // SAFETY: openpty writes two fds into our ints; name and termios may be null and
    // size is a valid winsize it only reads.
    let ret = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded: both fds are fresh and ours alone.
    Ok(unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

fn set_size(master: &File, rows: u16, cols: u16) -> io::Result<()> {
    let size = winsize(rows, cols);
    // SAFETY: master is an open pty master; the kernel only reads the winsize and sends
    // SIGWINCH to the terminal's foreground process group.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse() {
        let step = parse_step("ready=resize:40x120").unwrap();
        assert_eq!(step.when, "ready");
        assert!(matches!(step.action, Action::Resize(40, 120)));
        let step = parse_step("go=type:hi\\r^C").unwrap();
        assert!(matches!(step.action, Action::Type(ref b) if b == b"hi\r\x03"));
        assert!(parse_step("nothing").is_err());
        assert!(parse_step("x=resize:40").is_err());
    }

    #[test]
    fn a_command_sees_its_terminal_resized_and_typed_into() {
        let script = "stty size; echo ready; \
                      while [ \"$(stty size)\" = '30 100' ]; do sleep 0.05; done; \
                      echo \"resized $(stty size)\"; read x; echo \"got $x\"; exit 4";
        let command = ["sh", "-c", script].map(String::from);
        let steps = vec![
            parse_step("ready=resize:40x120").unwrap(),
            parse_step("resized=type:hi\\r").unwrap(),
        ];
        assert_eq!(run(30, 100, &command, steps).unwrap(), 4);
    }
}
