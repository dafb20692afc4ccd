//! The request decoder and dispatcher fed hostile bytes: arbitrary frames, well-formed headers
//! of every served API and version followed by arbitrary bodies, and array lengths that
//! claim billions of elements. Nothing may panic or abort; a frame either decodes (and its
//! handler answers or declines within a bound) or is refused with a `CodecError`.
//!
//! The node's allocator is mimalloc, and so is this test's: kafka-protocol sizes a `Vec`
//! from an array's wire length before reading its elements, and mimalloc reserves such a
//! mapping lazily (MAP_NORESERVE), so a claimed length of 2^31 costs address space, not
//! memory, until decoding fails at the first missing element.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use runnel_broker::admin::TopicAdmin;
use runnel_broker::group::{GroupConfig, GroupCoordinator};
use runnel_broker::{BrokerStatus, DataPlane, MetadataCache, ReplicaManager};
use runnel_kafka::codec::{self, Decoded};
use runnel_kafka::{Context, KafkaConfig, handlers, versions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A context over an empty broker with no reachable controller (port 1 on loopback refuses
/// at once), so every handler runs its error paths quickly.
fn context(dir: &std::path::Path) -> Arc<Context> {
    let replicas = Arc::new(ReplicaManager::open(1, dir, Default::default()).expect("log dir"));
    let cache = Arc::new(RwLock::new(MetadataCache { loaded: true, ..Default::default() }));
    let plane = Arc::new(DataPlane::new(1, Arc::clone(&replicas), Arc::clone(&cache)));
    let (_tx, status) = tokio::sync::watch::channel(BrokerStatus::default());
    let nowhere = runnel_broker::ControllerSet::new(vec!["127.0.0.1:1".to_owned()], None);
    let timeout = Duration::from_millis(200);
    let groups = Arc::new(GroupCoordinator::new(
        1,
        GroupConfig {
            offsets_topic_partitions: 1,
            controllers: nowhere.clone(),
            request_timeout: timeout,
            initial_rebalance_delay: Duration::from_millis(10),
        },
        replicas,
        cache,
        status.clone(),
    ));
    Arc::new(Context {
        config: KafkaConfig::new(1),
        plane,
        groups,
        admin: TopicAdmin::new(nowhere, timeout, status),
        auth: None,
    })
}

/// Decodes `frame` and, if it is a request, runs its handler to the end (bounded).
async fn feed(context: &Arc<Context>, frame: Bytes) {
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    match codec::decode(frame) {
        Ok(Decoded::Request { header, request }) => {
            let started = handlers::start(context, header, *request, peer, &Arc::from("PLAINTEXT"), None);
            // A handler may wait (a long poll, a join); it must still end or be droppable.
            let _ = tokio::time::timeout(Duration::from_secs(2), started.run()).await;
        }
        Ok(Decoded::ApiVersionsTooNew { .. }) | Err(_) => {}
    }
}

fn header(key: i16, version: i16, flexible_header: bool) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_i16(key);
    b.put_i16(version);
    b.put_i32(7);
    b.put_i16(-1); // null client id: must parse
    if flexible_header {
        b.put_u8(0); // no tagged fields
    }
    b
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_frames_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let context = context(dir.path());
        runtime().block_on(feed(&context, Bytes::from(frame)));
    }

    #[test]
    fn served_headers_with_arbitrary_bodies_never_panic(
        which in 0..versions::SERVED.len(),
        version_pick in any::<u16>(),
        flexible_header in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let (key, range) = versions::SERVED[which];
        let span = (range.max - range.min + 1) as u16;
        let version = range.min + (version_pick % span) as i16;
        let mut frame = header(key as i16, version, flexible_header);
        frame.extend_from_slice(&body);
        let dir = tempfile::tempdir().expect("tempdir");
        let context = context(dir.path());
        runtime().block_on(feed(&context, frame.freeze()));
    }
}

#[test]
fn an_array_claiming_two_billion_elements_is_refused_without_aborting() {
    // Metadata v1: topics is an INT32-length array; claim i32::MAX topics, send none.
    let mut frame = header(3, 1, false);
    frame.put_i32(i32::MAX);
    let refused = codec::decode(frame.freeze());
    assert!(matches!(refused, Err(codec::CodecError::Malformed { .. })), "{refused:?}");

    // The same through a flexible version's compact array (varint length).
    let mut frame = header(3, 9, true);
    frame.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x07]);
    let refused = codec::decode(frame.freeze());
    assert!(matches!(refused, Err(codec::CodecError::Malformed { .. })), "{refused:?}");
}

#[test]
fn unknown_keys_unserved_versions_and_short_frames_are_refused() {
    assert!(matches!(
        codec::decode(header(9999, 0, false).freeze()),
        Err(codec::CodecError::UnknownApiKey(9999))
    ));
    // Produce v2 is the pre-0.11 message format: refused with the reason.
    let refused = codec::decode(header(0, 2, false).freeze());
    match refused {
        Err(e @ codec::CodecError::UnsupportedVersion { .. }) => {
            assert!(e.to_string().contains("before 0.11"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(codec::decode(Bytes::from_static(&[0, 3, 0])), Err(codec::CodecError::Truncated(_))));
    // ApiVersions newer than served: answered in v0, not refused.
    assert!(matches!(
        codec::decode(header(18, 99, true).freeze()),
        Ok(Decoded::ApiVersionsTooNew { correlation_id: 7 })
    ));
}

#[tokio::test]
async fn a_frame_over_the_limit_is_refused_before_it_is_read() {
    let mut wire: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 1, 2, 3];
    let refused = codec::read_frame(&mut wire, 1 << 20).await;
    assert!(matches!(refused, Err(codec::CodecError::FrameTooLarge { size: 2147483647, .. })), "{refused:?}");
    let mut negative: &[u8] = &[0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        codec::read_frame(&mut negative, 1 << 20).await,
        Err(codec::CodecError::FrameTooLarge { .. })
    ));
    let mut cut: &[u8] = &[0, 0, 0, 10, 1, 2];
    assert!(matches!(codec::read_frame(&mut cut, 1 << 20).await, Err(codec::CodecError::Truncated(_))));
    let mut clean: &[u8] = &[];
    assert!(matches!(codec::read_frame(&mut clean, 1 << 20).await, Ok(None)));
}
