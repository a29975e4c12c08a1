//! `husk vmm`: one VM in this process, driven over a REST API socket (a
//! Firecracker-compatible subset) or started from a config file.

use std::path::PathBuf;

use clap::Args;
use husk::config::ConsoleConfig;

use crate::CliResult;

#[derive(Args)]
pub(crate) struct VmmArgs {
    /// Serve the API on this Unix socket (created with mode 0600, removed at exit).
    #[arg(long, value_name = "PATH", required_unless_present = "no_api")]
    api_sock: Option<PathBuf>,
    /// Configure the VM from this file (Firecracker's config JSON: `machine-config`,
    /// `boot-source`, `drives`, `network-interfaces`, `vsock`...) and start it at once.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    no_api: bool,
    /// The instance id `GET /` reports.
    #[arg(long, default_value = "husk-vmm")]
    id: String,
    /// Write the guest console to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// When the VM ends, write how (clean end or failure, the guest's last output,
    /// metrics) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    exit_report: Option<PathBuf>,
    /// Stop the VM when standard input reaches its end (the parent holds a pipe to it,
    /// which closes when the parent goes).
    #[arg(long)]
    die_with_parent: bool,
    /// Install no syscall filters. By default the process may not run programs, make
    /// processes, mount, trace, or open network sockets, and its vCPU and device threads
    /// may not open files; a call outside the lists kills it with SIGSYS
    /// (HUSK_SECCOMP=log logs such calls to the kernel log instead).
    #[arg(long)]
    no_seccomp: bool,
    /// Allow network cards on the host kernel's vhost-net (`"vhost": true`): the
    /// filters then let the process and its vCPUs make vhost requests, and a jail gets
    /// /dev/vhost-net. Without it, a filtered VMM refuses such a card.
    #[arg(long)]
    vhost_net: bool,
    #[command(flatten)]
    jail: JailArgs,
}

/// Jailing the process: see `husk::jail`.
#[derive(Args)]
struct JailArgs {
    /// Jail the process in DIR before it serves: new mount, pid, ipc and uts
    /// namespaces, a root holding only the --bind paths (at their host paths) and
    /// /dev/kvm, /dev/net/tun, /dev/null, /dev/urandom, /proc; every capability
    /// dropped. As root (with --uid/--gid): uid and gid dropped to them, a cgroup v2
    /// leaf when cgroup v2 is mounted. Not as root (or with --userns): a user namespace
    /// mapping only the caller's uid and gid, which the process keeps; no cgroup leaf,
    /// no --netns. DIR is made if missing and must be empty.
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,
    /// The jail's uid (not 0; root only). Files the VM opens must be readable by it,
    /// and its disks and the API socket's folder writable, unless they are held
    /// (--hold); its TAPs owned by it, unless held (--hold-tap).
    #[arg(long, value_name = "UID", requires_all = ["jail", "gid"])]
    uid: Option<u32>,
    /// The jail's gid (not 0; root only).
    #[arg(long, value_name = "GID", requires_all = ["jail", "uid"])]
    gid: Option<u32>,
    /// A user-namespace jail (what --jail alone means for a caller that is not root;
    /// refused as root).
    #[arg(long, requires = "jail", conflicts_with_all = ["uid", "gid"])]
    userns: bool,
    /// A host path the jail holds at the same path: read-only, or writable with `:rw`
    /// (the API socket's folder, disks, snapshot folders). Repeatable.
    #[arg(long = "bind", value_name = "PATH[:rw]", requires = "jail")]
    binds: Vec<husk::jail::Bind>,
    /// A file the jail opens (as root, or as the caller in a user namespace) before it
    /// drops its privileges, read-only or read-write with `:rw`, for a disk at that
    /// path: the VM uses the open file, so the file need not be the jail uid's. Bind it
    /// too for its path to exist in the jail. Repeatable.
    #[arg(long = "hold", value_name = "PATH[:rw]", requires = "jail")]
    held: Vec<husk::jail::Bind>,
    /// A TAP the jail attaches to as root before it drops to --uid (after joining
    /// --netns), for a card on that TAP: the VM uses the attached TAP, so it need not
    /// be owned by the jail's uid. The TAP must exist and stays after the VM.
    /// Repeatable.
    #[arg(long = "hold-tap", value_name = "NAME", requires = "jail")]
    held_taps: Vec<String>,
    /// A persistent TAP made for the jail's uid slot (`husk::sandbox` names it
    /// huskj<slot>), removed by the supervisor when the jailed process ends while
    /// nobody holds --slot-lock (the caller that reserved the slot is gone), whether
    /// or not the VM claimed it.
    #[arg(long, value_name = "NAME", requires_all = ["jail", "slot_lock"])]
    slot_tap: Option<String>,
    /// The lock file of the jail's uid slot, held by the caller while it uses the slot.
    #[arg(long, value_name = "PATH", requires = "slot_tap")]
    slot_lock: Option<PathBuf>,
    /// Join this network namespace (such as /run/netns/NAME).
    #[arg(long, value_name = "PATH", requires = "jail")]
    netns: Option<PathBuf>,
    /// A limit of the VM's cgroup: the controller file KEY gets VALUE (memory.max=1G,
    /// pids.max=64, cpu.max="50000 100000"). Repeatable.
    #[arg(long, value_name = "KEY=VALUE", requires = "jail")]
    cgroup: Vec<husk::jail::CgroupLimit>,
    /// RLIMIT_NOFILE in the jail.
    #[arg(long, value_name = "N", default_value_t = 4096, requires = "jail")]
    max_files: u64,
    /// RLIMIT_FSIZE in the jail, in bytes (snapshots write files as large as the RAM).
    #[arg(long, value_name = "BYTES", requires = "jail")]
    max_file_size: Option<u64>,
}

impl JailArgs {
    fn config(
        self,
        id: &str,
        vhost_net: bool,
    ) -> Result<Option<husk::jail::JailConfig>, husk::jail::JailError> {
        let Some(dir) = self.jail else {
            return Ok(None);
        };
        let root = husk::jail::running_as_root();
        let mode = husk::jail::JailMode::choose(self.uid, self.gid, self.userns, root)?;
        Ok(Some(husk::jail::JailConfig {
            dir,
            mode,
            netns: self.netns,
            cgroup: self.cgroup,
            binds: self.binds,
            held: self.held,
            held_taps: self.held_taps,
            slot_tap: self.slot_tap.zip(self.slot_lock),
            id: id.to_string(),
            max_files: self.max_files,
            max_file_size: self.max_file_size,
            vhost_net,
        }))
    }
}

pub(crate) fn vmm(args: VmmArgs) -> CliResult {
    let jail = args.jail.config(&args.id, args.vhost_net)?;
    // A jailed process's working folder is the jail's root: relative paths are taken
    // from where the caller is, before the jail.
    let absolute = |path: Option<PathBuf>| -> std::io::Result<Option<PathBuf>> {
        path.map(std::path::absolute).transpose()
    };
    let options = husk::api::server::VmmOptions {
        api_sock: absolute(args.api_sock)?,
        config_file: absolute(args.config_file)?,
        id: args.id,
        console: absolute(args.console)?.map_or(ConsoleConfig::Stdout, ConsoleConfig::File),
        exit_report: absolute(args.exit_report)?,
        die_with_parent: args.die_with_parent,
    };
    husk::vmm::seccomp::set_vhost_net(args.vhost_net);
    husk::vmm::seccomp::set_mode(if args.no_seccomp {
        husk::vmm::seccomp::Mode::Off
    } else {
        husk::vmm::seccomp::Mode::Kill
    });
    // A signal stops the VM through the same path as a guest exit; the API socket goes.
    husk::sandbox::signals::block()?;
    if let Some(jail) = &jail {
        log::debug!("vmm: entering the jail");
        // From here on this is the jailed child; the caller's process supervises it.
        husk::jail::enter(jail)?;
        log::debug!("vmm: jailed");
    }
    let report = husk::api::server::run(&options)?;
    report.outcome?;
    Ok(())
}
