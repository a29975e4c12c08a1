//! A real registry for the pull tests: Debian's `docker-registry` on 127.0.0.1 (plain
//! HTTP, or htpasswd over TLS with a test CA), OCI layouts pushed with `skopeo`, and a
//! bearer-token proxy in front of it as Docker Hub asks; husk run against them.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed step is a failed test"
)]

use crate::image_common::*;
use serde_json::json;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A docker-registry process, killed when dropped.
pub struct Registry {
    pub child: Child,
    pub port: u16,
    pub storage: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tool(name: &str) -> PathBuf {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} not found: install docker-registry, skopeo, apache2-utils and openssl (scripts/test does)"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the registry did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a registry on 127.0.0.1; `extra` is YAML appended to its `http:` section
/// (indented 2) and `auth` a top-level `auth:` section, both optional.
pub fn start_registry(http_extra: &str, auth: &str) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let storage = dir.path().join("storage");
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{http_extra}{auth}",
        storage.display()
    );
    let config_path = dir.path().join("config.yml");
    fs::write(&config_path, config).unwrap();
    let child = Command::new(tool("docker-registry"))
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(port);
    Registry {
        child,
        port,
        storage,
        _dir: dir,
    }
}

/// `skopeo copy oci:LAYOUT:TAG docker://127.0.0.1:PORT/REPO` with `args`.
pub fn push(layout: &Path, tag: &str, port: u16, repo: &str, args: &[&str]) {
    let out = Command::new(tool("skopeo"))
        .args(["--insecure-policy", "copy", "--quiet"])
        .args(args)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://127.0.0.1:{port}/{repo}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An image manifest of `layers` (blob, media type) and the config of `diff_ids`.
pub fn manifest(
    dir: &Path,
    layers: &[(&[u8], &str)],
    diff_ids: &[String],
    arch: &str,
) -> serde_json::Value {
    let config = with(
        put_blob(dir, &config_json_for(diff_ids, arch)),
        json!({"mediaType": "application/vnd.oci.image.config.v1+json"}),
    );
    let layers: Vec<_> = layers
        .iter()
        .map(|(blob, media)| with(put_blob(dir, blob), json!({ "mediaType": media })))
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layers});
    with(
        put_blob(dir, &serde_json::to_vec(&manifest).unwrap()),
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "platform": {"architecture": arch, "os": "linux"}}),
    )
}

pub fn config_json_for(diff_ids: &[String], arch: &str) -> Vec<u8> {
    let mut config: serde_json::Value = serde_json::from_slice(&config_json(diff_ids)).unwrap();
    config["architecture"] = json!(arch);
    serde_json::to_vec(&config).unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

pub const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The layer only `other` has.
pub fn other_layer() -> Vec<u8> {
    tar_of(&[E::Dir("srv"), E::File("srv/other", "other\n")])
}

/// The layer only `bad` has (corrupted in the registry's storage by the test).
pub fn bad_layer() -> Vec<u8> {
    tar_of(&[E::File("bad", "intact\n")])
}

/// An OCI layout with three tags: `app` (an index: arm64, then amd64 whose layers are
/// layer1 gzip and layer2 zstd), `other` (layer1 gzip shared with app, then its own),
/// `bad` (one layer of its own).
pub fn write_layouts(dir: &Path) {
    let (l1, l2, l3, l4) = (layer1(), layer2(), other_layer(), bad_layer());
    let id = |l: &[u8]| sha256(l);
    let arm = manifest(dir, &[(&gzip(&l3), GZ)], &[id(&l3)], "arm64");
    let amd = manifest(
        dir,
        &[(&gzip(&l1), GZ), (&zstd(&l2), ZST)],
        &[id(&l1), id(&l2)],
        "amd64",
    );
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm, amd]});
    let index = with(
        put_blob(dir, &serde_json::to_vec(&index).unwrap()),
        json!({"mediaType": "application/vnd.oci.image.index.v1+json",
            "annotations": {"org.opencontainers.image.ref.name": "app"}}),
    );
    let tagged = |m: serde_json::Value, tag: &str| {
        with(
            m,
            json!({"annotations": {"org.opencontainers.image.ref.name": tag}}),
        )
    };
    let other = tagged(
        manifest(
            dir,
            &[(&gzip(&l1), GZ), (&gzip(&l3), GZ)],
            &[id(&l1), id(&l3)],
            "amd64",
        ),
        "other",
    );
    let bad = tagged(
        manifest(dir, &[(&gzip(&l4), GZ)], &[id(&l4)], "amd64"),
        "bad",
    );
    let top = json!({"schemaVersion": 2, "manifests": [index, other, bad]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// Runs `husk ARGS` with the store in `data` and the docker config folder `docker`.
pub fn husk(data: &Path, docker: &Path, args: &[&str]) -> Output {
    husk_with_stdin(data, docker, args, "")
}

pub fn husk_with_stdin(data: &Path, docker: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .env("HUSK_DATA_DIR", data)
        .env("DOCKER_CONFIG", docker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn layer_files(data: &Path) -> Vec<String> {
    let dir = data.join("images/layers/sha256");
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

pub fn hex(blob: &[u8]) -> String {
    sha256(blob)["sha256:".len()..].to_string()
}

/// The open registry with every tag pushed; `app` as an index (all platforms), `other`
/// converted to Docker schema 2 media types.
pub fn open_registry_with_images() -> (Registry, tempfile::TempDir) {
    let layout = tempfile::tempdir().unwrap();
    write_layouts(layout.path());
    let registry = start_registry("", "");
    let plain = "--dest-tls-verify=false";
    push(
        layout.path(),
        "app",
        registry.port,
        "test/app:1",
        &[plain, "--all"],
    );
    push(
        layout.path(),
        "other",
        registry.port,
        "test/other:1",
        &[plain, "--format", "v2s2"],
    );
    push(layout.path(), "bad", registry.port, "test/bad:1", &[plain]);
    (registry, layout)
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(tool("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA made for the test (`ca/ca.crt`, the folder given to `--cert-dir`) and the
/// registry's certificate for 127.0.0.1 signed by it (`server.crt`, `server.key`).
pub fn test_ca(dir: &Path) {
    fs::create_dir(dir.join("ca")).unwrap();
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=husk test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca/ca.crt",
            days[0],
            days[1],
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca/ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
            days[0],
            days[1],
        ],
    );
}

pub fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What the bearer proxy saw: token requests (query strings) and refused requests.
#[derive(Default)]
pub struct Seen {
    pub token_queries: Vec<String>,
    pub refused: usize,
}

/// A proxy in front of the registry on `upstream` that asks for a bearer token as
/// Docker Hub does: `/token` hands out `tok-1` to alice (basic auth), every other
/// request without `Bearer tok-1` gets a 401 challenge, the rest go to the registry.
pub fn bearer_proxy(upstream: u16) -> (u16, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let seen = shared.clone();
            std::thread::spawn(move || serve_proxied(conn, port, upstream, &seen));
        }
    });
    (port, seen)
}

pub fn serve_proxied(mut conn: TcpStream, port: u16, upstream: u16, seen: &Mutex<Seen>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let read_line = |reader: &mut BufReader<TcpStream>| {
        let mut bytes = Vec::new();
        let _ = reader.read_until(b'\n', &mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let request_line = read_line(&mut reader);
    if !request_line.starts_with("GET ") {
        return; // A TLS client hello: this proxy speaks plain HTTP only.
    }
    let mut authorization = String::new();
    let mut accept = String::new();
    loop {
        let line = read_line(&mut reader);
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.to_ascii_lowercase().as_str() {
            "authorization" => authorization = value.trim().to_string(),
            "accept" => accept = value.trim().to_string(),
            _ => {}
        }
    }
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    let reply = |conn: &mut TcpStream, head: &str, body: &str| {
        let text = format!("HTTP/1.1 {head}\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}", body.len());
        let _ = conn.write_all(text.as_bytes());
    };
    if let Some(query) = path.strip_prefix("/token?") {
        seen.lock().unwrap().token_queries.push(query.to_string());
        if authorization == format!("Basic {}", base64_of("alice:pw")) {
            reply(&mut conn, "200 OK", r#"{"token":"tok-1"}"#);
        } else {
            reply(&mut conn, "401 Unauthorized", "{}");
        }
        return;
    }
    if authorization != "Bearer tok-1" {
        seen.lock().unwrap().refused += 1;
        let challenge = format!(
            "401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"husk-test\""
        );
        reply(&mut conn, &challenge, "{}");
        return;
    }
    let mut registry = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
    let forwarded = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{upstream}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    registry.write_all(forwarded.as_bytes()).unwrap();
    let mut answer = Vec::new();
    registry.read_to_end(&mut answer).unwrap();
    let _ = conn.write_all(&answer);
}
