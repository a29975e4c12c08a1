//! `husk pull` against a real registry: Debian's `docker-registry` (distribution 2.8)
//! started by the test on 127.0.0.1, fed by Debian's `skopeo` from OCI layouts the test
//! builds. One registry is open (plain HTTP), one wants htpasswd credentials over TLS
//! with a self-signed certificate; a small proxy in front of the open one asks for
//! bearer tokens as Docker Hub does. Nothing leaves the loopback interface.
//!
//! Needs docker-registry, skopeo, apache2-utils (htpasswd), openssl, erofs-utils and
//! root (the images are mounted to be checked); `scripts/test` installs the packages.

mod image_common;
mod registry;

use std::fs;
use std::process::Command;

use image_common::*;
use registry::*;

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
