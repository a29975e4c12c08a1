use super::*;
use proptest::prelude::*;

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// The strings a NULL-terminated pointer array holds.
fn strings(ptrs: *const *const libc::c_char) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        // SAFETY: the decoder made a NULL-terminated array of pointers into the
        // memory the test still holds.
        let p = unsafe { *ptrs.add(i) };
        if p.is_null() {
            return out;
        }
        // SAFETY: each pointer is a NUL-terminated string in that memory.
        out.push(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        i += 1;
    }
}

fn encoded(argv: &[CString], envp: &[CString], groups: &[u32]) -> Option<Vec<u8>> {
    encode(&Command {
        uid: 1000,
        gid: 100,
        tty: true,
        groups,
        hostname: c"box",
        cwd: c"/work",
        exe: c"/bin/sh",
        argv,
        envp,
    })
}

/// A decoded command as owned values: ids, tty, groups, "hostname cwd exe", argv, envp.
type Owned = (u32, u32, bool, Vec<u32>, String, Vec<String>, Vec<String>);

fn decode_bytes(bytes: &[u8]) -> Option<Owned> {
    let mut mem = ZygoteMemory::default();
    mem.buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
    let d = decode(&mut mem, bytes.len())?;
    Some((
        d.uid,
        d.gid,
        d.tty,
        d.groups.to_vec(),
        format!(
            "{} {} {}",
            d.hostname.to_string_lossy(),
            d.cwd.to_string_lossy(),
            d.exe.to_string_lossy()
        ),
        strings(d.argv),
        strings(d.envp),
    ))
}

#[test]
fn a_command_decodes_to_what_was_encoded() {
    let argv = [c("sh"), c("-c"), c("echo hi")];
    let envp = [c("PATH=/bin"), c("HOME=/root")];
    let bytes = encoded(&argv, &envp, &[4, 27]).expect("fits");
    let decoded = decode_bytes(&bytes).expect("decodes");
    assert_eq!(
        decoded,
        (
            1000,
            100,
            true,
            vec![4, 27],
            "box /work /bin/sh".into(),
            vec!["sh".into(), "-c".into(), "echo hi".into()],
            vec!["PATH=/bin".into(), "HOME=/root".into()],
        )
    );
}

#[test]
fn commands_past_the_limits_are_not_encoded() {
    let many: Vec<CString> = (0..=MAX_STRINGS).map(|i| c(&i.to_string())).collect();
    assert!(encoded(&many, &[], &[]).is_none());
    assert!(encoded(&[], &many, &[]).is_none());
    assert!(encoded(&[], &[], &[0; MAX_GROUPS + 1]).is_none());
    let big = [c(&"x".repeat(MAX_COMMAND))];
    assert!(encoded(&big, &[], &[]).is_none());
}

#[test]
fn every_truncation_and_a_trailing_byte_are_refused() {
    let bytes = encoded(&[c("true")], &[c("A=1")], &[7]).expect("fits");
    for len in 0..bytes.len() {
        assert!(decode_bytes(&bytes[..len]).is_none(), "{len} bytes decoded");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_bytes(&longer).is_none());
}

#[test]
fn counts_past_the_buffers_are_refused() {
    // ngroups far past MAX_GROUPS, argc past MAX_STRINGS.
    let mut bytes = Vec::new();
    for v in [0u32, 0, 0, u32::MAX] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    assert!(decode_bytes(&bytes).is_none());
    let mut bytes = encoded(&[], &[], &[]).expect("fits");
    let at = bytes.len() - 8;
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_bytes(&bytes).is_none());
}

proptest! {
    #[test]
    fn any_bytes_decode_or_are_refused_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let _ = decode_bytes(&bytes);
    }

    #[test]
    fn any_command_round_trips(
        argv in proptest::collection::vec("[a-z=/ .-]{0,12}", 0..20),
        envp in proptest::collection::vec("[A-Z]{1,4}=[a-z]{0,8}", 0..20),
        groups in proptest::collection::vec(any::<u32>(), 0..MAX_GROUPS),
    ) {
        let a: Vec<CString> = argv.iter().map(|s| c(s)).collect();
        let e: Vec<CString> = envp.iter().map(|s| c(s)).collect();
        let bytes = encoded(&a, &e, &groups).expect("fits");
        let d = decode_bytes(&bytes).expect("decodes");
        prop_assert_eq!(d.3, groups);
        prop_assert_eq!(d.5, argv);
        prop_assert_eq!(d.6, envp);
    }
}
