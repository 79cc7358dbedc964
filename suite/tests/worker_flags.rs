//! `stargaze worker info` end to end: buildkitd's flags over the config file's `[worker.oci]`
//! (a given flag wins, an absent one leaves the file's value), `--oci-cni-config-path` really
//! sets the CNI config (the reference reads a misspelt flag and erases it), a persisted worker
//! ID, and clear errors for bad flags.

use stargaze_suite::{is_root, require, stargaze_bin};
use std::process::Command;

fn info(root: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(stargaze_bin())
        .args(["worker", "info", "--root"])
        .arg(root)
        .args(args)
        .env_remove("STARGAZE_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

#[test]
fn flags_override_the_file_and_cni_config_path_is_read() {
    // `auto` probes a real overlay mount in the root.
    if !(require(is_root(), "root") && require(stargaze_bin().is_file(), "the stargaze binary")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let cfg = tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        "[worker.oci]\nsnapshotter = \"native\"\nmax-parallelism = 3\n[worker.oci.labels]\nteam = \"file\"\n",
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let (ok, text) = info(&root, &["--config", cfg_arg]);
    assert!(ok, "{text}");
    assert!(line(&text, "snapshotter:").starts_with("native"), "{text}");
    assert_eq!(line(&text, "parallelism:"), "3");
    assert!(text.contains("  team=file"), "{text}");
    let id = line(&text, "ID:").to_string();
    // A given flag wins; labels merge; the ID stays for the same snapshotter.
    let (ok, text) = info(
        &root,
        &[
            "--config",
            cfg_arg,
            "--oci-worker-snapshotter",
            "overlayfs",
            "--oci-worker-labels",
            "team=flag",
        ],
    );
    assert!(ok, "{text}");
    assert!(
        line(&text, "snapshotter:").starts_with("overlayfs"),
        "{text}"
    );
    assert!(text.contains("  team=flag"), "{text}");
    assert_eq!(
        line(&text, "parallelism:"),
        "3",
        "an absent flag leaves the file's value"
    );
    let (_, again) = info(&root, &["--config", cfg_arg]);
    assert_eq!(line(&again, "ID:"), id);
    // --oci-cni-config-path lands: with network auto, an existing CNI config selects cni.
    let cni = tmp.path().join("cni.json");
    std::fs::write(&cni, "{}").unwrap();
    let (ok, text) = info(&root, &["--oci-cni-config-path", cni.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(line(&text, "network:"), "cni", "{text}");
    assert!(
        line(&text, "cni:").contains(cni.to_str().unwrap()),
        "{text}"
    );
    // Bad flags are errors naming the problem.
    for (args, word) in [
        (
            vec!["--oci-worker-snapshotter", "zfs"],
            "unknown snapshotter name",
        ),
        (vec!["--oci-worker-labels", "novalue"], "key=value"),
        (vec!["--oci-worker-platform", "linux/"], "invalid platform"),
        (vec!["--oci-worker-no-process-sandbox"], "rootless"),
        (vec!["--oci-worker-net", "bridge2"], "network mode"),
        (
            vec!["--oci-worker-proxy-snapshotter-path", "/no/such.sock"],
            "no such socket",
        ),
        (vec!["--oci-worker", "maybe"], "true, false or auto"),
    ] {
        let (ok, text) = info(&root, &args);
        assert!(!ok && text.contains(word), "{args:?}: {text}");
    }
}
