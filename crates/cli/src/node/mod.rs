//! `runnel node`: one process running the controller role, the broker role, or both, plus
//! the HTTP probes. Tasks are owned here and stopped in two phases on SIGTERM or SIGINT.

pub(crate) mod config;
mod console;
mod http;
mod metrics;
mod process;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use runnel_broker::{Broker, BrokerConfig};
use runnel_controller::controller::incoming::CappedIncoming;
use runnel_controller::controller::{Controller, ControllerConfig};
use runnel_proto::security::Authenticated;
use runnel_storage::LogConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

pub(crate) use config::{LogFormat, NodeArgs, NodeSettings};

/// How long each phase of shutdown waits before aborting what is left.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// Runs the node until a signal; returns once everything stopped.
pub(crate) async fn run(settings: NodeSettings) -> anyhow::Result<()> {
    let id = settings.id;
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    let grpc = TcpListener::bind(&settings.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC listener {}", settings.grpc_addr))?;
    let http = TcpListener::bind(&settings.http_addr)
        .await
        .with_context(|| format!("binding the HTTP listener {}", settings.http_addr))?;
    let internal = match &settings.internal_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the internal gRPC listener {addr}"))?,
        ),
        None => None,
    };
    let grpc_addr = grpc.local_addr()?;
    let internal_shown = match &internal {
        Some(listener) => format!(" internal={}", listener.local_addr()?),
        None => String::new(),
    };
    let http_addr = http.local_addr()?;
    let mut kafka = Vec::new();
    if settings.roles.broker {
        // The SSL listeners' handshakes use the node's certificate (resolve checked it is set).
        let acceptor = match &settings.tls {
            Some(tls) if !settings.kafka_ssl_listeners.is_empty() => {
                Some(tokio_rustls::TlsAcceptor::from(tls.rustls_server().context("the SSL Kafka listener")?))
            }
            _ => None,
        };
        for listener in &settings.kafka_listeners {
            let tls =
                if settings.kafka_ssl_listeners.contains(&listener.name) { acceptor.clone() } else { None };
            for socket in kafka_listeners(&listener.addr).await? {
                kafka.push(runnel_kafka::BoundListener {
                    name: listener.name.clone(),
                    socket,
                    tls: tls.clone(),
                });
            }
        }
    }

    // With --auth, the node's view of the users and ACLs: kept current by its controller
    // (a controller node applies the metadata first) or else by its broker's metadata watch.
    let auth = settings.auth.then(|| {
        let super_users = settings
            .super_users
            .iter()
            .map(|u| runnel_auth::Principal::user(u.trim_start_matches("User:")))
            .collect();
        Arc::new(runnel_auth::AuthStore::new(super_users))
    });

    // The broker starts first (it locks and lists its log directory), so that the one gRPC
    // server of the node serves its client API from the start.
    let broker = if settings.roles.broker {
        Some(
            Broker::start(BrokerConfig {
                id,
                grpc_addr: settings.grpc_advertised_addr.clone(),
                kafka_addr: settings.kafka_endpoint.clone(),
                http_addr: settings.http_addr.clone(),
                internal_addr: settings.internal_advertised_addr.clone(),
                tls: settings.tls.clone(),
                controllers: settings.voters.iter().map(|v| v.addr.clone()).collect(),
                heartbeat_interval: Duration::from_millis(settings.heartbeat_interval_ms),
                request_timeout: Duration::from_millis(settings.session_timeout_ms.max(1_000)),
                log_dir: settings.data_dir.join("logs"),
                log_defaults: LogConfig::default(),
                retention_check_interval: Duration::from_millis(settings.retention_check_interval_ms),
                producer_id_expiration: Duration::from_millis(settings.producer_id_expiration_ms),
                replica_lag_time: Duration::from_millis(settings.replica_lag_time_ms),
                offsets_topic_partitions: settings.offsets_topic_partitions,
                auth: if settings.roles.controller { None } else { auth.clone() },
            })
            .context("starting the broker")?,
        )
    } else {
        None
    };
    // Reflection lets generic gRPC tools (grpcurl, Postman) list and call every service.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(runnel_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the gRPC reflection service")?;
    // Client routes; the inter-node ones go beside them unless the node has an internal
    // listener for them.
    let mut routes = Routes::new(reflection);
    let mut internal_routes = Routes::default();
    if let Some(broker) = &broker {
        routes = match &auth {
            Some(store) => routes
                .add_service(Authenticated::new(broker.service(), Arc::clone(store)))
                .add_service(Authenticated::new(broker.group_service(), Arc::clone(store))),
            None => routes.add_service(broker.service()).add_service(broker.group_service()),
        };
        let replication = broker.replication_service();
        if internal.is_none() {
            routes = routes.add_service(replication);
        } else {
            internal_routes = internal_routes.add_service(replication);
        }
    }
    let planes = match internal {
        Some(internal) => Planes::Split { internal: (internal, internal_routes), client: (grpc, routes) },
        None => Planes::One(grpc, routes),
    };

    let cancel = CancellationToken::new();
    let mut grpc_tasks = Vec::new();
    let controller = if settings.roles.controller {
        let mut config = ControllerConfig::new(
            u64::from(id),
            settings.data_dir.join("controller"),
            settings.voters.clone(),
        );
        config.heartbeat_interval = Duration::from_millis(settings.raft_heartbeat_interval_ms);
        config.election_timeout_min = Duration::from_millis(settings.election_timeout_min_ms);
        config.election_timeout_max = Duration::from_millis(settings.election_timeout_max_ms);
        config.service.session_timeout = Duration::from_millis(settings.session_timeout_ms);
        config.service.restore_preferred_leaders = settings.restore_preferred_leaders;
        // A new controller leader fences brokers that have not reached it within two broker
        // heartbeats plus 300 ms to find it: the one on the dead leader's host never will.
        config.service.session_grace = Duration::from_millis(2 * settings.heartbeat_interval_ms + 300)
            .min(config.service.session_timeout);
        config.shutdown_timeout = SHUTDOWN_PATIENCE;
        config.http2_stream_window = Some(runnel_broker::service::HTTP2_STREAM_WINDOW);
        config.http2_connection_window = Some(runnel_broker::service::HTTP2_CONNECTION_WINDOW);
        config.max_connections = settings.max_connections;
        config.tls = settings.tls.clone();
        config.auth = auth.clone();
        let started = match planes {
            Planes::One(listener, routes) => Controller::start_serving(config, listener, routes).await,
            Planes::Split { internal, client } => Controller::start_split(config, internal, client).await,
        };
        Some(started.context("starting the controller")?)
    } else {
        // A broker-only node serves its own gRPC listeners.
        // (name, listener, routes, whether TLS requires a client certificate there)
        let listeners = match planes {
            Planes::One(listener, routes) => vec![("gRPC", listener, routes, false)],
            Planes::Split { internal, client } => {
                vec![
                    ("client gRPC", client.0, client.1, false),
                    ("internal gRPC", internal.0, internal.1, true),
                ]
            }
        };
        for (what, listener, routes, require_client_cert) in listeners {
            let server = runnel_controller::controller::grpc_server_tls(
                Some(runnel_broker::service::HTTP2_STREAM_WINDOW),
                Some(runnel_broker::service::HTTP2_CONNECTION_WINDOW),
                settings.tls.as_ref(),
                require_client_cert,
            )
            .context("TLS")?;
            let incoming = CappedIncoming::new(listener, settings.max_connections, what);
            grpc_tasks.push(tokio::spawn(runnel_controller::controller::serve(
                u64::from(id),
                what,
                incoming,
                routes,
                server,
                cancel.clone(),
            )));
        }
        None
    };
    let kafka_cancel = CancellationToken::new();
    let kafka_task = broker.as_ref().map(|broker| {
        let mut config = runnel_kafka::KafkaConfig::new(id);
        config.auto_create_topics = settings.auto_create_topics_enable;
        config.num_partitions = settings.num_partitions;
        config.default_replication_factor = settings.default_replication_factor;
        config.request_max_bytes = settings.socket_request_max_bytes;
        config.max_connections = settings.max_connections;
        config.connections_max_idle = Duration::from_millis(settings.connections_max_idle_ms);
        let context = Arc::new(runnel_kafka::Context {
            config,
            plane: Arc::clone(broker.plane()),
            groups: Arc::clone(broker.groups()),
            admin: broker.admin().clone(),
            auth: auth.clone(),
        });
        tokio::spawn(runnel_kafka::serve(kafka, context, kafka_cancel.clone()))
    });
    let kafka_shown =
        if settings.roles.broker { format!(" kafka={}", settings.kafka_addr) } else { String::new() };
    println!("runnel node {id} ready: grpc={grpc_addr}{internal_shown} http={http_addr}{kafka_shown}");
    std::io::stdout().flush()?;

    let probes = http::Probes {
        node_id: id,
        raft: controller.as_ref().map(|c| c.raft().clone()),
        broker: broker.as_ref().map(Broker::subscribe),
    };
    let registry =
        metrics::registry(probes.clone(), controller.as_ref().map(|c| c.metrics()), broker.as_ref());
    let console = console::Console {
        probes: probes.clone(),
        voters: settings.voters.iter().filter_map(|v| u32::try_from(v.id).ok()).collect(),
        broker: broker.as_ref().map(|b| console::BrokerParts {
            plane: Arc::clone(b.plane()),
            replicas: Arc::clone(b.replicas()),
            groups: Arc::clone(b.groups()),
        }),
    };
    let site = Arc::new(http::Site { probes, registry, console, auth: auth.clone() });
    let http_tls = match (&settings.tls, settings.http_tls) {
        (Some(tls), true) => {
            Some(tokio_rustls::TlsAcceptor::from(tls.rustls_server().context("the HTTP listener's TLS")?))
        }
        _ => None,
    };
    let mut http_task = tokio::spawn(http::serve(http, http_tls, site, cancel.clone()));

    let stopped_by = tokio::select! {
        signal = signal() => signal?,
        _ = &mut http_task => "the HTTP server stopping",
    };
    tracing::info!("node {id}: shutting down on {stopped_by}");

    // Phase one: stop taking work (Kafka clients are cut off, the broker stops heartbeating,
    // probes stop answering).
    kafka_cancel.cancel();
    if let Some(mut task) = kafka_task
        && tokio::time::timeout(SHUTDOWN_PATIENCE, &mut task).await.is_err()
    {
        task.abort();
    }
    if let Some(broker) = broker {
        broker.shutdown(SHUTDOWN_PATIENCE).await;
    }
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_PATIENCE, &mut http_task).await.is_err() {
        http_task.abort();
    }
    // Phase two: the controller (its own cancel, bounded wait, abort, then Raft).
    if let Some(controller) = controller {
        controller.shutdown().await;
    }
    for task in grpc_tasks {
        if tokio::time::timeout(SHUTDOWN_PATIENCE, task).await.is_err() {
            tracing::warn!("node {id}: a gRPC server did not stop in time");
        }
    }
    tracing::info!("node {id}: stopped");
    Ok(())
}

/// The node's gRPC listeners and what each serves.
enum Planes {
    /// One listener for clients and the other nodes.
    One(TcpListener, Routes),
    /// Inter-node calls on `internal`, client calls on `client` (`--internal-addr`).
    Split { internal: (TcpListener, Routes), client: (TcpListener, Routes) },
}

/// The Kafka listeners for `addr`: the address itself and, for a loopback host, the other
/// loopback family on the same port (librdkafka and Python may resolve `localhost` to
/// `::1` or to `127.0.0.1`). Only the first must bind.
async fn kafka_listeners(addr: &str) -> anyhow::Result<Vec<TcpListener>> {
    let first =
        TcpListener::bind(addr).await.with_context(|| format!("binding the Kafka listener {addr}"))?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    if bound.ip().is_loopback() {
        let other: std::net::IpAddr = if bound.is_ipv4() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        match TcpListener::bind((other, bound.port())).await {
            Ok(l) => listeners.push(l),
            Err(e) => tracing::debug!("not listening for Kafka on {other} port {}: {e}", bound.port()),
        }
    }
    Ok(listeners)
}

/// Waits for SIGTERM or SIGINT; names the one that came.
async fn signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Sets up `tracing` for a node: `RUNNEL_LOG` filters (default info), text or JSON lines on
/// stderr.
pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUNNEL_LOG")
        .unwrap_or_else(|_| "info,openraft=warn,sled=warn".into());
    // Colour only for a terminal: logs redirected to files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
