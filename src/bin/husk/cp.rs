//! `husk cp`: files between a detached sandbox's container and the host, both ways, as
//! `docker cp` copies them: `NAME:PATH` names a path in sandbox NAME's container, `-`
//! a tar stream on stdin or stdout, anything else a host path. The archive is packed on
//! the side that has the source and unpacked on the side that has the destination
//! (`husk-copy`), streamed through the sandbox's monitor.

use std::io::{Read, Write};

use clap::Args;

use husk::detached::{Control, DetachedError};
use husk::sandbox::{Buffer, CopyRequest, Stdio};

#[derive(Args)]
pub(crate) struct CpArgs {
    /// Keep the owners (UID:GID) of what is copied into the sandbox; without it,
    /// root owns it.
    #[arg(short, long)]
    archive: bool,
    /// The source: `NAME:PATH` in a sandbox, a host path, or `-` (a tar stream on stdin).
    src: String,
    /// The destination: `NAME:PATH` in a sandbox, a host path, or `-` (a tar stream on
    /// stdout).
    dest: String,
}

/// One side of a copy.
enum Side {
    /// A path on this host.
    Host(String),
    /// A path in a sandbox's container.
    Sandbox { name: String, path: String },
    /// A tar stream on stdin or stdout.
    Stream,
}

/// Docker's reading: `NAME:PATH` when a colon comes before any `/` (a local path with a
/// colon can be written `./a:b`).
fn side(arg: &str) -> Side {
    if arg == "-" {
        return Side::Stream;
    }
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => Side::Sandbox {
            name: name.to_string(),
            path: if path.is_empty() {
                "/".to_string()
            } else {
                path.to_string()
            },
        },
        _ => Side::Host(arg.to_string()),
    }
}

type CliError = Box<dyn std::error::Error>;

/// Copies; returns 0, or the error (husk exits 1 after printing it, as docker does).
pub(crate) fn cp(args: CpArgs) -> Result<(), CliError> {
    match (side(&args.src), side(&args.dest)) {
        (Side::Sandbox { .. }, Side::Sandbox { .. }) => {
            Err("copying between two sandboxes is not supported: copy through the host".into())
        }
        (Side::Sandbox { name, path }, to) => copy_out(&name, &path, to),
        (from, Side::Sandbox { name, path }) => copy_in(from, &name, &path, args.archive),
        _ => Err("one of SRC and DEST must be NAME:PATH, a path in a detached sandbox".into()),
    }
}

/// The container's `path` to `to`: unpacked on the host while it streams, or passed on
/// as a tar stream.
fn copy_out(name: &str, path: &str, to: Side) -> Result<(), CliError> {
    let mut control = Control::connect(name)?;
    let errors = Buffer::default();
    let (sink, unpacker): (Box<dyn Write + Send>, _) = match to {
        Side::Stream => (Box::new(std::io::stdout()), None),
        Side::Host(dest) => {
            husk_copy::check_destination(&dest)?;
            let (reader, writer) = std::io::pipe()?;
            let contents = husk_copy::is_contents(path);
            let unpack = std::thread::spawn(move || {
                husk_copy::unpack(reader, &dest, contents, husk_copy::UnpackOptions::default())
            });
            (Box::new(writer), Some(unpack))
        }
        Side::Sandbox { .. } => unreachable!("refused by cp()"),
    };
    let stdio = Stdio {
        stdin: None,
        stdout: sink,
        stderr: Box::new(errors.clone()),
    };
    let copy = CopyRequest::Out {
        path: path.to_string(),
    };
    let status = control
        .copy(&copy, stdio)
        .map_err(|e| not_found(e, name, path))?;
    // The archive's end (the sink was dropped with the stdio) ends the unpacking.
    let unpacked = unpacker.map(|t| t.join().unwrap_or_else(|_| Err(panicked())));
    if status.code != Some(0) {
        return Err(failed(name, &errors));
    }
    Ok(unpacked.transpose().map(drop)?)
}

/// `from` (a host path, packed here, or a tar stream on stdin) into the container's
/// `path`.
fn copy_in(from: Side, name: &str, path: &str, preserve_owner: bool) -> Result<(), CliError> {
    let as_is = matches!(from, Side::Stream);
    let (source, contents, packer): (Box<dyn Read + Send>, bool, _) = match from {
        Side::Stream => (Box::new(std::io::stdin()), false, None),
        Side::Host(src) => {
            husk_copy::source_kind(&src)?;
            let (reader, writer) = std::io::pipe()?;
            let contents = husk_copy::is_contents(&src);
            let pack = std::thread::spawn(move || husk_copy::pack(&src, writer));
            (Box::new(reader), contents, Some(pack))
        }
        Side::Sandbox { .. } => unreachable!("refused by cp()"),
    };
    let mut control = Control::connect(name)?;
    let errors = Buffer::default();
    let stdio = Stdio {
        stdin: Some(source),
        stdout: Box::new(std::io::sink()),
        stderr: Box::new(errors.clone()),
    };
    let copy = CopyRequest::In {
        path: path.to_string(),
        contents,
        preserve_owner,
        as_is,
    };
    let status = control.copy(&copy, stdio)?;
    if status.code != Some(0) {
        return Err(failed(name, &errors));
    }
    // The sandbox took the whole archive, so the packing is done.
    let packed = packer.map(|t| t.join().unwrap_or_else(|_| Err(panicked())));
    Ok(packed.transpose().map(drop)?)
}

fn panicked() -> husk_copy::CopyError {
    husk_copy::CopyError::Io {
        what: "copy",
        path: String::new(),
        source: std::io::Error::other("the copying thread panicked"),
    }
}

/// Docker's wording for a source missing in the container.
fn not_found(e: DetachedError, name: &str, path: &str) -> CliError {
    match e {
        DetachedError::Exec(message) if message.starts_with("no such file or directory") => {
            format!("could not find the file {path} in sandbox {name}").into()
        }
        other => other.into(),
    }
}

fn failed(name: &str, errors: &Buffer) -> CliError {
    format!("sandbox {name}: {}", errors.text().trim_end()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(arg: &str) -> String {
        match side(arg) {
            Side::Host(p) => format!("host {p}"),
            Side::Sandbox { name, path } => format!("sandbox {name} {path}"),
            Side::Stream => "stream".into(),
        }
    }

    #[test]
    fn a_colon_before_any_slash_names_a_sandbox() {
        assert_eq!(describe("web:/etc/hosts"), "sandbox web /etc/hosts");
        assert_eq!(describe("web:"), "sandbox web /");
        assert_eq!(describe("./a:b"), "host ./a:b");
        assert_eq!(describe("/tmp/x:y"), "host /tmp/x:y");
        assert_eq!(describe("-"), "stream");
    }
}
