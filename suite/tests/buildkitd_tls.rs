//! `stargaze buildkitd` on `tcp://` with mutual TLS, next to a unix socket: a CA, a server
//! certificate for 127.0.0.1 and client certificates are made with the `openssl` CLI in a
//! temp dir. Our client with the right certificates lists the worker and runs a small build
//! (its session and the local export travel over the TLS connection too); a client without
//! a certificate, with one from another CA, or in plain HTTP/2 is refused while the daemon
//! keeps serving; a client that does not trust the server's CA refuses the server. Bad TLS
//! files (missing key, a key that is no key, a key of another certificate, from the flags
//! or the config file's `[grpc.tls]`) are errors at start naming the file. Needs root,
//! runc and openssl.

use stargaze_suite::buildkit_client::{
    client_runtime, control, run_buildkitd, sandbox_args, Buildkitd,
};
use stargaze_suite::http::free_port;
use stargaze_suite::{have, is_root, require, run};
use stargaze_worker::buildkitd::client::build::{build, BuildOptions};
use stargaze_worker::buildkitd::client::{channel_with, connect_with, ClientTls};
use std::path::{Path, PathBuf};
use std::process::Command;

fn prerequisites() -> bool {
    require(is_root(), "root (the worker's snapshotter and sockets)")
        && require(
            have("runc") || have("buildkit-runc"),
            "runc (the OCI worker's runtime)",
        )
        && require(have("openssl"), "openssl (to make the certificates)")
}

/// An EC key at `dir/NAME.key`.
fn key(dir: &Path, name: &str) -> PathBuf {
    let k = dir.join(format!("{name}.key"));
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&k));
    k
}

/// A self-signed CA `dir/NAME.pem` (key `dir/NAME.key`).
fn ca(dir: &Path, name: &str) -> PathBuf {
    let k = key(dir, name);
    let c = dir.join(format!("{name}.pem"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-new", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .args([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-key",
        ])
        .arg(&k)
        .arg("-out")
        .arg(&c));
    c
}

/// A leaf `dir/NAME.pem` (key `dir/NAME.key`) signed by the CA `ca`, with the extensions
/// `ext` (an openssl extension file's lines).
fn leaf(dir: &Path, name: &str, ca: &Path, ext: &str) -> (PathBuf, PathBuf) {
    let k = key(dir, name);
    let csr = dir.join(format!("{name}.csr"));
    run(Command::new("openssl")
        .args(["req", "-new", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-key")
        .arg(&k)
        .arg("-out")
        .arg(&csr));
    let extfile = dir.join(format!("{name}.ext"));
    std::fs::write(&extfile, ext).unwrap();
    let c = dir.join(format!("{name}.pem"));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-set_serial", "1", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(ca)
        .arg("-CAkey")
        .arg(ca.with_extension("key"))
        .arg("-extfile")
        .arg(&extfile)
        .arg("-out")
        .arg(&c));
    (c, k)
}

const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\n";

struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    other_ca: PathBuf,
    other_client: (PathBuf, PathBuf),
}

fn pki(dir: &Path) -> Pki {
    let ca_pem = ca(dir, "ca");
    let other_ca = ca(dir, "other-ca");
    Pki {
        server: leaf(dir, "server", &ca_pem, SERVER_EXT),
        client: leaf(dir, "client", &ca_pem, CLIENT_EXT),
        other_client: leaf(dir, "other-client", &other_ca, CLIENT_EXT),
        ca: ca_pem,
        other_ca,
    }
}

fn tls_flags(cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    vec![
        format!("--tlscert={}", cert.display()),
        format!("--tlskey={}", key.display()),
        format!("--tlscacert={}", ca.display()),
    ]
}

fn client(ca: &Path, id: Option<&(PathBuf, PathBuf)>) -> ClientTls {
    ClientTls {
        server_name: None,
        ca: Some(ca.to_path_buf()),
        cert: id.map(|i| i.0.clone()),
        key: id.map(|i| i.1.clone()),
    }
}

/// Whether `tls` gets an answer to ListWorkers from `addr` (the error otherwise).
async fn list_workers(addr: &str, tls: &ClientTls) -> Result<usize, String> {
    let mut c = connect_with(addr, tls).await.map_err(|e| e.to_string())?;
    c.list_workers(control::ListWorkersRequest::default())
        .await
        .map(|r| r.into_inner().record.len())
        .map_err(|e| format!("{e:?}"))
}

#[test]
fn tcp_with_mutual_tls_next_to_a_unix_socket() {
    if !prerequisites() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let p = pki(certs.path());
    let port = free_port();
    let tcp = format!("tcp://127.0.0.1:{port}");
    let dir = tempfile::Builder::new()
        .prefix("stargaze-bk-tls-")
        .tempdir()
        .unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("buildkitd.sock");
    let mut extra = vec!["--oci-worker-snapshotter=native".to_string()];
    extra.push(format!("--addr={tcp}"));
    extra.extend(tls_flags(&p.server.0, &p.server.1, &p.ca));
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let args = sandbox_args(&root, &socket, &extra);
    let mut d = Buildkitd::spawn(dir, root, socket, &args);
    assert!(
        d.log().contains(&format!("running server on {tcp}")),
        "{}",
        d.log()
    );

    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /\n",
    )
    .unwrap();
    std::fs::write(ctx.path().join("hello.txt"), "over TLS\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("export");

    let good = client(&p.ca, Some(&p.client));
    let unix = d.addr();
    client_runtime().block_on(async {
        // The right client certificate: served on tcp, and the unix socket serves as well.
        assert_eq!(list_workers(&tcp, &good).await, Ok(1));
        assert_eq!(list_workers(&unix, &ClientTls::default()).await, Ok(1));
        // The name the server's certificate carries, given explicitly.
        let named = ClientTls {
            server_name: Some("127.0.0.1".into()),
            ..good.clone()
        };
        assert_eq!(list_workers(&tcp, &named).await, Ok(1));

        // Refused: no client certificate, one from another CA, plain HTTP/2.
        for (what, tls) in [
            ("no client certificate", client(&p.ca, None)),
            (
                "a certificate of another CA",
                client(&p.ca, Some(&p.other_client)),
            ),
            ("plain HTTP/2", ClientTls::default()),
        ] {
            let got = list_workers(&tcp, &tls).await;
            assert!(got.is_err(), "{what}: {got:?}");
        }
        // A client that trusts another CA refuses the server, and a name the server's
        // certificate does not carry too.
        let got = list_workers(&tcp, &client(&p.other_ca, Some(&p.client))).await;
        let e = got.expect_err("server of an untrusted CA");
        assert!(e.contains("certificate"), "{e}");
        let wrong_name = ClientTls {
            server_name: Some("elsewhere.example".into()),
            ..good.clone()
        };
        assert!(list_workers(&tcp, &wrong_name).await.is_err());
        // TLS options are for tcp addresses.
        assert!(list_workers(&unix, &good).await.is_err());

        // Still serving; then a small build whose session and export use the TLS connection.
        assert_eq!(list_workers(&tcp, &good).await, Ok(1));
        let mut o = BuildOptions::dockerfile(ctx.path());
        o.set_output(&format!("type=local,dest={}", dest.display()))
            .unwrap();
        let ch = channel_with(&tcp, &good).await.expect("TLS channel");
        let got = build(ch, &o, Box::new(std::io::sink()))
            .await
            .expect("the build's calls");
        got.result.expect("the build over TLS");
    });
    assert_eq!(
        std::fs::read_to_string(dest.join("hello.txt")).unwrap(),
        "over TLS\n"
    );
    // `stargaze build --addr tcp://…` with buildctl's TLS flags, and without a certificate.
    let layout = out.path().join("layout");
    let build_cli = |with_cert: bool| {
        let mut c = std::process::Command::new(stargaze_suite::stargaze_bin());
        c.arg("build")
            .arg(ctx.path())
            .args(["--addr", &tcp])
            .arg("--tlscacert")
            .arg(&p.ca)
            .arg("-t")
            .arg(format!("oci:{}:v1", layout.display()));
        if with_cert {
            c.arg("--tlscert")
                .arg(&p.client.0)
                .arg("--tlskey")
                .arg(&p.client.1);
        }
        c.output().unwrap()
    };
    let o = build_cli(true);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stargaze_fs::image::OciLayout::open(&layout)
        .unwrap()
        .resolve(Some("v1"))
        .is_ok());
    assert!(!build_cli(false).status.success());
    assert!(d.alive(), "{}", d.log());
    assert!(d.terminate().success(), "{}", d.log());
    assert!(!d.socket.exists());
}

#[test]
fn bad_tls_files_are_errors_at_start_naming_the_file() {
    if !prerequisites() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let p = pki(certs.path());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let tcp = format!("tcp://127.0.0.1:{}", free_port());
    let refused = |tls: Vec<String>, config: Option<&str>, want: &[&str]| {
        let mut args = vec![
            "--root".to_string(),
            root.display().to_string(),
            format!("--addr={tcp}"),
        ];
        if let Some(c) = config {
            let f = dir.path().join("buildkitd.toml");
            std::fs::write(&f, c).unwrap();
            args.push(format!("--config={}", f.display()));
        }
        args.extend(tls);
        let out = run_buildkitd(dir.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: want {w:?} in {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
    };
    let missing = certs.path().join("missing.key");
    let ms = missing.display().to_string();
    refused(
        tls_flags(&p.server.0, &missing, &p.ca),
        None,
        &["--tlskey", &ms],
    );
    // A certificate where the key should be; a CA file that is a directory.
    let sv = p.server.0.display().to_string();
    refused(
        tls_flags(&p.server.0, &p.server.0, &p.ca),
        None,
        &["--tlskey", &sv, "private key"],
    );
    refused(
        tls_flags(&p.server.0, &p.server.1, certs.path()),
        None,
        &["--tlscacert"],
    );
    // The key of another certificate.
    refused(
        tls_flags(&p.server.0, &p.client.1, &p.ca),
        None,
        &["TLS server"],
    );
    // From the config file: its [grpc.tls] key named.
    let config = format!(
        "[grpc.tls]\ncert = \"{}\"\nkey = \"{ms}\"\nca = \"{}\"\n",
        p.server.0.display(),
        p.ca.display()
    );
    refused(Vec::new(), Some(&config), &["[grpc.tls] key", &ms]);
    assert!(!root.exists(), "nothing made before the files are checked");
}
