//! `/etc/resolv.conf` and `/etc/hosts` for build steps, made once per worker in its executor
//! directory and bound read-only into every step. Like BuildKit: nameservers on localhost
//! are dropped unless the step shares the host's network (a loopback resolver is not
//! reachable from another network namespace), with public resolvers as the fallback.

use std::path::{Path, PathBuf};

/// Hostname of build steps.
pub const HOSTNAME: &str = "buildkitsandbox";

/// Resolvers used when the host has none a step can reach.
const FALLBACK: [&str; 2] = ["8.8.8.8", "8.8.4.4"];

/// The resolv.conf text for a step, from the host's.
pub fn resolv_conf(host: &str, host_network: bool) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let t = line.trim();
        if let Some(ns) = t.strip_prefix("nameserver") {
            let ns = ns.trim();
            let local = ns.starts_with("127.") || ns == "::1";
            if local && !host_network {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        for s in FALLBACK {
            out.push_str(&format!("nameserver {s}\n"));
        }
    }
    out
}

/// The hosts file of steps.
pub fn hosts(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

/// Writes (once) the shared resolv.conf and hosts under `dir`; returns their paths.
pub fn ensure(dir: &Path, host_network: bool) -> std::io::Result<(PathBuf, PathBuf)> {
    let name = if host_network {
        "resolv.conf.host"
    } else {
        "resolv.conf"
    };
    let resolv = dir.join(name);
    let hosts_file = dir.join("hosts");
    if !resolv.exists() {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        write_atomic(&resolv, resolv_conf(&host, host_network).as_bytes())?;
    }
    if !hosts_file.exists() {
        write_atomic(&hosts_file, hosts(HOSTNAME).as_bytes())?;
    }
    Ok((resolv, hosts_file))
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, data)?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_dropped_outside_the_host_network() {
        let host = "search lan\nnameserver 127.0.0.53\nnameserver 10.0.0.1\n";
        let r = resolv_conf(host, false);
        assert!(!r.contains("127.0.0.53") && r.contains("10.0.0.1") && r.contains("search lan"));
        assert!(resolv_conf(host, true).contains("127.0.0.53"));
        let only_local = resolv_conf("nameserver 127.0.0.1\n", false);
        assert!(only_local.contains("8.8.8.8"));
        assert!(hosts("h").contains("localhost h"));
    }
}
