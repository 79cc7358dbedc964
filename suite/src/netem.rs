//! WAN emulation for benchmarks on a kernel without netem: a private network namespace whose
//! loopback is rate-limited with `tc tbf`, and a delaying TCP proxy that listens *inside* that
//! namespace and connects to the registry in the host namespace. Only client↔proxy traffic
//! crosses the shaped loopback (once), so the rate is the link rate; each direction is held
//! back by the one-way delay while staying pipelined (bandwidth is not cut by the latency).
//! Clients run in the namespace with `nsenter --net` (not `ip netns exec`, which would also
//! unshare the mount namespace and hide FUSE mounts from containerd).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A private network namespace, deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates it with loopback up and, if given, `tbf rate RATE burst 256kb latency 50ms` on lo.
    pub fn create(rate: Option<&str>) -> Netns {
        let name = format!("stargaze-{}-{}", std::process::id(), rand::random::<u16>());
        crate::run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        crate::run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        if let Some(r) = rate {
            crate::run(Command::new("ip").args([
                "netns", "exec", &ns.name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
                "rate", r, "burst", "256kb", "latency", "50ms",
            ]));
        }
        ns
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs `prog` inside the namespace (same mount namespace).
    pub fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path().display())).arg(prog);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The delaying proxy.
pub struct DelayProxy {
    /// Where clients in the namespace connect.
    pub addr: SocketAddr,
    /// Bytes forwarded from the registry to clients so far (all connections).
    pub bytes_down: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 inside `ns` and forwards to `upstream` (host namespace), holding
    /// each direction back by `delay`.
    pub fn start(ns: &Netns, upstream: SocketAddr, delay: Duration) -> DelayProxy {
        let (tx, rx) = mpsc::channel();
        let path = ns.path();
        // The listener is made on a thread that joined the namespace; sockets keep the
        // namespace they were made in.
        std::thread::spawn(move || {
            let r = (|| -> std::io::Result<TcpListener> {
                let f = std::fs::File::open(&path)?;
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let rc =
                    unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                TcpListener::bind("127.0.0.1:0")
            })();
            let _ = tx.send(r);
        });
        let listener = rx
            .recv()
            .expect("listener thread")
            .expect("binding in the namespace");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let bytes_down = Arc::new(AtomicU64::new(0));
        let down = bytes_down.clone();
        // Accepting and connecting happen on host-namespace threads.
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let down = down.clone();
                        std::thread::spawn(move || {
                            if let Ok(server) = TcpStream::connect(upstream) {
                                let _ = client.set_nodelay(true);
                                let _ = server.set_nodelay(true);
                                pipe(&client, &server, delay, &down);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        DelayProxy {
            addr,
            bytes_down,
            stop,
        }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Both directions, each delayed; `down` counts the bytes from `b` (the registry) to `a`.
fn pipe(a: &TcpStream, b: &TcpStream, delay: Duration, down: &Arc<AtomicU64>) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let (Ok(a3), Ok(b3)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let up = Arc::new(AtomicU64::new(0));
    let t = std::thread::spawn(move || one_way(a2, b2, delay, &up));
    one_way(b3, a3, delay, down);
    let _ = t.join();
}

fn one_way(mut from: TcpStream, mut to: TcpStream, delay: Duration, count: &AtomicU64) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}
