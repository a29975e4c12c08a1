//! File digests without hashing on every use: a stamp of a file's identity (device,
//! inode, size, mtime, ctime; any write changes ctime) remembers the sha256 computed
//! last time. Hashing a kernel or the agent on each sandbox start costs more than the
//! rest of a warm start on a slow host.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The identity of `file` as it is now: changes whenever its content may have.
pub fn file_stamp(file: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file).ok()?;
    Some(format!(
        "{:x}-{:x}-{:x}-{:x}.{:x}-{:x}.{:x}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Write `data` to `path` through a temp file in its folder and a rename.
pub fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The sha256 of `file`'s content, hex.
pub fn sha256_file(file: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(file)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of `file`, taken from the stamp cache in `cache_dir` when the file has
/// not changed since it was last hashed.
pub fn sha256_cached(file: &Path, cache_dir: &Path) -> std::io::Result<String> {
    let stamp: Option<PathBuf> = file_stamp(file).map(|s| cache_dir.join(format!("{s}.sha256")));
    if let Some(known) = stamp.as_ref().and_then(|s| std::fs::read_to_string(s).ok()) {
        let known = known.trim();
        if known.len() == 64 && known.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(known.to_string());
        }
    }
    let digest = sha256_file(file)?;
    if let Some(stamp) = stamp {
        // Best effort: without the stamp the next use hashes again.
        drop(write_atomically(&stamp, digest.as_bytes()));
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_digest_is_the_content_digest_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abc").unwrap();
        let cache = dir.path().join("cache");
        let first = sha256_cached(&file, &cache).unwrap();
        assert_eq!(
            first,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_cached(&file, &cache).unwrap(), first);
        std::fs::write(&file, b"abcd").unwrap();
        assert_ne!(sha256_cached(&file, &cache).unwrap(), first);
    }

    #[test]
    fn a_stamp_changes_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"1").unwrap();
        let before = file_stamp(&file).unwrap();
        std::fs::write(&file, b"22").unwrap();
        assert_ne!(file_stamp(&file).unwrap(), before);
        assert_eq!(file_stamp(&dir.path().join("missing")), None);
    }
}
