//! The HTTP side of a pull: one repository on one registry, over HTTPS (plain HTTP only
//! for a registry on this machine or with `--insecure`), authenticated as the registry's
//! 401 challenge asks (anonymous, `Basic`, or a `Bearer` token from its realm), with
//! retries of failed connections and 5xx/429 answers.
//!
//! Written on `ureq` rather than `oci-client`: husk is synchronous and threaded, and
//! `oci-client` brings an async runtime (tokio, reqwest, hyper) for what is a handful of
//! GETs; it also reads no docker config file.

use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::Response;
use ureq::Body;

use super::auth::{self, Challenge, Credentials};
use super::reference::{host_of, Reference};
use super::RegistryError;

/// Tries of one request (connection failures, 5xx and 429 are retried).
const ATTEMPTS: u32 = 4;
/// The first retry's pause; each later one doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The most of an error answer or a JSON document read into memory.
const MAX_DOCUMENT: u64 = 4 << 20;

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Allow plain HTTP and unverified TLS for any registry (`--insecure`).
    pub insecure: bool,
    /// A folder of CA certificates (`*.crt`) to trust for this registry instead of the
    /// public roots [default: `/etc/docker/certs.d/<registry>/` when it exists].
    pub cert_dir: Option<std::path::PathBuf>,
    /// Credentials to use instead of the docker config file's.
    pub credentials: Option<Credentials>,
    /// The docker config file to read credentials from [default:
    /// [`auth::docker_config_path`]].
    pub docker_config: Option<std::path::PathBuf>,
}

/// A client of one repository.
pub struct Client {
    agent: ureq::Agent,
    /// `https://host:port` or `http://host:port`.
    base: String,
    /// `host:port`, for errors.
    endpoint: String,
    repository: String,
    credentials: Option<Credentials>,
    /// The `Authorization` header the registry accepted (or asked for) last.
    authorization: Mutex<Option<String>>,
}

impl Client {
    /// Connects to `reference`'s registry: picks the scheme (HTTPS; plain HTTP only for
    /// a loopback registry or with `insecure`, and only when it does not speak TLS),
    /// and authenticates if its `/v2/` asks to.
    pub fn connect(reference: &Reference, connection: &Connection) -> Result<Self, RegistryError> {
        let host = reference.api_host().to_string();
        let credentials = match &connection.credentials {
            Some(c) => Some(c.clone()),
            None => match connection
                .docker_config
                .clone()
                .or_else(auth::docker_config_path)
            {
                Some(path) => auth::lookup(&path, &reference.registry)?,
                None => None,
            },
        };
        let may_use_http = connection.insecure || reference.is_loopback();
        let tls_agent = agent(tls_config(connection, &reference.registry)?);
        let mut client = Self {
            agent: tls_agent,
            base: format!("https://{host}"),
            endpoint: endpoint(&host, 443),
            repository: reference.repository.clone(),
            credentials,
            authorization: Mutex::new(None),
        };
        // As docker does for insecure registries: HTTPS first, then plain HTTP; when
        // both fail, the HTTPS failure is the one worth reading.
        let https_failed = match client.ping() {
            Err(e @ RegistryError::Unreachable { .. }) if may_use_http => e,
            other => return other.map(|()| client),
        };
        log::debug!("{host}: {https_failed}; trying plain HTTP");
        client.base = format!("http://{host}");
        client.endpoint = endpoint(&host, 80);
        *client
            .authorization
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        match client.ping() {
            Err(RegistryError::Unreachable { .. } | RegistryError::Status { status: 400, .. }) => {
                Err(https_failed)
            }
            other => other.map(|()| client),
        }
    }

    /// `host:port` of the registry.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `GET /v2/`: the API is there; a 401 is answered by authenticating for this
    /// repository.
    fn ping(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        let response = self.send(&url, None)?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            401 => {
                self.authenticate(&response, self.scope().as_deref())?;
                // Basic credentials are checked here, not at the first real request.
                let again = self.send(&url, None)?;
                match again.status().as_u16() {
                    200..=299 => Ok(()),
                    // A token for a repository that does not answer /v2/ itself.
                    401 if self.is_bearer() => Ok(()),
                    _ => Err(self.status_error(again, &url)),
                }
            }
            _ => Err(self.status_error(response, &url)),
        }
    }

    /// The token scope of a pull of this repository (none for `husk login`).
    fn scope(&self) -> Option<String> {
        (!self.repository.is_empty()).then(|| format!("repository:{}:pull", self.repository))
    }

    fn is_bearer(&self) -> bool {
        self.authorization
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer "))
    }

    /// `GET {base}{path}` with `accept`, authenticated; one new authentication when the
    /// registry answers 401 (a token that expired or lacks the scope).
    pub fn get(&self, path: &str, accept: Option<&str>) -> Result<Response<Body>, RegistryError> {
        let url = format!("{}{path}", self.base);
        let response = self.send(&url, accept)?;
        if response.status().as_u16() != 401 {
            return Ok(response);
        }
        self.authenticate(&response, self.scope().as_deref())?;
        self.send(&url, accept)
    }

    /// One request, retried while the connection fails or the registry answers 5xx or
    /// 429.
    fn send(&self, url: &str, accept: Option<&str>) -> Result<Response<Body>, RegistryError> {
        let mut pause = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let mut request = self.agent.get(url);
            if let Some(accept) = accept {
                request = request.header("Accept", accept);
            }
            let authorization = self
                .authorization
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(value) = authorization {
                request = request.header("Authorization", value);
            }
            let retry = match request.call() {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status < 500 && status != 429 || attempt == ATTEMPTS {
                        return Ok(response);
                    }
                    format!("status {status}")
                }
                Err(e) if attempt == ATTEMPTS || !transient(&e) => {
                    return Err(self.unreachable(&e));
                }
                Err(e) => e.to_string(),
            };
            log::debug!("GET {url}: {retry}; retrying in {pause:?} ({attempt}/{ATTEMPTS})");
            std::thread::sleep(pause);
            pause *= 2;
            attempt += 1;
        }
    }

    fn unreachable(&self, e: &ureq::Error) -> RegistryError {
        let reason = match e {
            ureq::Error::Rustls(e) => format!("TLS: {e}"),
            ureq::Error::Tls(e) => format!("TLS: {e}"),
            ureq::Error::Protocol(e) => format!("TLS or HTTP: {e}"),
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                format!("TLS: {e}")
            }
            ureq::Error::Io(e) => e.to_string(),
            ureq::Error::HostNotFound => "host not found".into(),
            other => other.to_string(),
        };
        RegistryError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    /// Answers a 401: Basic sends the credentials; Bearer gets a token from the realm
    /// (with the credentials, if any, else anonymously).
    fn authenticate(
        &self,
        response: &Response<Body>,
        scope: Option<&str>,
    ) -> Result<(), RegistryError> {
        let header = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let value = match auth::parse_challenge(header) {
            Some(Challenge::Basic) => match &self.credentials {
                Some(c) => c.basic_header(),
                None => {
                    return Err(self.unauthorized(
                        "the registry wants a user name and password: use `husk login`",
                    ))
                }
            },
            Some(Challenge::Bearer {
                realm,
                service,
                scope: asked,
            }) => format!(
                "Bearer {}",
                self.token(&realm, service.as_deref(), asked.as_deref().or(scope))?
            ),
            None => {
                return Err(
                    self.unauthorized(&format!("unsupported authentication challenge {header:?}"))
                )
            }
        };
        *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        Ok(())
    }

    /// A token from `realm` for `service` and `scope` (distribution spec, token
    /// authentication).
    fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String, RegistryError> {
        let mut request = self.agent.get(realm);
        if let Some(scope) = scope {
            request = request.query("scope", scope);
        }
        if let Some(service) = service {
            request = request.query("service", service);
        }
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", c.basic_header());
        }
        let response = request.call().map_err(|e| self.unreachable(&e))?;
        match response.status().as_u16() {
            200..=299 => {
                let body = read_limited(response.into_body())?;
                auth::token_from_json(&body).ok_or_else(|| {
                    self.unauthorized(&format!(
                        "the token service {realm} answered without a token"
                    ))
                })
            }
            401 | 403 => Err(self.unauthorized(&format!(
                "the token service {realm} refused the credentials"
            ))),
            _ => Err(self.status_error(response, realm)),
        }
    }

    fn unauthorized(&self, detail: &str) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.endpoint.clone(),
            repository: self.repository.clone(),
            detail: detail.to_string(),
            with_credentials: self.credentials.is_some(),
        }
    }

    /// The error for an answer that is not a success: 401 and 403 as authentication
    /// failures, others with the registry's own error message.
    pub fn status_error(&self, response: Response<Body>, url: &str) -> RegistryError {
        let status = response.status().as_u16();
        let message = read_limited(response.into_body())
            .ok()
            .and_then(|body| registry_message(&body))
            .unwrap_or_default();
        match status {
            401 | 403 => self.unauthorized(format!("{status} {message}").trim()),
            _ => RegistryError::Status {
                url: url.to_string(),
                status,
                message,
            },
        }
    }
}

/// Reads an answer of at most [`MAX_DOCUMENT`] bytes.
pub fn read_limited(body: Body) -> Result<Vec<u8>, RegistryError> {
    let mut bytes = Vec::new();
    body.into_reader()
        .take(MAX_DOCUMENT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| RegistryError::Read(e.to_string()))?;
    if bytes.len() as u64 > MAX_DOCUMENT {
        return Err(RegistryError::Read(format!(
            "an answer larger than {MAX_DOCUMENT} bytes"
        )));
    }
    Ok(bytes)
}

/// The first message of a registry's `{"errors": [{"code", "message"}]}` answer.
fn registry_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let first = value.get("errors")?.get(0)?;
    let code = first
        .get("code")
        .and_then(|c| c.as_str())
        .unwrap_or_default();
    let message = first
        .get("message")
        .and_then(|c| c.as_str())
        .unwrap_or_default();
    Some(
        format!("{code}: {message}")
            .trim_matches([':', ' '])
            .to_string(),
    )
}

/// Failures worth another try: a connection that broke or timed out (not one that was
/// refused, nor a TLS or protocol failure, which would fail the same way again).
fn transient(e: &ureq::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ConnectionReset
                | ConnectionAborted
                | UnexpectedEof
                | BrokenPipe
                | TimedOut
                | Interrupted
        ),
        _ => false,
    }
}

fn endpoint(host: &str, default_port: u16) -> String {
    let bare = host_of(host);
    let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
        p.bytes().all(|b| b.is_ascii_digit()) && (h.ends_with(']') || !h.contains(':'))
    });
    if has_port {
        host.to_string()
    } else if bare.contains(':') {
        format!("[{bare}]:{default_port}")
    } else {
        format!("{bare}:{default_port}")
    }
}

fn agent(tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        // A blob redirected to another host (a CDN, a bucket) goes with a signed URL;
        // the registry's credentials stay with the registry.
        .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .user_agent(format!("husk/{}", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// The TLS roots: the CA certificates of `--cert-dir` or `/etc/docker/certs.d/<registry>/`
/// when there are any, else the public (webpki) roots; no verification with `--insecure`.
fn tls_config(
    connection: &Connection,
    registry: &str,
) -> Result<ureq::tls::TlsConfig, RegistryError> {
    let builder = ureq::tls::TlsConfig::builder();
    if connection.insecure {
        return Ok(builder.disable_verification(true).build());
    }
    let dir = match &connection.cert_dir {
        Some(dir) => dir.clone(),
        None => Path::new("/etc/docker/certs.d").join(registry),
    };
    let certs = ca_certificates(&dir)?;
    if certs.is_empty() {
        if connection.cert_dir.is_some() {
            return Err(RegistryError::Certificates(dir, "no *.crt file".into()));
        }
        return Ok(builder.build());
    }
    Ok(builder
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

fn ca_certificates(dir: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, RegistryError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut certs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "crt") {
            continue;
        }
        let bad =
            |e: &dyn std::fmt::Display| RegistryError::Certificates(path.clone(), e.to_string());
        let pem = std::fs::read(&path).map_err(|e| bad(&e))?;
        for item in ureq::tls::parse_pem(&pem) {
            if let ureq::tls::PemItem::Certificate(cert) = item.map_err(|e| bad(&e))? {
                certs.push(cert);
            }
        }
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_always_name_a_port() {
        assert_eq!(endpoint("127.0.0.1:5000", 443), "127.0.0.1:5000");
        assert_eq!(
            endpoint("registry-1.docker.io", 443),
            "registry-1.docker.io:443"
        );
        assert_eq!(endpoint("[::1]:5000", 80), "[::1]:5000");
    }

    #[test]
    fn registry_error_answers_give_their_first_message() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_message(body).as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
        assert_eq!(registry_message(b"not json"), None);
    }
}
