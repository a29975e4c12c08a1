use super::*;

#[test]
fn the_agent_digest_is_the_initramfs_name() {
    let initrd = Path::new("/cache/initramfs/agent-0123456789abcdef.cpio");
    assert_eq!(agent_digest(initrd), "0123456789abcdef");
}

fn template(kernel: &str, agent: &str) -> Template {
    Template {
        dir: PathBuf::from("/t"),
        info: TemplateInfo {
            name: "1cpu-320mib".into(),
            shape_version: SHAPE_VERSION,
            kernel: PathBuf::from("/k"),
            kernel_sha256: kernel.into(),
            agent_digest: agent.into(),
            cpus: 1,
            memory_mib: 320,
            created: 0,
            build_ms: 0.0,
            memory_bytes: 0,
            image: None,
        },
    }
}

#[test]
fn a_template_for_the_same_kernel_and_agent_is_fresh() {
    assert_eq!(template("aa", "bb").staleness("aa", "bb"), None);
}

#[test]
fn a_rebuilt_kernel_makes_the_template_stale_and_says_so() {
    let why = template(&"ab".repeat(32), "bb").staleness(&"cd".repeat(32), "bb");
    assert_eq!(
        why.as_deref(),
        Some("kernel changed: abababababab… → cdcdcdcdcdcd…")
    );
}

#[test]
fn a_rebuilt_agent_makes_the_template_stale() {
    let why = template("aa", "01").staleness("aa", "02");
    assert_eq!(why.as_deref(), Some("agent changed: 01 → 02"));
}

#[test]
fn removing_a_name_that_climbs_out_is_refused() {
    assert!(Template::remove("../x").is_err());
    assert!(Template::remove("").is_err());
}
