#!/usr/bin/env python3
"""One log, three doors: records written over Kafka read the same over Runnel's gRPC API and
with the `runnel` CLI, and the reverse, byte for byte.

    python kafka_cross_protocol_test.py --kafka-bootstrap 127.0.0.1:9092[,...]
        --grpc-bootstrap 127.0.0.1:50051[,...] --runnel target/debug/runnel [--brokers 3]
    (or env KAFKA_BOOTSTRAP, RUNNEL_BOOTSTRAP, RUNNEL_BIN, KAFKA_BROKERS)

Needs kafka-python, grpcio, grpcio-tools and protobuf (tests/python/requirements.txt); the
gRPC stubs are generated from proto/ as tests/python/runnel_client_test.py does (its
generate_stubs). One line per phase:

  1. the Kafka listener answers ApiVersions and names every broker (raw socket);
  2. the gRPC stubs are generated;
  3. kafka-python writes records (UTF-8 and binary keys and values, a null key, an empty
     value, a null value, headers with a repeated name and a binary value, explicit timestamps,
     one 100 KiB value); `runnel consume --from-beginning --output json` prints
     each with the same offset, key, value, headers and timestamp;
  4. gRPC Fetch (RECORD_FORMAT_RECORDS) from the partition's leader answers the same;
  5. gRPC Produce writes such records (and a header with a null value) to a topic created
     through the controller service;
     kafka-python reads each back the same (offset, key, value, headers, CreateTime timestamp);
  6. `runnel produce --key-separator :` writes lines (one with non-UTF-8 bytes, one without a
     key); kafka-python reads the same keys and values.

Every blocking call has a timeout. Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import base64
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

import runnel_client_test as grpc_client
from kafka_testlib import Failure, Phases, check, deadline_after, eq, wait_for_kafka

LISTENER_TIMEOUT_S = 30.0
PHASE_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 5.0
CLI_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_MS = 20_000
REPO = pathlib.Path(__file__).resolve().parents[2]
RETRIABLE = {"LEADER_NOT_AVAILABLE", "NOT_LEADER_OR_FOLLOWER", "INVALID_REPLICATION_FACTOR", "NOT_CONTROLLER"}


def sample_records(t0, null_header=True):
    """(key, value, headers, timestamp_ms) tuples; None is null. Header names are strings in
    both protocols; header values are bytes or (with `null_header`: kafka-python's send takes
    only bytes) null."""
    return [
        (b"k-utf8", "héllo wörld".encode(), [("h1", b"v1")], t0),
        (None, b"\x00\x01\xfe\xff binary, null key", [], t0 + 1),
        (b"\xff\xfe\x00", b"", [("empty", b"")], t0 + 2),
        (b"tombstone", None, [], t0 + 3),
        (b"headers", b"repeated and odd headers",
         [("dup", b"first"), ("dup", b"second"), ("bin", b"\x00\xff\x80")] + ([("null", None)] if null_header else []),
         t0 + 4),
        (b"", b"empty key", [], t0 + 5),
        (b"big", bytes(range(256)) * 400, [("size", b"102400")], t0 + 6),
    ]


def blob(value, is_b64):
    """A `runnel consume --output json` key/value: a string, base64 when flagged, or null."""
    if value is None:
        return None
    return base64.b64decode(value) if is_b64 else value.encode()


def short(x):
    r = repr(x)
    return r if len(r) < 120 else r[:117] + "..."


def compare(got, want, what):
    """Lists of (offset, key, value, headers, timestamp), field by field for a readable diff."""
    eq(len(got), len(want), f"{what}: record count")
    for g, w in zip(got, want):
        for name, a, b in zip(("offset", "key", "value", "headers", "timestamp_ms"), g, w):
            if a != b:
                raise Failure(f"{what}: record at offset {w[0]}: {name}: expected {short(b)}, got {short(a)}")


class Run:
    def __init__(self, args):
        self.kafka = args.kafka_bootstrap
        self.servers = args.kafka_bootstrap.split(",")
        self.grpc_bootstrap = args.grpc_bootstrap
        self.runnel = args.runnel
        self.brokers = args.brokers
        self.proto_dir = args.proto_dir
        run_id = uuid.uuid4().hex[:8]
        self.from_kafka = f"xp-from-kafka-{run_id}"
        self.from_grpc = f"xp-from-grpc-{run_id}"
        self.from_cli = f"xp-from-cli-{run_id}"
        self.t0 = int(time.time() * 1000) - 3_600_000
        self.kafka_written = []  # (offset, key, value, headers, timestamp)
        self.tmp = tempfile.TemporaryDirectory(prefix="runnel-xp-stubs-")

    # --- plumbing ---------------------------------------------------------------------------

    def channel(self, addr):
        return grpc.insecure_channel(addr, options=grpc_client.CHANNEL_OPTIONS)

    def grpc_leader(self, topic):
        """Polls gRPC Metadata until partition 0 of `topic` has a leader; answers a broker
        stub connected to it."""
        pb, broker_grpc = grpc_client.pb, grpc_client.broker_grpc
        deadline = deadline_after(PHASE_TIMEOUT_S)
        last = None
        stub = broker_grpc.BrokerServiceStub(self.channel(self.grpc_bootstrap.split(",")[0]))
        while True:
            try:
                md = stub.Metadata(pb.MetadataRequest(topics=[topic]), timeout=RPC_TIMEOUT_S)
                last = md
                t = [t for t in md.topics if t.name == topic]
                if t and not t[0].HasField("error") and t[0].partitions and t[0].partitions[0].leader >= 0:
                    addrs = {b.broker_id: b.grpc for b in md.brokers}
                    leader = t[0].partitions[0].leader
                    check(leader in addrs, f"gRPC Metadata: leader {leader} not among brokers {addrs}")
                    return broker_grpc.BrokerServiceStub(self.channel(addrs[leader]))
            except grpc.RpcError as e:
                last = grpc_client.status_text(e)
            check(time.monotonic() < deadline, f"{topic}/0 has no leader in gRPC Metadata within "
                                               f"{PHASE_TIMEOUT_S}s; last: {last}")
            time.sleep(0.05)

    def with_retry(self, call, what):
        deadline = deadline_after(PHASE_TIMEOUT_S)
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                name = grpc_client.error_meta(e).get("runnel-error-name")
                if (name not in RETRIABLE and e.code() != grpc.StatusCode.UNAVAILABLE) or time.monotonic() >= deadline:
                    raise Failure(f"{what}: {grpc_client.status_text(e)}")
                time.sleep(0.05)

    def run_cli(self, args, stdin=None):
        cmd = [self.runnel, *args, "--bootstrap", self.grpc_bootstrap]
        try:
            done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=CLI_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise Failure(f"{' '.join(cmd)} did not finish within {CLI_TIMEOUT_S}s; stderr {e.stderr!r}")
        if done.returncode != 0:
            raise Failure(f"{' '.join(cmd)} exited {done.returncode}\nstdout: {done.stdout.decode(errors='replace')}"
                          f"\nstderr: {done.stderr.decode(errors='replace')}")
        return done.stdout

    def kafka_create(self, topic):
        admin = KafkaAdminClient(bootstrap_servers=self.servers, request_timeout_ms=REQUEST_TIMEOUT_MS)
        try:
            resp = admin.create_topics([NewTopic(topic, 1, min(3, self.brokers))], timeout_ms=REQUEST_TIMEOUT_MS)
            eq([(e[0], e[1]) for e in resp.topic_errors], [(topic, 0)], f"CreateTopics({topic}) (topic, error code)")
        finally:
            admin.close()

    def grpc_create(self, topic):
        controller = grpc_client.controller_grpc.ControllerServiceStub(self.channel(self.grpc_bootstrap.split(",")[0]))
        req = grpc_client.controller_pb.CreateTopicRequest(name=topic, partitions=1,
                                                           replication_factor=min(3, self.brokers))
        self.with_retry(lambda: controller.CreateTopic(req, timeout=RPC_TIMEOUT_S), f"gRPC CreateTopic({topic})")

    def kafka_read(self, topic, count):
        """Everything in partition 0 of `topic` through kafka-python, as compare() tuples."""
        consumer = KafkaConsumer(bootstrap_servers=self.servers, request_timeout_ms=REQUEST_TIMEOUT_MS,
                                 enable_auto_commit=False, fetch_max_bytes=4 << 20)
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            got = []
            deadline = deadline_after(PHASE_TIMEOUT_S)
            while len(got) < count:
                check(time.monotonic() < deadline, f"kafka-python read {len(got)} of {count} records of {topic} "
                                                   f"within {PHASE_TIMEOUT_S}s")
                for records in consumer.poll(timeout_ms=200).values():
                    for m in records:
                        eq(m.timestamp_type, 0, f"{topic} offset {m.offset}: timestamp type (0 = CreateTime)")
                        got.append((m.offset, m.key, m.value, [(k, v) for k, v in m.headers], m.timestamp))
            end = consumer.end_offsets([tp])[tp]
            eq(end, count, f"{topic}: end offset")
            return got
        finally:
            consumer.close()

    # --- phases -----------------------------------------------------------------------------

    def listener(self):
        return wait_for_kafka(self.kafka, self.brokers, LISTENER_TIMEOUT_S)

    def stubs(self):
        protos = grpc_client.generate_stubs(self.proto_dir.resolve(), pathlib.Path(self.tmp.name))
        return f"{', '.join(protos)} (grpcio {grpc.__version__})"

    def kafka_to_cli(self):
        self.kafka_create(self.from_kafka)
        producer = KafkaProducer(bootstrap_servers=self.servers, acks="all", request_timeout_ms=REQUEST_TIMEOUT_MS,
                                 max_block_ms=20_000, max_request_size=1 << 20)
        try:
            futures = [(r, producer.send(self.from_kafka, key=r[0], value=r[1], headers=r[2], timestamp_ms=r[3]))
                       for r in sample_records(self.t0, null_header=False)]
            producer.flush(timeout=PHASE_TIMEOUT_S)
            for i, ((key, value, headers, ts), f) in enumerate(futures):
                md = f.get(timeout=1)
                eq((md.partition, md.offset), (0, i), f"kafka-python record {i}: (partition, offset)")
                self.kafka_written.append((i, key, value, headers, ts))
        finally:
            producer.close(timeout=10)
        out = self.run_cli(["consume", self.from_kafka, "--from-beginning", "--output", "json"])
        got = []
        for line in out.decode().splitlines():
            r = json.loads(line)
            eq((r["topic"], r["partition"]), (self.from_kafka, 0), "runnel consume (topic, partition)")
            got.append((r["offset"], blob(r["key"], r["key_base64"]), blob(r["value"], r["value_base64"]),
                        [(h["key"], blob(h["value"], h["value_base64"])) for h in r["headers"]], r["timestamp_ms"]))
        compare(got, self.kafka_written, "kafka-python -> runnel consume")
        return f"{len(got)} records written by kafka-python read the same by runnel consume"

    def kafka_to_grpc(self):
        pb = grpc_client.pb
        stub = self.grpc_leader(self.from_kafka)
        got, offset = [], 0
        deadline = deadline_after(PHASE_TIMEOUT_S)
        while offset < len(self.kafka_written):
            check(time.monotonic() < deadline, f"gRPC Fetch stuck at offset {offset}")
            resp = self.with_retry(lambda: stub.Fetch(pb.FetchRequest(
                topic=self.from_kafka, partition=0, offset=offset, format=pb.RECORD_FORMAT_RECORDS),
                timeout=RPC_TIMEOUT_S), "gRPC Fetch")
            check(resp.records, f"gRPC Fetch at {offset} returned no records (high watermark {resp.high_watermark})")
            for r in resp.records:
                key, value, headers, ts = grpc_client.describe(r)
                got.append((r.offset, key, value, headers, ts))
            offset = resp.next_offset
        compare(got, self.kafka_written, "kafka-python -> gRPC Fetch")
        return f"{len(got)} records read the same over gRPC Fetch"

    def grpc_to_kafka(self):
        pb = grpc_client.pb
        self.grpc_create(self.from_grpc)
        stub = self.grpc_leader(self.from_grpc)
        records = sample_records(self.t0 + 1000)
        req = pb.ProduceRequest(topic=self.from_grpc, partition=0, acks=pb.ACKS_ALL,
                                records=pb.RecordList(records=[grpc_client.rec(k, v, h, ts) for k, v, h, ts in records]))
        resp = self.with_retry(lambda: stub.Produce(req, timeout=RPC_TIMEOUT_S), "gRPC Produce")
        eq((resp.base_offset, resp.last_offset), (0, len(records) - 1), "gRPC Produce (base_offset, last_offset)")
        want = [(i, k, v, h, ts) for i, (k, v, h, ts) in enumerate(records)]
        got = self.kafka_read(self.from_grpc, len(records))
        compare(got, want, "gRPC Produce -> kafka-python")
        return f"{len(got)} records written over gRPC read the same by kafka-python"

    def cli_to_kafka(self):
        self.grpc_create(self.from_cli)
        self.grpc_leader(self.from_cli)
        lines = [b"k1:plain value", b"a line without the separator", b"x:y",
                 b"k\xff:\xfe\x00 non-UTF-8 \xc3", b"k2:value:with:colons", b":empty key"]
        self.run_cli(["produce", self.from_cli, "--key-separator", ":"], stdin=b"\n".join(lines) + b"\n")
        want = []
        for line in lines:
            key, sep, value = line.partition(b":")
            want.append((key, value) if sep else (None, line))
        got = self.kafka_read(self.from_cli, len(lines))
        eq([(k, v) for _, k, v, _, _ in got], want, "runnel produce -> kafka-python (key, value) in order")
        return f"{len(got)} lines from runnel produce read the same by kafka-python"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kafka-bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--grpc-bootstrap", default=os.environ.get("RUNNEL_BOOTSTRAP", "127.0.0.1:50051"))
    parser.add_argument("--runnel", default=os.environ.get("RUNNEL_BIN", str(REPO / "target/debug/runnel")),
                        help="the runnel binary (env RUNNEL_BIN)")
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("KAFKA_BROKERS", "3")))
    parser.add_argument("--proto-dir", type=pathlib.Path, default=REPO / "proto")
    args = parser.parse_args()

    phases = Phases(f"cross-protocol: Kafka {args.kafka_bootstrap}, gRPC {args.grpc_bootstrap}")
    run = Run(args)
    try:
        phases.run("listener", run.listener)
        phases.run("gRPC stubs", run.stubs)
        phases.run("kafka-python -> runnel consume", run.kafka_to_cli, needs=["listener", "gRPC stubs"])
        phases.run("kafka-python -> gRPC Fetch", run.kafka_to_grpc, needs=["kafka-python -> runnel consume"])
        phases.run("gRPC Produce -> kafka-python", run.grpc_to_kafka, needs=["listener", "gRPC stubs"])
        phases.run("runnel produce -> kafka-python", run.cli_to_kafka, needs=["listener", "gRPC stubs"])
    finally:
        run.tmp.cleanup()
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
