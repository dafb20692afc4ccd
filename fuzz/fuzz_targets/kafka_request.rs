//! The Kafka request decoder (runnel-kafka `codec`: frame size, request header, body of
//! every served API key and version in `versions::SERVED`) fed arbitrary bytes.
//!
//! Input: byte 0 picks the mode. Even: the rest is a connection's byte stream, read frame
//! by frame with `codec::read_frame` (a 64 KiB `socket.request.max.bytes`) and each frame
//! decoded with `codec::decode` until the stream ends or a frame is refused. Odd: bytes 1
//! and 2 pick a served API key and one of its served versions, and the rest follows them
//! as the frame (correlation id, client id, tagged fields and body), so every API and
//! version is reached without guessing its key.
//!
//! Checked: no panic, and a decoded request's header says the key and version the frame
//! had. The global allocator is the node's (mimalloc): kafka-protocol sizes a `Vec` from an
//! array's wire length before reading the elements, which mimalloc maps lazily (see
//! docs/architecture.md, "Preallocation"); under the system allocator such an input is an
//! allocation of up to hundreds of GiB (see the report in docs/architecture.md, Fuzzing).

#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use runnel_kafka::codec::{self, Decoded};
use runnel_kafka::versions;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `socket.request.max.bytes` for the stream mode: inputs are far smaller anyway.
const FRAME_MAX: usize = 64 << 10;

fn decode(frame: Bytes) {
    let key = frame.get(..2).map(|b| i16::from_be_bytes([b[0], b[1]]));
    let version = frame.get(2..4).map(|b| i16::from_be_bytes([b[0], b[1]]));
    if let Ok(Decoded::Request { header, request }) = codec::decode(frame) {
        assert_eq!(Some(header.request_api_key), key);
        assert_eq!(Some(header.request_api_version), version);
        // Formatting walks the whole decoded request.
        let _ = format!("{request:?}");
    }
}

/// A request of every served key with default fields, in every served version it encodes
/// in, as a stream of frames (mode 0) and through the picked-header mode (mode 1); and a
/// Produce carrying a real batch.
fn seeds() -> Vec<Vec<u8>> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let default_request = |key: ApiKey| -> Option<RequestKind> {
        Some(match key {
            ApiKey::Produce => RequestKind::Produce(Default::default()),
            ApiKey::Fetch => RequestKind::Fetch(Default::default()),
            ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
            ApiKey::Metadata => RequestKind::Metadata(Default::default()),
            ApiKey::OffsetCommit => RequestKind::OffsetCommit(Default::default()),
            ApiKey::OffsetFetch => RequestKind::OffsetFetch(Default::default()),
            ApiKey::FindCoordinator => RequestKind::FindCoordinator(Default::default()),
            ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
            ApiKey::Heartbeat => RequestKind::Heartbeat(Default::default()),
            ApiKey::LeaveGroup => RequestKind::LeaveGroup(Default::default()),
            ApiKey::SyncGroup => RequestKind::SyncGroup(Default::default()),
            ApiKey::DescribeGroups => RequestKind::DescribeGroups(Default::default()),
            ApiKey::ListGroups => RequestKind::ListGroups(Default::default()),
            ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
            ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
            ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
            ApiKey::InitProducerId => RequestKind::InitProducerId(Default::default()),
            ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(Default::default()),
            ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(Default::default()),
            ApiKey::AlterConfigs => RequestKind::AlterConfigs(Default::default()),
            ApiKey::CreatePartitions => RequestKind::CreatePartitions(Default::default()),
            ApiKey::DeleteGroups => RequestKind::DeleteGroups(Default::default()),
            ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(Default::default()),
            ApiKey::DescribeCluster => RequestKind::DescribeCluster(Default::default()),
            ApiKey::ConsumerGroupHeartbeat => RequestKind::ConsumerGroupHeartbeat(Default::default()),
            _ => return None,
        })
    };
    let frame = |key: ApiKey, version: i16, request: &RequestKind| -> Option<BytesMut> {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("fuzz")));
        let mut frame = BytesMut::new();
        header.encode(&mut frame, key.request_header_version(version)).ok()?;
        request.encode(&mut frame, version).ok()?;
        Some(frame)
    };
    let mut seeds = Vec::new();
    let mut stream = vec![0u8];
    for (index, (key, range)) in versions::SERVED.iter().enumerate() {
        let Some(request) = default_request(*key) else { continue };
        for version in range.min.max(key.valid_versions().min)..=range.max {
            let Some(frame) = frame(*key, version, &request) else { continue };
            let mut seed = vec![1, index as u8, (version - range.min) as u8];
            seed.extend_from_slice(&frame[4..]);
            seeds.push(seed);
            if version == range.max {
                stream.extend_from_slice(&(frame.len() as i32).to_be_bytes());
                stream.extend_from_slice(&frame);
            }
        }
    }
    seeds.push(stream);
    let batch = runnel_fuzz::sample_batch(runnel_storage::Compression::Lz4, 3, runnel_fuzz::now_ms());
    let produce = ProduceRequest::default().with_acks(-1).with_timeout_ms(1000).with_topic_data(vec![
        TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str("t"))).with_partition_data(
            vec![PartitionProduceData::default().with_index(0).with_records(Some(Bytes::from(batch)))],
        ),
    ]);
    for version in [3, 9] {
        if let Some(frame) = frame(ApiKey::Produce, version, &RequestKind::Produce(produce.clone())) {
            let mut seed = vec![0u8];
            seed.extend_from_slice(&(frame.len() as i32).to_be_bytes());
            seed.extend_from_slice(&frame);
            seeds.push(seed);
        }
    }
    seeds
}

fuzz_target!(init: runnel_fuzz::write_seeds(seeds), |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        let mut stream = rest;
        while let Ok(Some(frame)) = futures::executor::block_on(codec::read_frame(&mut stream, FRAME_MAX)) {
            decode(frame);
        }
    } else {
        let [pick_key, pick_version, body @ ..] = rest else { return };
        let (key, range) = versions::SERVED[usize::from(*pick_key) % versions::SERVED.len()];
        let span = u16::try_from(range.max - range.min + 1).unwrap_or(1);
        let version = range.min + (u16::from(*pick_version) % span) as i16;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i16(key as i16);
        frame.put_i16(version);
        frame.put_slice(body);
        decode(frame.freeze());
    }
});
