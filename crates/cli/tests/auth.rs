//! Client authentication and ACLs on the gRPC API (`runnel node --auth`), through the CLI and
//! raw gRPC: a three-node cluster with its planes apart, the first administrator created from
//! loopback, users and ACLs managed with `runnel user` and `runnel acl`, and each user able to
//! do exactly what its ACLs allow. The Kafka side (SASL with kafka-python and librdkafka) is
//! `kafka_clients.rs`'s `kafka_clients_with_sasl_and_acls`.

use std::time::{Duration, Instant};

use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::controller_service_client::ControllerServiceClient;
use runnel_proto::security::Credentials;
use runnel_testkit::{CliOutput, Cluster, ClusterOpts, POLL_INTERVAL};

/// How long a change of users or ACLs may take to reach every node.
const PROPAGATION: Duration = Duration::from_secs(15);
const RECORDS: usize = 20;

fn start() -> Cluster {
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.internal_listener = true;
    opts.extra_args = vec!["--auth".to_owned()];
    Cluster::start(3, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"))
}

/// `runnel <args> --user <user> --password <password>`.
fn as_user(cluster: &Cluster, user: &str, password: &str, args: &[&str]) -> CliOutput {
    let mut full = args.to_vec();
    full.extend(["--user", user, "--password", password]);
    cluster.runnel(&full)
}

fn ok(out: CliOutput, what: &str) -> CliOutput {
    assert!(out.success(), "{what}: {out:?}");
    out
}

fn refused(out: &CliOutput, name: &str, what: &str) {
    assert!(!out.success(), "{what} succeeded: {out:?}");
    assert_eq!(out.error_name(), Some(name), "{what}: {out:?}");
}

/// Runs `run` until it gives `Some`, or panics after `PROPAGATION` naming `what`.
fn eventually<T>(what: &str, mut run: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        match run() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => panic!("{what} within {PROPAGATION:?}: {last}"),
            Err(_) => std::thread::sleep(POLL_INTERVAL * 5),
        }
    }
}

fn consume(cluster: &Cluster, user: &str, password: &str, topic: &str) -> CliOutput {
    let max = RECORDS.to_string();
    as_user(cluster, user, password, &["consume", topic, "--from-beginning", "--max-messages", &max])
}

#[test]
fn grpc_clients_authenticate_and_the_acls_decide_what_each_may_do() {
    let cluster = start();
    let admin = |args: &[&str]| as_user(&cluster, "admin", "admin-secret", args);

    // No user yet: a caller without credentials passes as User:ANONYMOUS, which no ACL names.
    let out =
        cluster.runnel(&["topic", "create", "orders", "--partitions", "1", "--replication-factor", "3"]);
    refused(&out, "TOPIC_AUTHORIZATION_FAILED", "an anonymous topic creation");
    // The first user must be a super user (User:admin by default), made from loopback.
    let out = cluster.runnel(&["user", "create", "alice", "--user-password", "alice-secret"]);
    refused(&out, "CLUSTER_AUTHORIZATION_FAILED", "alice as the first user");
    ok(cluster.runnel(&["user", "create", "admin", "--user-password", "admin-secret"]), "the first admin");

    // From now on every call needs a user and its password.
    let out = eventually("anonymous calls refused once a user exists", || {
        let out = cluster.runnel(&["topic", "list"]);
        if out.success() { Err(format!("{out:?}")) } else { Ok(out) }
    });
    refused(&out, "SASL_AUTHENTICATION_FAILED", "an anonymous topic list");
    let out = as_user(&cluster, "admin", "wrong", &["topic", "list"]);
    refused(&out, "SASL_AUTHENTICATION_FAILED", "a wrong password");

    eventually("the admin is known everywhere", || {
        let out = admin(&[
            "topic",
            "create",
            "orders",
            "--partitions",
            "1",
            "--replication-factor",
            "3",
            "--config",
            "retention.ms=86400000",
        ]);
        if out.success() { Ok(()) } else { Err(format!("{out:?}")) }
    });
    ok(admin(&["topic", "create", "payments", "--partitions", "1", "--replication-factor", "3"]), "payments");
    ok(admin(&["user", "create", "alice", "--user-password", "alice-secret"]), "alice");
    ok(
        admin(&["user", "create", "bob", "--user-password", "bob-secret", "--mechanism", "SCRAM-SHA-512"]),
        "bob",
    );
    let users = ok(admin(&["user", "list", "--output", "json"]), "user list").json().expect("json");
    let names: Vec<&str> =
        users["users"].as_array().expect("users").iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["admin", "alice", "bob"]);
    // alice reads orders; bob writes it (WRITE implies DESCRIBE, as in Kafka).
    ok(
        admin(&["acl", "add", "--principal", "User:alice", "--operation", "read", "--topic", "orders"]),
        "alice's ACL",
    );
    ok(
        admin(&[
            "acl",
            "add",
            "--principal",
            "User:bob",
            "--operation",
            "write",
            "--topic",
            "ord",
            "--prefixed",
        ]),
        "bob's",
    );
    let acls = ok(admin(&["acl", "list", "--output", "json"]), "acl list").json().expect("json");
    assert_eq!(acls["acls"].as_array().map(Vec::len), Some(2), "{acls}");
    // Only a super user (or ALTER on the cluster) manages users and ACLs.
    let out = as_user(
        &cluster,
        "alice",
        "alice-secret",
        &["acl", "add", "--principal", "User:alice", "--operation", "all", "--cluster"],
    );
    refused(&out, "CLUSTER_AUTHORIZATION_FAILED", "alice granting herself the cluster");

    // bob writes orders.
    let count = RECORDS.to_string();
    eventually("bob's produce", || {
        let out = as_user(
            &cluster,
            "bob",
            "bob-secret",
            &["bench", "produce", "--topic", "orders", "--num-records", &count],
        );
        if out.success() { Ok(()) } else { Err(format!("{out:?}")) }
    });
    // alice reads them, and may neither write orders nor read payments.
    let out = eventually("alice's read", || {
        let out = consume(&cluster, "alice", "alice-secret", "orders");
        if out.success() && out.stdout.lines().count() == RECORDS { Ok(out) } else { Err(format!("{out:?}")) }
    });
    assert_eq!(out.stdout.lines().count(), RECORDS);
    let out = as_user(
        &cluster,
        "alice",
        "alice-secret",
        &["bench", "produce", "--topic", "orders", "--num-records", "1"],
    );
    assert!(
        !out.success() && out.stderr.contains("TOPIC_AUTHORIZATION_FAILED"),
        "alice wrote orders: {out:?}"
    );
    let out = consume(&cluster, "alice", "alice-secret", "payments");
    assert!(
        !out.success() && out.stderr.contains("TOPIC_AUTHORIZATION_FAILED"),
        "alice read payments: {out:?}"
    );
    let out = consume(&cluster, "bob", "bob-secret", "orders");
    assert!(!out.success() && out.stderr.contains("TOPIC_AUTHORIZATION_FAILED"), "bob read orders: {out:?}");
    // A listing shows alice only what she may describe.
    let listed = ok(
        as_user(&cluster, "alice", "alice-secret", &["topic", "list", "--output", "json"]),
        "alice's list",
    );
    let text = listed.stdout;
    assert!(text.contains("\"orders\"") && !text.contains("payments"), "{text}");
    // Describing the topic shows alice its partitions, but its configs need DESCRIBE_CONFIGS.
    let described = |user: &str, password: &str| {
        let out = ok(
            as_user(&cluster, user, password, &["topic", "describe", "orders", "--output", "json"]),
            "describe",
        );
        out.json().expect("json")["configs"].clone()
    };
    assert_eq!(described("admin", "admin-secret")["retention.ms"], "86400000");
    assert_eq!(described("alice", "alice-secret"), serde_json::json!({}), "alice sees no configs");

    // Taking the ACL away takes the read away; deleting bob takes his login away.
    ok(admin(&["acl", "remove", "--principal", "User:alice", "--topic", "orders"]), "remove alice's ACL");
    eventually("alice's read refused", || {
        let out = consume(&cluster, "alice", "alice-secret", "orders");
        if out.stderr.contains("TOPIC_AUTHORIZATION_FAILED") { Ok(()) } else { Err(format!("{out:?}")) }
    });
    ok(admin(&["user", "delete", "bob"]), "delete bob");
    eventually("bob's login refused", || {
        let out = as_user(&cluster, "bob", "bob-secret", &["topic", "list"]);
        if out.error_name() == Some("SASL_AUTHENTICATION_FAILED") { Ok(()) } else { Err(format!("{out:?}")) }
    });
    let out = as_user(&cluster, "alice", "alice-secret", &["user", "delete", "admin"]);
    refused(&out, "CLUSTER_AUTHORIZATION_FAILED", "alice deleting the admin");

    // The HTTP listener: the probes stay open; the console, its API and the metrics need a
    // user who may describe the cluster (HTTP Basic, the same users).
    let http = cluster.node(1).http_addr();
    assert_eq!(get(http, "/readyz", None).0, 200);
    for path in ["/api/v1/cluster", "/metrics", "/"] {
        let (status, head) = get(http, path, None);
        assert_eq!(status, 401, "{path} without credentials");
        assert!(head.contains("WWW-Authenticate: Basic"), "{path}: {head}");
        assert_eq!(get(http, path, Some(("admin", "wrong"))).0, 401, "{path} with a wrong password");
        assert_eq!(get(http, path, Some(("alice", "alice-secret"))).0, 403, "{path} as alice");
        assert_eq!(get(http, path, Some(("admin", "admin-secret"))).0, 200, "{path} as the admin");
    }
}

/// GETs `path` from `addr`, with Basic credentials when given: the status and the head.
fn get(addr: std::net::SocketAddr, path: &str, credentials: Option<(&str, &str)>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let authorization = credentials
        .map(|(u, p)| format!("Authorization: {}\r\n", runnel_proto::security::basic_credentials(u, p)))
        .unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n{authorization}\r\n").expect("send");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = response.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    (status, head)
}

/// The users' SCRAM credentials travel to the other nodes over the internal listener only: a
/// watch of the metadata on a client listener, even by a super user, carries none.
#[test]
fn credentials_never_leave_through_a_client_listener() {
    let cluster = start();
    ok(cluster.runnel(&["user", "create", "admin", "--user-password", "admin-secret"]), "the first admin");
    eventually("alice created", || {
        let out =
            as_user(&cluster, "admin", "admin-secret", &["user", "create", "alice", "--user-password", "pw"]);
        if out.success() { Ok(()) } else { Err(format!("{out:?}")) }
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let credentials = Credentials::basic("admin", "admin-secret").expect("credentials");
        let first_image = |mut client: ControllerServiceClient<_>| async move {
            let mut stream = client.watch_metadata(pb::WatchMetadataRequest {}).await?.into_inner();
            let update = stream.message().await?.ok_or_else(|| tonic::Status::unavailable("no image"))?;
            match update.update {
                Some(pb::metadata_update::Update::Image(image)) => Ok::<_, tonic::Status>(image),
                other => Err(tonic::Status::internal(format!("first update is not an image: {other:?}"))),
            }
        };
        let node = cluster.node(1);
        let client_channel = cluster.channel(node.grpc_addr(), None).await.expect("client channel");
        let client = ControllerServiceClient::with_interceptor(client_channel, credentials.clone());
        let image = eventually_async(|| first_image(client.clone())).await;
        assert!(image.security.is_none(), "a client listener sent credentials: {:?}", image.security);
        let internal = node.internal_addr().expect("an internal listener");
        let internal_channel = cluster.channel(internal, None).await.expect("internal channel");
        let image =
            first_image(ControllerServiceClient::with_interceptor(internal_channel, Credentials::none()))
                .await
                .expect("the internal listener's watch");
        let users = image.security.expect("the internal listener sends the users").users;
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert!(names.contains(&"admin"), "{names:?}");
        assert!(users.iter().all(|u| !u.credentials.is_empty()), "the users come with their credentials");
        // The watch shows every topic: an ordinary user (no CLUSTER_ACTION) is refused it.
        let alice_channel = cluster.channel(node.grpc_addr(), None).await.expect("client channel");
        let alice = Credentials::basic("alice", "pw").expect("credentials");
        let refused = eventually_async(|| {
            let client = ControllerServiceClient::with_interceptor(alice_channel.clone(), alice.clone());
            async move {
                match first_image(client).await {
                    Err(status) if status.code() == tonic::Code::PermissionDenied => Ok(status),
                    other => Err(tonic::Status::internal(format!("not refused yet: {other:?}"))),
                }
            }
        })
        .await;
        assert!(refused.message().contains("CLUSTER_ACTION"), "{refused:?}");
        // Without credentials the client listener refuses the watch.
        let bare = cluster.channel(node.grpc_addr(), None).await.expect("client channel");
        let refused = first_image(ControllerServiceClient::with_interceptor(bare, Credentials::none()))
            .await
            .expect_err("watch without credentials");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    });
}

/// Polls an async call until it succeeds, for `PROPAGATION`.
async fn eventually_async<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + PROPAGATION;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(e) if Instant::now() >= deadline => panic!("no success within {PROPAGATION:?}: {e:?}"),
            Err(_) => tokio::time::sleep(POLL_INTERVAL * 5).await,
        }
    }
}

/// A Kafka connection that never authenticates gets at most the idle timeout (here 1.5 s):
/// ApiVersions is answered meanwhile, but does not keep the connection (and its slot) open.
#[test]
fn a_kafka_connection_that_never_authenticates_is_closed() {
    use std::io::{Read, Write};
    let mut opts = ClusterOpts::new(env!("CARGO_BIN_EXE_runnel"));
    opts.internal_listener = true;
    opts.extra_args = vec!["--auth".to_owned(), "--connections-max-idle-ms".to_owned(), "1500".to_owned()];
    let cluster = Cluster::start(1, opts).unwrap_or_else(|e| panic!("cluster start: {e:#}"));
    let addr = cluster.node(1).kafka_addr();
    let deadline = Instant::now() + PROPAGATION;
    let mut stream = loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(e) => assert!(Instant::now() < deadline, "no Kafka listener at {addr}: {e}"),
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let opened = Instant::now();
    // ApiVersions v0: key 18, version 0, a correlation id, no client id.
    let api_versions = |id: i32| {
        let mut frame = vec![0, 0, 0, 10, 0, 18, 0, 0];
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&[0xff, 0xff]);
        frame
    };
    let mut answered = 0;
    let closed_after = loop {
        assert!(opened.elapsed() < Duration::from_secs(15), "the connection stayed open");
        let sent = stream.write_all(&api_versions(answered + 1));
        let mut size = [0u8; 4];
        match sent.and_then(|()| stream.read_exact(&mut size)) {
            Ok(()) => {
                let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
                stream.read_exact(&mut body).expect("the answer's body");
                answered += 1;
            }
            Err(_) => break opened.elapsed(),
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(answered >= 3, "ApiVersions was answered {answered} times before the close");
    assert!(
        closed_after >= Duration::from_millis(1500),
        "closed after {closed_after:?}, before the deadline"
    );
    assert!(
        cluster.node(1).logs().contains("no SASL authentication within"),
        "the node did not say why\n{}",
        cluster.node(1).logs()
    );
}
