//! Installs a missing Debian package with `apt-get`, retrying once after
//! `apt-get update` (a fresh container has no package lists).

use std::process::{Command, Stdio};

use super::ImageError;

/// Makes sure `package` is installed: nothing to do when `present()` already holds,
/// else `apt-get install`, then `apt-get update` and one more install.
pub(crate) fn ensure_package(package: &str, present: impl Fn() -> bool) -> Result<(), ImageError> {
    if present() {
        return Ok(());
    }
    log::info!("installing {package} with apt-get");
    if apt_get(&["install", "-y", "--no-install-recommends", package]).is_err() {
        apt_get(&["update"])?;
        apt_get(&["install", "-y", "--no-install-recommends", package])?;
    }
    if present() {
        Ok(())
    } else {
        Err(ImageError::Tool {
            tool: format!("apt-get install {package}"),
            status: "success".to_string(),
            stderr: "the package did not provide what husk needs".to_string(),
        })
    }
}

fn apt_get(args: &[&str]) -> Result<(), ImageError> {
    let tool = format!("apt-get {}", args.join(" "));
    let output = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::ToolSpawn {
            tool: tool.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ImageError::Tool {
        tool,
        status: output.status.to_string(),
        stderr: tail(&output.stderr),
    })
}

/// The last few hundred bytes of a tool's stderr, for an error message.
pub(crate) fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(400);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// Whether `program` is an executable file in one of `$PATH`'s directories (or
/// the usual system directories when `$PATH` is unset).
pub(crate) fn in_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
}
