//! A full disk on one node of three (issue 14's "storage faults"): node 3's log directory is
//! a small tmpfs. Records are produced with acks=all while it fills; then
//!
//! - node 3's broker leaves the cluster: its write fails, its storage is marked failed, it
//!   closes its controller session (so it is fenced and its leaderships move) and `/readyz`
//!   says why;
//! - produce keeps succeeding through the other two replicas (min.insync.replicas 2);
//! - after the tmpfs is grown (space freed), node 3's probe sees the directory work, it
//!   registers again, becomes ready and rejoins every ISR (it caught up);
//! - every acknowledged record reads back from the leaders, at its offset.
//!
//! Mounting a tmpfs needs root (CI runs as root). Run with
//! `cargo test -p runnel --test storage_faults -- --nocapture`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runnel_client::producer::{Producer, ProducerConfig, ProducerRecord};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_testkit::{Cluster, ClusterOpts, http_get};

const WAIT: Duration = Duration::from_secs(60);
const RECORDS: usize = 1_500;
const VALUE_BYTES: usize = 16 * 1024;
const PARTITIONS: u32 = 3;

/// A tmpfs mounted for the test, lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs at {} failed (this test needs root, as CI has): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path)
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Each partition of `t`: (leader, ISR), as node `via` describes it.
async fn partitions(cluster: &Cluster, via: u64) -> Option<Vec<(i64, Vec<u32>)>> {
    let mut c = cluster.controller_client(via).await.ok()?;
    let topic =
        c.describe_topic(pb::DescribeTopicRequest { name: "t".into() }).await.ok()?.into_inner().topic?;
    Some(topic.partitions.iter().map(|p| (p.leader, p.isr.clone())).collect())
}

/// Polls until `check` holds for what node 1 says of the partitions.
async fn wait_partitions(cluster: &Cluster, what: &str, check: impl Fn(&[(i64, Vec<u32>)]) -> bool) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(p) = partitions(cluster, 1).await {
            if check(&p) {
                return;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {WAIT:?}; last {last:?}\n{}", cluster.all_logs());
}

fn readyz(cluster: &Cluster, id: u64) -> (u16, String) {
    http_get(cluster.node(id).http_addr(), "/readyz", Duration::from_secs(5)).unwrap_or((0, String::new()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_takes_its_node_out_and_it_rejoins_when_space_is_freed() {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.session_timeout_ms = Some(2_000);
    let mut cluster = Cluster::prepare(3, opts).unwrap();
    let disk = Tmpfs::mount(cluster.node(3).data_dir().join("logs"), "8m");
    cluster.start_all().unwrap_or_else(|e| panic!("cluster start: {e:#}\n{}", cluster.all_logs()));
    let request = pb::CreateTopicRequest {
        name: "t".into(),
        partitions: PARTITIONS,
        replication_factor: 3,
        configs: [("min.insync.replicas".to_owned(), "2".to_owned())].into(),
    };
    cluster.create_topic(1, request, WAIT).await.unwrap_or_else(|e| panic!("{e:#}"));
    wait_partitions(&cluster, "leaders and full ISRs", |p| p.iter().all(|(l, isr)| *l > 0 && isr.len() == 3))
        .await;

    // acks=all, idempotent, round-robin over the partitions, until RECORDS are acknowledged.
    let mut config = ProducerConfig::new(cluster.up_grpc_addrs());
    config.delivery_timeout = Duration::from_secs(60);
    let producer = Producer::new(config).await.unwrap_or_else(|e| panic!("producer: {e}"));
    let started = Instant::now();
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let mut value = format!("{i:08}-").into_bytes();
        value.resize(VALUE_BYTES, b'x');
        let mut record = ProducerRecord::new("t", Bytes::from(value));
        record.partition = Some(i as u32 % PARTITIONS);
        deliveries.push((i, producer.send(record).await));
    }
    let mut acked: BTreeMap<(u32, i64), usize> = BTreeMap::new();
    let mut failed = 0;
    for (i, delivery) in deliveries {
        match delivery.await {
            Ok(meta) => {
                assert!(
                    acked.insert((meta.partition, meta.offset), i).is_none(),
                    "two records at one offset"
                );
            }
            Err(e) => {
                failed += 1;
                println!("record {i} not acknowledged: {e}");
            }
        }
    }
    println!("{} of {RECORDS} records acknowledged in {:?}", acked.len(), started.elapsed());
    assert_eq!(failed, 0, "produce did not keep succeeding through the other replicas");

    // Node 3 filled up and left: not ready, saying why, and out of every ISR.
    let (status, body) = readyz(&cluster, 3);
    assert!(status == 503 && body.contains("storage failed"), "node 3's /readyz: {status} {body}");
    println!("node 3 /readyz: {}", body.trim());
    wait_partitions(&cluster, "node 3 out of every ISR", |p| {
        p.iter().all(|(l, isr)| *l != 3 && !isr.contains(&3))
    })
    .await;

    // Space freed: node 3 comes back by itself and catches up.
    let freed = Instant::now();
    disk.resize("512m");
    let deadline = Instant::now() + WAIT;
    while readyz(&cluster, 3).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "node 3 not ready after the space was freed:\n{}",
            cluster.all_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_partitions(&cluster, "node 3 back in every ISR", |p| p.iter().all(|(_, isr)| isr.contains(&3)))
        .await;
    println!("node 3 ready and in every ISR {:?} after the space was freed", freed.elapsed());

    // Every acknowledged record, at its offset, from each partition's leader.
    let leaders = partitions(&cluster, 1).await.expect("partitions");
    for (partition, (leader, _)) in leaders.iter().enumerate() {
        let mut client = cluster.broker_client(*leader as u64).await.unwrap();
        let want: Vec<(i64, usize)> = acked
            .iter()
            .filter(|((p, _), _)| *p == partition as u32)
            .map(|((_, offset), i)| (*offset, *i))
            .collect();
        let mut got = Vec::new();
        let mut offset = 0;
        while got.len() < want.len() {
            let fetch = pb::FetchRequest {
                topic: "t".into(),
                partition: partition as u32,
                offset,
                max_bytes: 4 << 20,
                max_wait_ms: 0,
                min_bytes: 0,
                format: pb::RecordFormat::Records as i32,
            };
            let read = client.fetch(fetch).await.unwrap_or_else(|e| panic!("fetch: {e:?}")).into_inner();
            assert!(
                !read.records.is_empty(),
                "partition {partition} ends at {offset}, short of {} records",
                want.len()
            );
            for r in &read.records {
                let value = r.value.as_deref().unwrap_or_default();
                let i: usize = std::str::from_utf8(&value[..8]).unwrap().parse().unwrap();
                got.push((r.offset, i));
            }
            offset = read.next_offset;
        }
        assert_eq!(got, want, "partition {partition}: the acknowledged records, at their offsets");
    }
    drop(producer);
    cluster.stop_all().unwrap();
    drop(disk);
}
