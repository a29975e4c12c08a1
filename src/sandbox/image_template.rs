//! Image templates: a plain template restored with one image, whose agent then made
//! the first container ahead ([`Message::Prepare`]: the image mounted under a tmpfs
//! writable layer, the cgroup made, the container's first process waiting in its
//! namespaces inside the root), snapshotted again. A sandbox of that image restored
//! from it skips all of that: its Run only sends the command.
//!
//! One per (vCPUs, RAM, image), in `<templates>/<cpus>cpu-<mib>mib-<image12>/`, made
//! the first time a sandbox fits one (no scratch disk, no volumes, no devices of the
//! caller's; [`SandboxConfig::prepared`]), stale when the kernel or agent changed. A
//! failure to make one is a warning: the sandbox then starts from the plain template.

use std::path::Path;

use husk_protocol::{ImageSpec, Message, WritableLayer};

use super::template::{self, io, Template, TemplateInfo, TemplateSpec, SNAPSHOT_DIR};
use super::{Sandbox, SandboxConfig, SandboxError, IMAGE_DEVICE};

/// How much of the image the agent reads into the guest's page cache before the
/// template's snapshot (`husk_agent::warm`): clean page-cache pages a restored sandbox
/// shares with every other through the snapshot file, and its first command then runs
/// without reading the image disk.
const WARM_BYTES: u64 = 16 << 20;

/// Whether `config` starts from its image's template.
pub(super) fn fits(config: &SandboxConfig) -> bool {
    config.prepared && config.scratch_disk_mib.is_none() && super::launch::fits_template(config)
}

/// The image template for `config` made from `plain` (found, or made now), or `None`
/// when the sandbox does not fit one or it cannot be made (with a warning saying why).
pub(super) fn for_sandbox(
    config: &SandboxConfig,
    spec: &TemplateSpec,
    plain: &Template,
) -> Option<Template> {
    if !fits(config) {
        return None;
    }
    let found = image_digest(&config.image.fs_image).and_then(|digest| {
        let short = digest.get(..12).unwrap_or(&digest);
        let name = format!("{}-{short}", spec.name());
        match open_fresh(&name, plain, &digest) {
            Some(t) => Ok(t),
            None => build(config, plain, &name, &digest),
        }
    });
    found
        .map_err(|e| log::warn!("no template of the image ({e}); starting from the plain one"))
        .ok()
}

fn image_digest(image: &Path) -> Result<String, SandboxError> {
    crate::digest::sha256_cached(image, &crate::kernel::cache_root().join("digests"))
        .map_err(io("cannot read the image", image))
}

/// The template `name` if it is on disk and fits `plain`'s kernel and agent and the
/// image `digest`.
fn open_fresh(name: &str, plain: &Template, digest: &str) -> Option<Template> {
    let t = Template::open(&template::root().join(name)).ok()?;
    let fresh = t.info.image.as_deref() == Some(digest)
        && t.staleness(&plain.info.kernel_sha256, &plain.info.agent_digest)
            .is_none()
        && (t.info.cpus, t.info.memory_mib) == (plain.info.cpus, plain.info.memory_mib);
    fresh.then_some(t)
}

/// Restore `plain` with the image, have its agent prepare the container, snapshot it
/// into a temp folder and install that as template `name`.
fn build(
    config: &SandboxConfig,
    plain: &Template,
    name: &str,
    digest: &str,
) -> Result<Template, SandboxError> {
    let _lock = template::lock(name)?;
    if let Some(t) = open_fresh(name, plain, digest) {
        return Ok(t);
    }
    // A stale one (the plain template's kernel or agent changed, which its rebuild
    // already said) is replaced without another line.
    template::build_in_temp(name, |tmp, started| {
        // The template's own sandbox: the caller's image and shape, nothing of the
        // caller's run (its console file would be made by this VMM's jail uid).
        let mut own = config.clone();
        own.console = crate::config::ConsoleConfig::Off;
        own.network = false;
        own.nat = None;
        own.publish = Vec::new();
        own.prepared = false;
        own.pool = None;
        let sandbox = Sandbox::start_with(own, Some(plain))?;
        let snapshot = sandbox
            .prepare_container()
            .and_then(|()| sandbox.snapshot_vm(&tmp.join(SNAPSHOT_DIR)));
        drop(sandbox.stop());
        let memory_bytes = snapshot?;
        super::jailing::share_with_jails(tmp)?;
        Ok(TemplateInfo {
            name: name.to_string(),
            created: template::now_secs(),
            build_ms: crate::metrics::ms(started.elapsed()),
            memory_bytes,
            image: Some(digest.to_string()),
            ..plain.info.clone()
        })
    })
}

impl Sandbox {
    /// Has the agent make the first container ahead (see the module documentation).
    fn prepare_container(&self) -> Result<(), SandboxError> {
        let prepare = Message::Prepare {
            image: ImageSpec {
                device: IMAGE_DEVICE.into(),
                fstype: self.image.fstype.clone(),
            },
            writable_layer: WritableLayer::Tmpfs,
            warm_bytes: WARM_BYTES,
        };
        let sink = || Box::new(std::io::sink());
        self.demux.request(&prepare, sink(), sink()).map(drop)
    }

    /// Pause the VM and write its snapshot into the new folder `dir`; the bytes of
    /// memory written.
    fn snapshot_vm(&self, dir: &Path) -> Result<u64, SandboxError> {
        let vm = self.vm();
        let vm = vm
            .as_ref()
            .ok_or_else(|| SandboxError::Refused("the sandbox is already stopped".into()))?;
        vm.set_paused(true)?;
        let config = vm.config()?;
        let digest = config.initrd.as_deref().map(template::agent_digest);
        let created = vm.snapshot(dir, true, digest.as_deref())?;
        Ok(created["memory_written"].as_u64().unwrap_or(0))
    }
}
