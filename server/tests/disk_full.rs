//! Disk full, for real: the data dir on a small loop-mounted ext4 or xfs
//! image (`apt-get install xfsprogs` for `mkfs.xfs`).
//! Produce gets RESOURCE_EXHAUSTED, no partial batch becomes visible, the
//! server stays up and serves reads, and writes resume once a topic delete
//! frees space. Needs root (mount); CI runs as root.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use common::{Log, TestServer, block_on, produce_to, record};
use shardlog_wire::Code;
use shardlog_wire::proto::shardlog::v1 as pb;

/// ext4 works with a small image; xfs refuses file systems under 300 MB.
const EXT4_IMAGE_BYTES: u64 = 48 << 20;
const XFS_IMAGE_BYTES: u64 = 320 << 20;

/// A loop-mounted file system, unmounted on drop.
struct SmallFs {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(mkfs: &str, image_bytes: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let image = dir.path().join("fs.img");
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).expect("mount point");
        std::fs::File::create(&image)
            .expect("image")
            .set_len(image_bytes)
            .expect("size");
        let force = if mkfs == "mkfs.xfs" { "-f" } else { "-F" };
        run(mkfs, &["-q", force, path_str(&image)]);
        run(
            "mount",
            &["-o", "loop", path_str(&image), path_str(&mount_point)],
        );
        Self {
            mount_point,
            _dir: dir,
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn ext4_full_is_resource_exhausted_reads_go_on_and_writes_resume_after_delete() {
    fill_and_recover("mkfs.ext4", EXT4_IMAGE_BYTES);
}

#[test]
fn xfs_full_is_resource_exhausted_reads_go_on_and_writes_resume_after_delete() {
    fill_and_recover("mkfs.xfs", XFS_IMAGE_BYTES);
}

fn fill_and_recover(mkfs: &str, image_bytes: u64) {
    if !is_root() {
        eprintln!("SKIPPED disk_full: mounting a loop file system needs root (CI runs as root)");
        return;
    }
    let fs = SmallFs::new(mkfs, image_bytes);
    let mut server = TestServer::start(1);
    server.kill();
    server.data_dir = fs.mount_point.join("data");
    server.restart_after_kill();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let small_segments = |topic: &str| pb::CreateTopicRequest {
            topic: topic.into(),
            partition_count: 1,
            retention: Some(pb::RetentionPolicy {
                segment_bytes: 1 << 20,
                ..Default::default()
            }),
        };
        let _: pb::CreateTopicResponse = log
            .unary("CreateTopic", &small_segments("filler"))
            .await
            .expect("create");
        let value = Bytes::from(vec![9u8; 200 << 10]);
        let mut acknowledged = 0u64;
        let mut refused = None;
        for i in 0..4_000u32 {
            let records = (0..2)
                .map(|_| pb::Record {
                    value: value.clone(),
                    ..record(b"")
                })
                .collect();
            match log.produce(produce_to("filler", 0, records)).await {
                Ok(response) => {
                    acknowledged = response.base_offset + u64::from(response.record_count)
                }
                Err(status) => {
                    refused = Some((i, status));
                    break;
                }
            }
        }
        let (_, status) = refused.expect("the small file system fills up");
        assert_eq!(status.code(), Code::RESOURCE_EXHAUSTED, "{status:?}");
        // Nothing of the refused batch is visible; acknowledged data is readable.
        let description = log.describe("filler").await.expect("the server is up");
        assert_eq!(description.partitions[0].durable_offset, acknowledged);
        let stored = log.fetch_all("filler", 0, 0).await;
        assert_eq!(stored.len() as u64, acknowledged);
        assert!(stored.iter().all(|r| r.value == value));
        // Freeing space lets writes resume.
        let delete = pb::DeleteTopicRequest {
            topic: "filler".into(),
        };
        let _: pb::DeleteTopicResponse = log.unary("DeleteTopic", &delete).await.expect("delete");
        let _: pb::CreateTopicResponse = log
            .unary("CreateTopic", &small_segments("after"))
            .await
            .expect("create after delete");
        let response = log
            .produce(produce_to("after", 0, vec![record(b"resumed")]))
            .await
            .expect("write after delete");
        assert_eq!(response.base_offset, 0);
    });
    server.kill();
}
