//! Hand-built kernel images for the boot tests.

use std::fs::File;
use std::io::{Seek, Write};

/// A file holding `bytes`, positioned at its start.
pub fn file_with(bytes: &[u8]) -> File {
    let mut file = vmm_sys_util::tempfile::TempFile::new()
        .expect("tempfile")
        .into_file();
    file.write_all(bytes).expect("write");
    file.rewind().expect("rewind");
    file
}

fn put(buf: &mut [u8], offset: usize, bytes: &[u8]) {
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// A little-endian x86_64 ELF64 executable with one 16-byte PT_LOAD segment at 1 MiB and
/// no notes (so no PVH entry).
pub fn minimal_elf() -> Vec<u8> {
    elf_with_phdrs(1)
}

/// [`minimal_elf`] plus a PT_NOTE segment holding a Xen `XEN_ELFNOTE_PHYS32_ENTRY` note
/// with `entry`.
pub fn minimal_pvh_elf(entry: u32) -> Vec<u8> {
    let mut elf = elf_with_phdrs(2);
    let note_offset = elf.len() as u64;
    let phdr = 64 + 56;
    put(&mut elf, phdr, &4u32.to_le_bytes()); // p_type: PT_NOTE
    put(&mut elf, phdr + 8, &note_offset.to_le_bytes()); // p_offset
    put(&mut elf, phdr + 32, &20u64.to_le_bytes()); // p_filesz
    put(&mut elf, phdr + 48, &4u64.to_le_bytes()); // p_align
    elf.extend(4u32.to_le_bytes()); // n_namesz
    elf.extend(4u32.to_le_bytes()); // n_descsz
    elf.extend(18u32.to_le_bytes()); // n_type: XEN_ELFNOTE_PHYS32_ENTRY
    elf.extend(b"Xen\0");
    elf.extend(entry.to_le_bytes());
    elf
}

/// ELF header, `phnum` program headers (the first a PT_LOAD of 16 bytes at 1 MiB, the
/// others zeroed for the caller) and the segment's bytes.
fn elf_with_phdrs(phnum: u16) -> Vec<u8> {
    let data_offset = 64 + 56 * u64::from(phnum);
    let mut elf = vec![0u8; data_offset as usize + 16];
    put(&mut elf, 0, b"\x7fELF\x02\x01\x01");
    put(&mut elf, 16, &2u16.to_le_bytes()); // e_type: EXEC
    put(&mut elf, 18, &62u16.to_le_bytes()); // e_machine: x86_64
    put(&mut elf, 20, &1u32.to_le_bytes()); // e_version
    put(&mut elf, 24, &0x10_0000u64.to_le_bytes()); // e_entry
    put(&mut elf, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut elf, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut elf, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut elf, 56, &phnum.to_le_bytes()); // e_phnum
    put(&mut elf, 64, &1u32.to_le_bytes()); // p_type: PT_LOAD
    put(&mut elf, 64 + 8, &data_offset.to_le_bytes()); // p_offset
    put(&mut elf, 64 + 16, &0x10_0000u64.to_le_bytes()); // p_vaddr
    put(&mut elf, 64 + 24, &0x10_0000u64.to_le_bytes()); // p_paddr
    put(&mut elf, 64 + 32, &16u64.to_le_bytes()); // p_filesz
    put(&mut elf, 64 + 40, &0x20_0000u64.to_le_bytes()); // p_memsz: 2 MiB with BSS
    elf
}

/// A bzImage with one setup sector and a 512-byte payload: boot protocol `version`,
/// `xloadflags`, LOADED_HIGH, `code32_start` 1 MiB, `initrd_addr_max` 2 GiB - 1 and
/// `init_size` 4 MiB.
pub fn minimal_bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
    let mut image = vec![0u8; 3 * 512];
    put(&mut image, 0x1f1, &[1]); // setup_sects
    put(&mut image, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut image, 0x202, b"HdrS");
    put(&mut image, 0x206, &version.to_le_bytes());
    put(&mut image, 0x211, &[1]); // loadflags: LOADED_HIGH
    put(&mut image, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut image, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut image, 0x236, &xloadflags.to_le_bytes());
    put(&mut image, 0x260, &0x40_0000u32.to_le_bytes()); // init_size
    image
}
