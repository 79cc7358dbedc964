//! Exporters as buildctl names them, over the build engine's export: `image` (`name=` one
//! or more references separated by commas, `push=true` pushes each to its registry,
//! `registry.insecure`, `compression=gzip|estargz`, `oci-mediatypes`); no exporter builds
//! only; `oci` and `docker` (an image tarball: OCI layout, or the layout with docker's
//! `manifest.json` whose `RepoTags` are `name=`; `compression=`), `tar` (the result's files
//! as a tar) and `local` (the result's files written into the client's directory), all four
//! sent to the client over its session's `FileSend` (`session::filesend`; buildctl's `dest=`
//! stays on the client). An unknown exporter or attribute is `InvalidArgument`, checked
//! before the build, and so is a session that cannot receive (`FailedPrecondition`).
//! Plain HTTP is the worker's registry configuration's choice (localhost and 127.0.0.0/8 by
//! default); `registry.insecure=true` is accepted for the hosts so configured.

use super::session::Session;
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

/// Attributes of `tar` and `local` accepted and ignored (BuildKit's; exact keys).
const FS_IGNORED: &[&str] = &[
    "attestation-prefix",
    "prefer-nondist-layers",
    "source-date-epoch",
    "platform-split",
];

/// The kind of image tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarballFormat {
    /// An OCI image layout (`oci`).
    Oci,
    /// The layout with docker's `manifest.json` (`docker`).
    Docker,
}

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
    /// An image tarball sent to the client.
    Tarball {
        /// Its format.
        format: TarballFormat,
        /// References (the tag of the layout's index, docker's `RepoTags`).
        names: Vec<Reference>,
        /// Layers as eStargz.
        estargz: bool,
    },
    /// The result's files as a tar sent to the client.
    Tar,
    /// The result's files written into the client's directory.
    Local,
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

/// The attributes of `image` (`push` only there) and of `oci`/`docker` (`tar=true` only
/// there: the tarball is the only form sent): names, push, eStargz.
fn image_attrs(
    exporter: &str,
    attrs: &HashMap<String, String>,
    image: bool,
) -> Result<(Vec<Reference>, bool, bool), Status> {
    let (mut names, mut push, mut estargz) = (Vec::new(), false, false);
    for (k, v) in attrs {
        match k.as_str() {
            "name" => {
                for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    let r = Reference::parse(n).map_err(|e| bad(format!("name={n:?}: {e}")))?;
                    names.push(r);
                }
            }
            "push" if image => push = boolean(k, v)?,
            "registry.insecure" if image => {
                boolean(k, v)?;
            }
            "tar" if !image => {
                if !boolean(k, v)? {
                    return Err(bad(format!(
                        "tar=false: stargaze sends {exporter} images as tarballs only"
                    )));
                }
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
            // Empty is BuildKit's "not set"; a value would ask for clamped timestamps.
            "source-date-epoch" if v.is_empty() => {}
            "source-date-epoch" => {
                return Err(bad(format!(
                    "source-date-epoch={v:.32}: stargaze does not rewrite timestamps yet"
                )))
            }
            _ if IGNORED.iter().any(|i| {
                k == i || ((i.ends_with('.') || i.ends_with('-')) && k.starts_with(i))
            }) => {}
            _ => {
                return Err(bad(format!(
                    "exporter attribute {k:?} is not supported by the {exporter} exporter"
                )))
            }
        }
    }
    Ok((names, push, estargz))
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
                let (names, push, estargz) = image_attrs(name, attrs, true)?;
                if push && names.is_empty() {
                    return Err(bad("push=true needs name=".into()));
                }
                Ok(Exporter::Image {
                    names,
                    push,
                    estargz,
                })
            }
            "oci" | "docker" => {
                let (names, _, estargz) = image_attrs(name, attrs, false)?;
                let format = if name == "oci" {
                    TarballFormat::Oci
                } else {
                    TarballFormat::Docker
                };
                Ok(Exporter::Tarball {
                    format,
                    names,
                    estargz,
                })
            }
            "tar" | "local" => {
                if let Some(k) = attrs.keys().find(|k| !FS_IGNORED.contains(&k.as_str())) {
                    return Err(bad(format!(
                        "exporter attribute {k:?} is not supported by the {name} exporter"
                    )));
                }
                Ok(if name == "tar" {
                    Exporter::Tar
                } else {
                    Exporter::Local
                })
            }
            other => Err(bad(format!(
                "exporter {other:.64} is not supported by stargaze buildkitd (image, oci, docker, tar, local are)"
            ))),
        }
    }

    /// Layers as eStargz.
    pub fn estargz(&self) -> bool {
        matches!(
            self,
            Exporter::Image { estargz: true, .. } | Exporter::Tarball { estargz: true, .. }
        )
    }

    /// Whether the result goes to the client (over its session's `FileSend`).
    pub fn to_client(&self) -> bool {
        matches!(
            self,
            Exporter::Tarball { .. } | Exporter::Tar | Exporter::Local
        )
    }

    /// Exports `img`, asking `sessions` for registry credentials, sending what goes to the
    /// client to `session` (checked to serve `FileSend` before the build); the answer is the
    /// Solve's `ExporterResponse`.
    pub async fn export(
        &self,
        worker: &OciWorker,
        img: &StageResult,
        progress: &Arc<Progress>,
        sessions: &[String],
        session: Option<&Session>,
    ) -> Result<HashMap<String, String>, Status> {
        if self.to_client() {
            let s = session
                .ok_or_else(|| Status::failed_precondition("no session to send the export to"))?;
            return super::to_client::export_to_client(self, worker, img, progress, sessions, s)
                .await;
        }
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
        insert_image_names(&mut out, names);
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

/// The answer's `image.name`: the names exported, comma-separated (none: absent).
pub(super) fn insert_image_names(out: &mut HashMap<String, String>, names: &[Reference]) {
    if !names.is_empty() {
        let list: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        out.insert("image.name".into(), list.join(","));
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
    fn an_unset_source_date_epoch_is_accepted_and_a_set_one_refused() {
        for exporter in ["image", "oci", "docker"] {
            assert!(
                Exporter::parse(exporter, &attrs(&[("source-date-epoch", "")])).is_ok(),
                "{exporter}"
            );
            let e = Exporter::parse(exporter, &attrs(&[("source-date-epoch", "1700000000")]))
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{exporter}");
        }
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
        let e = Exporter::parse(
            "docker",
            &attrs(&[
                ("name", "app:v1"),
                ("compression", "estargz"),
                ("tar", "true"),
            ]),
        )
        .unwrap();
        assert!(e.to_client() && e.estargz(), "{e:?}");
        assert_eq!(
            Exporter::parse("local", &attrs(&[("attestation-prefix", "x")])).unwrap(),
            Exporter::Local
        );
        assert!(Exporter::parse("tar", &HashMap::new()).unwrap().to_client());
        for (name, kv) in [
            ("tarball", vec![]),
            ("oci", vec![("push", "true")]),
            ("oci", vec![("tar", "false")]),
            ("docker", vec![("frobnicate", "1")]),
            ("tar", vec![("name", "x")]),
            ("local", vec![("dest", "/tmp/x")]),
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
