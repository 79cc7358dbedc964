//! The HelloBench-style workloads (`suite/benches/hellobench.rs`) and their images: one
//! debootstrap'd Debian bookworm base, and per package set an overlayfs upper dir installed
//! with apt in a chroot on top of its parent (so every workload derives from the one base),
//! all cached under `target/bench-cache/hellobench/` (never committed). Each workload's image
//! is kept as an OCI layout with tags `plain` (gzip) and `esgz` (`stargaze convert`), and the
//! reference converter's output (`ctr-remote image convert --estargz --oci`) as a second
//! layout tagged `esgz`.

use crate::{bench_cache_dir, run, stargaze_bin};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A package set installed on top of its parent stage (`None`: the debootstrap base), then a
/// setup script run in the chroot.
struct Stage {
    name: &'static str,
    parent: Option<&'static str>,
    packages: &'static [&'static str],
    setup: &'static str,
}

const STAGES: &[Stage] = &[
    Stage {
        name: "python3",
        parent: None,
        packages: &["python3"],
        setup: "",
    },
    Stage {
        name: "requests",
        parent: Some("python3"),
        packages: &["python3-requests"],
        setup: "",
    },
    Stage {
        name: "gcc",
        parent: None,
        packages: &["gcc", "libc6-dev"],
        setup: r#"printf '#include <stdio.h>\nint main(void) { printf("hello from gcc\\n"); return 0; }\n' > /root/hello.c
"#,
    },
    Stage {
        name: "nodejs",
        parent: None,
        packages: &["nodejs"],
        setup: "",
    },
    Stage {
        name: "java",
        parent: None,
        packages: &["openjdk-17-jdk-headless"],
        // Compiled with the JDK, which then goes: the image has the JRE only.
        setup: r#"mkdir -p /opt/hello
printf 'public class Hello { public static void main(String[] a) { System.out.println("hello from java"); } }\n' > /opt/hello/Hello.java
javac -d /opt/hello /opt/hello/Hello.java
apt-get purge -y -qq openjdk-17-jdk-headless
"#,
    },
    Stage {
        name: "postgres",
        parent: None,
        packages: &["postgresql-15"],
        setup: r#"mkdir -p /var/lib/postgresql/hb && chown postgres:postgres /var/lib/postgresql/hb
setpriv --reuid=postgres --regid=postgres --init-groups /usr/lib/postgresql/15/bin/initdb -D /var/lib/postgresql/hb -A trust --no-sync >/dev/null
"#,
    },
    Stage {
        name: "nginx",
        parent: None,
        packages: &["nginx", "curl"],
        setup: r#"printf 'server {\n  listen 127.0.0.1:18080;\n  root /var/www/html;\n  index hello.html;\n}\n' > /etc/nginx/sites-enabled/default
echo 'hello from nginx' > /var/www/html/hello.html
"#,
    },
];

/// One workload: an image (a stage chain) and the command whose first output is timed.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Short name (selection, repository name, table row).
    pub name: &'static str,
    /// What it is, for the table.
    pub what: &'static str,
    /// The top stage; the image holds it and its parents down to the base.
    pub top: &'static str,
    /// One layer per stage (base first) rather than one layer of the merged tree.
    pub layered: bool,
    /// The command run in the image.
    pub cmd: &'static [&'static str],
    /// Whether it writes to its root filesystem (mode (d) then mounts `--writable`).
    pub writable: bool,
}

const PG: &str = "set -e; D=/var/lib/postgresql/hb; P=/usr/lib/postgresql/15/bin; \
U='setpriv --reuid=postgres --regid=postgres --init-groups'; \
$U $P/pg_ctl -D $D -o '-k /tmp -c listen_addresses=' -w -s -l /tmp/pg.log start >/dev/null; \
echo ready; $U $P/pg_ctl -D $D -m fast -w -s stop >/dev/null";

const NGINX: &str = "set -e; nginx; curl -sS http://127.0.0.1:18080/; nginx -s quit; \
while [ -e /run/nginx.pid ]; do sleep 0.05; done";

/// The workloads, in table order.
pub const WORKLOADS: &[Workload] = &[
    Workload {
        name: "python",
        what: "python3 `-c print`",
        top: "python3",
        layered: false,
        cmd: &["python3", "-c", "print(12345)"],
        writable: false,
    },
    Workload {
        name: "gcc",
        what: "gcc compiling and running hello.c",
        top: "gcc",
        layered: false,
        cmd: &[
            "sh",
            "-c",
            "cd /tmp && gcc -o hello /root/hello.c && ./hello",
        ],
        writable: true,
    },
    Workload {
        name: "node",
        what: "node `-e console.log`",
        top: "nodejs",
        layered: false,
        cmd: &["node", "-e", "console.log(12345)"],
        writable: false,
    },
    Workload {
        name: "java",
        what: "java (openjdk 17 JRE) Hello",
        top: "java",
        layered: false,
        cmd: &["java", "-cp", "/opt/hello", "Hello"],
        writable: true,
    },
    Workload {
        name: "postgres",
        what: "postgres 15: start, wait ready",
        top: "postgres",
        layered: false,
        cmd: &["sh", "-c", PG],
        writable: true,
    },
    Workload {
        name: "nginx",
        what: "nginx: start, first request (curl)",
        top: "nginx",
        layered: false,
        cmd: &["sh", "-c", NGINX],
        writable: true,
    },
    Workload {
        name: "multilayer",
        what: "3 layers: base / python3 / requests, `import requests`",
        top: "requests",
        layered: true,
        cmd: &[
            "python3",
            "-c",
            "import requests; print(requests.__version__)",
        ],
        writable: false,
    },
];

/// A workload's images.
#[derive(Debug, Clone)]
pub struct WorkloadImages {
    /// OCI layout with tags `plain` and `esgz` (stargaze's conversion).
    pub layout: PathBuf,
    /// OCI layout of the reference converter's output, tag `esgz`.
    pub reference: PathBuf,
}

fn cache() -> PathBuf {
    bench_cache_dir().join("hellobench")
}

/// What tar leaves out of every layer: apt's caches and package lists.
const EXCLUDES: &[&str] = &["--exclude=./var/cache/apt", "--exclude=./var/lib/apt/lists"];

/// The debootstrap base with apt's package lists fetched, built once.
fn base() -> PathBuf {
    let dir = cache();
    let base = dir.join("base");
    if dir.join("base.ready").is_file() {
        return base;
    }
    eprintln!("hellobench: debootstrap of debian bookworm (once, ~1 min)");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&dir).expect("cache dir");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&base)
        .arg("http://deb.debian.org/debian"));
    run(Command::new("chroot")
        .arg(&base)
        .args(["apt-get", "update", "-qq"]));
    std::fs::write(dir.join("base.ready"), b"").expect("marker");
    base
}

fn stage(name: &str) -> &'static Stage {
    STAGES
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

/// The stage's chain from the top down, without the base.
fn chain(top: &str) -> Vec<&'static Stage> {
    let mut out = vec![stage(top)];
    while let Some(p) = out.last().and_then(|s| s.parent) {
        out.push(stage(p));
    }
    out
}

fn upper(name: &str) -> PathBuf {
    cache().join("stages").join(name).join("upper")
}

/// `lowerdir=` for an overlay of `stages` (top first) on the base.
fn lowerdir(stages: &[&Stage], base: &Path) -> String {
    let mut parts: Vec<String> = stages
        .iter()
        .map(|s| upper(s.name).display().to_string())
        .collect();
    parts.push(base.display().to_string());
    parts.join(":")
}

/// Builds a stage (and its parents) once: apt-get install in a chroot of an overlay whose
/// upper dir becomes the stage.
fn build_stage(s: &Stage) {
    let dir = cache().join("stages").join(s.name);
    if dir.join("ready").is_file() {
        return;
    }
    if let Some(p) = s.parent {
        build_stage(stage(p));
    }
    let base = base();
    eprintln!(
        "hellobench: apt-get install {} (once)",
        s.packages.join(" ")
    );
    // Never remove through a mount an earlier, interrupted build left behind.
    crate::mounts::detach_under(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(dir.join(d)).expect("stage dir");
    }
    let merged = dir.join("merged");
    let lower = lowerdir(&chain(s.name)[1..], &base);
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={lower},upperdir={},workdir={}",
            dir.join("upper").display(),
            dir.join("work").display()
        ))
        .arg(&merged));
    let guard = crate::mounts::DetachOnDrop(merged.clone());
    run(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(merged.join("proc")));
    crate::mounts::container_dev(&merged.join("dev"));
    std::fs::write(merged.join("tmp/hb-setup.sh"), s.setup).expect("setup script");
    run(Command::new("chroot")
        .arg(&merged)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["apt-get", "install", "-y", "-qq", "--no-install-recommends"])
        .args(s.packages));
    run(Command::new("chroot")
        .arg(&merged)
        .args(["sh", "-e", "/tmp/hb-setup.sh"]));
    run(Command::new("chroot")
        .arg(&merged)
        .args(["apt-get", "clean"]));
    let _ = std::fs::remove_file(merged.join("tmp/hb-setup.sh"));
    drop(guard);
    std::fs::write(dir.join("ready"), s.parent.unwrap_or("base")).expect("marker");
}

/// Tars `dir` (a whole tree or an overlay upper) into `tar`; an upper's whiteouts (char
/// devices 0:0) and opaque directories become OCI `.wh.` entries.
fn tar_layer(dir: &Path, tar: &Path, work: &Path) {
    let mut whiteouts = Vec::new();
    let mut opaque = Vec::new();
    find_overlay_marks(dir, dir, &mut whiteouts, &mut opaque);
    let mut c = Command::new("tar");
    c.args([
        "--numeric-owner",
        "--xattrs",
        "--xattrs-exclude=trusted.overlay.*",
    ])
    .args(EXCLUDES);
    for w in &whiteouts {
        c.arg(format!("--exclude=./{w}"));
    }
    run(c.arg("-C").arg(dir).arg("-cf").arg(tar).arg("."));
    let marks: Vec<String> = whiteouts
        .iter()
        .map(|w| match w.rsplit_once('/') {
            Some((d, n)) => format!("{d}/.wh.{n}"),
            None => format!(".wh.{w}"),
        })
        .chain(opaque.iter().map(|d| format!("{d}/.wh..wh..opq")))
        .filter(|m| !m.starts_with("var/cache/apt") && !m.starts_with("var/lib/apt/lists"))
        .collect();
    if marks.is_empty() {
        return;
    }
    let mdir = work.join("marks");
    let _ = std::fs::remove_dir_all(&mdir);
    for m in &marks {
        let p = mdir.join(m);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("marks dir");
        std::fs::write(&p, b"").expect("mark");
    }
    run(Command::new("tar")
        .args([
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--no-recursion",
        ])
        .arg("-C")
        .arg(&mdir)
        .arg("-rf")
        .arg(tar)
        .args(marks.iter().map(|m| format!("./{m}"))));
    let _ = std::fs::remove_dir_all(&mdir);
}

fn find_overlay_marks(
    root: &Path,
    dir: &Path,
    whiteouts: &mut Vec<String>,
    opaque: &mut Vec<String>,
) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        if m.file_type().is_char_device() && m.rdev() == 0 {
            whiteouts.push(rel);
        } else if m.is_dir() {
            let xa = stargaze_fs::sys::lgetxattrs(&p).unwrap_or_default();
            if xa
                .iter()
                .any(|(k, v)| k == "trusted.overlay.opaque" && v.as_slice() == b"y")
            {
                opaque.push(rel);
            }
            find_overlay_marks(root, &p, whiteouts, opaque);
        }
    }
}

/// The workload's images, built once (debootstrap, apt, both conversions; the first call
/// takes minutes).
pub fn workload_images(w: &Workload) -> WorkloadImages {
    let dir = cache().join("images").join(w.name);
    let images = WorkloadImages {
        layout: dir.join("layout"),
        reference: dir.join("ref"),
    };
    if dir.join("ready").is_file() {
        return images;
    }
    let stages = chain(w.top);
    for s in stages.iter().rev() {
        build_stage(s);
    }
    let base = base();
    crate::mounts::detach_under(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("image dir");
    let mut tars = Vec::new();
    if w.layered {
        let t = dir.join("layer0.tar");
        tar_layer(&base, &t, &dir);
        tars.push(t);
        for (i, s) in stages.iter().rev().enumerate() {
            let t = dir.join(format!("layer{}.tar", i + 1));
            tar_layer(&upper(s.name), &t, &dir);
            tars.push(t);
        }
    } else {
        let merged = dir.join("merged");
        std::fs::create_dir_all(&merged).expect("merged");
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lowerdir(&stages, &base)))
            .arg(&merged));
        let guard = crate::mounts::DetachOnDrop(merged.clone());
        let t = dir.join("layer0.tar");
        tar_layer(&merged, &t, &dir);
        drop(guard);
        let _ = std::fs::remove_dir(&merged);
        tars.push(t);
    }
    eprintln!("hellobench: {}: writing the image", w.name);
    let l = stargaze_fs::image::OciLayout::open_or_create(&images.layout).expect("layout");
    stargaze_fs::image::write_image(
        &l,
        "plain",
        &tars
            .iter()
            .map(|t| stargaze_fs::image::LayerInput { tar: t.clone() })
            .collect::<Vec<_>>(),
        &stargaze_fs::image::ImageConfig {
            cmd: vec!["/bin/sh".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        },
    )
    .expect("image");
    for t in &tars {
        let _ = std::fs::remove_file(t);
    }
    eprintln!(
        "hellobench: {}: ctr-remote image convert --estargz --oci",
        w.name
    );
    // It exports into `dir/ref`, which is `images.reference`.
    crate::reference_convert_tag(&images.layout, "plain", &dir);
    eprintln!("hellobench: {}: stargaze convert", w.name);
    run(Command::new(stargaze_bin())
        .arg("convert")
        .arg(format!("oci:{}:plain", images.layout.display()))
        .arg(format!("oci:{}:esgz", images.layout.display())));
    std::fs::write(dir.join("ready"), b"").expect("marker");
    images
}
