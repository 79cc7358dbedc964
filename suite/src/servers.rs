//! Real registries for tests, each private (own config, storage, port) and stopped by PID:
//! the reference registry (Debian's `docker-registry`, distribution 2.8) with no auth,
//! htpasswd or token auth; a JWT token issuer for distribution's `token` auth (RS256, signed
//! with `openssl`, certificate in the registry's root bundle and in the token's `x5c`); and
//! `stargaze registry serve` run as the binary users run.

use crate::http::{free_port, Reply, Response, TestServer};
use base64::Engine as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Kills a child by PID (SIGTERM, then SIGKILL) and reaps it.
pub fn stop_child(child: &mut Child) {
    // SAFETY: kill(2) on our own child's PID.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `GET /v2/` answers at all (any status).
fn wait_http(addr: SocketAddr, log: &Path) {
    for _ in 0..250 {
        if crate::http::send(addr, "GET", "/v2/", &[], b"").is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "server on {addr} did not start:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// How the reference registry authenticates.
pub enum RegistryAuth<'a> {
    /// Anonymous.
    None,
    /// htpasswd basic auth with one user.
    Htpasswd(&'a str, &'a str),
    /// distribution token auth against this issuer.
    Token(&'a TokenIssuer),
}

/// A private `docker-registry serve`.
pub struct DockerRegistry {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Config, storage and log.
    pub dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// Starts it on a free loopback port.
    pub fn start(auth: RegistryAuth<'_>) -> DockerRegistry {
        Self::start_configured(auth, "")
    }

    /// Starts it as a pull-through cache of `upstream` (`http://HOST:PORT`): distribution's
    /// proxy mode, which answers a Range request for a blob it has not cached yet with the
    /// whole blob.
    pub fn start_pull_through(upstream: &str) -> DockerRegistry {
        Self::start_configured(
            RegistryAuth::None,
            &format!("proxy:\n  remoteurl: {upstream}\n"),
        )
    }

    fn start_configured(auth: RegistryAuth<'_>, extra_cfg: &str) -> DockerRegistry {
        let dir = tempfile::Builder::new()
            .prefix("stargaze-dreg-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let auth_cfg = match auth {
            RegistryAuth::None => String::new(),
            RegistryAuth::Htpasswd(user, pass) => {
                let hash = bcrypt::hash(pass, 5).expect("bcrypt");
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{user}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    path.display()
                )
            }
            RegistryAuth::Token(t) => format!(
                "auth:\n  token:\n    realm: {}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.url(),
                TokenIssuer::SERVICE,
                TokenIssuer::ISSUER,
                t.cert.display()
            ),
        };
        let cfg = format!(
            "version: 0.1\nlog: {{level: warn, accesslog: {{disabled: true}}}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n  secret: stargaze-test\n{auth_cfg}{extra_cfg}",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("config.yml"), cfg).expect("config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning docker-registry");
        let r = DockerRegistry { child, addr, dir };
        wait_http(addr, &r.dir.path().join("log"));
        r
    }

    /// `HOST:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// `stargaze registry serve` as a child process.
pub struct StargazeRegistry {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The served root.
    pub root: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl StargazeRegistry {
    /// Serves a fresh temp root (with an htpasswd user if given).
    pub fn start(user: Option<(&str, &str)>) -> StargazeRegistry {
        Self::start_with(user, &[])
    }

    /// Like [`Self::start`], with extra `registry serve` arguments (e.g. `--enable-delete`).
    pub fn start_with(user: Option<(&str, &str)>, extra: &[&str]) -> StargazeRegistry {
        let dir = tempfile::Builder::new()
            .prefix("stargaze-reg-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("root");
        let mut r = Self::start_at_with(&root, user, dir.path(), extra);
        r._dir = Some(dir);
        r
    }

    /// Serves `root`, keeping config and log in `work`.
    pub fn start_at(root: &Path, user: Option<(&str, &str)>, work: &Path) -> StargazeRegistry {
        Self::start_at_with(root, user, work, &[])
    }

    /// Like [`Self::start_at`], with extra `registry serve` arguments.
    pub fn start_at_with(
        root: &Path,
        user: Option<(&str, &str)>,
        work: &Path,
        extra: &[&str],
    ) -> StargazeRegistry {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut cmd = Command::new(crate::stargaze_bin());
        cmd.args(["registry", "serve", "--root"])
            .arg(root)
            .arg("--addr")
            .arg(addr.to_string())
            .args(extra);
        if let Some((u, p)) = user {
            let hash = bcrypt::hash(p, 5).expect("bcrypt");
            let path = work.join("htpasswd");
            std::fs::write(&path, format!("{u}:{hash}\n")).expect("htpasswd");
            cmd.arg("--htpasswd").arg(path);
        }
        let log_path = work.join("registry.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = cmd
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning stargaze registry serve");
        let r = StargazeRegistry {
            child,
            addr,
            root: root.to_path_buf(),
            _dir: None,
        };
        wait_http(addr, &log_path);
        r
    }

    /// `HOST:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for StargazeRegistry {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// A token server for distribution's `token` auth: checks basic credentials against one
/// user and signs a JWT granting what the scope asks for; anonymous requests get a token
/// with no access.
pub struct TokenIssuer {
    server: TestServer,
    /// The signing certificate (PEM), for the registry's `rootcertbundle`.
    pub cert: PathBuf,
    /// Token requests served.
    pub requests: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl TokenIssuer {
    /// `service` the registry expects.
    pub const SERVICE: &'static str = "stargaze-test";
    /// `iss` the registry expects.
    pub const ISSUER: &'static str = "stargaze-test-issuer";

    /// Generates a key and certificate with openssl and starts serving.
    pub fn start(user: &str, pass: &str) -> TokenIssuer {
        let dir = tempfile::Builder::new()
            .prefix("stargaze-tok-")
            .tempdir()
            .expect("temp dir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        crate::run(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=stargaze-test-issuer", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stderr(Stdio::null()),
        );
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509");
        let x5c = base64::engine::general_purpose::STANDARD.encode(der.stdout);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        );
        let requests = Arc::new(AtomicUsize::new(0));
        let req_count = requests.clone();
        let key2 = key.clone();
        let user = user.to_string();
        let server = TestServer::start(move |req| {
            req_count.fetch_add(1, Ordering::SeqCst);
            let auth = req.header("authorization");
            if auth.is_some() && auth != Some(expected.as_str()) {
                return Reply::Send(Response::new(401, r#"{"details":"bad credentials"}"#));
            }
            let q = query(&req.target);
            let mut access = Vec::new();
            if auth.is_some() {
                for scope in q.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v) {
                    let parts: Vec<&str> = scope.split(':').collect();
                    if parts.len() == 3 {
                        access.push(serde_json::json!({
                            "type": parts[0], "name": parts[1],
                            "actions": parts[2].split(',').collect::<Vec<_>>()
                        }));
                    }
                }
            }
            let token = sign_jwt(
                &key2,
                &x5c,
                auth.map(|_| user.as_str()).unwrap_or(""),
                access,
            );
            Reply::Send(
                Response::new(
                    200,
                    serde_json::json!({"token": token, "expires_in": 300}).to_string(),
                )
                .with("Content-Type", "application/json"),
            )
        });
        TokenIssuer {
            server,
            cert,
            requests,
            _dir: dir,
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        self.server.url()
    }
}

fn query(target: &str) -> Vec<(String, String)> {
    let q = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), pct_decode(v)))
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn sign_jwt(key: &Path, x5c: &str, sub: &str, access: Vec<serde_json::Value>) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TokenIssuer::ISSUER, "sub": sub, "aud": TokenIssuer::SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", rand::random::<u64>()), "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("openssl output");
    format!("{input}.{}", b64url(&out.stdout))
}

/// `stargaze snapshotter serve` as a child process, by default on the socket containerd's
/// proxy plugin `stargz` dials (so it stands where `containerd-stargz-grpc` would).
pub struct StargazeSnapshotter {
    child: Child,
    /// Snapshot root, log and socket.
    pub dir: tempfile::TempDir,
    /// The snapshot root.
    pub root: PathBuf,
    /// The gRPC socket.
    pub socket: PathBuf,
    netns: Option<PathBuf>,
    _socket_dir: Option<tempfile::TempDir>,
}

impl StargazeSnapshotter {
    /// Starts it for `ctd` with `extra` flags (e.g. `--backend overlayfs`) and waits until
    /// containerd reaches it.
    pub fn start(ctd: &crate::Containerd, extra: &[&str]) -> StargazeSnapshotter {
        Self::start_in(ctd, extra, None)
    }

    /// Like [`Self::start`], inside the network namespace `netns` (`/run/netns/NAME`) when
    /// given.
    pub fn start_in(
        ctd: &crate::Containerd,
        extra: &[&str],
        netns: Option<&Path>,
    ) -> StargazeSnapshotter {
        let mut s = Self::spawn_new(ctd.stargz_socket(), extra, netns, None);
        s.wait_ready(&|| Self::containerd_sees_it(ctd));
        s
    }

    /// Starts it on a socket of its own (no containerd), ready when the socket accepts.
    pub fn start_alone(extra: &[&str]) -> StargazeSnapshotter {
        Self::start_alone_in(None, extra)
    }

    /// Like [`Self::start_alone`], with the snapshot root at `root` (a path of any length).
    pub fn start_alone_at(root: &Path, extra: &[&str]) -> StargazeSnapshotter {
        Self::start_alone_in(Some(root), extra)
    }

    fn start_alone_in(root: Option<&Path>, extra: &[&str]) -> StargazeSnapshotter {
        let dir = tempfile::Builder::new()
            .prefix("stargaze-sock-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("snapshotter.sock");
        let mut s = Self::spawn_new(socket.clone(), extra, None, root);
        s._socket_dir = Some(dir);
        s.wait_ready(&|| std::os::unix::net::UnixStream::connect(&socket).is_ok());
        s
    }

    fn spawn_new(
        socket: PathBuf,
        extra: &[&str],
        netns: Option<&Path>,
        root: Option<&Path>,
    ) -> StargazeSnapshotter {
        let dir = tempfile::Builder::new()
            .prefix("stargaze-snap-")
            .tempdir()
            .expect("temp dir");
        let root = root.map_or_else(|| dir.path().join("root"), Path::to_path_buf);
        StargazeSnapshotter {
            child: Self::spawn(&socket, &root, dir.path(), extra, netns),
            netns: netns.map(Path::to_path_buf),
            dir,
            root,
            socket,
            _socket_dir: None,
        }
    }

    fn containerd_sees_it(ctd: &crate::Containerd) -> bool {
        ctd.reaches_stargz()
    }

    fn spawn(
        socket: &Path,
        root: &Path,
        work: &Path,
        extra: &[&str],
        netns: Option<&Path>,
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join("log"))
            .expect("log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg(crate::stargaze_bin());
                c
            }
            None => Command::new(crate::stargaze_bin()),
        };
        // STARGAZE_SNAPSHOTTER_LOG sets the daemon's log filter (tests keep debug lines).
        let log_filter = std::env::var("STARGAZE_SNAPSHOTTER_LOG")
            .unwrap_or_else(|_| "stargaze_worker=debug,stargaze_fs=info".into());
        cmd.args(["--log", &log_filter, "snapshotter", "serve"])
            .arg("--address")
            .arg(socket)
            .arg("--root")
            .arg(root)
            .args(extra)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning stargaze snapshotter serve")
    }

    fn wait_ready(&mut self, ready: &dyn Fn() -> bool) {
        for _ in 0..600 {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("stargaze snapshotter exited ({st}):\n{}", self.log());
            }
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("stargaze snapshotter did not start:\n{}", self.log());
    }

    /// Kills it with SIGKILL (a crash) and starts it again on the same root.
    pub fn crash_and_restart(&mut self, ctd: &crate::Containerd, extra: &[&str]) {
        self.restart_after(libc::SIGKILL, ctd, extra);
    }

    /// Stops it with SIGTERM (a clean shutdown) and starts it again on the same root.
    pub fn stop_and_restart(&mut self, ctd: &crate::Containerd, extra: &[&str]) {
        self.restart_after(libc::SIGTERM, ctd, extra);
    }

    fn restart_after(&mut self, signal: i32, ctd: &crate::Containerd, extra: &[&str]) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let _ = self.child.wait();
        self.child = Self::spawn(
            &self.socket,
            &self.root,
            self.dir.path(),
            extra,
            self.netns.as_deref(),
        );
        self.wait_ready(&|| Self::containerd_sees_it(ctd));
    }

    /// Whether the server still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The PID of the FUSE holder the server started beside itself (stargz backend), if any.
    pub fn holder_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.root.join("fuse-holder.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for StargazeSnapshotter {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!("--- stargaze snapshotter log ---\n{}", self.log());
        }
        crate::mounts::detach_under(&self.root);
        // The FUSE holder the daemon started beside itself outlives it by design.
        if let Some(pid) = self.holder_pid() {
            // SAFETY: kill(2) on the holder's PID, which it wrote itself.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}
