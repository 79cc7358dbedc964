//! Exports to the client end to end in one process (the session set up as in `tests`): the
//! daemon's `filesend` sending a tarball and a directory to the client's sinks
//! (`client::output`), and a hostile daemon whose packets try to leave the client's
//! directory.

use super::filesend::{send_bytes, send_dir, FILE_SEND};
use super::tests::{daemon, session};
use crate::buildkitd::client::local::LocalDirs;
use crate::buildkitd::client::output::{DirSink, Output, TarballSink};
use crate::buildkitd::client::session::{attach_serving, ClientSession, ServedOutput};
use crate::buildkitd::proto::filesend_packets::file_send_client::FileSendClient;
use crate::buildkitd::proto::fsutil::types::{packet::PacketType, Packet, Stat};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

async fn client(addr: &str, id: &str, out: ServedOutput) -> ClientSession {
    let c = crate::buildkitd::client::connect(addr).await.unwrap();
    attach_serving::<_, crate::buildkitd::client::auth::ConfigAuth>(
        &c,
        id,
        LocalDirs::default(),
        None,
        Some(out),
        None,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_tarball_arrives_in_the_clients_file_with_the_exporters_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let (sessions, addr) = daemon(tmp.path()).await;
    let dest = tmp.path().join("out.tar");
    let sink = TarballSink::new(Output::File(dest.clone()));
    let (received, md) = (sink.received.clone(), sink.metadata.clone());
    let _c = client(&addr, "t1", ServedOutput::Tarball(sink)).await;
    let s = session(&sessions, "t1").await;
    assert!(s.serves(FILE_SEND));
    let meta: HashMap<String, String> =
        [("containerimage.digest".to_string(), "sha256:ab".to_string())].into();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let p2 = payload.clone();
    let n = send_bytes(s.channel(), &meta, move |w| {
        for c in p2.chunks(7000) {
            w.write_all(c).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(n, payload.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
    assert_eq!(*received.lock().unwrap(), Some(Ok(payload.len() as u64)));
    assert_eq!(
        md.lock()
            .unwrap()
            .get("containerimage.digest")
            .map(String::as_str),
        Some("sha256:ab")
    );
    // A producer failing ends the transfer with its error.
    let e = send_bytes(s.channel(), &HashMap::new(), |_| Err("no rootfs".into()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no rootfs"), "{e}");
}

#[tokio::test]
async fn a_directory_arrives_in_the_clients_directory_with_its_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let (sessions, addr) = daemon(tmp.path()).await;
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("app/deep")).unwrap();
    std::fs::write(src.join("app/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        src.join("app/run.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::write(src.join("app/deep/big"), vec![7u8; 100_000]).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", src.join("app/abs-link")).unwrap();
    let dest = tmp.path().join("out");
    let sink = DirSink::new(dest.clone());
    let received = sink.received.clone();
    let _c = client(&addr, "d1", ServedOutput::Dir(sink)).await;
    let s = session(&sessions, "d1").await;
    let sent = send_dir(s.channel(), src.clone()).await.unwrap();
    assert_eq!((sent.files, sent.bytes), (3, 100_000 + 18));
    assert_eq!(*received.lock().unwrap(), Some(Ok(3)));
    assert_eq!(
        std::fs::read(dest.join("app/run.sh")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    let mode = std::fs::metadata(dest.join("app/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o750);
    assert_eq!(
        std::fs::read(dest.join("app/deep/big")).unwrap().len(),
        100_000
    );
    assert_eq!(
        std::fs::read_link(dest.join("app/abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    // A second export into the now full directory is refused by the client.
    let e = send_dir(s.channel(), src).await.unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
}

/// Plays a daemon sending `stats` (no data) to the client's directory sink; the answer.
async fn hostile(stats: Vec<Stat>) -> (tempfile::TempDir, Result<u64, String>, Vec<Packet>) {
    let tmp = tempfile::tempdir().unwrap();
    let (sessions, addr) = daemon(tmp.path()).await;
    let dest = tmp.path().join("a").join("out");
    std::fs::create_dir(tmp.path().join("outside")).unwrap();
    let sink = DirSink::new(dest.clone());
    let received = sink.received.clone();
    let _c = client(&addr, "h1", ServedOutput::Dir(sink)).await;
    let s = session(&sessions, "h1").await;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for st in stats {
        tx.send(Packet {
            r#type: PacketType::PacketStat as i32,
            stat: Some(st),
            ..Packet::default()
        })
        .await
        .unwrap();
    }
    tx.send(Packet::default()).await.unwrap();
    let mut answer = FileSendClient::new(s.channel())
        .diff_copy(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Ok(Some(Ok(p))) =
        tokio::time::timeout(std::time::Duration::from_secs(10), answer.next()).await
    {
        let end = p.r#type == PacketType::PacketErr as i32;
        got.push(p);
        if end {
            break;
        }
    }
    drop(tx);
    let r = received
        .lock()
        .unwrap()
        .clone()
        .expect("the sink recorded an end");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("outside"))
            .unwrap()
            .count(),
        0,
        "nothing written outside the directory"
    );
    assert!(!tmp.path().join("a").join("x").exists());
    (tmp, r, got)
}

fn st(path: &str, mode: u32, linkname: &str) -> Stat {
    Stat {
        path: path.into(),
        mode,
        linkname: linkname.into(),
        ..Stat::default()
    }
}

#[tokio::test]
async fn the_client_refuses_paths_leaving_its_directory() {
    for (stats, why) in [
        (vec![st("../x", 0o644, "")], ".."),
        (vec![st("/etc/x", 0o644, "")], "absolute"),
        (
            vec![
                st("l", (1 << 27) | 0o777, "../../outside"),
                st("l/f", 0o644, ""),
            ],
            "parent not listed",
        ),
    ] {
        let (_tmp, r, got) = hostile(stats).await;
        let e = r.expect_err("refused");
        assert!(e.contains(why), "{e}");
        let last = got.last().expect("an answer");
        assert_eq!(last.r#type, PacketType::PacketErr as i32);
    }
}
