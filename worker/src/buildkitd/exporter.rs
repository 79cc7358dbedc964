//! Exporters as buildctl names them, over the build engine's export: `image` (`name=` one
//! or more references separated by commas, `push=true` pushes each to its registry,
//! `registry.insecure`, `compression=gzip|estargz`, `oci-mediatypes`); no exporter builds
//! only. An unknown exporter or attribute is `InvalidArgument`, checked before the build.
//! Plain HTTP is the worker's registry configuration's choice (localhost and 127.0.0.0/8 by
//! default); `registry.insecure=true` is accepted for the hosts so configured.

use crate::frontend::export::{documents, export, Destination};
use crate::frontend::progress::Progress;
use crate::frontend::StageResult;
use crate::oci_worker::OciWorker;
use stargaze_fs::remote::Reference;
use stargaze_fs::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::Status;

/// Attributes of `image` accepted and ignored (exact keys, prefixes ending in `.`).
const IGNORED: &[&str] = &[
    "oci-mediatypes",
    "force-compression",
    "compression-level",
    "unpack",
    "store",
    "name-canonical",
    "dangling-name-prefix",
    "buildinfo",
    "buildinfo-attrs",
    "attestation-prefix",
    "annotation.",
    "annotation-",
];

/// What to do with the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exporter {
    /// Build only.
    None,
    /// An image, pushed to the registries of `names` when `push`.
    Image {
        /// References.
        names: Vec<Reference>,
        /// Push them.
        push: bool,
        /// Layers as eStargz (`compression=estargz`).
        estargz: bool,
    },
}

fn bad(m: String) -> Status {
    Status::invalid_argument(m)
}

fn boolean(k: &str, v: &str) -> Result<bool, Status> {
    match v {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(bad(format!("exporter attribute {k}={v:?}: not a boolean"))),
    }
}

impl Exporter {
    /// Checks the Solve's exporter and its attributes.
    pub fn parse(name: &str, attrs: &HashMap<String, String>) -> Result<Exporter, Status> {
        match name {
            "" => {
                if attrs.is_empty() {
                    Ok(Exporter::None)
                } else {
                    Err(bad("exporter attributes without an exporter".into()))
                }
            }
            "image" => {
                let (mut names, mut push, mut estargz) = (Vec::new(), false, false);
                for (k, v) in attrs {
                    match k.as_str() {
                        "name" => {
                            for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                                let r = Reference::parse(n)
                                    .map_err(|e| bad(format!("name={n:?}: {e}")))?;
                                names.push(r);
                            }
                        }
                        "push" => push = boolean(k, v)?,
                        "registry.insecure" => {
                            boolean(k, v)?;
                        }
                        "compression" => match v.as_str() {
                            "gzip" => estargz = false,
                            "estargz" => estargz = true,
                            _ => {
                                return Err(bad(format!(
                                    "compression={v:?}: stargaze writes gzip or estargz layers"
                                )))
                            }
                        },
                        _ if IGNORED.iter().any(|i| {
                            k == i || ((i.ends_with('.') || i.ends_with('-')) && k.starts_with(i))
                        }) => {}
                        _ => {
                            return Err(bad(format!(
                                "exporter attribute {k:?} is not supported by the image exporter"
                            )))
                        }
                    }
                }
                if push && names.is_empty() {
                    return Err(bad("push=true needs name=".into()));
                }
                Ok(Exporter::Image {
                    names,
                    push,
                    estargz,
                })
            }
            other => Err(bad(format!(
                "exporter {other:?} is not supported by stargaze buildkitd (image is)"
            ))),
        }
    }

    /// Layers as eStargz.
    pub fn estargz(&self) -> bool {
        matches!(self, Exporter::Image { estargz: true, .. })
    }

    /// Exports `img`, asking `sessions` for registry credentials; the answer is the Solve's
    /// `ExporterResponse`.
    pub async fn export(
        &self,
        worker: &OciWorker,
        img: &StageResult,
        progress: &Arc<Progress>,
        sessions: &[String],
    ) -> Result<HashMap<String, String>, Status> {
        let mut out = HashMap::new();
        let Exporter::Image { names, push, .. } = self else {
            return Ok(out);
        };
        let (config, manifest) =
            documents(img).map_err(|e| Status::internal(format!("image documents: {e}")))?;
        out.insert(
            "containerimage.digest".into(),
            Digest::of(&manifest).to_string(),
        );
        out.insert(
            "containerimage.config.digest".into(),
            Digest::of(&config).to_string(),
        );
        if !names.is_empty() {
            out.insert(
                "image.name".into(),
                names
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        if *push {
            for n in names {
                export(
                    worker.client(),
                    &worker.worker().content,
                    img,
                    &Destination::Registry(n.clone()),
                    progress,
                    sessions,
                )
                .await
                .map_err(|e| {
                    Status::unknown(format!(
                        "exporting to {n}: {}",
                        super::dockerfile::build_status(&e).message()
                    ))
                })?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn exporters_are_checked_before_the_build() {
        assert_eq!(
            Exporter::parse("", &HashMap::new()).unwrap(),
            Exporter::None
        );
        let e = Exporter::parse(
            "image",
            &attrs(&[
                ("name", "localhost:5000/a:1,localhost:5000/b:2"),
                ("push", "true"),
                ("registry.insecure", "true"),
                ("compression", "estargz"),
                ("oci-mediatypes", "true"),
            ]),
        )
        .unwrap();
        let Exporter::Image { names, push, .. } = &e else {
            panic!()
        };
        assert_eq!(names.len(), 2);
        assert!(*push && e.estargz());
        for (name, kv) in [
            ("tarball", vec![]),
            ("image", vec![("push", "yes")]),
            ("image", vec![("push", "true")]),
            ("image", vec![("name", "UPPER/Case")]),
            ("image", vec![("compression", "zstd")]),
            ("image", vec![("frobnicate", "1")]),
            ("", vec![("name", "x")]),
        ] {
            let err = Exporter::parse(name, &attrs(&kv)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name} {kv:?}");
        }
    }
}
