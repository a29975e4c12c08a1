//! `husk run -d` through a pool: a parked sandbox becomes the detached sandbox the user
//! named, instead of a new one being started.
//!
//! The client sends [`Message::Adopt`] on the parked sandbox's control socket. Its
//! monitor starts the command as the sandbox's main process, its output going to log
//! files it opens in the parked folder, then renames that folder to `<root>/<name>`
//! (refusing a name that is taken), so from then on the sandbox is an ordinary detached
//! one: listed by `husk ps`, reached by name, stopped, removed, forked and snapshotted
//! like any other. A parked sandbox's VM keeps its runtime folder outside the sandbox's
//! folder ([`parked_runtime_parent`]), so the rename moves no path the VM uses. The
//! pool is one sandbox short now for good: the client (`husk run -d`, which exits right
//! after) starts a replacement in the background.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use husk_protocol::Message;

use super::monitor::{Adopted, Event, Monitor};
use super::{root, validate_name, SandboxDir, Status};
use crate::sandbox::{RunSpec, Stdio};

/// Where parked sandboxes' VMs keep their runtime folders, one folder per parked
/// sandbox's first name, in the detached root (a name no sandbox can take: names do not
/// start with a dot).
const PARKED_RUNTIME: &str = ".run";

/// The folder of parked sandboxes' VM runtime folders.
pub(super) fn parked_runtime_root() -> PathBuf {
    root().join(PARKED_RUNTIME)
}

/// The folder under which the parked sandbox `dir`'s VM makes its runtime folder:
/// `<root>/.run/<name>`, readable by its owner only, created and recorded in `dir`
/// (see [`SandboxDir::set_vm_runtime`]).
pub(super) fn parked_runtime_parent(dir: &SandboxDir) -> Result<PathBuf, super::DetachedError> {
    use std::os::unix::fs::DirBuilderExt;
    let path = parked_runtime_root().join(&dir.name);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&path)
        .map_err(super::io_err("cannot create", &path))?;
    dir.set_vm_runtime(&path)?;
    Ok(path)
}

/// Answers an `Adopt` (see the module documentation): the line `husk run -d` reports.
pub(super) fn adopt(
    monitor: &Monitor,
    request: Message,
    events: &Sender<Event>,
) -> Result<String, String> {
    let Message::Adopt {
        name,
        args,
        env,
        cwd,
        user,
        tty,
        remove_on_exit,
    } = request
    else {
        return Err("not an Adopt request".into());
    };
    let _claiming = monitor.claiming.lock().unwrap_or_else(|e| e.into_inner());
    if !monitor.request.parked || monitor.main.get().is_some() {
        return Err(super::control::CLAIMED.into());
    }
    validate_name(&name).map_err(|e| e.to_string())?;
    let to = root().join(&name);
    if to.exists() {
        return Err(format!("a sandbox named {name} exists"));
    }
    let from = monitor.dir.clone();
    let spec = RunSpec {
        args,
        env,
        cwd,
        user,
        tty,
        limits: monitor.request.spec.limits,
    };
    let log = |stderr: bool| from.open_log(stderr).map_err(|e| e.to_string());
    let stdio = Stdio {
        stdin: None,
        stdout: Box::new(log(false)?),
        stderr: Box::new(log(true)?),
    };
    let main = match monitor.sandbox.spawn(&spec, stdio) {
        Ok(main) => Arc::new(main),
        Err(e) => {
            // Still parked: a later claim may use it.
            drop(fs::remove_file(from.log(false)));
            drop(fs::remove_file(from.log(true)));
            return Err(e.to_string());
        }
    };
    // The main runs from here on: whatever happens next, its exit ends the sandbox.
    drop(monitor.main.set(main.clone()));
    {
        let events = events.clone();
        std::thread::spawn(move || {
            drop(events.send(Event::MainExited(main.wait().map_err(|e| e.to_string()))));
        });
    }
    if let Err(e) = rename_no_replace(&from.path, &to) {
        drop(events.send(Event::Stop("a failed adoption")));
        return Err(format!(
            "cannot rename {} to {}: {e}",
            from.path.display(),
            to.display()
        ));
    }
    let request = super::Request {
        name: name.clone(),
        spec,
        remove_on_exit,
        parked: false,
        ..monitor.request.clone()
    };
    {
        let mut state = monitor.state.lock().unwrap_or_else(|e| e.into_inner());
        state.name = name.clone();
        state.command = if request.spec.args.is_empty() {
            request.image.command.clone()
        } else {
            request.spec.args.clone()
        };
        state.created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
    }
    let dir = SandboxDir { name, path: to };
    drop(monitor.adopted.set(Adopted { dir, request }));
    monitor.set_status(Status::Running);
    Ok("adopted".into())
}

/// `rename(2)` that fails with `EEXIST` rather than replace an existing (empty) folder.
#[allow(unsafe_code, reason = "renameat2 has no safe wrapper in std")]
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call; AT_FDCWD
    // makes them relative to the working directory (they are absolute anyway).
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_never_replaces_a_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::write(a.join("state.json"), "{}").unwrap();
        fs::create_dir(&b).unwrap();
        let e = rename_no_replace(&a, &b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        fs::remove_dir(&b).unwrap();
        rename_no_replace(&a, &b).unwrap();
        assert!(b.join("state.json").is_file() && !a.exists());
    }
}
