//! Trust boundaries towards other local users (root, real FUSE, overlayfs, `setpriv`): the
//! state stargaze keeps — mount run dirs, lazy layer mount points, upper dirs, snapshotter
//! roots — is 0700 even under umask 0000, lazy layers are mounted `nosuid,nodev` (while a
//! setuid program and a device node of the image still work through the overlay, as in a
//! container), and the unix sockets are 0600 and refuse peers that are not root even when
//! their mode is widened. Also: a snapshotter root too long for `ROOT/fuse-holder.sock`, a
//! too-long `--address`, and a C-core gRPC client's `:authority`.
//!
//! Every case runs the binary under umask 0000 (set for this test process, inherited).

use stargaze_suite::mounts::Mounted;
use stargaze_suite::servers::{stop_child, StargazeRegistry, StargazeSnapshotter};
use stargaze_suite::{have, is_root, require, run, stargaze_bin};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged local user the cases act as.
const NOBODY: &str = "65534";

fn ready() -> bool {
    // SAFETY: umask only sets this process's file mode mask; every case here wants 0000.
    unsafe { libc::umask(0) };
    require(is_root(), "root (FUSE allow_other, overlayfs, setpriv)")
        && require(Path::new("/dev/fuse").exists(), "/dev/fuse")
        && require(have("setpriv"), "setpriv (util-linux)")
        && require(Path::new("/usr/bin/python3").is_file(), "/usr/bin/python3")
        && require(stargaze_bin().is_file(), "the stargaze binary")
}

/// `args` run as uid/gid 65534 with no groups.
fn as_nobody(args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "--",
    ])
    .args(args);
    c
}

fn output(c: &mut Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("spawning {c:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts the command failed with "Permission denied".
fn denied(c: &mut Command) {
    let o = output(c);
    assert!(
        !o.status.success() && text(&o).contains("Permission denied"),
        "{c:?} was not refused: {}",
        text(&o)
    );
}

/// `text` without the terminal colour sequences the daemon's log lines carry.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            out.push(c);
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn open_up(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// An eStargz image whose one layer holds a setuid-root copy of the host's `id`, a char
/// device 1:5 (what /dev/zero is) open to all, and a plain file; pushed to `reg`.
fn hostile_image(work: &Path, reg: &StargazeRegistry) -> String {
    let rootfs = work.join("image-rootfs");
    for d in ["bin", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/id", rootfs.join("bin/id-suid")).unwrap();
    std::fs::set_permissions(
        rootfs.join("bin/id-suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    stargaze_fs::sys::mknod(&rootfs.join("dev/zero-img"), libc::S_IFCHR | 0o666, 1, 5).unwrap();
    std::fs::write(rootfs.join("etc/secret"), "image content\n").unwrap();
    let tar = work.join("layer.tar");
    run(Command::new("tar").args(["--numeric-owner", "-C", p(&rootfs), "-cf", p(&tar), "."]));
    let oci = work.join("oci");
    let layout = stargaze_fs::image::OciLayout::open_or_create(&oci).unwrap();
    stargaze_fs::image::write_image(
        &layout,
        "plain",
        &[stargaze_fs::image::LayerInput { tar }],
        &stargaze_fs::image::ImageConfig {
            cmd: vec!["/bin/id-suid".into()],
            env: vec![],
        },
    )
    .unwrap();
    let (plain, esgz) = (
        format!("oci:{}:plain", oci.display()),
        format!("oci:{}:esgz", oci.display()),
    );
    run(Command::new(stargaze_bin()).args(["convert", &plain, &esgz]));
    let name = format!("{}/local/hostile:v1", reg.host());
    run(Command::new(stargaze_bin()).args(["copy", &esgz, &format!("docker://{name}")]));
    name
}

/// The mount's state directory (the only one under the run dir's `mounts/`).
fn state_of(m: &Mounted) -> PathBuf {
    let mounts = m.run_dir.join("mounts");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&mounts)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.remove(0)
}

/// The mount options of the mount point `dir` (from mountinfo).
fn mount_options(dir: &Path) -> String {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .find(|l| l.split(' ').nth(4) == Some(p(dir)))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_else(|| panic!("{} is not a mount point", dir.display()))
        .to_string()
}

#[test]
fn mount_state_is_private_and_lazy_layers_are_nosuid_nodev() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = StargazeRegistry::start(None);
    let name = hostile_image(tmp.path(), &reg);
    let work = tmp.path().join("m");
    std::fs::create_dir(&work).unwrap();
    // Everything above the state is open: only stargaze's own modes stand in the way.
    open_up(tmp.path());
    open_up(&work);
    let m = Mounted::mount(&name, &work, &["--writable", "--no-background-fetch"]);
    let state = state_of(&m);
    let layer = state.join("l/0");
    for d in [
        m.run_dir.clone(),
        m.run_dir.join("mounts"),
        state.clone(),
        state.join("l"),
        state.join("work"),
        m.cache_dir.clone(),
    ] {
        assert_eq!(mode(&d), 0o700, "{} (umask 0000)", d.display());
    }
    // The upper dir is the rootfs's `/`: as open as an image's root, behind the state dir.
    assert_eq!(mode(&state.join("upper")), 0o755);
    // Another user reaches nothing of it.
    denied(&mut as_nobody(&["cat", p(&layer.join("etc/secret"))]));
    denied(&mut as_nobody(&["ls", p(&m.run_dir.join("mounts"))]));
    denied(&mut as_nobody(&["ls", p(&state.join("upper"))]));
    let dev = layer.join("dev/zero-img");
    denied(&mut as_nobody(&["head", "-c1", p(&dev)]));
    // The layer itself is nosuid,nodev: a setuid program reached through it (here past the
    // 0700 parents, through a descriptor root opened) does not run as root, and its device
    // node opens for nobody, not even root.
    let opts = mount_options(&layer);
    assert!(opts.contains("nosuid") && opts.contains("nodev"), "{opts}");
    let fd3 = std::fs::File::open(&layer).unwrap();
    let out = run_with_fd3(
        &mut as_nobody(&["sh", "-c", "exec /proc/self/fd/3/bin/id-suid -u"]),
        &fd3,
    );
    assert_eq!(out.trim(), NOBODY, "setuid honoured on the lazy layer");
    let e = std::fs::File::open(&dev).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EACCES),
        "device node on the layer: {e}"
    );
    // Through the overlay — what a container sees — the image's setuid program and device
    // node work as they do under containerd.
    let suid = m.dir.join("bin/id-suid");
    assert_eq!(run(&mut as_nobody(&[p(&suid), "-u"])).trim(), "0");
    // A non-root user reads the image's files through the overlay, 0700 parents or not.
    let secret = run(&mut as_nobody(&["cat", p(&m.dir.join("etc/secret"))]));
    assert_eq!(secret, "image content\n");
    let mut buf = [1u8; 4];
    use std::io::Read as _;
    std::fs::File::open(m.dir.join("dev/zero-img"))
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    assert_eq!(buf, [0; 4]);
    let out = m.umount();
    assert!(out.status.success(), "{}", text(&out));
}

/// Runs `c` with `fd` as its descriptor 3; returns stdout (panics on failure).
fn run_with_fd3(c: &mut Command, fd: &std::fs::File) -> String {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let raw = fd.as_raw_fd();
    // SAFETY: dup2 in the child before exec only places an inherited descriptor at 3.
    unsafe {
        c.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: clear it then.
            let rc = if raw == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run(c)
}

/// A raw client of a unix socket, run as `as_nobody` or root: prints `EACCES` when connect
/// is refused by the file mode, else sends a first message (the HTTP/2 preface and an empty
/// SETTINGS frame, or a holder `ping`) and prints `answered` or `closed`.
const RAW_CLIENT: &str = r#"
import socket, sys
path, kind = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET if kind == "holder" else socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(path)
except PermissionError:
    print("EACCES"); sys.exit(0)
try:
    if kind == "holder":
        s.send(b'{"op":"ping"}')
    else:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    d = s.recv(65536)
except (BrokenPipeError, ConnectionResetError):
    d = b""
print("answered" if d else "closed")
"#;

fn raw_client(c: &mut Command, socket: &Path, kind: &str) -> String {
    run(c.args(["/usr/bin/python3", "-c", RAW_CLIENT, p(socket), kind]))
        .trim()
        .to_string()
}

fn root_cmd() -> Command {
    Command::new("env")
}

#[test]
fn snapshotter_root_and_sockets_refuse_other_users() {
    if !ready() {
        return;
    }
    let s = StargazeSnapshotter::start_alone(&[]);
    let holder = s.root.join("fuse-holder.sock");
    let sock_dir = s.socket.parent().unwrap();
    open_up(s.dir.path());
    open_up(sock_dir);
    assert_eq!(mode(&s.root), 0o700, "root (umask 0000)");
    assert_eq!(mode(&s.root.join("snapshots")), 0o700);
    assert_eq!(mode(&s.socket), 0o600, "gRPC socket (umask 0000)");
    assert_eq!(mode(&holder), 0o600, "holder socket (umask 0000)");
    denied(&mut as_nobody(&["ls", p(&s.root.join("snapshots"))]));
    assert_eq!(raw_client(&mut as_nobody(&[]), &s.socket, "grpc"), "EACCES");
    assert_eq!(raw_client(&mut root_cmd(), &s.socket, "grpc"), "answered");
    assert_eq!(raw_client(&mut root_cmd(), &holder, "holder"), "answered");
    // Widened by mistake, the sockets still serve no one but root: the peer is checked.
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&holder, std::fs::Permissions::from_mode(0o666)).unwrap();
    open_up(&s.root);
    assert_eq!(raw_client(&mut as_nobody(&[]), &s.socket, "grpc"), "closed");
    assert_eq!(raw_client(&mut as_nobody(&[]), &holder, "holder"), "closed");
    assert_eq!(raw_client(&mut root_cmd(), &s.socket, "grpc"), "answered");
    let holder_log = std::fs::read_to_string(s.root.join("fuse-holder.log")).unwrap();
    for log in [s.log(), holder_log].map(|l| without_colours(&l)) {
        assert!(
            log.contains("connection refused") && log.contains(&format!("uid={NOBODY}")),
            "refusals are logged with the peer:\n{log}"
        );
    }
}

#[test]
fn long_roots_get_a_short_holder_socket_and_long_addresses_a_clear_error() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r".repeat(130)).join("root");
    assert!(p(&root).len() > 140);
    let s = StargazeSnapshotter::start_alone_at(&root, &[]);
    let key = stargaze_fs::Digest::of(p(&root).as_bytes()).hex();
    let sock = Path::new("/run/stargaze/holders").join(format!("{}.sock", &key[..16]));
    assert_eq!(mode(sock.parent().unwrap()), 0o700);
    assert_eq!(mode(&sock), 0o600);
    assert_eq!(raw_client(&mut root_cmd(), &sock, "holder"), "answered");
    assert!(s.holder_pid().is_some(), "{}", s.log());
    assert!(!s.log().contains("holder did not"), "{}", s.log());
    drop(s);
    let _ = std::fs::remove_file(&sock);
    // A gRPC socket path that cannot be bound fails at once, naming the limit.
    let address = tmp.path().join("a".repeat(120)).join("s.sock");
    let start = Instant::now();
    let mut child = Command::new(stargaze_bin())
        .args(["snapshotter", "serve", "--backend", "native", "--address"])
        .arg(&address)
        .arg("--root")
        .arg(tmp.path().join("native"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        stop_child(&mut child);
        panic!(
            "serve with a {}-byte --address did not stop",
            p(&address).len()
        );
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("the limit is 107"), "{}", text(&out));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// A gRPC C-core client (Python grpcio) on `unix:PATH`, sending `:authority` as C-core
/// versions do (`localhost`; the socket path percent-encoded; `unix:PATH`; the bare path):
/// each call is answered, not reset with PROTOCOL_ERROR.
const GRPCIO_LIST: &str = r#"
import grpc, sys
path = sys.argv[1]
for authority in ["localhost", path.replace("/", "%2F"), "unix:" + path, path]:
    ch = grpc.insecure_channel("unix:" + path, options=[("grpc.default_authority", authority)])
    list_ = ch.unary_stream("/containerd.services.snapshots.v1.Snapshots/List",
        request_serializer=lambda x: x, response_deserializer=lambda x: x)
    print(authority, "listed", sum(1 for _ in list_(b"", timeout=20)))
    ch.close()
"#;

#[test]
fn grpc_c_core_clients_are_answered() {
    if !ready() {
        return;
    }
    let grpcio = Command::new("/usr/bin/python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !require(grpcio, "python3-grpcio") {
        return;
    }
    let s = StargazeSnapshotter::start_alone(&["--backend", "native"]);
    let o = output(Command::new("/usr/bin/python3").args(["-c", GRPCIO_LIST, p(&s.socket)]));
    assert!(
        o.status.success() && text(&o).matches("listed 0").count() == 4,
        "{}\n{}",
        text(&o),
        s.log()
    );
}
