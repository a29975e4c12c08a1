//! Looking up symbols in an ELF64 kernel's symbol table (`vmlinux` keeps `.symtab`), for
//! reading kernel variables out of guest memory after the guest has failed.
//!
//! Only the section headers, the symbol table and its string table are read, so a lookup
//! costs about a megabyte of reads and is done only when it is needed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// ELF section type of the full symbol table.
const SHT_SYMTAB: u32 = 2;
/// Size of an ELF64 section header and of an ELF64 symbol.
const SHDR_SIZE: usize = 64;
const SYM_SIZE: usize = 24;
/// The first bytes of every ELF file, then ELFCLASS64 and little-endian.
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
/// A sane upper bound for a symbol or string table read into memory.
const MAX_TABLE_BYTES: u64 = 256 << 20;

/// Errors reading a kernel's symbols.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    /// The file could not be opened or read.
    #[error("cannot read symbols of {}", path.display())]
    Read {
        /// The kernel file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a little-endian ELF64 file with a symbol table.
    #[error("{} has no ELF64 symbol table ({what})", path.display())]
    NoSymtab {
        /// The kernel file.
        path: PathBuf,
        /// What is missing or malformed.
        what: &'static str,
    },
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// A section's place in the file.
#[derive(Debug, Clone, Copy)]
struct Section {
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

/// Reads byte ranges of the kernel file.
struct Reader<'a> {
    file: File,
    path: &'a Path,
}

impl Reader<'_> {
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, SymbolsError> {
        if len > MAX_TABLE_BYTES {
            return Err(self.malformed("a table is implausibly large"));
        }
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| SymbolsError::Read {
                path: self.path.to_path_buf(),
                source,
            })?;
        Ok(buf)
    }

    fn malformed(&self, what: &'static str) -> SymbolsError {
        SymbolsError::NoSymtab {
            path: self.path.to_path_buf(),
            what,
        }
    }

    /// The section headers, from the ELF header's `e_shoff`/`e_shnum`.
    fn sections(&self) -> Result<Vec<Section>, SymbolsError> {
        let ehdr = self.read(0, 64)?;
        if ehdr[..4] != ELF_MAGIC || ehdr[4] != ELFCLASS64 || ehdr[5] != ELFDATA2LSB {
            return Err(self.malformed("not a little-endian ELF64 file"));
        }
        let bad = || self.malformed("bad ELF header");
        let shoff = u64_at(&ehdr, 40).ok_or_else(bad)?;
        let shentsize = u16_at(&ehdr, 58).ok_or_else(bad)?;
        let shnum = u16_at(&ehdr, 60).ok_or_else(bad)?;
        if usize::from(shentsize) != SHDR_SIZE || shnum == 0 {
            return Err(self.malformed("no section headers"));
        }
        let table = self.read(shoff, u64::from(shnum) * SHDR_SIZE as u64)?;
        Ok(table
            .chunks_exact(SHDR_SIZE)
            .filter_map(|h| {
                Some(Section {
                    kind: u32_at(h, 4)?,
                    offset: u64_at(h, 24)?,
                    size: u64_at(h, 32)?,
                    link: u32_at(h, 40)?,
                })
            })
            .collect())
    }
}

/// The values of the symbols named in `names`, in the same order (`None` for a name the
/// table does not hold). The first definition of a name wins.
pub fn lookup(path: &Path, names: &[&str]) -> Result<Vec<Option<u64>>, SymbolsError> {
    let (syms, strings) = read_tables(path)?;
    Ok(find_symbols(&syms, &strings, names))
}

/// The symbol table and its string table of the ELF64 file at `path`.
fn read_tables(path: &Path) -> Result<(Vec<u8>, Vec<u8>), SymbolsError> {
    let file = File::open(path).map_err(|source| SymbolsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = Reader { file, path };
    let sections = reader.sections()?;
    let symtab = sections
        .iter()
        .find(|s| s.kind == SHT_SYMTAB)
        .ok_or_else(|| reader.malformed("no .symtab section"))?;
    let strtab = sections
        .get(symtab.link as usize)
        .ok_or_else(|| reader.malformed("bad string table link"))?;
    Ok((
        reader.read(symtab.offset, symtab.size)?,
        reader.read(strtab.offset, strtab.size)?,
    ))
}

/// The function symbol that `address` falls in, as `name+0xoffset`: the function with
/// the highest start at or below `address` whose size covers it (or, for a symbol
/// without a size, the nearest one below). `None` when no function is found.
pub fn describe_address(path: &Path, address: u64) -> Result<Option<String>, SymbolsError> {
    let (syms, strings) = read_tables(path)?;
    Ok(containing_function(&syms, &strings, address))
}

/// ELF symbol type of a function (low nibble of `st_info`).
const STT_FUNC: u8 = 2;

fn containing_function(syms: &[u8], strings: &[u8], address: u64) -> Option<String> {
    let mut best: Option<(u64, u32)> = None;
    for sym in syms.chunks_exact(SYM_SIZE) {
        let (Some(name_off), Some(&info), Some(value), Some(size)) =
            (u32_at(sym, 0), sym.get(4), u64_at(sym, 8), u64_at(sym, 16))
        else {
            continue;
        };
        if info & 0xf != STT_FUNC || value > address {
            continue;
        }
        if size != 0 && address - value >= size {
            continue;
        }
        if best.is_none_or(|(v, _)| value > v) {
            best = Some((value, name_off));
        }
    }
    let (value, name_off) = best?;
    let name = symbol_name(strings, name_off)?;
    Some(format!("{name}+{:#x}", address - value))
}

fn symbol_name(strings: &[u8], offset: u32) -> Option<&str> {
    let s = strings.get(offset as usize..)?;
    let end = s.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&s[..end]).ok()
}

/// Scans ELF64 symbols `syms` (names in `strings`) for `names`.
fn find_symbols(syms: &[u8], strings: &[u8], names: &[&str]) -> Vec<Option<u64>> {
    let mut found = vec![None; names.len()];
    for sym in syms.chunks_exact(SYM_SIZE) {
        let (Some(name_off), Some(value)) = (u32_at(sym, 0), u64_at(sym, 8)) else {
            continue;
        };
        let Some(name) = symbol_name(strings, name_off) else {
            continue;
        };
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i].get_or_insert(value);
        }
    }
    found
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 file: header, a null section, `.symtab` and `.strtab`, holding the
    /// symbols `syms` (name, value).
    pub(crate) fn tiny_elf(syms: &[(&str, u64)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut table = vec![0u8; SYM_SIZE]; // the null symbol
        for (name, value) in syms {
            let mut sym = [0u8; SYM_SIZE];
            sym[..4].copy_from_slice(&(strings.len() as u32).to_le_bytes());
            sym[8..16].copy_from_slice(&value.to_le_bytes());
            table.extend_from_slice(&sym);
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        let symtab_off = 64u64;
        let strtab_off = symtab_off + table.len() as u64;
        let shoff = strtab_off + strings.len() as u64;
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(&ELF_MAGIC);
        (elf[4], elf[5]) = (ELFCLASS64, ELFDATA2LSB);
        elf[40..48].copy_from_slice(&shoff.to_le_bytes());
        elf[58..60].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        elf[60..62].copy_from_slice(&3u16.to_le_bytes());
        elf.extend_from_slice(&table);
        elf.extend_from_slice(&strings);
        let section = |kind: u32, off: u64, size: u64, link: u32| {
            let mut h = [0u8; SHDR_SIZE];
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&off.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h[40..44].copy_from_slice(&link.to_le_bytes());
            h
        };
        elf.extend_from_slice(&[0u8; SHDR_SIZE]);
        elf.extend_from_slice(&section(SHT_SYMTAB, symtab_off, table.len() as u64, 2));
        elf.extend_from_slice(&section(3, strtab_off, strings.len() as u64, 0));
        elf
    }

    fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), bytes).expect("write");
        file
    }

    #[test]
    fn lookup_finds_named_symbols_and_reports_missing_ones() {
        let elf = write_temp(&tiny_elf(&[("prb", 0x10), ("log_buf", 0x20)]));
        let found = lookup(elf.path(), &["log_buf", "absent", "prb"]).expect("lookup");
        assert_eq!(found, vec![Some(0x20), None, Some(0x10)]);
    }

    #[test]
    fn first_definition_of_a_name_wins() {
        let elf = write_temp(&tiny_elf(&[("x", 1), ("x", 2)]));
        assert_eq!(lookup(elf.path(), &["x"]).expect("lookup"), vec![Some(1)]);
    }

    /// A symbol table of functions (name, start, size), with one data symbol mixed in.
    fn function_table(funcs: &[(&str, u64, u64)]) -> (Vec<u8>, Vec<u8>) {
        let mut strings = vec![0u8];
        let mut table = vec![0u8; SYM_SIZE];
        let data = [("a_variable", 0x1004, 4, 1u8)];
        let all = funcs
            .iter()
            .map(|&(n, v, s)| (n, v, s, STT_FUNC))
            .chain(data);
        for (name, value, size, kind) in all {
            let mut sym = [0u8; SYM_SIZE];
            sym[..4].copy_from_slice(&(strings.len() as u32).to_le_bytes());
            sym[4] = 0x10 | kind; // STB_GLOBAL
            sym[8..16].copy_from_slice(&value.to_le_bytes());
            sym[16..24].copy_from_slice(&size.to_le_bytes());
            table.extend_from_slice(&sym);
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
        }
        (table, strings)
    }

    #[test]
    fn an_address_is_named_by_the_function_that_holds_it() {
        let (syms, strings) = function_table(&[("first", 0x1000, 0x40), ("second", 0x1040, 0x10)]);
        let name = |a| containing_function(&syms, &strings, a);
        assert_eq!(name(0x1000).as_deref(), Some("first+0x0"));
        assert_eq!(name(0x1004).as_deref(), Some("first+0x4"));
        assert_eq!(name(0x104f).as_deref(), Some("second+0xf"));
        // Past the end of the last function, and before the first one.
        assert_eq!(name(0x1050), None);
        assert_eq!(name(0xfff), None);
    }

    #[test]
    fn a_function_without_a_size_covers_up_to_the_next_one() {
        let (syms, strings) = function_table(&[("asm_entry", 0x2000, 0), ("later", 0x3000, 8)]);
        let name = |a| containing_function(&syms, &strings, a);
        assert_eq!(name(0x2abc).as_deref(), Some("asm_entry+0xabc"));
        assert_eq!(name(0x3004).as_deref(), Some("later+0x4"));
    }

    #[test]
    fn a_truncated_table_names_nothing_and_does_not_panic() {
        let (syms, strings) = function_table(&[("f", 0x1000, 0x10)]);
        assert_eq!(containing_function(&syms[..30], &strings, 0x1000), None);
        assert_eq!(containing_function(&syms, &strings[..1], 0x1000), None);
    }

    #[test]
    fn a_file_that_is_not_elf_is_refused() {
        let file = write_temp(&[0u8; 128]);
        let err = lookup(file.path(), &["x"]).expect_err("not ELF");
        assert!(err.to_string().contains("not a little-endian ELF64 file"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = lookup(Path::new("/nonexistent/vmlinux"), &["x"]).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }
}
