//! The node's Prometheus metrics, produced with `prometheus-client`.
//!
//! The gauges are read at scrape time by custom [`Collector`]s: the node's standing
//! (controller Raft, broker registration) and, per hosted partition replica, its log and
//! replication state; the data path pays nothing for them. The data plane's request and
//! byte counters (`runnel_broker::metrics`) are atomic adds the front-ends make.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use runnel_broker::Broker;
use runnel_broker::group::GroupCoordinator;
use runnel_broker::replica::ReplicaManager;
use runnel_controller::controller::ControllerMetrics;

use super::http::Probes;
use super::process;

/// The registry every scrape encodes: the node and process collectors; the controller's
/// metrics on a controller; the partition, follower-lag and group collectors and the data
/// plane's and replica manager's metrics on a broker. Called on the node's runtime, whose
/// task counts it reports.
pub(crate) fn registry(
    probes: Probes,
    controller: Option<&ControllerMetrics>,
    broker: Option<&Broker>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { probes }));
    registry.register_collector(Box::new(ProcessCollector { runtime: tokio::runtime::Handle::current() }));
    if let Some(controller) = controller {
        controller.register(&mut registry);
    }
    if let Some(broker) = broker {
        registry.register_collector(Box::new(PartitionCollector { replicas: Arc::clone(broker.replicas()) }));
        registry.register_collector(Box::new(GroupCollector { groups: Arc::clone(broker.groups()) }));
        broker.plane().metrics().register(&mut registry);
        broker.replicas().metrics().register(&mut registry);
    }
    registry
}

/// Encodes one unlabelled gauge.
fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    gauge.encode(metric)
}

/// The node's standing: id, readiness, controller Raft and broker registration.
#[derive(Debug)]
struct NodeCollector {
    probes: Probes,
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let probes = &self.probes;
        let e = &mut encoder;
        gauge(e, "runnel_node_id", "This node's id.", u64::from(probes.node_id))?;
        gauge(e, "runnel_ready", "1 when /readyz answers 200.", u64::from(probes.readiness().is_ok()))?;
        if let Some(raft) = &probes.raft {
            let m = raft.metrics().borrow().clone();
            let applied = m.last_applied.map_or(0, |l| l.index);
            let last = m.last_log_index.unwrap_or(0);
            // openraft 0.9 does not report the commit index: the leader derives it from its
            // quorum's matched indexes; a follower reports its applied index (a lower bound).
            let commit = match &m.replication {
                Some(replication) => {
                    let mut matched: Vec<u64> =
                        replication.values().map(|l| l.as_ref().map_or(0, |l| l.index)).collect();
                    matched.sort_unstable_by(|a, b| b.cmp(a));
                    matched.get(matched.len() / 2).copied().unwrap_or(applied).max(applied)
                }
                None => applied,
            };
            gauge(e, "runnel_raft_term", "The controller's current Raft term.", m.current_term)?;
            gauge(e, "runnel_raft_last_log_index", "The last Raft log index stored here.", last)?;
            gauge(e, "runnel_raft_commit_index", "Known committed index (followers: applied).", commit)?;
            gauge(e, "runnel_raft_applied_index", "The last Raft log index applied here.", applied)?;
            let leads = m.state == openraft::ServerState::Leader;
            gauge(
                e,
                "runnel_raft_is_leader",
                "1 when this node leads the controller quorum.",
                u64::from(leads),
            )?;
            gauge(
                e,
                "runnel_raft_leader_id",
                "The known controller leader, 0 for none.",
                m.current_leader.unwrap_or(0),
            )?;
        }
        if let Some(broker) = &probes.broker {
            let s = broker.borrow().clone();
            gauge(e, "runnel_broker_epoch", "The broker epoch, 0 before registration.", s.epoch)?;
            gauge(
                e,
                "runnel_broker_fenced",
                "1 while the controller fences this broker.",
                u64::from(s.fenced),
            )?;
            gauge(e, "runnel_broker_metadata_version", "The metadata version cached.", s.metadata_version)?;
        }
        Ok(())
    }
}

/// One hosted replica, as read at a scrape.
#[derive(Debug)]
struct Row {
    topic: String,
    partition: u32,
    log_end: u64,
    high_watermark: u64,
    log_start: u64,
    size_bytes: u64,
    leader: bool,
    replicas: usize,
    isr: usize,
    min_isr: usize,
    producers: usize,
}

/// Per hosted partition replica: log offsets and size, leadership and ISR health, read from
/// the broker's replica manager at each scrape.
#[derive(Debug)]
struct PartitionCollector {
    replicas: Arc<ReplicaManager>,
}

impl PartitionCollector {
    fn rows(&self) -> Vec<Row> {
        let me = self.replicas.broker_id();
        let mut rows: Vec<Row> = self
            .replicas
            .partitions()
            .into_iter()
            .filter_map(|p| {
                let state = p.state();
                if !state.hosted {
                    return None;
                }
                let tp = p.topic_partition();
                let log = p.log();
                Some(Row {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    log_end: log.log_end(),
                    high_watermark: p.high_watermark(),
                    log_start: log.log_start(),
                    size_bytes: log.size_bytes(),
                    leader: state.leader == Some(me),
                    replicas: state.replicas.len(),
                    isr: state.isr.len(),
                    min_isr: p.limits().min_insync_replicas,
                    producers: p.producer_count(),
                })
            })
            .collect();
        rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        rows
    }
}

type Value = fn(&Row) -> u64;

/// The partition gauges: name, help, value.
const PARTITION_GAUGES: [(&str, &str, Value); 10] = [
    ("runnel_partition_log_end_offset", "The offset after the last record in this replica's log.", |r| {
        r.log_end
    }),
    ("runnel_partition_high_watermark", "The high watermark (committed end) this replica knows.", |r| {
        r.high_watermark
    }),
    ("runnel_partition_log_start_offset", "The first offset retained in this replica's log.", |r| {
        r.log_start
    }),
    ("runnel_partition_size_bytes", "The bytes of this replica's log segments.", |r| r.size_bytes),
    ("runnel_partition_is_leader", "1 when this broker leads the partition.", |r| u64::from(r.leader)),
    ("runnel_partition_replicas", "The partition's assigned replicas.", |r| r.replicas as u64),
    ("runnel_partition_isr_size", "The partition's in-sync replicas.", |r| r.isr as u64),
    (
        "runnel_partition_under_replicated",
        "1 on the leader while the ISR is smaller than the replica set.",
        |r| u64::from(r.leader && r.isr < r.replicas),
    ),
    (
        "runnel_partition_under_min_isr",
        "1 on the leader while the ISR is smaller than min.insync.replicas.",
        |r| u64::from(r.leader && r.isr < r.min_isr),
    ),
    (
        "runnel_partition_producers",
        "Idempotent producers this replica remembers (capped per partition; expired after producer.id.expiration.ms).",
        |r| r.producers as u64,
    ),
];

impl Collector for PartitionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let rows = self.rows();
        for (name, help, value) in PARTITION_GAUGES {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for row in &rows {
                let partition = row.partition.to_string();
                let labels = [("topic", row.topic.as_str()), ("partition", partition.as_str())];
                ConstGauge::new(value(row)).encode(metric.encode_family(&labels)?)?;
            }
        }
        // On the leader, per follower: lag in records and time since last caught up.
        let mut lags: Vec<(String, String, String, u64, f64)> = Vec::new();
        for p in self.replicas.partitions() {
            let tp = p.topic_partition();
            for lag in p.follower_lags() {
                lags.push((
                    tp.topic.to_string(),
                    tp.partition.to_string(),
                    lag.follower.to_string(),
                    lag.records,
                    lag.since_caught_up.as_secs_f64(),
                ));
            }
        }
        lags.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
        let mut records = encoder.encode_descriptor(
            "runnel_partition_follower_lag_records",
            "On the leader: records between a follower's last fetch offset and the log end.",
            None,
            MetricType::Gauge,
        )?;
        for (topic, partition, follower, n, _) in &lags {
            let labels = [
                ("topic", topic.as_str()),
                ("partition", partition.as_str()),
                ("follower", follower.as_str()),
            ];
            ConstGauge::new(*n).encode(records.encode_family(&labels)?)?;
        }
        let mut seconds = encoder.encode_descriptor(
            "runnel_partition_follower_lag_seconds",
            "On the leader: time since a follower last fetched up to the log end (the ISR lag clock).",
            None,
            MetricType::Gauge,
        )?;
        for (topic, partition, follower, _, s) in &lags {
            let labels = [
                ("topic", topic.as_str()),
                ("partition", partition.as_str()),
                ("follower", follower.as_str()),
            ];
            ConstGauge::new(*s).encode(seconds.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The consumer groups this broker coordinates: members, rebalances, committed-offset lag.
#[derive(Debug)]
struct GroupCollector {
    groups: Arc<GroupCoordinator>,
}

impl Collector for GroupCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let groups = self.groups.group_metrics();
        let mut members = encoder.encode_descriptor(
            "runnel_group_members",
            "Members of a consumer group this broker coordinates (either protocol).",
            None,
            MetricType::Gauge,
        )?;
        for g in &groups {
            ConstGauge::new(g.members as u64)
                .encode(members.encode_family(&[("group", g.group_id.as_str())])?)?;
        }
        let mut rebalances = encoder.encode_descriptor(
            "runnel_group_rebalances",
            "Rebalances of a group since this broker became its coordinator (group epoch plus classic generation).",
            None,
            MetricType::Counter,
        )?;
        for g in &groups {
            ConstCounter::new(g.rebalances)
                .encode(rebalances.encode_family(&[("group", g.group_id.as_str())])?)?;
        }
        let mut lag = encoder.encode_descriptor(
            "runnel_group_lag_records",
            "High watermark known on this coordinator minus the group's committed offset, per partition hosted here.",
            None,
            MetricType::Gauge,
        )?;
        for g in &groups {
            for (topic, partition, _, records) in &g.lags {
                let Some(records) = records else { continue };
                let partition = partition.to_string();
                let labels = [
                    ("group", g.group_id.as_str()),
                    ("topic", topic.as_str()),
                    ("partition", partition.as_str()),
                ];
                ConstGauge::new(*records).encode(lag.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The process, read from `/proc/self` at each scrape (Linux only; elsewhere omitted), with
/// the standard names, and the node runtime's tokio task and worker counts.
#[derive(Debug)]
struct ProcessCollector {
    runtime: tokio::runtime::Handle,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        if let Some(p) = process::read() {
            let counter = |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64| {
                let metric = e.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(v).encode(metric)
            };
            let gauge = |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64| {
                let metric = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(metric)
            };
            counter(e, "process_cpu_seconds", "User and system CPU time spent, in seconds.", p.cpu_seconds)?;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                p.resident_bytes as f64,
            )?;
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                p.virtual_bytes as f64,
            )?;
            gauge(e, "process_open_fds", "Open file descriptors.", p.open_fds as f64)?;
            if let Some(max) = p.max_fds {
                gauge(e, "process_max_fds", "The open file descriptor limit.", max as f64)?;
            }
            gauge(
                e,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                p.start_time_seconds,
            )?;
        }
        let m = self.runtime.metrics();
        gauge(
            e,
            "runnel_tokio_workers",
            "Worker threads of the node's tokio runtime.",
            m.num_workers() as u64,
        )?;
        gauge(
            e,
            "runnel_tokio_alive_tasks",
            "Tasks alive on the node's tokio runtime.",
            m.num_alive_tasks() as u64,
        )?;
        Ok(())
    }
}
