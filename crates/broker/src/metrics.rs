//! Data-plane counters: produce and fetch partition requests by protocol and Kafka error
//! code, and the record bytes produced and fetched by topic.
//!
//! Both front-ends (gRPC, Kafka) count their requests at their edge, where the answer's
//! error code is known; the [`DataPlane`](crate::plane::DataPlane) counts bytes, which it
//! sees for both. Each count is an atomic add on a `prometheus-client` family entry (a read
//! lock and a hash look-up on a small label set): cheap enough for the data path.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// The front-end a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Runnel's gRPC BrokerService.
    Grpc,
    /// The Kafka wire protocol.
    Kafka,
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::Kafka => "kafka",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    protocol: Protocol,
    /// Kafka's error code of the answer, 0 for none.
    error_code: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

/// The data plane's counters. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct PlaneMetrics {
    produce_requests: Family<RequestLabels, Counter>,
    fetch_requests: Family<RequestLabels, Counter>,
    produce_bytes: Family<TopicLabels, Counter>,
    fetch_bytes: Family<TopicLabels, Counter>,
}

impl PlaneMetrics {
    /// Counts one partition's produce, answered with `error_code` (0: success).
    pub fn produced(&self, protocol: Protocol, error_code: i32) {
        self.produce_requests.get_or_create(&RequestLabels { protocol, error_code }).inc();
    }

    /// Counts one partition's fetch (a read of one partition), answered with `error_code`.
    pub fn fetched(&self, protocol: Protocol, error_code: i32) {
        self.fetch_requests.get_or_create(&RequestLabels { protocol, error_code }).inc();
    }

    pub(crate) fn produced_bytes(&self, topic: &str, bytes: usize) {
        self.produce_bytes.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc_by(bytes as u64);
    }

    pub(crate) fn fetched_bytes(&self, topic: &str, bytes: usize) {
        if bytes > 0 {
            self.fetch_bytes.get_or_create(&TopicLabels { topic: topic.to_owned() }).inc_by(bytes as u64);
        }
    }

    /// The record batch bytes produced to and fetched from `topic` through this node, over
    /// both protocols, since it started: what the console turns into per-topic rates.
    pub fn topic_bytes(&self, topic: &str) -> (u64, u64) {
        let labels = TopicLabels { topic: topic.to_owned() };
        let read = |family: &Family<TopicLabels, Counter>| family.get(&labels).map_or(0, |c| c.get());
        (read(&self.produce_bytes), read(&self.fetch_bytes))
    }

    /// Registers the counters (shared, not copied) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "runnel_produce_requests",
            "Partition produce requests (one per partition of a request), by protocol and answered error code",
            self.produce_requests.clone(),
        );
        registry.register(
            "runnel_fetch_requests",
            "Partition fetch requests (one per partition read), by protocol and answered error code",
            self.fetch_requests.clone(),
        );
        registry.register(
            "runnel_produce_bytes",
            "Record batch bytes appended by clients' produce requests, by topic",
            self.produce_bytes.clone(),
        );
        registry.register(
            "runnel_fetch_bytes",
            "Record batch bytes returned to clients' fetch requests, by topic",
            self.fetch_bytes.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_encode_with_prometheus_names_and_labels() {
        let metrics = PlaneMetrics::default();
        metrics.produced(Protocol::Kafka, 0);
        metrics.produced(Protocol::Kafka, 0);
        metrics.fetched(Protocol::Grpc, 6);
        metrics.produced_bytes("orders", 100);
        metrics.fetched_bytes("orders", 0);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE runnel_produce_requests_total counter",
            "runnel_produce_requests_total{protocol=\"kafka\",error_code=\"0\"} 2",
            "runnel_fetch_requests_total{protocol=\"grpc\",error_code=\"6\"} 1",
            "runnel_produce_bytes_total{topic=\"orders\"} 100",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("runnel_fetch_bytes_total{"), "{text}");
        assert_eq!(metrics.topic_bytes("orders"), (100, 0));
        assert_eq!(metrics.topic_bytes("absent"), (0, 0));
    }
}
