//! `husk pull` against a real registry: Debian's `docker-registry` (distribution 2.8)
//! started by the test on 127.0.0.1, fed by Debian's `skopeo` from OCI layouts the test
//! builds. One registry is open (plain HTTP), one wants htpasswd credentials over TLS
//! with a self-signed certificate; a small proxy in front of the open one asks for
//! bearer tokens as Docker Hub does. Nothing leaves the loopback interface.
//!
//! Needs docker-registry, skopeo, apache2-utils (htpasswd), openssl, erofs-utils and
//! root (the images are mounted to be checked); `scripts/test` installs the packages.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed step is a failed test"
)]

mod image_common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use image_common::*;
use serde_json::json;

/// A docker-registry process, killed when dropped.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(name: &str) -> PathBuf {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("{name} not found: install docker-registry, skopeo, apache2-utils and openssl (scripts/test does)"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
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
fn start_registry(http_extra: &str, auth: &str) -> Registry {
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
fn push(layout: &Path, tag: &str, port: u16, repo: &str, args: &[&str]) {
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
fn manifest(
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

fn config_json_for(diff_ids: &[String], arch: &str) -> Vec<u8> {
    let mut config: serde_json::Value = serde_json::from_slice(&config_json(diff_ids)).unwrap();
    config["architecture"] = json!(arch);
    serde_json::to_vec(&config).unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The layer only `other` has.
fn other_layer() -> Vec<u8> {
    tar_of(&[E::Dir("srv"), E::File("srv/other", "other\n")])
}

/// The layer only `bad` has (corrupted in the registry's storage by the test).
fn bad_layer() -> Vec<u8> {
    tar_of(&[E::File("bad", "intact\n")])
}

/// An OCI layout with three tags: `app` (an index: arm64, then amd64 whose layers are
/// layer1 gzip and layer2 zstd), `other` (layer1 gzip shared with app, then its own),
/// `bad` (one layer of its own).
fn write_layouts(dir: &Path) {
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
fn husk(data: &Path, docker: &Path, args: &[&str]) -> Output {
    husk_with_stdin(data, docker, args, "")
}

fn husk_with_stdin(data: &Path, docker: &Path, args: &[&str], stdin: &str) -> Output {
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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn layer_files(data: &Path) -> Vec<String> {
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

fn hex(blob: &[u8]) -> String {
    sha256(blob)["sha256:".len()..].to_string()
}

/// The open registry with every tag pushed; `app` as an index (all platforms), `other`
/// converted to Docker schema 2 media types.
fn open_registry_with_images() -> (Registry, tempfile::TempDir) {
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

#[test]
fn pull_from_an_open_registry_picks_amd64_shares_layers_and_refuses_bad_input() {
    let (registry, _layout) = open_registry_with_images();
    let (data, docker) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (data, docker) = (data.path(), docker.path());
    let host = format!("127.0.0.1:{}", registry.port);

    // An OCI index: the amd64 image, its gzip and zstd layers applied in order.
    let app = format!("{host}/test/app:1");
    let out = husk(data, docker, &["pull", "-q", &app]);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = husk::image::ImageStore::open(Some(data)).unwrap();
    let image = store.resolve(&app).unwrap();
    assert_eq!(image.config, expected_config());
    let tree = Mounted::new(&image.fs_image);
    assert_eq!(tree_listing(tree.path()), expected_listing());
    drop(tree);
    let (l1, l2, l3) = (gzip(&layer1()), zstd(&layer2()), gzip(&other_layer()));
    assert_eq!(
        layer_files(data),
        sorted(vec![hex(&l1), hex(&l2)]),
        "only amd64's layers"
    );

    // Docker schema 2 media types; layer1 is fetched once for both images.
    let other = format!("{host}/test/other:1");
    let out = husk(data, docker, &["pull", "-q", &other]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        layer_files(data),
        sorted(vec![hex(&l1), hex(&l2), hex(&l3)])
    );
    let tree = Mounted::new(&store.resolve(&other).unwrap().fs_image);
    assert_eq!(
        fs::read_to_string(tree.path().join("srv/other")).unwrap(),
        "other\n"
    );
    drop(tree);

    // `husk run` pulls an image the store lacks (before it needs a kernel: this one
    // does not exist, so the run fails after the pull), unless told never to.
    let fresh = tempfile::tempdir().unwrap();
    let run = ["run", "--kernel", "/nonexistent/vmlinux"];
    let out = husk(
        fresh.path(),
        docker,
        &[&run[..], &["--pull", "never", &other, "true"]].concat(),
    );
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("--pull never"),
        "{err}"
    );
    let out = husk(
        fresh.path(),
        docker,
        &[&run[..], &[other.as_str(), "true"]].concat(),
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let fresh_store = husk::image::ImageStore::open(Some(fresh.path())).unwrap();
    assert!(fresh_store.resolve(&other).is_ok(), "{}", stderr(&out));

    // Pulled again: up to date, the store as it was.
    let before = store_snapshot(data);
    let out = husk(data, docker, &["pull", "-q", &app]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(store_snapshot(data), before);

    // An unknown tag is not found, naming the reference.
    let missing = format!("{host}/test/app:nope");
    let out = husk(data, docker, &["pull", "-q", &missing]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains(&missing) && err.contains("not found"),
        "{err}"
    );

    // A blob the registry serves with other bytes (same size) is refused; the store is
    // left as it was.
    let blob = gzip(&bad_layer());
    let data_file = registry.storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &hex(&blob)[..2],
        hex(&blob)
    ));
    let mut corrupt = fs::read(&data_file).unwrap();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    fs::write(&data_file, &corrupt).unwrap();
    let out = husk(data, docker, &["pull", "-q", &format!("{host}/test/bad:1")]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains(&sha256(&blob)) && err.contains("refused"),
        "{err}"
    );
    assert_eq!(store_snapshot(data), before);

    // Removing an image drops the layers no other image was pulled from.
    assert!(husk(data, docker, &["image", "rm", &app]).status.success());
    assert_eq!(
        layer_files(data),
        sorted(vec![hex(&l1), hex(&l3)]),
        "layer1 stays for other"
    );

    // A registry that is down: the error names its host and port.
    let port = registry.port;
    drop(registry);
    let out = husk(
        data,
        docker,
        &["pull", "-q", &format!("127.0.0.1:{port}/test/app:1")],
    );
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains(&format!("cannot reach registry 127.0.0.1:{port}")),
        "{err}"
    );
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn openssl(dir: &Path, args: &[&str]) {
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
fn test_ca(dir: &Path) {
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

#[test]
fn pull_with_htpasswd_over_tls_needs_the_right_password_and_the_certificate() {
    let certs = tempfile::tempdir().unwrap();
    test_ca(certs.path());
    let htpasswd = certs.path().join("htpasswd");
    let out = Command::new(tool("htpasswd"))
        .args(["-Bbc"])
        .arg(&htpasswd)
        .args(["alice", "right-pw"])
        .output()
        .unwrap();
    assert!(out.status.success(), "htpasswd failed");
    let tls = format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        certs.path().join("server.crt").display(),
        certs.path().join("server.key").display()
    );
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
        htpasswd.display()
    );
    let registry = start_registry(&tls, &auth);
    let layout = tempfile::tempdir().unwrap();
    write_layouts(layout.path());
    let cert_dir = certs.path().join("ca").display().to_string();
    push(
        layout.path(),
        "other",
        registry.port,
        "test/other:1",
        &[
            "--dest-cert-dir",
            &cert_dir,
            "--dest-creds",
            "alice:right-pw",
        ],
    );
    let (data, docker) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (data, docker) = (data.path(), docker.path());
    let host = format!("127.0.0.1:{}", registry.port);
    let image = format!("{host}/test/other:1");

    // Without the CA: TLS refuses the certificate, naming the registry.
    let out = husk(data, docker, &["pull", "-q", &image]);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains(&host) && err.contains("TLS"),
        "{err}"
    );
    // Without credentials: the registry wants some.
    let pull = ["pull", "-q", "--cert-dir", &cert_dir, &image];
    let out = husk(data, docker, &pull);
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("needs authentication"),
        "{err}"
    );
    // A wrong password (in the docker config, as docker login leaves it): a clear 401.
    let wrong = base64_of("alice:wrong-pw");
    fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{wrong}"}}}}}}"#),
    )
    .unwrap();
    let out = husk(data, docker, &pull);
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("authentication failed")
            && err.contains("wrong user name or password"),
        "{err}"
    );
    // husk login refuses the wrong password and stores the right one.
    let login = [
        "login",
        &host,
        "-u",
        "alice",
        "--password-stdin",
        "--cert-dir",
        &cert_dir,
    ];
    let out = husk_with_stdin(data, docker, &login, "wrong-again\n");
    assert!(!out.status.success(), "{}", stderr(&out));
    let out = husk_with_stdin(data, docker, &login, "right-pw\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = husk(data, docker, &pull);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = husk::image::ImageStore::open(Some(data)).unwrap();
    let tree = Mounted::new(&store.resolve(&image).unwrap().fs_image);
    assert_eq!(
        fs::read_to_string(tree.path().join("srv/other")).unwrap(),
        "other\n"
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// What the bearer proxy saw: token requests (query strings) and refused requests.
#[derive(Default)]
struct Seen {
    token_queries: Vec<String>,
    refused: usize,
}

/// A proxy in front of the registry on `upstream` that asks for a bearer token as
/// Docker Hub does: `/token` hands out `tok-1` to alice (basic auth), every other
/// request without `Bearer tok-1` gets a 401 challenge, the rest go to the registry.
fn bearer_proxy(upstream: u16) -> (u16, Arc<Mutex<Seen>>) {
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

fn serve_proxied(mut conn: TcpStream, port: u16, upstream: u16, seen: &Mutex<Seen>) {
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

#[test]
fn pull_through_a_bearer_token_challenge_fetches_a_token_with_the_credentials() {
    let (registry, _layout) = open_registry_with_images();
    let (port, seen) = bearer_proxy(registry.port);
    let (data, docker) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (data, docker) = (data.path(), docker.path());
    let host = format!("127.0.0.1:{port}");
    let image = format!("{host}/test/other:1");
    // No credentials: the token service refuses the anonymous pull.
    let out = husk(data, docker, &["pull", "-q", &image]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("refused"), "{err}");
    let auth = base64_of("alice:pw");
    fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"http://{host}/v2/":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let out = husk(data, docker, &["pull", "-q", &image]);
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = seen.lock().unwrap();
    assert!(
        seen.token_queries
            .iter()
            .any(|q| q.contains("scope=repository%3Atest%2Fother%3Apull")
                && q.contains("service=husk-test")),
        "{:?}",
        seen.token_queries
    );
    assert!(seen.refused >= 1);
}
