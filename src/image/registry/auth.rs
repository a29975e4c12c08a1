//! Registry credentials and authentication: `~/.docker/config.json` (`auths`), the
//! `WWW-Authenticate` challenge of a 401 (distribution spec, "token authentication":
//! `Basic` or `Bearer realm=...,service=...,scope=...`), and `husk login`'s writing of
//! the same file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use super::reference::{DOCKER_HUB, DOCKER_HUB_AUTH_KEY};
use super::RegistryError;

/// A user name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic ...` header.
    pub fn basic_header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// The docker client configuration file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".docker/config.json"))
}

/// One `auths` entry.
#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
}

/// The credentials `config` (a docker config file) holds for `registry`, if any. A
/// missing file means none; a broken one is an error naming it.
pub fn lookup(config: &Path, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let text = match fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RegistryError::Config(config.to_path_buf(), e.to_string())),
    };
    let parsed: DockerConfig = serde_json::from_str(&text)
        .map_err(|e| RegistryError::Config(config.to_path_buf(), e.to_string()))?;
    let found = parsed
        .auths
        .iter()
        .find(|(key, _)| auth_key_matches(key, registry))
        .map(|(_, entry)| decode_entry(entry))
        .transpose()
        .map_err(|reason| RegistryError::Config(config.to_path_buf(), reason))?
        .flatten();
    if found.is_none() {
        if let Some(store) = &parsed.creds_store {
            log::debug!(
                "{}: credential helper {store:?} is not supported",
                config.display()
            );
        }
    }
    Ok(found)
}

fn decode_entry(entry: &AuthEntry) -> Result<Option<Credentials>, String> {
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "an \"auth\" value is not base64".to_string())?;
        let text =
            String::from_utf8(bytes).map_err(|_| "an \"auth\" value is not UTF-8".to_string())?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| "an \"auth\" value is not user:password".to_string())?;
        return Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    Ok(entry
        .username
        .clone()
        .zip(entry.password.clone())
        .map(|(username, password)| Credentials { username, password }))
}

/// Whether an `auths` key names `registry`: the key as docker writes it (`host:port`,
/// maybe with a scheme and a path), Docker Hub under any of its names.
fn auth_key_matches(key: &str, registry: &str) -> bool {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    let hub = |h: &str| matches!(h, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    host == registry || (registry == DOCKER_HUB && hub(host))
}

/// The `auths` key `husk login` writes for `registry` (docker's own choice).
pub fn auth_key(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// Stores `credentials` for `registry` in the docker config file `config`, keeping
/// everything else in it; the file is replaced atomically, mode 0600.
pub fn store(
    config: &Path,
    registry: &str,
    credentials: &Credentials,
) -> Result<(), RegistryError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let failed =
        |e: &dyn std::fmt::Display| RegistryError::Config(config.to_path_buf(), e.to_string());
    let mut value: serde_json::Value = match fs::read_to_string(config) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| failed(&e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(failed(&e)),
    };
    let pair = format!("{}:{}", credentials.username, credentials.password);
    let auth = base64::engine::general_purpose::STANDARD.encode(pair);
    let root = value
        .as_object_mut()
        .ok_or_else(|| failed(&"not a JSON object"))?;
    let auths = root
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| failed(&"\"auths\" is not an object"))?;
    auths.insert(auth_key(registry), serde_json::json!({ "auth": auth }));
    if let Some(dir) = config.parent() {
        fs::create_dir_all(dir).map_err(|e| failed(&e))?;
    }
    let tmp = config.with_extension(format!("tmp-{}", std::process::id()));
    let text = serde_json::to_string_pretty(&value).map_err(|e| failed(&e))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| failed(&e))?;
    file.write_all(text.as_bytes()).map_err(|e| failed(&e))?;
    fs::rename(&tmp, config).map_err(|e| failed(&e))
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Send the credentials with every request.
    Basic,
    /// Get a token from `realm` (for `service` and `scope`), then send it.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service the token is for.
        service: Option<String>,
        /// The access asked for (`repository:NAME:pull`).
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header value (RFC 7235 §4.1, one challenge).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(params);
    let get = |k: &str| params.get(k).cloned();
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        }),
        _ => None,
    }
}

/// `key=value` or `key="value, with commas"` pairs separated by commas.
fn parse_params(text: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            },
            None => match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            },
        };
        params.insert(key, value.to_string());
        rest = next.trim_start().trim_start_matches(',');
    }
    params
}

/// The token in a token endpoint's JSON answer (`token`, or OAuth's `access_token`).
pub fn token_from_json(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    answer
        .token
        .filter(|t| !t.is_empty())
        .or(answer.access_token.filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_keeps_quoted_commas_in_the_scope() {
        let header = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn basic_challenge_and_unknown_schemes() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
    }

    #[test]
    fn config_auth_is_found_by_host_port_with_or_without_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // "alice:s3cret:x" — a password may hold colons.
        fs::write(
            &path,
            r#"{"auths":{"https://127.0.0.1:5000/v2/":{"auth":"YWxpY2U6czNjcmV0Ong="}}}"#,
        )
        .unwrap();
        let found = lookup(&path, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(
            (found.username.as_str(), found.password.as_str()),
            ("alice", "s3cret:x")
        );
        assert_eq!(lookup(&path, "127.0.0.1:5001").unwrap(), None);
    }

    #[test]
    fn docker_hub_credentials_are_found_under_the_legacy_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let creds = Credentials {
            username: "bob".into(),
            password: "pw".into(),
        };
        store(&path, DOCKER_HUB, &creds).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(DOCKER_HUB_AUTH_KEY), "{text}");
        assert_eq!(lookup(&path, DOCKER_HUB).unwrap(), Some(creds));
    }

    #[test]
    fn store_keeps_other_settings_and_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(
            &path,
            r#"{"auths":{"a.example":{"auth":"eDp5"}},"detachKeys":"ctrl-q"}"#,
        )
        .unwrap();
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        store(&path, "b.example:5000", &creds).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["detachKeys"], "ctrl-q");
        assert_eq!(value["auths"]["a.example"]["auth"], "eDp5");
        assert_eq!(lookup(&path, "b.example:5000").unwrap(), Some(creds));
    }

    #[test]
    fn missing_config_means_no_credentials_and_broken_one_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lookup(&dir.path().join("none.json"), "x").unwrap(), None);
        let path = dir.path().join("config.json");
        fs::write(&path, "{").unwrap();
        let err = lookup(&path, "x").unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }

    #[test]
    fn token_answers_in_either_field() {
        assert_eq!(token_from_json(br#"{"token":"t1"}"#).as_deref(), Some("t1"));
        assert_eq!(
            token_from_json(br#"{"access_token":"t2"}"#).as_deref(),
            Some("t2")
        );
        assert_eq!(token_from_json(br#"{}"#), None);
    }
}
