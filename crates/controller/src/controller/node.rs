//! [`Controller`]: everything one controller node runs, started from a [`ControllerConfig`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runnel_auth::AuthStore;
use runnel_proto::security::Authenticated;
use runnel_proto::tls::{NodeTls, PeerCheck};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::Server;

use super::incoming::{CappedIncoming, GRPC_CONNECTIONS_MAX_DEFAULT};
use super::machine::{MetadataMachine, MetadataResponse};
use super::metrics::{ControllerMetrics, count_leader_changes};
use super::planes::{BROKER_ONLY_METHODS, ClientFacing};
use super::service::{ControllerGrpcService, ServiceConfig, Shared, liveness_task};
use crate::metadata::{ClusterMetadata, MetadataDelta};
use crate::raft::{
    Contact, ElectorTiming, GrpcNetworkFactory, MachineEvent, MachineView, NetworkConfig, Node, NodeId, Raft,
    RaftGrpcService, SledStore, StoreError, controller_config, elector_task,
};

/// One controller voter: its node id and the `host:port` of its internal gRPC listener (its
/// only one when the node's planes share a listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    /// The node id.
    pub id: NodeId,
    /// Where its RaftService and whole ControllerService are served.
    pub addr: String,
}

/// Parses a voters list, `id@host:port` separated by commas, as in
/// `--controller-voters 1@h1:50051,2@h2:50052,3@h3:50053`.
pub fn parse_voters(list: &str) -> Result<Vec<Voter>, StartError> {
    let bad = |why: String| StartError::Config(format!("controller voters {list:?}: {why}"));
    let mut voters: Vec<Voter> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('@').ok_or_else(|| bad(format!("{item:?} is not id@host:port")))?;
        let id: NodeId = id.parse().map_err(|_| bad(format!("{id:?} is not a node id")))?;
        if !addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
            return Err(bad(format!("{addr:?} is not host:port")));
        }
        if voters.iter().any(|v| v.id == id) {
            return Err(bad(format!("node id {id} appears twice")));
        }
        voters.push(Voter { id, addr: addr.to_owned() });
    }
    if voters.is_empty() {
        return Err(bad("no voters".into()));
    }
    Ok(voters)
}

/// Everything a controller node needs to start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// This node's id; it must be one of `voters`.
    pub node_id: NodeId,
    /// Where the Raft store (sled) lives.
    pub data_dir: PathBuf,
    /// The full voter set, identical on every node.
    pub voters: Vec<Voter>,
    /// Labels the cluster in openraft's logs.
    pub cluster_name: String,
    /// Raft leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Raft election timeout range, lower bound.
    pub election_timeout_min: Duration,
    /// Raft election timeout range, upper bound.
    pub election_timeout_max: Duration,
    /// The service's write timeout, broker session timeout and switches.
    pub service: ServiceConfig,
    /// How long shutdown waits for tasks to finish before aborting them.
    pub shutdown_timeout: Duration,
    /// HTTP/2 flow-control window per stream of the node's gRPC server (`None`: hyper's
    /// default). The node raises it for the broker's data plane, which shares the server.
    pub http2_stream_window: Option<u32>,
    /// HTTP/2 flow-control window per connection (`None`: hyper's default).
    pub http2_connection_window: Option<u32>,
    /// Connections open at once on each of the node's gRPC listeners; more are closed as they
    /// come (the node's `--max-connections`).
    pub max_connections: usize,
    /// TLS on every listener and channel, and node identities checked on inter-node calls.
    pub tls: Option<NodeTls>,
    /// Client authentication and ACLs on the client listener, when set: the controller keeps
    /// this store's users and ACLs in step with its applied image, and the client listener
    /// (which must be apart, [`Controller::start_split`]) requires credentials.
    pub auth: Option<Arc<AuthStore>>,
}

impl ControllerConfig {
    /// A config with the default timers.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>, voters: Vec<Voter>) -> Self {
        use crate::raft::config::{ELECTION_TIMEOUT_MAX_MS, ELECTION_TIMEOUT_MIN_MS, HEARTBEAT_INTERVAL_MS};
        Self {
            node_id,
            data_dir: data_dir.into(),
            voters,
            cluster_name: "runnel".into(),
            heartbeat_interval: Duration::from_millis(HEARTBEAT_INTERVAL_MS),
            election_timeout_min: Duration::from_millis(ELECTION_TIMEOUT_MIN_MS),
            election_timeout_max: Duration::from_millis(ELECTION_TIMEOUT_MAX_MS),
            service: ServiceConfig::default(),
            shutdown_timeout: Duration::from_secs(5),
            http2_stream_window: None,
            http2_connection_window: None,
            max_connections: GRPC_CONNECTIONS_MAX_DEFAULT,
            tls: None,
            auth: None,
        }
    }
}

/// Most concurrent HTTP/2 streams one gRPC client connection may open (the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS; hyper's default is unlimited). A client over it waits for
/// a stream to end. Far above what Runnel's own clients open per connection.
pub const GRPC_STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// HTTP/2 PING interval on idle gRPC connections (and the TCP keepalive time): a connection
/// whose peer vanished (a host lost, not a process: the kernel does not reset) is closed,
/// not kept with its streams' buffers forever.
pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the peer has to answer a keepalive PING.
pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest request header block accepted (gRPC metadata), against header-list bombs.
pub const GRPC_HEADER_LIST_BYTES_MAX: u32 = 64 * 1024;

/// The node's gRPC server with its limits: flow-control windows as given (`None`: hyper's
/// defaults), [`GRPC_STREAMS_PER_CONNECTION_MAX`], HTTP/2 keepalives, and
/// [`GRPC_HEADER_LIST_BYTES_MAX`]. Every gRPC listener of a node is built here and fed by a
/// [`CappedIncoming`] (connection cap, TCP keepalive, nodelay: a server fed its connections
/// ignores its own TCP settings).
pub fn grpc_server(stream_window: Option<u32>, connection_window: Option<u32>) -> Server {
    Server::builder()
        .initial_stream_window_size(stream_window)
        .initial_connection_window_size(connection_window)
        .max_concurrent_streams(GRPC_STREAMS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(GRPC_HEADER_LIST_BYTES_MAX)
}

/// [`grpc_server`] serving TLS with `tls` when set (see [`NodeTls::server`]).
pub fn grpc_server_tls(
    stream_window: Option<u32>,
    connection_window: Option<u32>,
    tls: Option<&NodeTls>,
    require_client_cert: bool,
) -> Result<Server, tonic::transport::Error> {
    let server = grpc_server(stream_window, connection_window);
    match tls {
        Some(tls) => server.tls_config(tls.server(require_client_cert)),
        None => Ok(server),
    }
}

/// Why a controller node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error("invalid controller config: {0}")]
    Config(String),
    /// The Raft store did not open (locked by another process, corrupt, another format).
    #[error("cannot open the raft store: {0}")]
    Store(#[from] StoreError),
    /// Binding the listener failed.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// openraft refused to start or initialize.
    #[error("raft: {0}")]
    Raft(String),
}

/// A running controller node: the Raft store, openraft, the gRPC server (RaftService and
/// ControllerService on one port) and the liveness task.
pub struct Controller {
    id: NodeId,
    addr: SocketAddr,
    raft: Raft<MetadataMachine>,
    view: MachineView<MetadataMachine>,
    metrics: ControllerMetrics,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("id", &self.id).field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Controller {
    /// Binds `listen` and starts the node (see [`Controller::start`]).
    pub async fn bind(config: ControllerConfig, listen: SocketAddr) -> Result<Self, StartError> {
        Self::start(config, TcpListener::bind(listen).await?).await
    }

    /// Starts the node, serving on `listener`.
    ///
    /// On a fresh store the node initializes Raft with the full voter set. Every node does
    /// this; openraft documents that initializing several nodes with the same membership is
    /// safe (they write the same first entry), and the ones that lose the race are told the
    /// node is already initialized, which is ignored. A store that holds a vote or a log is
    /// never initialized again.
    pub async fn start(config: ControllerConfig, listener: TcpListener) -> Result<Self, StartError> {
        Self::start_serving(config, listener, Routes::default()).await
    }

    /// Like [`Controller::start`], serving `extra` gRPC services on the same listener beside
    /// the controller's own (a node that is also a broker serves its client API there).
    pub async fn start_serving(
        config: ControllerConfig,
        listener: TcpListener,
        extra: Routes,
    ) -> Result<Self, StartError> {
        Self::start_planes(config, (listener, extra), None).await
    }

    /// Starts the node with its planes apart: Raft and the whole controller service on
    /// `internal` (the address in the voters list, for the other nodes only) beside its extra
    /// routes, and on `client` its routes plus the controller's service less the calls only
    /// brokers make ([`ClientFacing`], [`BROKER_ONLY_METHODS`]).
    pub async fn start_split(
        config: ControllerConfig,
        internal: (TcpListener, Routes),
        client: (TcpListener, Routes),
    ) -> Result<Self, StartError> {
        Self::start_planes(config, internal, Some(client)).await
    }

    async fn start_planes(
        config: ControllerConfig,
        (listener, extra): (TcpListener, Routes),
        client: Option<(TcpListener, Routes)>,
    ) -> Result<Self, StartError> {
        let id = config.node_id;
        if !config.voters.iter().any(|v| v.id == id) {
            return Err(StartError::Config(format!("node {id} is not in the voters list")));
        }
        let mut raft_config =
            controller_config(config.cluster_name.clone()).map_err(|e| StartError::Config(e.to_string()))?;
        raft_config.heartbeat_interval = millis(config.heartbeat_interval);
        raft_config.election_timeout_min = millis(config.election_timeout_min);
        raft_config.election_timeout_max = millis(config.election_timeout_max);
        // Elections are started by the elector task below, not by openraft's own timer.
        raft_config.enable_elect = false;
        let raft_config = raft_config.validate().map_err(|e| StartError::Config(e.to_string()))?;

        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::<MetadataMachine>::open(&dir))
            .await
            .map_err(|e| StartError::Raft(format!("opening the store: {e}")))??;
        let view = store.state_machine.view();
        let tls = config.tls.clone();
        let network_config =
            NetworkConfig { tls: tls.as_ref().map(NodeTls::client), ..NetworkConfig::default() };
        let network = GrpcNetworkFactory::new(id, network_config);
        let peers = PeerCheck::for_tls(tls.is_some());
        let mut service_config = config.service.clone();
        service_config.peers = peers;
        service_config.tls = tls.as_ref().map(NodeTls::client);
        service_config.send_security = client.is_some();
        let raft = openraft::Raft::new(id, Arc::new(raft_config), network, store.log, store.state_machine)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let metrics = ControllerMetrics::new(view.clone());
        let shared =
            Shared::new(id, raft.clone(), view.clone(), service_config, cancel.clone(), metrics.clone());
        let mut tasks = JoinSet::new();
        tasks.spawn(count_leader_changes(metrics.clone(), raft.metrics(), cancel.clone()));
        let contact = Arc::new(Contact::default());
        let raft_service = RaftGrpcService::new(raft.clone())
            .with_contact(Arc::clone(&contact))
            .with_peer_check(peers)
            .into_server();
        let timing = ElectorTiming {
            lease: config.election_timeout_max,
            stagger: config.election_timeout_max.saturating_sub(config.election_timeout_min),
        };
        tasks.spawn(elector_task(id, raft.clone(), contact, timing, cancel.clone()));
        let controller_service = ControllerGrpcService::new(Arc::clone(&shared)).into_server();
        // With TLS, the internal listener of a split node requires a client certificate;
        // one shared with clients asks for it, and inter-node calls without one are refused.
        let server = |require_client_cert: bool| {
            grpc_server_tls(
                config.http2_stream_window,
                config.http2_connection_window,
                tls.as_ref(),
                require_client_cert,
            )
            .map_err(|e| StartError::Config(format!("TLS: {e}")))
        };
        let max = config.max_connections;
        let split = client.is_some();
        if let Some(store) = &config.auth {
            if !split {
                return Err(StartError::Config(
                    "authentication needs the client listener apart from the internal one (--internal-addr)"
                        .into(),
                ));
            }
            tasks.spawn(feed_auth_store(view.clone(), Arc::clone(store), cancel.clone()));
        }
        if let Some((client, client_routes)) = client {
            let facing = ClientFacing::new(controller_service.clone(), &BROKER_ONLY_METHODS);
            let routes = match &config.auth {
                Some(store) => client_routes.add_service(Authenticated::new(facing, Arc::clone(store))),
                None => client_routes.add_service(facing),
            };
            tasks.spawn(serve(
                id,
                "client",
                CappedIncoming::new(client, max, "client"),
                routes,
                server(false)?,
                cancel.clone(),
            ));
        }
        let routes = extra.add_service(raft_service).add_service(controller_service);
        let incoming = CappedIncoming::new(listener, max, "internal");
        tasks.spawn(serve(id, "internal", incoming, routes, server(split)?, cancel.clone()));
        tasks.spawn(liveness_task(shared));

        let initialized = raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized {
            let members: BTreeMap<NodeId, Node> =
                config.voters.iter().map(|v| (v.id, Node { addr: v.addr.clone() })).collect();
            match raft.initialize(members).await {
                Ok(()) => tracing::info!("controller {id}: initialized a fresh cluster"),
                Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(
                    _,
                ))) => {
                    tracing::info!("controller {id}: the cluster formed before this node initialized it");
                }
                Err(e) => return Err(StartError::Raft(format!("initialize: {e}"))),
            }
        }
        Ok(Self { id, addr, raft, view, metrics, cancel, tasks, shutdown_timeout: config.shutdown_timeout })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address the node serves gRPC on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's openraft handle (metrics, leadership).
    pub fn raft(&self) -> &Raft<MetadataMachine> {
        &self.raft
    }

    /// This node's controller metrics, to register in a node's registry.
    pub fn metrics(&self) -> &ControllerMetrics {
        &self.metrics
    }

    /// A copy of this node's applied metadata image (it may lag the leader's).
    pub fn image(&self) -> Result<ClusterMetadata, StoreError> {
        self.view.read(|m, _| m.image.clone())
    }

    /// Stops the node: cancel every task, wait up to the shutdown timeout, abort the rest,
    /// then stop Raft. Returns once the store is released (it can be opened again).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "controller {}: tasks still running after {:?}; aborting",
                self.id,
                self.shutdown_timeout
            );
            self.tasks.shutdown().await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("controller {}: raft shutdown: {e}", self.id);
        }
    }
}

/// Keeps `store`'s users and ACLs those of the applied image: at start, after each change
/// to them, and after a snapshot replaced the image.
async fn feed_auth_store(
    view: MachineView<MetadataMachine>,
    store: Arc<AuthStore>,
    cancel: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let subscribed = view.subscribe(|m, _| m.image.security().clone());
        let (security, mut events) = match subscribed {
            Ok(subscribed) => subscribed,
            Err(e) => {
                tracing::error!("the users and ACLs cannot be read from the metadata: {e}");
                return;
            }
        };
        store.set(security);
        loop {
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Ok(MachineEvent::Applied { response: MetadataResponse::Command(Ok(applied)), .. }) => {
                    for delta in &applied.deltas {
                        if let MetadataDelta::SecurityChanged(security) = delta {
                            store.set(security.clone());
                        }
                    }
                }
                Ok(MachineEvent::Applied { .. }) => {}
                Ok(MachineEvent::Replaced) | Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
    }
}

/// Serves `routes` with `server` on `incoming` until `stop`: every gRPC listener of a node,
/// the controller's and a broker-only node's alike.
pub async fn serve(
    id: NodeId,
    plane: &'static str,
    incoming: CappedIncoming,
    routes: Routes,
    mut server: Server,
    stop: CancellationToken,
) {
    let served = server.add_routes(routes).serve_with_incoming_shutdown(incoming, stop.cancelled_owned());
    if let Err(e) = served.await {
        tracing::error!("node {id}: gRPC server ({plane} listener) failed: {e}");
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voters_parse_and_bad_lists_are_refused() {
        let voters = parse_voters("1@a:1, 2@b:2,3@127.0.0.1:50053").expect("valid");
        assert_eq!(voters.len(), 3);
        assert_eq!(voters[2], Voter { id: 3, addr: "127.0.0.1:50053".into() });
        for bad in ["", "1@a", "x@a:1", "1@a:1,1@b:2", "1a:1"] {
            assert!(parse_voters(bad).is_err(), "{bad}");
        }
    }
}
