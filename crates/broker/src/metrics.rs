//! The broker's data-path metrics, made with `prometheus-client`.
//!
//! - [`PlaneMetrics`]: produce and fetch partition requests by topic, protocol and Kafka
//!   error code; records and bytes by topic and protocol; request latency histograms by
//!   protocol and API. Both front-ends (gRPC, Kafka) count requests and time them at their
//!   edge, where the answer is known; the [`DataPlane`](crate::plane::DataPlane) counts
//!   records and bytes, which it sees for both.
//! - [`ReplicaMetrics`]: the storage layer's fsync latency and group-commit batch size (told
//!   through [`runnel_storage::SyncObserver`]), and the ISR shrinks and expansions this
//!   broker got committed as a partition leader.
//!
//! Every count is an atomic add on a family entry (a read lock and a hash look-up on a small
//! label set); a histogram observation takes the histogram's own short mutex. Nothing is
//! done per record: record counts come from batch offsets. No lock is held across I/O.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The front-end a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Runnel's gRPC BrokerService.
    Grpc,
    /// The Kafka wire protocol.
    Kafka,
}

impl Protocol {
    /// Its name in labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Kafka => "kafka",
        }
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.name())
    }
}

/// Kafka's UNKNOWN_TOPIC_OR_PARTITION and INVALID_TOPIC_EXCEPTION: the topic name of such a
/// request is whatever a client sent, so it is not used as a label value (an unbounded set).
const UNKNOWN_TOPIC_CODES: [i32; 2] = [3, 17];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    /// The topic; "" when the answer says the topic is unknown or invalid.
    topic: String,
    protocol: Protocol,
    /// Kafka's error code of the answer, 0 for none.
    error_code: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
    protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ApiLabels {
    protocol: Protocol,
    /// The API in snake case: `produce`, `fetch`, and for Kafka every other API by name.
    api: &'static str,
}

/// Request latency buckets, in seconds: 250 µs to 60 s. The top ones are there because a
/// fetch's time includes its long-poll wait (up to `max_wait`, at most 60 s).
const REQUEST_BUCKETS: [f64; 17] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
struct PlaneInner {
    produce_requests: Family<RequestLabels, Counter>,
    fetch_requests: Family<RequestLabels, Counter>,
    produce_records: Family<TopicLabels, Counter>,
    fetch_records: Family<TopicLabels, Counter>,
    produce_bytes: Family<TopicLabels, Counter>,
    fetch_bytes: Family<TopicLabels, Counter>,
    request_duration: HistogramFamily<ApiLabels>,
}

/// The data plane's counters and latency histograms. Clones share them (one `Arc`).
#[derive(Debug, Clone)]
pub struct PlaneMetrics {
    inner: Arc<PlaneInner>,
}

impl Default for PlaneMetrics {
    fn default() -> Self {
        PlaneMetrics {
            inner: Arc::new(PlaneInner {
                produce_requests: Family::default(),
                fetch_requests: Family::default(),
                produce_records: Family::default(),
                fetch_records: Family::default(),
                produce_bytes: Family::default(),
                fetch_bytes: Family::default(),
                request_duration: Family::new_with_constructor(request_histogram),
            }),
        }
    }
}

fn request_labels(topic: &str, protocol: Protocol, error_code: i32) -> RequestLabels {
    let topic = if UNKNOWN_TOPIC_CODES.contains(&error_code) { String::new() } else { topic.to_owned() };
    RequestLabels { topic, protocol, error_code }
}

impl PlaneMetrics {
    /// Counts one partition's produce to `topic`, answered with `error_code` (0: success).
    pub fn produced(&self, topic: &str, protocol: Protocol, error_code: i32) {
        self.inner.produce_requests.get_or_create(&request_labels(topic, protocol, error_code)).inc();
    }

    /// Counts one partition's fetch from `topic` (a read of one partition), answered with
    /// `error_code`.
    pub fn fetched(&self, topic: &str, protocol: Protocol, error_code: i32) {
        self.inner.fetch_requests.get_or_create(&request_labels(topic, protocol, error_code)).inc();
    }

    /// One request of `api` took `took`, from its arrival to its answer.
    pub fn request_took(&self, protocol: Protocol, api: &'static str, took: Duration) {
        self.inner.request_duration.get_or_create(&ApiLabels { protocol, api }).observe(took.as_secs_f64());
    }

    /// One batch of `records` records and `bytes` bytes appended to `topic`.
    pub(crate) fn appended(&self, topic: &str, protocol: Protocol, records: u64, bytes: usize) {
        let labels = TopicLabels { topic: topic.to_owned(), protocol };
        self.inner.produce_records.get_or_create(&labels).inc_by(records);
        self.inner.produce_bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// One read of `topic` returned `bytes` bytes of batches holding `records` records at or
    /// after the offset asked (nothing is counted for an empty read).
    pub(crate) fn read(&self, topic: &str, protocol: Protocol, records: u64, bytes: usize) {
        if bytes > 0 {
            let labels = TopicLabels { topic: topic.to_owned(), protocol };
            self.inner.fetch_records.get_or_create(&labels).inc_by(records);
            self.inner.fetch_bytes.get_or_create(&labels).inc_by(bytes as u64);
        }
    }

    /// The record batch bytes produced to and fetched from `topic` through this node, over
    /// both protocols, since it started: what the console turns into per-topic rates.
    pub fn topic_bytes(&self, topic: &str) -> (u64, u64) {
        let sum = |family: &Family<TopicLabels, Counter>| {
            [Protocol::Grpc, Protocol::Kafka]
                .into_iter()
                .map(|protocol| {
                    let labels = TopicLabels { topic: topic.to_owned(), protocol };
                    family.get(&labels).map_or(0, |c| c.get())
                })
                .sum()
        };
        (sum(&self.inner.produce_bytes), sum(&self.inner.fetch_bytes))
    }

    /// Registers the metrics (shared, not copied) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.inner;
        registry.register(
            "runnel_produce_requests",
            "Partition produce requests (one per partition of a request), by topic, protocol and answered error code",
            m.produce_requests.clone(),
        );
        registry.register(
            "runnel_fetch_requests",
            "Partition fetch requests (one per partition read), by topic, protocol and answered error code",
            m.fetch_requests.clone(),
        );
        registry.register(
            "runnel_produce_records",
            "Records appended by clients' produce requests, by topic and protocol",
            m.produce_records.clone(),
        );
        registry.register(
            "runnel_fetch_records",
            "Records at or after the fetch offset returned to clients' fetches, by topic and protocol",
            m.fetch_records.clone(),
        );
        registry.register_with_unit(
            "runnel_produce",
            "Record batch bytes appended by clients' produce requests, by topic and protocol",
            Unit::Bytes,
            m.produce_bytes.clone(),
        );
        registry.register_with_unit(
            "runnel_fetch",
            "Record batch bytes returned to clients' fetch requests, by topic and protocol",
            Unit::Bytes,
            m.fetch_bytes.clone(),
        );
        registry.register_with_unit(
            "runnel_request_duration",
            "Time from a request's arrival to its answer, by protocol and API (fetches include their long-poll wait)",
            Unit::Seconds,
            m.request_duration.clone(),
        );
    }
}

/// fsync latency buckets, in seconds: 50 µs to 2.5 s.
const FSYNC_BUCKETS: [f64; 15] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// The storage and ISR metrics of one broker's replica manager. Clones share them.
#[derive(Debug, Clone)]
pub struct ReplicaMetrics {
    fsync_duration: Histogram,
    fsync_records: Histogram,
    isr_shrinks: Counter,
    isr_expands: Counter,
}

impl Default for ReplicaMetrics {
    fn default() -> Self {
        ReplicaMetrics {
            fsync_duration: Histogram::new(FSYNC_BUCKETS),
            // 1, 2, 4, ... 65536 records per fsync.
            fsync_records: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
            isr_shrinks: Counter::default(),
            isr_expands: Counter::default(),
        }
    }
}

impl runnel_storage::SyncObserver for ReplicaMetrics {
    fn synced(&self, took: Duration, records: u64) {
        self.fsync_duration.observe(took.as_secs_f64());
        self.fsync_records.observe(records as f64);
    }
}

impl ReplicaMetrics {
    /// A committed ISR change of this leader's: `removed` members left, `added` joined.
    pub(crate) fn isr_changed(&self, removed: bool, added: bool) {
        if removed {
            self.isr_shrinks.inc();
        }
        if added {
            self.isr_expands.inc();
        }
    }

    /// Registers the metrics (shared, not copied) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "runnel_log_fsync_duration",
            "Time of one group-commit fsync of a partition log's active segment",
            Unit::Seconds,
            self.fsync_duration.clone(),
        );
        registry.register(
            "runnel_log_fsync_batch_records",
            "Records made durable by one group-commit fsync (the group-commit batch size)",
            self.fsync_records.clone(),
        );
        registry.register(
            "runnel_isr_shrinks",
            "ISR shrinks this broker asked for as partition leader and the controller committed",
            self.isr_shrinks.clone(),
        );
        registry.register(
            "runnel_isr_expands",
            "ISR expansions this broker asked for as partition leader and the controller committed",
            self.isr_expands.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_storage::SyncObserver as _;

    fn encode(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    fn has(text: &str, line: &str) {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }

    #[test]
    fn plane_metrics_encode_with_prometheus_names_and_labels() {
        let metrics = PlaneMetrics::default();
        metrics.produced("orders", Protocol::Kafka, 0);
        metrics.produced("orders", Protocol::Kafka, 0);
        metrics.fetched("orders", Protocol::Grpc, 6);
        metrics.fetched("client-made-up-name", Protocol::Kafka, 3);
        metrics.appended("orders", Protocol::Kafka, 10, 100);
        metrics.appended("orders", Protocol::Grpc, 1, 20);
        metrics.read("orders", Protocol::Grpc, 0, 0);
        metrics.read("orders", Protocol::Kafka, 4, 50);
        metrics.request_took(Protocol::Kafka, "produce", Duration::from_millis(3));
        let text = encode(|r| metrics.register(r));
        for line in [
            "# TYPE runnel_produce_requests_total counter",
            "runnel_produce_requests_total{topic=\"orders\",protocol=\"kafka\",error_code=\"0\"} 2",
            "runnel_fetch_requests_total{topic=\"orders\",protocol=\"grpc\",error_code=\"6\"} 1",
            "runnel_fetch_requests_total{topic=\"\",protocol=\"kafka\",error_code=\"3\"} 1",
            "runnel_produce_records_total{topic=\"orders\",protocol=\"kafka\"} 10",
            "runnel_produce_bytes_total{topic=\"orders\",protocol=\"kafka\"} 100",
            "runnel_produce_bytes_total{topic=\"orders\",protocol=\"grpc\"} 20",
            "runnel_fetch_records_total{topic=\"orders\",protocol=\"kafka\"} 4",
            "# TYPE runnel_request_duration_seconds histogram",
            "runnel_request_duration_seconds_count{protocol=\"kafka\",api=\"produce\"} 1",
            "runnel_request_duration_seconds_bucket{protocol=\"kafka\",api=\"produce\",le=\"0.005\"} 1",
            "runnel_request_duration_seconds_bucket{protocol=\"kafka\",api=\"produce\",le=\"0.0025\"} 0",
        ] {
            has(&text, line);
        }
        assert!(!text.contains("client-made-up-name"), "{text}");
        assert!(!text.contains("runnel_fetch_bytes_total{topic=\"orders\",protocol=\"grpc\"}"), "{text}");
        assert_eq!(metrics.topic_bytes("orders"), (120, 50), "summed over both protocols");
        assert_eq!(metrics.topic_bytes("absent"), (0, 0));
    }

    #[test]
    fn replica_metrics_observe_fsyncs_and_isr_changes() {
        let metrics = ReplicaMetrics::default();
        metrics.synced(Duration::from_micros(700), 3);
        metrics.synced(Duration::from_millis(20), 1000);
        metrics.isr_changed(true, false);
        metrics.isr_changed(true, true);
        let text = encode(|r| metrics.register(r));
        for line in [
            "runnel_log_fsync_duration_seconds_count 2",
            "runnel_log_fsync_duration_seconds_bucket{le=\"0.001\"} 1",
            "runnel_log_fsync_batch_records_sum 1003.0",
            "runnel_log_fsync_batch_records_bucket{le=\"4\"} 1",
            "runnel_isr_shrinks_total 2",
            "runnel_isr_expands_total 1",
        ] {
            has(&text, line);
        }
    }
}
