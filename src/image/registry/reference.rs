//! Image references as docker reads them: `[REGISTRY[:PORT]/]REPOSITORY[:TAG][@DIGEST]`.
//! The first path component is a registry when it has a `.` or a `:`, or is
//! `localhost`; otherwise the image is on Docker Hub (`docker.io`), where a one-part
//! repository lives under `library/`. The tag defaults to `latest` when no digest is
//! given (`busybox` is `docker.io/library/busybox:latest`).

use std::fmt;

/// Docker Hub's name in references and in `~/.docker/config.json`.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's registry API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// Docker Hub's key in `~/.docker/config.json` `auths` (a legacy URL).
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as named (`docker.io`, `127.0.0.1:5000`, `ghcr.io`).
    pub registry: String,
    /// The repository path (`library/busybox`).
    pub repository: String,
    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// The manifest digest, if pinned (`sha256:<hex>`).
    pub digest: Option<String>,
}

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Reference {
    /// Parses `input` with docker's rules (see the module documentation).
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let bad = |reason| ReferenceError {
            input: input.to_string(),
            reason,
        };
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (
                rest,
                Some(parse_digest(digest).ok_or_else(|| bad("bad digest"))?),
            ),
            None => (input, None),
        };
        // A tag follows the last ':' after the last '/' (a registry port has a '/' after it).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(bad(
                    "a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (registry, repository) = split_registry(name);
        if registry.is_empty() || !valid_repository(&repository) {
            return Err(bad(
                "a repository is lower-case path components of [a-z0-9] separated by . _ __ or -",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host (and port) to talk to: `registry-1.docker.io` for Docker Hub.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`, `::1`):
    /// only those may be reached over plain HTTP without `--insecure`.
    pub fn is_loopback(&self) -> bool {
        let host = host_of(&self.registry);
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The host part of `registry` (`[::1]:5000` → `::1`, `example.com:5000` → `example.com`).
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn split_registry(name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            let registry = match first {
                "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
                other => other,
            };
            let repository = if registry == DOCKER_HUB && !rest.contains('/') {
                format!("library/{rest}")
            } else {
                rest.to_string()
            };
            (registry.to_string(), repository)
        }
        Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
        None => (DOCKER_HUB.to_string(), format!("library/{name}")),
    }
}

fn parse_digest(text: &str) -> Option<String> {
    let hex = text.strip_prefix("sha256:")?;
    let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| text.to_string())
}

fn valid_tag(tag: &str) -> bool {
    let ok_chars = tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    (1..=128).contains(&tag.len()) && ok_chars && !tag.starts_with(['.', '-'])
}

/// Path components of `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_repository(repository: &str) -> bool {
    let component = |c: &str| {
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = c.as_bytes();
        let ends_ok =
            bytes.first().is_some_and(|b| alnum(*b)) && bytes.last().is_some_and(|b| alnum(*b));
        let chars_ok = bytes
            .iter()
            .all(|b| alnum(*b) || matches!(b, b'.' | b'_' | b'-'));
        ends_ok && chars_ok && !c.contains("..") && !c.contains("___")
    };
    repository.len() <= 255 && repository.split('/').all(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn short_name_is_docker_hub_library_latest() {
        assert_eq!(
            parse("busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(parse("busybox").api_host(), "registry-1.docker.io");
    }

    #[test]
    fn user_repository_on_docker_hub_has_no_library_prefix() {
        assert_eq!(
            parse("someone/tool:1.2").to_string(),
            "docker.io/someone/tool:1.2"
        );
    }

    #[test]
    fn registry_with_port_is_not_taken_for_a_tag() {
        let r = parse("127.0.0.1:5000/test/app");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "test/app", Some("latest"))
        );
        assert!(r.is_loopback());
    }

    #[test]
    fn localhost_and_dotted_first_components_are_registries() {
        assert_eq!(parse("localhost/app:v1").registry, "localhost");
        assert_eq!(parse("ghcr.io/org/app").registry, "ghcr.io");
        assert!(!parse("ghcr.io/org/app").is_loopback());
        assert_eq!(
            parse("index.docker.io/busybox").repository,
            "library/busybox"
        );
    }

    #[test]
    fn digest_pins_the_manifest_and_drops_the_default_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("localhost:5000/app@{digest}"));
        assert_eq!(
            (r.tag.as_deref(), r.manifest_ref()),
            (None, digest.as_str())
        );
    }

    #[test]
    fn upper_case_repository_and_bad_tags_are_refused() {
        assert!(Reference::parse("Busybox").is_err());
        assert!(Reference::parse("busybox:").is_err());
        assert!(Reference::parse("busybox:-x").is_err());
        assert!(Reference::parse("busybox@sha256:abc").is_err());
        assert!(Reference::parse("a//b").is_err());
    }

    #[test]
    fn host_of_strips_ports_and_brackets() {
        assert_eq!(host_of("[::1]:5000"), "::1");
        assert_eq!(host_of("example.com:443"), "example.com");
        assert!(parse("[::1]:5000/app").is_loopback());
    }
}
