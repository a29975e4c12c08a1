//! Pure preparation of a process: its environment, the executable path inside the
//! container, and validation of the names the host sends.

use std::path::Path;

/// The PATH a process gets when the host sends none (docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors of process preparation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// No command was given.
    #[error("empty command")]
    EmptyCommand,
    /// The command was not found in the container's PATH.
    #[error("executable {name:?} not found in PATH {path:?}")]
    NotFound {
        /// `args[0]`.
        name: String,
        /// The PATH searched.
        path: String,
    },
    /// A container id has characters outside `[A-Za-z0-9_.-]` or is empty/too long.
    #[error("invalid container id {0:?}")]
    InvalidId(String),
    /// An environment entry has no `=`.
    #[error("invalid environment entry {0:?} (expected NAME=value)")]
    InvalidEnv(String),
    /// A value carries a NUL byte, which no syscall accepts.
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
}

/// Checks a container id: 1 to 64 of `[A-Za-z0-9_.-]`, not starting with `.`, so it
/// is safe as a path component and a cgroup name.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SpecError::InvalidId(id.to_string()))
    }
}

fn has_var(env: &[String], name: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').is_some_and(|(k, _)| k == name))
}

/// The final environment: the host's entries, then defaults for PATH, HOME, HOSTNAME
/// and (with a terminal) TERM when missing.
pub fn build_env(
    env: &[String],
    home: &str,
    hostname: &str,
    tty: bool,
) -> Result<Vec<String>, SpecError> {
    if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
        return Err(SpecError::InvalidEnv(bad.clone()));
    }
    let mut out = env.to_vec();
    let defaults = [
        ("PATH", DEFAULT_PATH, true),
        ("HOME", home, true),
        ("HOSTNAME", hostname, true),
        ("TERM", "xterm", tty),
    ];
    for (name, value, wanted) in defaults {
        if wanted && !has_var(env, name) {
            out.push(format!("{name}={value}"));
        }
    }
    Ok(out)
}

/// The PATH value of an environment, or the default.
pub fn path_of(env: &[String]) -> &str {
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
}

/// Finds `args[0]` as the container will see it: a name with a `/` is used as is,
/// otherwise each PATH entry is tried with `exists` (which gets the in-container path,
/// e.g. `/bin/sh`) and the first hit wins.
pub fn resolve_executable(
    args: &[String],
    path: &str,
    exists: impl Fn(&Path) -> bool,
) -> Result<String, SpecError> {
    let name = args.first().ok_or(SpecError::EmptyCommand)?;
    if name.is_empty() {
        return Err(SpecError::EmptyCommand);
    }
    if name.contains('/') {
        return Ok(name.clone());
    }
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| format!("{}/{name}", dir.trim_end_matches('/')))
        .find(|candidate| exists(Path::new(candidate)))
        .ok_or_else(|| SpecError::NotFound {
            name: name.clone(),
            path: path.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn missing_path_home_and_hostname_get_defaults() {
        let env = build_env(&strings(&["A=1"]), "/root", "box", false).expect("valid");
        assert_eq!(
            env,
            strings(&[
                "A=1",
                &format!("PATH={DEFAULT_PATH}"),
                "HOME=/root",
                "HOSTNAME=box"
            ])
        );
    }

    #[test]
    fn given_path_is_kept_and_term_added_for_tty() {
        let env = build_env(
            &strings(&["PATH=/x", "HOME=/h", "HOSTNAME=h"]),
            "/root",
            "box",
            true,
        )
        .expect("valid");
        assert_eq!(
            env,
            strings(&["PATH=/x", "HOME=/h", "HOSTNAME=h", "TERM=xterm"])
        );
    }

    #[test]
    fn env_entry_without_equals_is_refused() {
        assert_eq!(
            build_env(&strings(&["A"]), "/", "h", false),
            Err(SpecError::InvalidEnv("A".into()))
        );
    }

    #[test]
    fn command_is_found_in_the_first_path_dir_that_has_it() {
        let found = resolve_executable(&strings(&["sh"]), "/usr/bin:/bin", |p| {
            p == Path::new("/bin/sh")
        });
        assert_eq!(found, Ok("/bin/sh".into()));
    }

    #[test]
    fn command_with_slash_is_used_as_is() {
        let found = resolve_executable(&strings(&["./run"]), "/bin", |_| false);
        assert_eq!(found, Ok("./run".into()));
    }

    #[test]
    fn missing_command_is_an_error_naming_it_and_the_path() {
        let err = resolve_executable(&strings(&["nope"]), "/bin", |_| false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "executable \"nope\" not found in PATH \"/bin\""
        );
    }

    #[test]
    fn empty_command_is_an_error() {
        assert_eq!(
            resolve_executable(&[], "/bin", |_| true),
            Err(SpecError::EmptyCommand)
        );
    }

    #[test]
    fn path_of_env_falls_back_to_default() {
        assert_eq!(path_of(&strings(&["A=1"])), DEFAULT_PATH);
    }

    #[test]
    fn plain_container_id_is_valid() {
        assert_eq!(validate_id("web-1.a_b"), Ok(()));
    }

    #[test]
    fn container_id_with_slash_or_dots_is_refused() {
        assert!(validate_id("../etc").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("").is_err());
    }
}
