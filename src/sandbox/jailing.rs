//! Jailing a sandbox's `husk vmm` (`husk::jail`). When the caller is root: a uid of
//! husk's range per VMM, the shared gid; otherwise a user-namespace jail
//! (`husk vmm --jail DIR --userns`), the VMM keeping the caller's uid, its folder in
//! `husk-jails-<uid>` of the runtime root (or `HUSK_JAIL_ROOT`). Either way the jail's
//! binds: the kernel, the agent initramfs, the image, the templates (read-only), the
//! runtime folder (read-write), the console file, and whatever the start needs besides
//! (a snapshot to restore, a template being built).
//!
//! The caller's disks ([`SandboxConfig::disks`]) are handed over without changing
//! their owner or mode: each is held (`husk vmm --hold`), opened as root by the jail
//! before its uid drop, read-only for a read-only disk, and bound read-only so its path
//! exists in the jail; the VMM's disk uses the held file. The TAPs of the caller's
//! cards ([`SandboxConfig::nets`]) are held the same way (`husk vmm --hold-tap`): the
//! jail attaches to each as root and the card uses that descriptor, so the TAP keeps
//! its owner and stays the caller's after the VM. The volumes' virtiofsd sockets lie
//! in the runtime folder and are handed to the jail's uid (mode 0600) before the VM is
//! built, the daemons staying outside the jail (`launch`).
//!
//! Not jailed (the VMM runs as the caller, with its filters): `SandboxConfig::jail` off,
//! a caller's card without a TAP name (a new TAP, which needs CAP_NET_ADMIN), and a
//! caller that is not root on a kernel that refuses it user namespaces (said once per
//! process by a warning naming the cause). The sandbox's own card is jailed as root:
//! its TAP is made persistent and owned by the jail's uid ([`JailTap`]), and the VMM
//! claims it; a user-namespace jail has no such TAP (a caller that is not root cannot
//! make one).

use std::borrow::Cow;
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use crate::config::ConsoleConfig;
use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::net::tap;
use crate::jail::{Bind, JailIds};

use super::{SandboxConfig, SandboxError};

/// How a sandbox's VMM is jailed.
#[derive(Debug)]
pub struct VmmJail {
    /// The uid slot of root's jail; `None` for a user-namespace jail.
    ids: Option<JailIds>,
    dir: PathBuf,
    binds: Vec<Bind>,
    /// The caller's disks, opened by the jail before its uid drop.
    held: Vec<Bind>,
    /// The TAPs of the caller's cards, attached by the jail before its uid drop.
    held_taps: Vec<String>,
    /// The name of the TAP a sandbox makes for this jail's slot ([`JailTap`]), which
    /// the supervisor removes if the sandbox's caller is gone when the VMM ends.
    slot_tap: Option<String>,
}

fn jail_err(e: crate::jail::JailError) -> SandboxError {
    SandboxError::Vmm(e.to_string())
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> SandboxError {
    move |e| SandboxError::Vmm(format!("{what}: {e}"))
}

/// The folder of husk's templates (every jailed VMM may read them).
fn templates_dir() -> PathBuf {
    crate::kernel::cache_root().join("templates")
}

/// Why `config`'s VMM runs unjailed, if it does.
fn unjailed_because(config: &SandboxConfig) -> Option<Cow<'static, str>> {
    if !config.jail {
        return Some("jailing is off for this sandbox".into());
    }
    user_namespace_refused().map(Cow::Owned)
}

/// For a caller that is not root: why the kernel refuses it a user-namespace jail, if
/// it does, said once per process as a warning (the VMMs then run with their filters
/// only, in the caller's namespaces).
fn user_namespace_refused() -> Option<String> {
    static WARNED: Once = Once::new();
    if crate::jail::running_as_root() {
        return None;
    }
    let why = crate::jail::userns::probe().err()?.to_string();
    WARNED.call_once(|| log::warn!("VMMs run unjailed, with their filters only: {why}"));
    Some(why)
}

/// A folder for a user-namespace jail, not made yet (`husk vmm` makes it, its
/// supervisor removes it): in `HUSK_JAIL_ROOT`, else in `husk-jails-<uid>` of the
/// runtime root, made private to the caller (and refused if it is not the caller's).
fn user_jail_dir() -> Result<PathBuf, SandboxError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let uid = crate::jail::effective_uid();
    let parent = match std::env::var_os("HUSK_JAIL_ROOT") {
        Some(root) => PathBuf::from(root),
        None => super::connect::runtime_root().join(format!("husk-jails-{uid}")),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)
        .map_err(io_err(format!("create {}", parent.display())))?;
    let meta =
        std::fs::symlink_metadata(&parent).map_err(io_err(format!("read {}", parent.display())))?;
    if !meta.is_dir() || meta.uid() != uid {
        return Err(SandboxError::Vmm(format!(
            "{}: the jails' folder must be a folder of uid {uid}",
            parent.display()
        )));
    }
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(parent.join(format!("{}-{n}", std::process::id())))
}

fn read_only(path: &Path) -> Bind {
    Bind {
        path: path.to_path_buf(),
        writable: false,
    }
}

fn writable(path: &Path) -> Bind {
    Bind {
        path: path.to_path_buf(),
        writable: true,
    }
}

/// What a jail holds of `config`'s disks: each, with its access.
fn held_disks(config: &SandboxConfig) -> Vec<Bind> {
    let hold = |d: &BlockConfig| Bind {
        path: d.path.clone(),
        writable: !d.read_only,
    };
    config.disks.iter().map(hold).collect()
}

/// What a jail holds of `config`'s cards: the TAP of each.
fn held_taps(config: &SandboxConfig) -> Vec<String> {
    config.nets.iter().filter_map(|n| n.tap.clone()).collect()
}

/// Whether `config`'s VMM is jailed.
pub fn jails(config: &SandboxConfig) -> bool {
    unjailed_because(config).is_none()
}

impl VmmJail {
    /// A jail for a VMM listening in `runtime` (made the jail's, and bound writable)
    /// holding `binds`; `console`, a file made the jail's and bound writable. Root's
    /// jail when the caller is root, else a user-namespace jail.
    fn new(
        runtime: &Path,
        mut binds: Vec<Bind>,
        console: Option<&Path>,
    ) -> Result<Self, SandboxError> {
        let (ids, dir) = match crate::jail::running_as_root() {
            true => {
                let root = crate::jail::jails_root();
                let ids = JailIds::allocate(&root.join("ids")).map_err(jail_err)?;
                let dir = root.join(ids.uid.to_string());
                (Some(ids), dir)
            }
            false => (None, user_jail_dir()?),
        };
        if let Some(path) = console {
            std::fs::File::create(path).map_err(io_err(format!("create {}", path.display())))?;
            binds.push(writable(path));
        }
        binds.push(writable(runtime));
        let jail = Self {
            ids,
            dir,
            binds,
            held: Vec::new(),
            held_taps: Vec::new(),
            slot_tap: None,
        };
        if let Some(path) = console {
            jail.hand_over(path)?;
        }
        jail.hand_over(runtime)?;
        Ok(jail)
    }

    /// The jail for `config`'s VMM listening in `runtime`, with the agent `initrd` and
    /// `extra` binds; `None` when it runs unjailed (said at debug level).
    pub fn for_sandbox(
        config: &SandboxConfig,
        runtime: &Path,
        initrd: &Path,
        extra: Vec<Bind>,
    ) -> Result<Option<Self>, SandboxError> {
        if let Some(why) = unjailed_because(config) {
            log::debug!("sandbox VMM not jailed: {why}");
            return Ok(None);
        }
        log::debug!(
            "sandbox VMM jailed {}",
            match crate::jail::running_as_root() {
                true => "as a uid of husk's range",
                false => "in a user namespace",
            }
        );
        let mut binds = vec![
            read_only(&config.kernel),
            read_only(initrd),
            read_only(&config.image.fs_image),
        ];
        // Bound even before the first template exists: a pooled VMM may restore one
        // made after it was spawned.
        let templates = templates_dir();
        std::fs::create_dir_all(&templates)
            .map_err(io_err(format!("create {}", templates.display())))?;
        binds.push(read_only(&templates));
        binds.extend(extra);
        let console = match &config.console {
            ConsoleConfig::File(path) => Some(path.as_path()),
            _ => None,
        };
        // The caller's disks: held, and bound read-only for their paths.
        binds.extend(config.disks.iter().map(|d| read_only(&d.path)));
        let mut jail = Self::new(runtime, binds, console)?;
        jail.held = held_disks(config);
        jail.held_taps = held_taps(config);
        // Always as root: a pooled VMM may serve a sandbox with a network.
        if let Some(uid) = jail.uid() {
            jail.slot_tap = Some(slot_tap_name(uid)?);
        }
        Ok(Some(jail))
    }

    /// The jail of a template's VMM: its kernel and initramfs, and the template's
    /// folder `dir` (its empty disks) made the jail's; `None` when the caller is not
    /// root and the kernel refuses it a user namespace.
    pub fn for_template(
        kernel: &Path,
        initrd: &Path,
        runtime: &Path,
        dir: &Path,
    ) -> Result<Option<Self>, SandboxError> {
        if let Some(why) = user_namespace_refused() {
            log::debug!("template VMM not jailed: {why}");
            return Ok(None);
        }
        let jail = Self::new(runtime, vec![read_only(kernel), read_only(initrd)], None)?;
        for entry in std::fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            jail.hand_over(&entry.path())?;
        }
        jail.hand_over(dir)?;
        let mut jail = jail;
        jail.binds.push(writable(dir));
        Ok(Some(jail))
    }

    /// Whether a VMM jailed for `config` (with `initrd`) could serve `other` with
    /// `other_initrd` too: the same read-only files, the same disks and TAPs held, no
    /// console file of its own.
    pub fn serves(&self, config: &SandboxConfig, initrd: &Path) -> bool {
        let has = |path: &Path| self.binds.iter().any(|b| b.path == path);
        unjailed_because(config).is_none()
            && has(&config.kernel)
            && has(initrd)
            && has(&config.image.fs_image)
            && self.held == held_disks(config)
            && self.held_taps == held_taps(config)
            && !matches!(config.console, ConsoleConfig::File(_))
    }

    /// The uid of root's jail; `None` for a user-namespace jail (the caller's uid).
    pub fn uid(&self) -> Option<u32> {
        self.ids.as_ref().map(|ids| ids.uid)
    }

    /// Make `path` the jail's: its uid's in root's jail; nothing to do in a user
    /// namespace, where the VMM keeps the caller's uid.
    pub fn hand_over(&self, path: &Path) -> Result<(), SandboxError> {
        match self.uid() {
            Some(uid) => own(path, uid),
            None => Ok(()),
        }
    }

    /// The jail's folder (its root while the VMM runs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `husk vmm`'s arguments for this jail.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--jail".into(), self.dir.clone().into()];
        match &self.ids {
            Some(ids) => args.extend([
                "--uid".into(),
                ids.uid.to_string().into(),
                "--gid".into(),
                ids.gid.to_string().into(),
            ]),
            None => args.push("--userns".into()),
        }
        for bind in &self.binds {
            let mut value = bind.path.clone().into_os_string();
            if bind.writable {
                value.push(":rw");
            }
            args.push("--bind".into());
            args.push(value);
        }
        for held in &self.held {
            let mut value = held.path.clone().into_os_string();
            if held.writable {
                value.push(":rw");
            }
            args.push("--hold".into());
            args.push(value);
        }
        for tap in &self.held_taps {
            args.push("--hold-tap".into());
            args.push(tap.into());
        }
        if let Some((tap, ids)) = self.slot_tap.as_ref().zip(self.ids.as_ref()) {
            args.push("--slot-tap".into());
            args.push(tap.into());
            args.push("--slot-lock".into());
            args.push(ids.lock_path.clone().into());
        }
        args
    }
}

/// The TAP of a jailed VMM's card: made persistent and owned by the jail's uid, named
/// after the jail's slot (`huskj<slot>`), so that the VMM can attach to it without
/// CAP_NET_ADMIN. The VMM clears its persistence once attached (so it goes with the
/// VMM); dropping this removes it if no VMM holds it (a start that failed first). A
/// caller killed in between leaves it to the VMM's supervisor (`--slot-tap`), which
/// removes it when the VMM ends.
pub struct JailTap {
    name: String,
}

/// The name of the TAP made for the jail of uid `uid`: `huskj<slot>`.
fn slot_tap_name(uid: u32) -> Result<String, SandboxError> {
    let base = crate::jail::ids::shared_gid().map_err(jail_err)?;
    Ok(format!("huskj{}", uid.saturating_sub(base + 1)))
}

impl JailTap {
    /// Make the TAP for root's `jail`. A TAP of that name is a leftover (the slot is
    /// this jail's now): one whose supervisor was killed too before it could remove it.
    pub fn create(jail: &VmmJail) -> Result<Self, SandboxError> {
        Self::make(jail, "")
    }

    /// The TAP for card `index` of the caller's that asks for a new TAP (a jail cannot
    /// make one): `huskj<slot>c<index>`, made here as the slot's TAP is.
    pub fn for_card(jail: &VmmJail, index: usize) -> Result<Self, SandboxError> {
        Self::make(jail, &format!("c{index}"))
    }

    /// The slot's TAP name with `suffix`, made persistent for root's `jail`'s uid.
    fn make(jail: &VmmJail, suffix: &str) -> Result<Self, SandboxError> {
        let uid = jail.uid().ok_or_else(|| {
            SandboxError::Vmm("a user-namespace jail has no TAP of its own".into())
        })?;
        let name = format!("{}{suffix}", slot_tap_name(uid)?);
        let tap_err = |e: crate::devices::virtio::net::TapError| {
            SandboxError::Vmm(format!("the jail's TAP {name}: {}", crate::error_chain(&e)))
        };
        tap::remove_persistent(&name).map_err(tap_err)?;
        tap::create_persistent(&name, uid).map_err(tap_err)?;
        Ok(Self { name })
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for JailTap {
    fn drop(&mut self) {
        if let Err(e) = tap::remove_persistent(&self.name) {
            log::warn!(
                "cannot remove the TAP {}: {}",
                self.name,
                crate::error_chain(&e)
            );
        }
    }
}

/// Make `path` the jail uid's (with the shared gid).
pub fn own(path: &Path, uid: u32) -> Result<(), SandboxError> {
    let gid = crate::jail::ids::shared_gid().map_err(jail_err)?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_err(format!(
        "chown {} to the jail's uid {uid}",
        path.display()
    )))
}

/// Let every jailed VMM read what is under `dir` (a template or a snapshot): owned by
/// root and the shared gid, folders 0750, files 0640. Nothing when not root.
pub fn share_with_jails(dir: &Path) -> Result<(), SandboxError> {
    if !crate::jail::running_as_root() {
        return Ok(());
    }
    let gid = crate::jail::ids::shared_gid().map_err(jail_err)?;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.map_err(|e| SandboxError::Vmm(format!("walk {}: {e}", dir.display())))?;
        let path = entry.path();
        std::os::unix::fs::lchown(path, Some(0), Some(gid))
            .map_err(io_err(format!("chown {}", path.display())))?;
        let mode = match entry.file_type().is_dir() {
            true => 0o750,
            false => 0o640,
        };
        if !entry.file_type().is_symlink() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
    }
    Ok(())
}

/// Move the snapshot files in `from` to `to` (made if missing): renamed when both are
/// on one filesystem, else copied sparsely (synced when `durable`).
pub fn move_snapshot(from: &Path, to: &Path, durable: bool) -> Result<(), SandboxError> {
    std::fs::create_dir_all(to).map_err(io_err(format!("create {}", to.display())))?;
    let entries = std::fs::read_dir(from).map_err(io_err(format!("list {}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("list {}", from.display())))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if std::fs::rename(&src, &dst).is_ok() {
            continue;
        }
        crate::snapshot::files::copy_sparse(&src, &dst).map_err(io_err(format!(
            "copy {} to {}",
            src.display(),
            dst.display()
        )))?;
        if durable {
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(io_err(format!("sync {}", dst.display())))?;
        }
    }
    if durable {
        std::fs::File::open(to)
            .and_then(|d| d.sync_all())
            .map_err(io_err(format!("sync {}", to.display())))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "jailing_tests.rs"]
mod tests;
