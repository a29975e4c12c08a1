//! The register window of a virtio-mmio slot as a page of host memory.
//!
//! Every register the driver reads is kept current in one page of host memory: the
//! transport writes the register values there after each write it handles, the
//! [`super::Interrupt`] sets and clears InterruptStatus there, and a device that
//! breaks sets DEVICE_NEEDS_RESET there. Where KVM can map memory read-only into a
//! guest, the lead maps this page over the slot's MMIO window (`KVM_MEM_READONLY`):
//! the guest's reads (InterruptStatus in each interrupt handler above all) are then
//! plain memory loads without a VM exit, while its writes still fault and reach the
//! transport as MMIO exits, or a queue's ioeventfd in KVM. Without that, the
//! transport answers read exits from the same page.
//!
//! Every access from husk is an atomic 32-bit load or store (the page is shared by
//! the vCPU threads and the device loop); the guest's reads are untyped loads of
//! whatever the page holds at that instant, as reads of device registers are.
#![allow(
    unsafe_code,
    reason = "mmap and munmap have no safe wrapper in our dependencies"
)]

use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes in the page (one x86 page: the slot's whole window).
pub const PAGE_SIZE: usize = 4096;
const WORDS: usize = PAGE_SIZE / 4;

/// One page of registers (see the module documentation).
#[derive(Debug)]
pub struct RegisterPage {
    /// Start of a private anonymous mapping of `PAGE_SIZE` bytes.
    base: std::ptr::NonNull<AtomicU32>,
}

// SAFETY: the page is only accessed through `AtomicU32`s, which are Sync, and the
// mapping lives until `drop`.
unsafe impl Send for RegisterPage {}
// SAFETY: as above.
unsafe impl Sync for RegisterPage {}

impl RegisterPage {
    /// A zeroed page.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: an anonymous private mapping at an address the kernel picks; no
        // existing memory is affected. The result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = std::ptr::NonNull::new(addr.cast::<AtomicU32>())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Self { base })
    }

    fn words(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is PAGE_SIZE bytes, page-aligned (so aligned for u32),
        // zero-initialised by the kernel (a valid AtomicU32 bit pattern), and lives as
        // long as `self`; every access goes through the atomics.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), WORDS) }
    }

    /// The 32-bit word at byte `offset` rounded down to a multiple of 4; `None` past
    /// the page.
    pub fn word(&self, offset: u64) -> Option<&AtomicU32> {
        let index = usize::try_from(offset / 4).ok()?;
        self.words().get(index)
    }

    /// Store `value` at register `offset` (nothing past the page).
    pub fn store(&self, offset: u64, value: u32) {
        if let Some(word) = self.word(offset) {
            word.store(value, Ordering::SeqCst);
        }
    }

    /// Load the register at `offset` (zero past the page).
    pub fn load(&self, offset: u64) -> u32 {
        self.word(offset).map_or(0, |w| w.load(Ordering::SeqCst))
    }

    /// Store `bytes` from byte `offset` on (a multiple of 4), zero-padded to whole words.
    pub fn store_bytes(&self, offset: u64, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            self.store(offset + 4 * i as u64, u32::from_le_bytes(word));
        }
    }

    /// Copy `data.len()` bytes from byte `offset` into `data`; bytes past the page
    /// read as zero.
    pub fn load_bytes(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            // `at % 4` is below 4: the cast cannot truncate.
            *byte = self.load(at).to_le_bytes()[(at % 4) as usize];
        }
    }

    /// The page's host address, for a KVM memory slot.
    pub fn host_address(&self) -> u64 {
        self.base.as_ptr() as u64
    }
}

impl Drop for RegisterPage {
    fn drop(&mut self) {
        // SAFETY: `base` is the start of a PAGE_SIZE mapping made in `new` and not
        // unmapped before; no reference into it outlives `self`. A KVM memory slot on
        // it is removed with the VM, which the lead drops before its devices.
        unsafe { libc::munmap(self.base.as_ptr().cast(), PAGE_SIZE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_page_is_zero_and_page_aligned() {
        let page = RegisterPage::new().unwrap();
        assert_eq!(page.host_address() % PAGE_SIZE as u64, 0);
        let mut all = vec![0xffu8; PAGE_SIZE];
        page.load_bytes(0, &mut all);
        assert!(all.iter().all(|&b| b == 0));
    }

    #[test]
    fn words_and_bytes_are_little_endian_views_of_one_page() {
        let page = RegisterPage::new().unwrap();
        page.store(0x60, 0x0403_0201);
        let mut b = [0u8; 6];
        page.load_bytes(0x5f, &mut b);
        assert_eq!(b, [0, 1, 2, 3, 4, 0]);
        page.store_bytes(0x100, &[9, 8, 7, 6, 5]);
        assert_eq!(page.load(0x100), 0x0607_0809);
        assert_eq!(page.load(0x104), 5);
    }

    #[test]
    fn reads_past_the_page_are_zero_and_stores_there_do_nothing() {
        let page = RegisterPage::new().unwrap();
        page.store(0xffc, 0xaabb_ccdd);
        let mut b = [0xffu8; 8];
        page.load_bytes(0xffe, &mut b);
        assert_eq!(b, [0xbb, 0xaa, 0, 0, 0, 0, 0, 0]);
        page.load_bytes(u64::MAX - 3, &mut b);
        assert_eq!(b, [0; 8]);
        assert_eq!(page.load(0x1000), 0);
        page.store(0x1000, 1);
        assert_eq!(page.load(0xffc), 0xaabb_ccdd);
    }
}
