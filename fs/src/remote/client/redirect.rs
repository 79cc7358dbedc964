//! Which redirects the client follows, decided apart from sending so the rules can be tested
//! without a server: `https` anywhere; plain `http` only to a host configured insecure (or
//! loopback, see [`HostsConfig::is_insecure`]) or to the same plain-HTTP host and port;
//! nothing else. Credentials travel only while host and port stay those of the registry,
//! and a 303 turns the request into a GET. The loop that sends and counts redirects is
//! `RegistryClient::send_following` in `fs/src/remote/client.rs`.

use crate::remote::error::RemoteError;
use crate::remote::hosts::HostsConfig;
use reqwest::Url;

/// Where a redirect leads and what goes along.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Step {
    /// The next URL.
    pub url: Url,
    /// Whether the `Authorization` header may be sent there (same host and port).
    pub keep_credentials: bool,
    /// Whether the next request is a GET whatever the method was (303 See Other).
    pub as_get: bool,
}

/// Whether a status is a redirect to follow (304 Not Modified is an answer).
pub(super) fn is_redirect(status: u16) -> bool {
    (300..400).contains(&status) && status != 304
}

/// `host:port` with the scheme's default port filled in.
fn host_port(u: &Url) -> (&str, u16) {
    (
        u.host_str().unwrap_or(""),
        u.port_or_known_default().unwrap_or(0),
    )
}

/// The step a redirect answer with `status` and `location` leads to from `current`.
pub(super) fn next_step(
    hosts: &HostsConfig,
    current: &Url,
    status: u16,
    location: Option<&str>,
) -> Result<Step, RemoteError> {
    let loc = location.ok_or_else(|| {
        RemoteError::protocol(current.as_str(), format!("HTTP {status} without Location"))
    })?;
    let next = current.join(loc).map_err(|_| {
        RemoteError::protocol(current.as_str(), format!("bad redirect Location {loc:?}"))
    })?;
    let same_host = host_port(&next) == host_port(current);
    match next.scheme() {
        "https" => {}
        "http" => {
            let host = next.host_str().unwrap_or("");
            let hp = match next.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            };
            let ok = hosts.is_insecure(&hp)
                || hosts.is_insecure(host)
                || (current.scheme() == "http" && same_host);
            if !ok {
                return Err(RemoteError::protocol(
                    current.as_str(),
                    format!("refusing redirect to plain-HTTP host {hp}"),
                ));
            }
        }
        s => {
            return Err(RemoteError::protocol(
                current.as_str(),
                format!("refusing redirect to {s}:// URL"),
            ))
        }
    }
    Ok(Step {
        url: next,
        keep_credentials: same_host,
        as_get: status == 303,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn step(hosts: &HostsConfig, from: &str, status: u16, to: &str) -> Result<Step, String> {
        next_step(hosts, &url(from), status, Some(to)).map_err(|e| e.to_string())
    }

    #[test]
    fn statuses_that_redirect() {
        for s in [301, 302, 303, 307, 308] {
            assert!(is_redirect(s), "{s}");
        }
        for s in [200, 206, 304, 401, 404, 500] {
            assert!(!is_redirect(s), "{s}");
        }
    }

    #[test]
    fn https_anywhere_credentials_only_to_the_same_host_and_port() {
        let h = HostsConfig::default();
        let s = step(
            &h,
            "https://reg.example/v2/x",
            307,
            "https://cdn.example/blob",
        )
        .unwrap();
        assert_eq!(s.url.as_str(), "https://cdn.example/blob");
        assert!(!s.keep_credentials, "another host gets no credentials");
        // A relative Location stays on the host; the default port is the same port.
        let s = step(&h, "https://reg.example/v2/x", 302, "/v2/y").unwrap();
        assert_eq!(s.url.as_str(), "https://reg.example/v2/y");
        assert!(s.keep_credentials);
        let s = step(
            &h,
            "https://reg.example/v2/x",
            302,
            "https://reg.example:443/z",
        )
        .unwrap();
        assert!(s.keep_credentials, "443 is https' own port");
        let s = step(
            &h,
            "https://reg.example/v2/x",
            302,
            "https://reg.example:8443/z",
        )
        .unwrap();
        assert!(!s.keep_credentials, "another port is another host");
    }

    #[test]
    fn plain_http_only_where_allowed() {
        let mut h = HostsConfig::default();
        // From https to a plain-HTTP host nobody configured: refused (a downgrade).
        let e = step(&h, "https://reg.example/v2/x", 307, "http://cdn.example/b").unwrap_err();
        assert!(
            e.contains("refusing redirect to plain-HTTP host cdn.example"),
            "{e}"
        );
        // Loopback is insecure by default; a configured host (with or without port) too.
        assert!(step(&h, "https://reg.example/", 307, "http://127.0.0.1:5000/b").is_ok());
        h.set_insecure("cdn.example");
        assert!(step(&h, "https://reg.example/", 307, "http://cdn.example:81/b").is_ok());
        h.set_insecure("other.example:8080");
        assert!(step(
            &h,
            "https://reg.example/",
            307,
            "http://other.example:8080/b"
        )
        .is_ok());
        assert!(step(
            &h,
            "https://reg.example/",
            307,
            "http://other.example:9090/b"
        )
        .is_err());
        // Staying on the same plain-HTTP host and port is no downgrade.
        let h = HostsConfig::default();
        let s = step(&h, "http://reg.example:5000/v2/", 301, "/v2/z").unwrap();
        assert!(s.keep_credentials);
        assert!(step(
            &h,
            "http://reg.example:5000/",
            301,
            "http://reg.example:5001/"
        )
        .is_err());
    }

    #[test]
    fn other_schemes_and_broken_locations_are_refused() {
        let h = HostsConfig::default();
        let e = step(&h, "https://reg.example/", 302, "ftp://reg.example/b").unwrap_err();
        assert!(e.contains("refusing redirect to ftp:// URL"), "{e}");
        let e = step(&h, "https://reg.example/", 302, "file:///etc/passwd").unwrap_err();
        assert!(e.contains("refusing redirect to file://"), "{e}");
        let e = step(&h, "https://reg.example/", 302, "http://[::1").unwrap_err();
        assert!(e.contains("bad redirect Location"), "{e}");
        let e = next_step(&h, &url("https://reg.example/"), 307, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("HTTP 307 without Location"), "{e}");
    }

    #[test]
    fn see_other_turns_into_a_get() {
        let h = HostsConfig::default();
        assert!(
            step(&h, "https://reg.example/", 303, "/done")
                .unwrap()
                .as_get
        );
        for s in [301, 302, 307, 308] {
            assert!(!step(&h, "https://reg.example/", s, "/next").unwrap().as_get);
        }
    }
}
