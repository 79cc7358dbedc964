//! Reading a small configuration file (docker's `config.json`, an htpasswd file) whole, with
//! a size limit that holds even if the file grows while it is read, and one error type that
//! names the file.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a small file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SmallFileError {
    /// Opening or reading failed.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than the limit.
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
}

/// The bytes of `path`, refused when there are more than `max`.
pub fn read_small_file(path: &Path, max: u64) -> Result<Vec<u8>, SmallFileError> {
    let read = |source| SmallFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read)?;
    let mut data = Vec::new();
    f.take(max + 1).read_to_end(&mut data).map_err(read)?;
    if data.len() as u64 > max {
        return Err(SmallFileError::TooLarge {
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_inclusive_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_small_file(&p, 5).unwrap(), b"12345");
        assert!(matches!(
            read_small_file(&p, 4),
            Err(SmallFileError::TooLarge { max: 4, .. })
        ));
        let e = read_small_file(&dir.path().join("none"), 5).unwrap_err();
        assert!(e.to_string().contains("none"), "{e}");
    }
}
