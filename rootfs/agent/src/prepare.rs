//! Turning a Run or Exec request into a [`ChildPlan`]: the user and environment are
//! resolved against the container's own files (seen from the agent through the
//! merged overlay or `/proc/<pid>/root`), and every string is made a C string.

use std::ffi::CString;
use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;

use husk_protocol::TtySize;

use crate::child::{CArray, ChildPlan, Namespaces};
use crate::process::ChildEnds;
use crate::spec::{build_env, path_of, resolve_executable, SpecError};
use crate::user::{resolve_user, User, UserError};

/// What the host asks to run, common to Run and Exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessRequest {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// The working directory (default `/`).
    pub cwd: Option<String>,
    /// `uid[:gid]` or `name[:group]`.
    pub user: Option<String>,
    /// A terminal of this size instead of pipes.
    pub tty: Option<TtySize>,
}

/// Errors of preparing a process.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The command, environment or a name is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The user could not be resolved.
    #[error(transparent)]
    User(#[from] UserError),
}

/// The resolved pieces of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Who it runs as.
    pub user: User,
    /// The in-container path of the executable.
    pub exe: String,
    /// The final environment.
    pub env: Vec<String>,
}

/// Resolves user, environment and executable with the container root visible at `root`.
pub fn resolve(
    request: &ProcessRequest,
    root: &Path,
    hostname: &str,
) -> Result<Resolved, PrepareError> {
    let read = |name: &str| fs::read_to_string(root.join(name)).unwrap_or_default();
    let user = resolve_user(
        request.user.as_deref(),
        &read("etc/passwd"),
        &read("etc/group"),
    )?;
    let env = build_env(&request.env, &user.home, hostname, request.tty.is_some())?;
    // lstat, not stat: an absolute symlink (e.g. /bin/sh -> /bin/busybox) must not be
    // followed into the agent's own root.
    let exists = |p: &Path| {
        p.strip_prefix("/")
            .is_ok_and(|rel| root.join(rel).symlink_metadata().is_ok())
    };
    let exe = resolve_executable(&request.args, path_of(&env), exists)?;
    Ok(Resolved { user, exe, env })
}

fn cstring(value: &str) -> Result<CString, SpecError> {
    CString::new(value).map_err(|_| SpecError::Nul(value.to_string()))
}

fn carray(values: &[String]) -> Result<CArray, SpecError> {
    Ok(CArray::new(
        values
            .iter()
            .map(|v| cstring(v))
            .collect::<Result<_, _>>()?,
    ))
}

/// Builds the plan the forked child follows.
pub fn build_plan(
    namespaces: Namespaces,
    cgroup_procs: Option<OwnedFd>,
    stdio: &ChildEnds,
    request: &ProcessRequest,
    resolved: &Resolved,
) -> Result<ChildPlan, SpecError> {
    Ok(ChildPlan {
        namespaces,
        cgroup_procs,
        stdio: stdio.raw(),
        tty: request.tty.is_some(),
        uid: resolved.user.uid,
        gid: resolved.user.gid,
        groups: resolved.user.groups.clone(),
        cwd: cstring(request.cwd.as_deref().unwrap_or("/"))?,
        exe: cstring(&resolved.exe)?,
        argv: carray(&request.args)?,
        envp: carray(&resolved.env)?,
    })
}

/// A C string of `value`, refusing NUL bytes.
pub fn c_string(name: &str) -> Result<CString, SpecError> {
    cstring(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        fs::create_dir_all(root.path().join("bin")).expect("mkdir");
        fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nu:x:5:6::/home/u:/bin/sh\n",
        )
        .expect("write");
        fs::write(root.path().join("etc/group"), "g:x:6:\nextra:x:9:u\n").expect("write");
        std::os::unix::fs::symlink("/bin/busybox", root.path().join("bin/sh")).expect("symlink");
        root
    }

    #[test]
    fn request_resolves_against_the_container_files() {
        let root = fake_root();
        let request = ProcessRequest {
            args: vec!["sh".into()],
            user: Some("u".into()),
            ..Default::default()
        };
        let resolved = resolve(&request, root.path(), "box").expect("resolves");
        assert_eq!(resolved.exe, "/bin/sh");
        assert_eq!(
            (
                resolved.user.uid,
                resolved.user.gid,
                resolved.user.groups.clone()
            ),
            (5, 6, vec![9])
        );
        assert!(resolved.env.contains(&"HOME=/home/u".to_string()));
    }

    #[test]
    fn command_missing_from_the_container_is_an_error() {
        let root = fake_root();
        let request = ProcessRequest {
            args: vec!["bash".into()],
            ..Default::default()
        };
        let err = resolve(&request, root.path(), "box").unwrap_err();
        assert!(err.to_string().contains("\"bash\" not found"), "{err}");
    }

    #[test]
    fn argument_with_nul_is_refused() {
        let root = fake_root();
        let request = ProcessRequest {
            args: vec!["sh".into(), "a\0b".into()],
            ..Default::default()
        };
        let resolved = resolve(&request, root.path(), "box").expect("resolves");
        let (_, child) = crate::process::make_stdio(None).expect("pipes");
        let err = build_plan(
            Namespaces::Join(Vec::new()),
            None,
            &child,
            &request,
            &resolved,
        )
        .err();
        assert_eq!(err, Some(SpecError::Nul("a\0b".into())));
    }
}
