//! A busybox root filesystem made from the host's static busybox: the binary, a symlink per
//! applet, `/etc/passwd` and `/etc/group` with root and one user — the smallest rootfs a
//! build step can run `sh -c` in. Tests of the executor and of builds start from it.

use std::path::{Path, PathBuf};

/// The host's static busybox.
pub const BUSYBOX: &str = "/bin/busybox";

/// Fills `root` with busybox, its applets and the user database.
pub fn make_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let list = crate::run(std::process::Command::new(BUSYBOX).arg("--list"));
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    for d in ["etc", "tmp", "root", "home/app"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    if crate::is_root() {
        std::os::unix::fs::lchown(root.join("home/app"), Some(1000), Some(1000)).unwrap();
    }
}

/// Writes the busybox rootfs as an OCI image tagged `tag` into the layout at `layout`
/// (one gzip layer, `Cmd` `sh`); returns the layer tar's path.
pub fn write_image(layout: &Path, tag: &str, work: &Path) -> PathBuf {
    write_image_with(layout, tag, work, &[])
}

/// Like [`write_image`], with more layer tars on top.
pub fn write_image_with(layout: &Path, tag: &str, work: &Path, extra: &[PathBuf]) -> PathBuf {
    let root = work.join("busybox-rootfs");
    if !root.exists() {
        make_rootfs(&root);
    }
    let tar = work.join("busybox.tar");
    crate::run(
        std::process::Command::new("tar")
            .arg("--numeric-owner")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    let l = stargaze_fs::image::OciLayout::open_or_create(layout).unwrap();
    stargaze_fs::image::write_image(
        &l,
        tag,
        &std::iter::once(tar.clone())
            .chain(extra.iter().cloned())
            .map(|tar| stargaze_fs::image::LayerInput { tar })
            .collect::<Vec<_>>(),
        &stargaze_fs::image::ImageConfig {
            cmd: vec!["sh".into()],
            env: vec![format!(
                "PATH={}",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            )],
        },
    )
    .unwrap();
    tar
}
