//! buildkitd's listen addresses and default locations. `--addr` takes `unix://PATH` and
//! `tcp://HOST:PORT`, the latter only with all three TLS files (served with mutual TLS; an
//! empty host listens on every interface, as Go's `:PORT` does); an address without a scheme
//! is refused with the `unix://` spelling suggested, as buildkitd does. The defaults
//! follow buildkitd: `/run/buildkit/buildkitd.sock`, `/var/lib/buildkit` and
//! `/etc/buildkit/buildkitd.toml` as root; in a user namespace (rootlesskit) or as another
//! user, `$XDG_RUNTIME_DIR/buildkit/buildkitd.sock`, `$XDG_DATA_HOME/buildkit` (else
//! `~/.local/share/buildkit`) and `$XDG_CONFIG_HOME/buildkit/buildkitd.toml` (else
//! `~/.config/buildkit/buildkitd.toml`).

pub use crate::config::TlsFiles;
use std::path::{Path, PathBuf};

/// The default address as root.
pub const DEFAULT_ADDRESS: &str = "unix:///run/buildkit/buildkitd.sock";
/// The default root as root.
pub const DEFAULT_ROOT: &str = "/var/lib/buildkit";
/// The default config file as root.
pub const DEFAULT_CONFIG: &str = "/etc/buildkit/buildkitd.toml";

/// Why an address was refused.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// No `scheme://`.
    #[error("--addr {0}: address does not contain a protocol; you meant unix://{0}?")]
    NoScheme(String),
    /// A scheme other than unix and tcp.
    #[error("--addr {0}: not supported (unix:// or tcp://)")]
    Unsupported(String),
    /// `unix://` with an empty or relative path.
    #[error("--addr {0}: a unix socket address needs an absolute path")]
    RelativePath(String),
    /// `tcp://` without the TLS files.
    #[error("--addr {0}: tcp addresses need --tlscert, --tlskey and --tlscacert (mutual TLS); use a unix:// address")]
    TcpWithoutTls(String),
    /// `tcp://` not followed by `HOST:PORT`.
    #[error("--addr {0}: a tcp address is tcp://HOST:PORT (a port number, no path)")]
    BadTcp(String),
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket.
    Unix(PathBuf),
    /// `HOST:PORT` on TCP, served with mutual TLS.
    Tcp(String),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix://{}", p.display()),
            Listen::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// `HOST:PORT` of a tcp address (`[V6]:PORT` too), an empty host as `0.0.0.0`.
fn tcp_host_port(addr: &str, rest: &str) -> Result<String, AddressError> {
    let bad = || AddressError::BadTcp(addr.to_string());
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if port.parse::<u16>().is_err() || host.contains('/') {
        return Err(bad());
    }
    let v6 = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !v6 {
        return Err(bad());
    }
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok(format!("{host}:{port}"))
}

/// Where `addr` listens (`tls`: the TLS files given, which a tcp address needs).
pub fn parse(addr: &str, tls: &TlsFiles) -> Result<Listen, AddressError> {
    let Some((scheme, rest)) = addr.split_once("://") else {
        return Err(AddressError::NoScheme(addr.to_string()));
    };
    match scheme {
        "unix" => {
            let p = Path::new(rest);
            if !p.is_absolute() {
                return Err(AddressError::RelativePath(addr.to_string()));
            }
            Ok(Listen::Unix(p.to_path_buf()))
        }
        "tcp" if tls.complete() => Ok(Listen::Tcp(tcp_host_port(addr, rest)?)),
        "tcp" => Err(AddressError::TcpWithoutTls(addr.to_string())),
        _ => Err(AddressError::Unsupported(addr.to_string())),
    }
}

/// Whether this process runs in a user namespace (not the initial one), as under rootlesskit.
pub fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| {
            let f: Vec<&str> = m.split_whitespace().collect();
            f != ["0", "0", "4294967295"]
        })
        .unwrap_or(false)
}

/// Whether the rootless defaults apply: in a user namespace, or not root.
pub fn rootless_defaults() -> bool {
    // SAFETY: geteuid has no preconditions.
    in_user_namespace() || unsafe { libc::geteuid() } != 0
}

/// The first entry of a `:`-separated XDG variable, if set and not empty.
fn xdg(var: &str) -> Option<PathBuf> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.split(':').next().map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
}

fn home(rest: &[&str]) -> Option<PathBuf> {
    xdg("HOME").map(|h| rest.iter().fold(h, |p, r| p.join(r)))
}

/// The default address.
pub fn default_address(rootless: bool) -> String {
    match xdg("XDG_RUNTIME_DIR").filter(|_| rootless) {
        Some(d) => format!("unix://{}", d.join("buildkit/buildkitd.sock").display()),
        None => DEFAULT_ADDRESS.to_string(),
    }
}

/// The default root.
pub fn default_root(rootless: bool) -> PathBuf {
    if !rootless {
        return PathBuf::from(DEFAULT_ROOT);
    }
    xdg("XDG_DATA_HOME")
        .map(|d| d.join("buildkit"))
        .or_else(|| home(&[".local", "share", "buildkit"]))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// The default config file.
pub fn default_config(rootless: bool) -> PathBuf {
    if !rootless {
        return PathBuf::from(DEFAULT_CONFIG);
    }
    xdg("XDG_CONFIG_HOME")
        .map(|d| d.join("buildkit"))
        .or_else(|| home(&[".config", "buildkit"]))
        .map(|d| d.join("buildkitd.toml"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let none = TlsFiles::default();
        assert_eq!(
            parse("unix:///run/x.sock", &none).unwrap(),
            Listen::Unix(PathBuf::from("/run/x.sock"))
        );
        assert!(matches!(
            parse("/run/x.sock", &none),
            Err(AddressError::NoScheme(_))
        ));
        assert!(matches!(
            parse("unix://x.sock", &none),
            Err(AddressError::RelativePath(_))
        ));
        assert!(matches!(
            parse("tcp://127.0.0.1:1234", &none),
            Err(AddressError::TcpWithoutTls(_))
        ));
        let all = TlsFiles {
            cert: Some("c".into()),
            key: Some("k".into()),
            ca: Some("a".into()),
        };
        assert_eq!(
            parse("tcp://127.0.0.1:1234", &all).unwrap(),
            Listen::Tcp("127.0.0.1:1234".into())
        );
        assert_eq!(
            parse("tcp://:1234", &all).unwrap(),
            Listen::Tcp("0.0.0.0:1234".into())
        );
        assert_eq!(
            parse("tcp://[::1]:1234", &all).unwrap().to_string(),
            "tcp://[::1]:1234"
        );
        for bad in [
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:http",
            "tcp://127.0.0.1:70000",
            "tcp://127.0.0.1:1234/x",
            "tcp://::1:1234",
        ] {
            assert!(
                matches!(parse(bad, &all), Err(AddressError::BadTcp(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("npipe:////./pipe/x", &none),
            Err(AddressError::Unsupported(_))
        ));
        assert_eq!(default_address(false), DEFAULT_ADDRESS);
        assert_eq!(default_root(false), PathBuf::from(DEFAULT_ROOT));
    }
}
