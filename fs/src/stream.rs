//! Async byte streams over part of a file, shared by the built-in registry (serving blobs)
//! and the registry client (uploading them): fixed-size reads, and an error rather than a
//! short stream when the file is shorter than promised.

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::AsyncReadExt;

/// Size of each read.
const CHUNK: usize = 1 << 20;

/// Streams `len` bytes of `file` from its current position.
pub fn file_chunks(
    file: tokio::fs::File,
    len: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; left.min(CHUNK as u64) as usize];
        match file.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file is shorter than the length being sent",
                )),
                (file, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    })
}
