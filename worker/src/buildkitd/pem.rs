//! The PEM files of a TLS setup (a certificate chain, its private key, a CA bundle), read for
//! the daemon's `--tlscert/--tlskey/--tlscacert` and the client's options of the same names:
//! bounded in size and checked to hold what they are named for, so a wrong or unreadable file
//! is an error naming the flag and the file before anything listens or connects (rather than
//! a generic TLS failure later).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use stargaze_fs::small_file::{read_small_file, SmallFileError};
use std::path::{Path, PathBuf};

/// Largest PEM file read (CA bundles of a system are a few hundred KiB).
const MAX_PEM: u64 = 4 << 20;

/// What a PEM file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// One or more certificates (a chain or a CA bundle).
    Certificates,
    /// A private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// Why a PEM file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// Unreadable, or larger than any such file should be.
    #[error("{flag} {error}")]
    Read {
        /// The flag or key that named it.
        flag: &'static str,
        /// Why (naming the file; in the message, not also a source).
        error: SmallFileError,
    },
    /// Not PEM, or no item of the kind wanted.
    #[error("{flag} {}: no PEM {} in it ({reason})", path.display(), kind_name(*.kind))]
    Content {
        /// The flag or key that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wanted.
        kind: PemKind,
        /// The parser's words.
        reason: String,
    },
}

fn kind_name(k: PemKind) -> &'static str {
    match k {
        PemKind::Certificates => "certificate",
        PemKind::PrivateKey => "private key",
    }
}

/// The bytes of the PEM file at `path` (named by `flag` in errors), checked to hold `kind`.
pub fn read(flag: &'static str, path: &Path, kind: PemKind) -> Result<Vec<u8>, PemError> {
    let bytes = read_small_file(path, MAX_PEM).map_err(|error| PemError::Read { flag, error })?;
    let checked = match kind {
        PemKind::Certificates => {
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
            match certs {
                Ok(c) if c.is_empty() => Err("none found".to_string()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        }
        PemKind::PrivateKey => PrivateKeyDer::from_pem_slice(&bytes)
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    checked.map_err(|reason| PemError::Content {
        flag,
        path: path.to_path_buf(),
        kind,
        reason,
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_missing_empty_and_wrong_files_naming_flag_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = read("--tlskey", &missing, PemKind::PrivateKey).unwrap_err();
        assert!(matches!(e, PemError::Read { .. }), "{e}");
        assert!(e.to_string().starts_with("--tlskey "), "{e}");
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"not a pem file\n").unwrap();
        for kind in [PemKind::Certificates, PemKind::PrivateKey] {
            let e = read("--tlscert", &junk, kind).unwrap_err();
            assert!(matches!(e, PemError::Content { .. }), "{e}");
            assert!(e.to_string().contains("junk.pem"), "{e}");
        }

        // A certificate block is not a key, and a directory is not a file.
        let cert_only = dir.path().join("cert.pem");
        std::fs::write(
            &cert_only,
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read("--tlscert", &cert_only, PemKind::Certificates).is_ok());
        let e = read("--tlskey", &cert_only, PemKind::PrivateKey).unwrap_err();
        assert!(e.to_string().contains("no PEM private key"), "{e}");
        assert!(read("--tlscacert", dir.path(), PemKind::Certificates).is_err());
    }
}
