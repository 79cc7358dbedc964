//! The build frontend: a Dockerfile subset executed on the OCI worker — stages over base
//! images (lazily mounted with the stargz snapshotter), RUN steps through the runc
//! executor, COPY/ADD from the context or another stage, a step cache, and export as an OCI
//! image to a layout or a registry.

pub mod copy;
pub mod diff;
pub mod dockerfile;
pub mod words;
