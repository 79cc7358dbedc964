//! `--output type=…,dest=…` on the client, as buildctl v0.11 handles it: `dest` never goes
//! to the daemon; for `oci`, `docker` and `tar` it is the file the tarball is written into
//! (`-` or none: standard output), for `local` the directory the result's files are written
//! into. The session then
//! serves `moby.filesync.v1.FileSend/DiffCopy`: [`TarballSink`] takes the daemon's
//! `BytesMessage`s, [`DirSink`] plays fsutil's receiver (`session::filesync`'s, which
//! refuses absolute paths, `..`, entries under anything not listed as a directory before
//! them, and never writes through a symlink), so what the daemon sends cannot land outside
//! the directory. Each records how its transfer ended for the build's outcome.

use crate::buildkitd::proto::filesend_packets::file_send_server::FileSend as PacketFileSend;
use crate::buildkitd::proto::filesync::file_send_server::FileSend;
use crate::buildkitd::proto::filesync::BytesMessage;
use crate::buildkitd::proto::fsutil::types::{packet::PacketType, Packet};
use crate::buildkitd::session::filesync::{check_target, receive_packets, ReceiveLimits};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Where an export is written on the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A tarball into this file (created or truncated).
    File(PathBuf),
    /// A tarball to standard output.
    Stdout,
    /// The files into this directory (created if absent; must be empty).
    Dir(PathBuf),
}

/// Why an `--output` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    /// Not `key=value` pairs separated by commas.
    #[error("--output {0:?}: expected type=NAME[,key=value…]")]
    Syntax(String),
    /// No `type=`.
    #[error("--output {0:?}: type= is required")]
    NoType(String),
    /// `local` without `dest=`.
    #[error("output directory is required for the {0} exporter (dest=DIR)")]
    NoDir(String),
    /// `dest=` for an exporter that sends nothing to the client.
    #[error("output {dest} is not supported by the {exporter} exporter")]
    NotSupported {
        /// The exporter.
        exporter: String,
        /// The destination given.
        dest: String,
    },
    /// The destination file is a directory.
    #[error("destination {0} is a directory")]
    IsDir(String),
}

/// An `--output` parsed: the exporter, its attributes for the daemon, where it lands here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// The exporter.
    pub exporter: String,
    /// Its attributes (without `dest`).
    pub attrs: HashMap<String, String>,
    /// Where it is written on the client (none: nothing comes back).
    pub output: Option<Output>,
}

/// Parses `type=oci,dest=out.tar,name=…` as buildctl does.
pub fn parse_output(s: &str) -> Result<OutputSpec, OutputError> {
    let mut attrs = HashMap::new();
    for kv in s.split(',').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| OutputError::Syntax(s.into()))?;
        attrs.insert(k.trim().to_lowercase(), v.to_string());
    }
    let exporter = attrs
        .remove("type")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OutputError::NoType(s.into()))?;
    let dest = attrs.remove("dest");
    let output = match (exporter.as_str(), dest) {
        ("local", Some(d)) if !d.is_empty() => Some(Output::Dir(d.into())),
        ("local", _) => return Err(OutputError::NoDir(exporter)),
        ("oci" | "docker" | "tar", None) => Some(Output::Stdout),
        ("oci" | "docker" | "tar", Some(d)) if d.is_empty() || d == "-" => Some(Output::Stdout),
        ("oci" | "docker" | "tar", Some(d)) => {
            if std::path::Path::new(&d).is_dir() {
                return Err(OutputError::IsDir(d));
            }
            Some(Output::File(d.into()))
        }
        (_, Some(d)) => return Err(OutputError::NotSupported { exporter, dest: d }),
        (_, None) => None,
    };
    Ok(OutputSpec {
        exporter,
        attrs,
        output,
    })
}

/// How a transfer to the client ended: the bytes (tarball) or files (directory) written,
/// or why it failed here.
pub type Received = Arc<Mutex<Option<Result<u64, String>>>>;

fn record(r: &Received, v: Result<u64, String>) {
    if let Ok(mut g) = r.lock() {
        *g = Some(v);
    }
}

type Bytes = Pin<Box<dyn Stream<Item = Result<BytesMessage, Status>> + Send + 'static>>;
type Packets = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send + 'static>>;

/// Receives a tarball into a file or stdout.
#[derive(Debug, Clone)]
pub struct TarballSink {
    /// Where it goes ([`Output::File`] or [`Output::Stdout`]).
    pub dest: Output,
    /// How it ended.
    pub received: Received,
    /// The `exporter-md-*` metadata the daemon sent.
    pub metadata: Arc<Mutex<HashMap<String, String>>>,
}

impl TarballSink {
    /// A sink writing to `dest`.
    pub fn new(dest: Output) -> Self {
        TarballSink {
            dest,
            received: Received::default(),
            metadata: Arc::default(),
        }
    }
}

#[tonic::async_trait]
impl FileSend for TarballSink {
    type DiffCopyStream = Bytes;

    async fn diff_copy(
        &self,
        req: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        if let Ok(mut md) = self.metadata.lock() {
            for kv in req.metadata().iter() {
                if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                    if let (Some(k), Ok(v)) = (k.as_str().strip_prefix("exporter-md-"), v.to_str())
                    {
                        md.insert(k.to_string(), v.to_string());
                    }
                }
            }
        }
        let mut out: Box<dyn Write + Send> = match &self.dest {
            Output::File(p) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .map_err(|e| Status::internal(format!("creating {}: {e}", p.display())))?,
            )),
            Output::Stdout => Box::new(std::io::stdout()),
            Output::Dir(_) => {
                return Err(Status::invalid_argument(
                    "a directory output receives files, not a tarball",
                ))
            }
        };
        let mut stream = req.into_inner();
        let received = self.received.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut n = 0u64;
            let r = async {
                while let Some(m) = stream.next().await {
                    let m = m.map_err(|e| e.to_string())?;
                    // Small writes to a file or a pipe; the stream waits for them.
                    out.write_all(&m.data).map_err(|e| e.to_string())?;
                    n += m.data.len() as u64;
                }
                out.flush().map_err(|e| e.to_string())?;
                Ok::<u64, String>(n)
            }
            .await;
            if let Err(e) = &r {
                let _ = tx.send(Err(Status::internal(e.clone()))).await;
            }
            record(&received, r);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Receives the result's files into a directory.
#[derive(Debug, Clone)]
pub struct DirSink {
    /// The directory.
    pub dir: PathBuf,
    /// Bounds on what is received.
    pub limits: ReceiveLimits,
    /// How it ended (files received).
    pub received: Received,
}

impl DirSink {
    /// A sink writing into `dir`.
    pub fn new(dir: PathBuf) -> Self {
        DirSink {
            dir,
            limits: ReceiveLimits::default(),
            received: Received::default(),
        }
    }
}

#[tonic::async_trait]
impl PacketFileSend for DirSink {
    type DiffCopyStream = Packets;

    async fn diff_copy(
        &self,
        req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Status::internal(format!("creating {}: {e}", self.dir.display())))?;
        check_target(&self.dir).map_err(|e| Status::failed_precondition(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Packet>(16);
        let (dir, limits, received) = (self.dir.clone(), self.limits, self.received.clone());
        let stream = req.into_inner();
        tokio::spawn(async move {
            let r = receive_packets(stream, tx.clone(), "the export", &dir, &limits).await;
            match r {
                Ok(got) => record(&received, Ok(got.files as u64)),
                Err(e) => {
                    let m = e.to_string();
                    tracing::warn!(dir = %dir.display(), error = %m, "receiving the export");
                    let _ = tx
                        .send(Packet {
                            r#type: PacketType::PacketErr as i32,
                            data: m.clone().into_bytes(),
                            ..Packet::default()
                        })
                        .await;
                    record(&received, Err(m));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_parsed_as_buildctl_parses_them() {
        let o = parse_output("type=oci,dest=/tmp/x.tar,name=app:v1").unwrap();
        assert_eq!(o.exporter, "oci");
        assert_eq!(o.output, Some(Output::File("/tmp/x.tar".into())));
        assert_eq!(o.attrs.get("name").map(String::as_str), Some("app:v1"));
        assert!(!o.attrs.contains_key("dest"));
        assert_eq!(
            parse_output("type=tar,dest=-").unwrap().output,
            Some(Output::Stdout)
        );
        assert_eq!(
            parse_output("type=local,dest=out").unwrap().output,
            Some(Output::Dir("out".into()))
        );
        assert_eq!(parse_output("type=image,name=x").unwrap().output, None);
        assert!(matches!(
            parse_output("type=local"),
            Err(OutputError::NoDir(_))
        ));
        assert!(matches!(
            parse_output("type=image,dest=x"),
            Err(OutputError::NotSupported { .. })
        ));
        assert!(matches!(
            parse_output("type=tar,dest=/"),
            Err(OutputError::IsDir(_))
        ));
        assert!(parse_output("dest=x").is_err());
        assert!(parse_output("type=oci,bare").is_err());
    }
}
