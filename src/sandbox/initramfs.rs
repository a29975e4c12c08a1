//! A minimal writer for uncompressed newc cpio archives, the format the kernel unpacks
//! into its initial root filesystem.
//!
//! Written by hand because the guest needs only a few entries (the agent as `/init`,
//! `/dev/console`, a handful of directories) and the existing crates either compress,
//! need the files on disk with the right owners, or pull in far more than this.

use std::io::{self, Write};

/// newc's magic.
const MAGIC: &str = "070701";
/// File type bits.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// One entry of an archive. Paths are relative to the archive root; a leading `/` is
/// dropped. `mode` holds permission bits only; the type comes from the variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Path in the archive.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path in the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A character device node.
    CharDev {
        /// Path in the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// Writes `entries` (owned by root, mtime 0) and the trailer to `out`.
pub fn write_archive(entries: &[Entry], out: &mut dyn Write) -> io::Result<()> {
    for (ino, entry) in (1u32..).zip(entries) {
        let (path, mode, data, rdev) = match entry {
            Entry::Dir { path, mode } => (path, S_IFDIR | mode, &[][..], (0, 0)),
            Entry::File { path, mode, data } => (path, S_IFREG | mode, &data[..], (0, 0)),
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => (path, S_IFCHR | mode, &[][..], (*major, *minor)),
        };
        write_entry(out, ino, path.trim_start_matches('/'), mode, data, rdev)?;
    }
    write_entry(out, 0, "TRAILER!!!", 0, &[], (0, 0))
}

fn write_entry(
    out: &mut dyn Write,
    ino: u32,
    name: &str,
    mode: u32,
    data: &[u8],
    rdev: (u32, u32),
) -> io::Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is larger than 4 GiB"),
        )
    })?;
    let name_size = name.len() + 1;
    let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let header = format!(
        "{MAGIC}{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{name_size:08X}{:08X}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, header.len() + name_size)?;
    out.write_all(data)?;
    pad(out, data.len())
}

/// Pad to a multiple of 4 bytes.
fn pad(out: &mut dyn Write, len: usize) -> io::Result<()> {
    out.write_all(&[0; 3][..(4 - len % 4) % 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        write_archive(entries, &mut out).unwrap();
        out
    }

    #[test]
    fn empty_archive_is_only_the_trailer_padded_to_four() {
        let out = archive(&[]);
        assert_eq!(out.len(), 124);
        assert!(out.starts_with(b"070701"));
        assert_eq!(&out[110..120], b"TRAILER!!!");
    }

    #[test]
    fn file_entry_has_size_mode_and_aligned_data() {
        let out = archive(&[Entry::File {
            path: "/init".into(),
            mode: 0o755,
            data: b"abc".to_vec(),
        }]);
        let header = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(&header[14..22], "000081ED");
        assert_eq!(&header[54..62], "00000003");
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..119], b"abc");
        assert_eq!(out[119], 0);
    }

    #[test]
    fn char_device_carries_its_numbers() {
        let out = archive(&[Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        }]);
        let header = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(&header[14..22], "00002180");
        assert_eq!(&header[78..86], "00000005");
        assert_eq!(&header[86..94], "00000001");
    }

    #[test]
    fn archive_is_readable_by_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let cpio = dir.path().join("a.cpio");
        let entries = [
            Entry::Dir {
                path: "bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "bin/hello".into(),
                mode: 0o644,
                data: b"hello\n".to_vec(),
            },
        ];
        std::fs::write(&cpio, archive(&entries)).unwrap();
        let listing = std::process::Command::new("cpio")
            .args(["-it", "--quiet", "-F"])
            .arg(&cpio)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&listing.stdout), "bin\nbin/hello\n");
    }
}
