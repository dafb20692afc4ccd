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
//! And a bit flipped in a sealed segment of a partition leader's log (no root needed): the
//! next read of it fails its CRC check, the leader's storage is failed so the partition moves
//! to an in-sync replica and stays readable, and the damaged copy is cut off where the damage
//! starts and fetched again, until it is byte for byte the other replicas' log.
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

/// Each partition of `topic`: (leader, ISR), as node `via` describes it.
async fn partitions(cluster: &Cluster, via: u64, topic: &str) -> Option<Vec<(i64, Vec<u32>)>> {
    let mut c = cluster.controller_client(via).await.ok()?;
    let topic =
        c.describe_topic(pb::DescribeTopicRequest { name: topic.into() }).await.ok()?.into_inner().topic?;
    Some(topic.partitions.iter().map(|p| (p.leader, p.isr.clone())).collect())
}

/// Polls until `check` holds for what node 1 says of `topic`'s partitions.
async fn wait_partitions(
    cluster: &Cluster,
    topic: &str,
    what: &str,
    check: impl Fn(&[(i64, Vec<u32>)]) -> bool,
) -> Vec<(i64, Vec<u32>)> {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(p) = partitions(cluster, 1, topic).await {
            if check(&p) {
                return p;
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
    wait_partitions(&cluster, "t", "leaders and full ISRs", |p| {
        p.iter().all(|(l, isr)| *l > 0 && isr.len() == 3)
    })
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
    wait_partitions(&cluster, "t", "node 3 out of every ISR", |p| {
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
    wait_partitions(&cluster, "t", "node 3 back in every ISR", |p| p.iter().all(|(_, isr)| isr.contains(&3)))
        .await;
    println!("node 3 ready and in every ISR {:?} after the space was freed", freed.elapsed());

    // Every acknowledged record, at its offset, from each partition's leader.
    let leaders = partitions(&cluster, 1, "t").await.expect("partitions");
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

const FLIP_RECORDS: usize = 400;

/// The concatenated segment files of node `id`'s copy of `flip-0`, in offset order.
fn log_bytes(cluster: &Cluster, id: u64) -> Vec<u8> {
    let dir = cluster.node(id).data_dir().join("logs").join("flip-0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files.iter().flat_map(|f| std::fs::read(f).unwrap_or_default()).collect()
}

/// Every value of `flip`, read from the beginning with `runnel consume` (which retries a
/// retriable error such as KAFKA_STORAGE_ERROR against the partition's leader).
fn consume_all(cluster: &Cluster) -> Result<Vec<String>, String> {
    let max = FLIP_RECORDS.to_string();
    let out = cluster.runnel_with_timeout(
        &["consume", "flip", "--from-beginning", "--max-messages", &max],
        Duration::from_secs(60),
    );
    if !out.success() {
        return Err(format!("{out:?}"));
    }
    Ok(out.stdout.lines().map(str::to_owned).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flip_in_a_sealed_segment_of_the_leader_is_detected_and_the_copy_repaired() {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.session_timeout_ms = Some(2_000);
    let cluster = Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    let request = pb::CreateTopicRequest {
        name: "flip".into(),
        partitions: 1,
        replication_factor: 3,
        // Small segments, so the first is sealed long before the last record.
        configs: [
            ("segment.bytes".to_owned(), "4096".to_owned()),
            ("min.insync.replicas".to_owned(), "2".to_owned()),
        ]
        .into(),
    };
    cluster.create_topic(1, request, WAIT).await.unwrap_or_else(|e| panic!("{e:#}"));
    let full = |p: &[(i64, Vec<u32>)]| p.iter().all(|(l, isr)| *l > 0 && isr.len() == 3);
    let before = wait_partitions(&cluster, "flip", "a leader and a full ISR", full).await;
    let leader = u64::try_from(before[0].0).expect("a leader");

    let config = ProducerConfig::new(cluster.up_grpc_addrs());
    let producer = Producer::new(config).await.unwrap_or_else(|e| panic!("producer: {e}"));
    let mut deliveries = Vec::new();
    for i in 0..FLIP_RECORDS {
        let value = format!("flip-{i:06}-{}", "v".repeat(100));
        deliveries.push(producer.send(ProducerRecord::new("flip", Bytes::from(value))).await);
    }
    for d in deliveries {
        d.await.unwrap_or_else(|e| panic!("not acknowledged: {e}"));
    }
    producer.close().await;
    let expected: Vec<String> =
        (0..FLIP_RECORDS).map(|i| format!("flip-{i:06}-{}", "v".repeat(100))).collect();
    // Every replica holds the same log before the damage.
    let deadline = Instant::now() + WAIT;
    let reference = log_bytes(&cluster, leader);
    while cluster.ids().iter().any(|&id| log_bytes(&cluster, id) != reference) {
        assert!(Instant::now() < deadline, "the replicas' logs never became equal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consume_all(&cluster).expect("read before the damage"), expected);

    // Flip one bit in a record of the first batch of the leader's first (sealed) segment.
    let segment = cluster.node(leader).data_dir().join("logs/flip-0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).expect("the first segment");
    assert!(bytes.len() > 200, "the first segment holds batches");
    bytes[120] ^= 0x10;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&segment).expect("open the segment");
        file.write_all_at(&bytes[120..121], 120).expect("flip the bit");
    }

    // Detected on the next read: the partition moves, and every record still reads back.
    let got = consume_all(&cluster)
        .unwrap_or_else(|e| panic!("read after the damage: {e}\n{}", cluster.all_logs()));
    assert_eq!(got, expected, "the records read after the damage");
    assert!(
        cluster.node(leader).logs().contains("corrupt data in the log"),
        "node {leader} did not report the damage\n{}",
        cluster.node(leader).logs()
    );
    let moved =
        wait_partitions(&cluster, "flip", "another leader", |p| p[0].0 > 0 && p[0].0 as u64 != leader).await;
    println!("leader moved from node {leader} to node {}", moved[0].0);

    // Repaired: the damaged node is back in the ISR, ready, and its copy is the others' again.
    wait_partitions(&cluster, "flip", "the damaged node back in the ISR", |p| {
        p[0].1.len() == 3 && p[0].1.contains(&(leader as u32))
    })
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let ready = readyz(&cluster, leader).0 == 200;
        let reference = log_bytes(&cluster, u64::try_from(moved[0].0).expect("leader"));
        if ready && log_bytes(&cluster, leader) == reference {
            break;
        }
        assert!(Instant::now() < deadline, "node {leader}'s copy was not repaired\n{}", cluster.all_logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(consume_all(&cluster).expect("read after the repair"), expected);
}
