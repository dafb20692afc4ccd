//! The controller's Prometheus metrics: Raft leader changes seen by this node, the latency
//! of its proposals (from `client_write` to the applied answer), and, read from the applied
//! metadata image at scrape time, the metadata version and the fenced brokers.

use std::time::Duration;

use openraft::RaftMetrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::machine::MetadataMachine;
use crate::raft::{MachineView, Node, NodeId};

/// Commit latency buckets, in seconds: 250 µs to 10 s (a write times out before that).
const COMMIT_BUCKETS: [f64; 14] =
    [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// One controller node's metrics. Clones share them.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    commit_duration: Histogram,
    leader_changes: Counter,
    view: MachineView<MetadataMachine>,
}

impl ControllerMetrics {
    pub(crate) fn new(view: MachineView<MetadataMachine>) -> Self {
        ControllerMetrics {
            commit_duration: Histogram::new(COMMIT_BUCKETS),
            leader_changes: Counter::default(),
            view,
        }
    }

    /// A proposal of this node's was committed and applied in `took`.
    pub(crate) fn committed(&self, took: Duration) {
        self.commit_duration.observe(took.as_secs_f64());
    }

    /// Registers the metrics (shared, not copied) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "runnel_controller_commit_duration",
            "Time from proposing a metadata command on this node (as leader) to its applied answer",
            Unit::Seconds,
            self.commit_duration.clone(),
        );
        registry.register(
            "runnel_raft_leader_changes",
            "Changes of the controller leader this node has observed (a new known leader)",
            self.leader_changes.clone(),
        );
        registry.register_collector(Box::new(ImageCollector { view: self.view.clone() }));
    }
}

/// Follows this node's Raft metrics and counts each new known leader, until `cancel`.
pub(crate) async fn count_leader_changes(
    metrics: ControllerMetrics,
    mut raft: tokio::sync::watch::Receiver<RaftMetrics<NodeId, Node>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut last = raft.borrow_and_update().current_leader;
    if last.is_some() {
        metrics.leader_changes.inc();
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = raft.changed() => if changed.is_err() { return },
        }
        let leader = raft.borrow_and_update().current_leader;
        if leader.is_some() && leader != last {
            metrics.leader_changes.inc();
        }
        if leader.is_some() {
            last = leader;
        }
    }
}

/// The applied image's version and fenced brokers, read at each scrape.
#[derive(Debug)]
struct ImageCollector {
    view: MachineView<MetadataMachine>,
}

impl Collector for ImageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // A poisoned store reports nothing rather than failing the whole scrape.
        let Ok((version, fenced)) =
            self.view.read(|m, _| (m.image.version(), m.image.brokers().filter(|b| b.fenced).count()))
        else {
            return Ok(());
        };
        let gauges = [
            (
                "runnel_controller_metadata_version",
                "The version of the metadata image applied on this controller.",
                version,
            ),
            (
                "runnel_controller_fenced_brokers",
                "Registered brokers the applied metadata fences.",
                fenced as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        Ok(())
    }
}
