//! The kernel command line: validated against the Linux size limit and written at
//! [`CMDLINE_START`].

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::load_cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};

/// Errors building or writing the kernel command line.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// The command line does not fit in the kernel's buffer.
    #[error(
        "kernel command line is {len} bytes, the limit is {} (including the NUL)",
        CMDLINE_MAX_SIZE
    )]
    TooLong {
        /// Length of the command line without the NUL.
        len: usize,
    },
    /// The command line has a character the kernel cannot take.
    #[error("invalid kernel command line {cmdline:?}: {reason}")]
    Invalid {
        /// The rejected command line.
        cmdline: String,
        /// What linux-loader objected to.
        reason: linux_loader::cmdline::Error,
    },
    /// Guest memory does not cover the command line address.
    #[error("cannot write the kernel command line at {:#x}", CMDLINE_START)]
    Write(#[source] linux_loader::loader::Error),
}

/// Writes `cmdline` NUL-terminated at [`CMDLINE_START`]; returns its size with the NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, CmdlineError> {
    let built = build(cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &built).map_err(CmdlineError::Write)?;
    Ok(cmdline.trim().len() + 1)
}

fn build(cmdline: &str) -> Result<Cmdline, CmdlineError> {
    let mut built = Cmdline::new(CMDLINE_MAX_SIZE).expect("the capacity is not zero");
    built.insert_str(cmdline).map_err(|reason| match reason {
        linux_loader::cmdline::Error::TooLarge => CmdlineError::TooLong {
            len: cmdline.trim().len(),
        },
        reason => CmdlineError::Invalid {
            cmdline: cmdline.to_string(),
            reason,
        },
    })?;
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("mmap")
    }

    #[test]
    fn cmdline_is_written_nul_terminated_at_cmdline_start() {
        let mem = mem();
        let size = write_cmdline(&mem, "console=ttyS0 panic=-1").expect("write");
        let mut buf = [0u8; 23];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .expect("read");
        assert_eq!(&buf, b"console=ttyS0 panic=-1\0");
        assert_eq!(size, 23);
    }

    #[test]
    fn cmdline_too_long_names_its_length_and_the_limit() {
        let long = "a".repeat(CMDLINE_MAX_SIZE);
        let err = write_cmdline(&mem(), &long).expect_err("too long");
        assert_eq!(
            err.to_string(),
            "kernel command line is 2048 bytes, the limit is 2048 (including the NUL)"
        );
    }

    #[test]
    fn cmdline_of_limit_minus_one_fits() {
        let long = "a".repeat(CMDLINE_MAX_SIZE - 1);
        assert_eq!(
            write_cmdline(&mem(), &long).expect("fits"),
            CMDLINE_MAX_SIZE
        );
    }
}
