//! Exports sent to the client by `stargaze buildkitd` (started as BuildKit's sandbox starts
//! buildkitd), driven by `stargaze_worker::buildkitd::client` as buildctl v0.11 runs
//! `build --output type=…,dest=…`: one image built from a local base (busybox, served by
//! the built-in registry) with a file of mode 0750 and a symlink, exported as `oci` (an OCI
//! layout tar: index.json → manifest → a layer with the built files), `docker` (the layout
//! with manifest.json whose RepoTags are name=), `tar` (the rootfs as a tar) and `local`
//! (the rootfs written into a directory, modes kept); an unknown attribute is
//! InvalidArgument, a session that does not serve FileSend gets FailedPrecondition before
//! the build, and the daemon keeps serving. Needs root, runc, umoci and busybox-static.

use flate2::read::GzDecoder;
use stargaze_fs::format::tar::{TarKind, TarReader};
use stargaze_suite::buildkit_client::{
    assert_serving, build_prerequisites, build_quietly, busybox_registry, client_runtime, walk,
    Buildkitd,
};
use stargaze_worker::buildkitd::client::build::BuildOptions;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tonic::Code;

/// A tar's entries: path (without `./` and trailing `/`) → (kind, mode, link, data).
type Entries = BTreeMap<String, (TarKind, u32, String, Vec<u8>)>;

fn entries(r: impl Read) -> Entries {
    let mut t = TarReader::new(r);
    let mut out = BTreeMap::new();
    while let Some(e) = t.next_entry().unwrap() {
        let mut data = vec![0u8; e.size as usize];
        t.read_data_exact(&mut data).unwrap();
        let p = e
            .path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        out.insert(p, (e.kind, e.mode, e.link_name.clone(), data));
    }
    out
}

fn json(e: &Entries, path: &str) -> serde_json::Value {
    let (_, _, _, d) = e
        .get(path)
        .unwrap_or_else(|| panic!("{path} in {:?}", e.keys()));
    serde_json::from_slice(d).unwrap()
}

fn blob<'a>(e: &'a Entries, digest: &serde_json::Value) -> &'a [u8] {
    let d = digest.as_str().unwrap().replace(':', "/");
    &e.get(&format!("blobs/{d}"))
        .unwrap_or_else(|| panic!("blob {d}"))
        .3
}

/// The built files of the image in an OCI layout tar: the top layer's entries.
fn top_layer(e: &Entries) -> Entries {
    let index = json(e, "index.json");
    let m: serde_json::Value =
        serde_json::from_slice(blob(e, &index["manifests"][0]["digest"])).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert!(layers.len() >= 2, "{m}");
    let top = blob(e, &layers[layers.len() - 1]["digest"]);
    entries(GzDecoder::new(top))
}

#[test]
fn oci_docker_tar_and_local_exports_reach_the_client() {
    if !build_prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = busybox_registry(work.path());
    let mut d = Buildkitd::start(&["--oci-worker-snapshotter=native"]);
    let addr = d.addr();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(ctx.join("app")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/base/bb:v1\nCOPY app/ /app/\nRUN chmod 0750 /app/run.sh && echo built > /app/built.txt && ln -s run.sh /app/link\n",
            reg.addr()
        ),
    )
    .unwrap();
    std::fs::write(ctx.join("app/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    client_runtime().block_on(async {
        let with = |spec: &str| {
            let mut o = BuildOptions::dockerfile(&ctx);
            o.set_output(spec).unwrap();
            o
        };

        // oci: an OCI layout tar whose top layer has the built files.
        let tar = out.join("oci.tar");
        let o = build_quietly(&addr, &with(&format!("type=oci,dest={}", tar.display()))).await;
        let resp = o.result.expect("oci export");
        assert!(
            matches!(o.exported, Some(Ok(n)) if n > 0),
            "{:?}",
            o.exported
        );
        let e = entries(std::fs::File::open(&tar).unwrap());
        assert!(e.contains_key("oci-layout"), "{:?}", e.keys());
        let index = json(&e, "index.json");
        assert_eq!(
            resp.exporter_response.get("containerimage.digest"),
            index["manifests"][0]["digest"]
                .as_str()
                .map(String::from)
                .as_ref()
        );
        let top = top_layer(&e);
        assert_eq!(top["app/built.txt"].3, b"built\n");
        assert_eq!(top["app/run.sh"].1 & 0o7777, 0o750);
        assert_eq!(top["app/link"].2, "run.sh");
        assert!(!e.contains_key("manifest.json"));

        // docker: the same with manifest.json naming the image.
        let tar = out.join("docker.tar");
        let o = build_quietly(
            &addr,
            &with(&format!("type=docker,name=app:v1,dest={}", tar.display())),
        )
        .await;
        o.result.expect("docker export");
        let e = entries(std::fs::File::open(&tar).unwrap());
        let m = json(&e, "manifest.json");
        assert_eq!(m[0]["RepoTags"], serde_json::json!(["app:v1"]), "{m}");
        let config = m[0]["Config"].as_str().unwrap();
        assert!(e.contains_key(config), "{config}");
        let layers = m[0]["Layers"].as_array().unwrap();
        let top = entries(GzDecoder::new(
            &e[layers.last().unwrap().as_str().unwrap()].3[..],
        ));
        assert_eq!(top["app/built.txt"].3, b"built\n");

        // tar: the rootfs.
        let tar = out.join("fs.tar");
        let o = build_quietly(&addr, &with(&format!("type=tar,dest={}", tar.display()))).await;
        o.result.expect("tar export");
        let e = entries(std::fs::File::open(&tar).unwrap());
        assert_eq!(e["app/built.txt"].3, b"built\n");
        assert_eq!(e["app/run.sh"].1 & 0o7777, 0o750);
        assert_eq!(e["app/link"].0, TarKind::Symlink);
        assert!(e.contains_key("bin/busybox"), "{:?}", e.keys());

        // local: the rootfs in a directory.
        let dir = out.join("local");
        let o = build_quietly(&addr, &with(&format!("type=local,dest={}", dir.display()))).await;
        o.result.expect("local export");
        assert!(
            matches!(o.exported, Some(Ok(n)) if n >= 3),
            "{:?}",
            o.exported
        );
        assert_eq!(
            std::fs::read(dir.join("app/built.txt")).unwrap(),
            b"built\n"
        );
        let mode = std::fs::metadata(dir.join("app/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
        assert_eq!(
            std::fs::read_link(dir.join("app/link")).unwrap(),
            Path::new("run.sh")
        );
        assert!(dir.join("bin/busybox").is_file());

        // An unknown attribute, before the build.
        for spec in [
            format!("type=oci,frobnicate=1,dest={}", out.join("x.tar").display()),
            format!("type=local,name=x,dest={}", out.join("x").display()),
        ] {
            let o = build_quietly(&addr, &with(&spec)).await;
            let e = o.result.expect_err("refused");
            assert_eq!(e.code(), Code::InvalidArgument, "{spec}: {e:?}");
            assert_serving(&addr).await;
        }
        assert!(!out.join("x.tar").exists());

        // A session that cannot receive: refused before the build.
        let mut o = BuildOptions::dockerfile(&ctx);
        o.exporter = "tar".into();
        let got = build_quietly(&addr, &o).await;
        let e = got.result.expect_err("no FileSend");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("FileSend"), "{e:?}");
        assert!(got.exported.is_none());
        assert_serving(&addr).await;
    });
    // No scratch layout or mount left behind.
    let left: Vec<_> = walk(&d.root)
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("export-") || n.starts_with("mnt-") || n.starts_with("view-")
            })
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(d.alive(), "{}", d.log());
    d.terminate();
}
