//! The capability set container processes keep: docker's default list. Everything
//! else is dropped from the bounding set and from the effective, permitted and
//! inheritable sets; the ambient set is cleared (see `child`).

/// Docker's default capabilities, by number (linux/capability.h).
pub const DEFAULT_CAPS: [(u32, &str); 14] = [
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (8, "CAP_SETPCAP"),
    (10, "CAP_NET_BIND_SERVICE"),
    (13, "CAP_NET_RAW"),
    (18, "CAP_SYS_CHROOT"),
    (27, "CAP_MKNOD"),
    (29, "CAP_AUDIT_WRITE"),
    (31, "CAP_SETFCAP"),
];

/// The highest capability number the agent considers when dropping from the bounding
/// set; numbers the kernel does not know are skipped.
pub const CAP_SCAN_LIMIT: u32 = 63;

/// The default set as a 64-bit mask (bit n = capability n).
pub fn default_mask() -> u64 {
    DEFAULT_CAPS
        .iter()
        .fold(0, |mask, (cap, _)| mask | (1u64 << cap))
}

/// The mask split into the two 32-bit words of `capset` (version 3): low word first.
pub fn mask_words(mask: u64) -> [u32; 2] {
    [mask as u32, (mask >> 32) as u32]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mask_has_the_fourteen_docker_caps() {
        assert_eq!(default_mask().count_ones(), 14);
        assert_eq!(default_mask(), 0xa80425fb);
    }

    #[test]
    fn sys_admin_is_not_in_the_default_mask() {
        assert_eq!(default_mask() & (1 << 21), 0);
    }

    #[test]
    fn mask_words_split_low_word_first() {
        assert_eq!(mask_words(0x0000_0002_0000_0001), [1, 2]);
    }
}
