//! A harness for driving the agent's container runtime on the host: a busybox lower
//! directory, an agent whose frames arrive on a channel, and helpers to collect a
//! process's output and exit status.
#![allow(
    dead_code,
    reason = "each integration test crate uses its own subset of the harness"
)]

use std::collections::HashMap;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use husk_agent::agent::{Agent, RunRequest, Runtime};
use husk_agent::outbox::Outbox;
use husk_agent::prepare::ProcessRequest;
use husk_agent::rootfs::LowerLayer;
use husk_protocol::{read_message, ExitStatus, Limits, Message, ProcessId, WritableLayer};

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "id", "pwd", "sleep", "hostname", "grep", "stty", "head", "dd", "ls",
    "true", "rm", "tail", "wc", "env",
];

/// Output and end of one process.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Everything written to stdout (or the terminal).
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// How it ended, once it has.
    pub status: Option<ExitStatus>,
    /// Whether Started came (it must precede every other frame of the process).
    pub started: bool,
    /// Stdin bytes the agent acknowledged (`StdinAck`).
    pub stdin_acked: u64,
    /// Started said the Run took the prepared container.
    pub prepared: bool,
}

impl Outcome {
    /// stdout as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// An agent with a busybox lower layer whose frames the test reads.
pub struct Harness {
    /// The runtime under test.
    pub agent: Arc<Agent>,
    /// The lower layer directory.
    pub lower: PathBuf,
    /// The runtime's state directory.
    pub state: PathBuf,
    /// The cgroup v2 root in use.
    pub cgroup_root: Option<PathBuf>,
    frames: Receiver<Message>,
    done: HashMap<ProcessId, Outcome>,
    _dir: tempfile::TempDir,
}

/// The cgroup v2 hierarchy of this host: /sys/fs/cgroup on a pure v2 host, its
/// `unified` part on a hybrid one.
pub fn host_cgroup_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// Whether `root` offers the memory controller.
pub fn has_memory_controller(root: &Path) -> bool {
    fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
}

fn make_lower(dir: &Path) -> PathBuf {
    let lower = dir.join("lower");
    for sub in ["bin", "etc", "tmp", "home/alice"] {
        fs::create_dir_all(lower.join(sub)).expect("mkdir");
    }
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    fs::copy(
        busybox.expect("busybox-static installed"),
        lower.join("bin/busybox"),
    )
    .expect("copy busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", lower.join("bin").join(applet)).expect("symlink");
    }
    fs::write(
        lower.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
    )
    .expect("passwd");
    fs::write(
        lower.join("etc/group"),
        "root:x:0:\nalice:x:1000:\nwheel:x:10:alice\n",
    )
    .expect("group");
    lower
}

impl Default for Harness {
    fn default() -> Self {
        Self::with_cgroups(host_cgroup_root())
    }
}

impl Harness {
    /// A harness on the host's cgroup v2 hierarchy, if any.
    pub fn new() -> Self {
        Self::default()
    }

    /// A harness with the given cgroup root (`None`: no cgroups).
    pub fn with_cgroups(cgroup_root: Option<PathBuf>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let lower = make_lower(dir.path());
        let state = dir.path().join("state");
        let (agent_end, test_end) = UnixStream::pair().expect("socketpair");
        let outbox = Arc::new(Outbox::default());
        outbox.connect(Box::new(agent_end));
        let runtime = Runtime {
            state_dir: state.clone(),
            cgroup_root: cgroup_root.clone(),
        };
        let agent = Agent::new(runtime, outbox);
        let (tx, frames) = channel();
        std::thread::spawn(move || {
            let mut reader = test_end;
            while let Ok(message) = read_message(&mut reader) {
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
        Self {
            agent,
            lower,
            state,
            cgroup_root,
            frames,
            done: HashMap::new(),
            _dir: dir,
        }
    }

    /// A Run request for `args` in container `id` over the busybox layer.
    pub fn request(&self, id: &str, args: &[&str]) -> RunRequest {
        RunRequest {
            id: id.to_string(),
            lower: LowerLayer::Directory(self.lower.clone()),
            writable: WritableLayer::Tmpfs,
            limits: Limits::default(),
            hostname: None,
            process: ProcessRequest {
                args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
            volumes: Vec::new(),
        }
    }

    /// Starts a container.
    pub fn run(&self, request: RunRequest) -> ProcessId {
        self.agent.run(request).expect("run starts")
    }

    /// The outcome of a process whose Started frame must already have arrived.
    fn started(&mut self, process: ProcessId) -> &mut Outcome {
        let outcome = self.done.entry(process).or_default();
        assert!(
            outcome.started,
            "frame of process {process} before its Started"
        );
        outcome
    }

    fn receive_one(&mut self) {
        match self
            .frames
            .recv_timeout(Duration::from_secs(30))
            .expect("frame within 30 s")
        {
            Message::Stdout { process, data } => self.started(process).stdout.extend(data),
            Message::Stderr { process, data } => self.started(process).stderr.extend(data),
            Message::Exited { process, status } => self.started(process).status = Some(status),
            Message::StdinAck { process, bytes } => self.started(process).stdin_acked += bytes,
            Message::Started {
                process_id,
                prepared,
            } => {
                let outcome = self.done.entry(process_id).or_default();
                outcome.started = true;
                outcome.prepared = prepared;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }

    /// Waits (at most 30 s per frame) for `process` to exit and returns what it did.
    pub fn wait(&mut self, process: ProcessId) -> Outcome {
        while self.done.get(&process).is_none_or(|o| o.status.is_none()) {
            self.receive_one();
        }
        self.done.remove(&process).expect("outcome present")
    }

    /// Waits until `process` has written `text` to stdout.
    pub fn wait_for_output(&mut self, process: ProcessId, text: &str) {
        while !self
            .done
            .get(&process)
            .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(text))
        {
            self.receive_one();
        }
    }

    /// Runs `args` in a fresh container `id` to the end.
    pub fn run_to_end(&mut self, id: &str, args: &[&str]) -> Outcome {
        let process = self.run(self.request(id, args));
        self.wait(process)
    }
}
