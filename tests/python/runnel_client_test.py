#!/usr/bin/env python3
"""Runnel's gRPC API as a Python user meets it: stubs generated from proto/, nothing else.

    python runnel_client_test.py --bootstrap 127.0.0.1:50051   (or env RUNNEL_BOOTSTRAP)

Needs grpcio, grpcio-tools and protobuf (tests/python/requirements.txt; scripts/python-env.sh
builds a venv with them). Against one running node it:

  1. generates the stubs from proto/ into a temp dir (python -m grpc_tools.protoc);
  2. creates a topic (1 partition, RF 1) through ControllerService.CreateTopic;
  3. polls Metadata, against a deadline, until the partition has a leader;
  4. produces records (keys, a null key, an empty key, a null value, headers with a repeated
     key and a null value, explicit and broker-assigned timestamps) with unary Produce, then
     with ProduceStream (one request of which names a missing partition: the stream answers it
     with an error and goes on);
  5. fetches from offset 0 (RECORD_FORMAT_RECORDS) and checks every record and that offsets
     run contiguously from 0;
  6. looks up the earliest, latest and by-timestamp offsets (ListOffsets);
  7. checks that unknown topics and partitions fail with UNKNOWN_TOPIC_OR_PARTITION (3) in the
     status's trailing metadata, that Metadata reports an unknown topic as an error, and that
     a fetch past the high watermark fails with OFFSET_OUT_OF_RANGE (1) and the range;
  8. tails the partition with FetchStream from offset 0 and sees a record produced after it
     caught up.

Every wait is bounded by a deadline; no step sleeps waiting for state. Prints one line per
phase; on the first failure prints what was expected and what came back, and exits 1.
"""

import argparse
import os
import pathlib
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc

from kafka_testlib import Failure, check, eq  # the shared checks, beside this script

# Bounds. Every RPC has a deadline, so the whole run is bounded (well under 30 s on a
# healthy node).
RPC_TIMEOUT_S = 5.0
LEADER_TIMEOUT_S = 10.0
STREAM_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.02

# Error codes of proto/runnel/v1/broker.proto.
UNKNOWN_TOPIC_OR_PARTITION = 3
RETRIABLE = {"LEADER_NOT_AVAILABLE", "NOT_LEADER_OR_FOLLOWER"}

REPO = pathlib.Path(__file__).resolve().parents[2]

# gRPC clients refuse messages over 4 MiB by default, but a Fetch may ask for up to 64 MiB
# (and returns at least one whole batch, up to the topic's max.message.bytes): a client that
# raises max_bytes must raise its receive limit too, or the call fails with RESOURCE_EXHAUSTED.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 65 << 20)]


def status_text(err):
    """A failed call as one line: status, details and the runnel-* trailing metadata."""
    meta = {k: v for k, v in (err.trailing_metadata() or ()) if k.startswith("runnel-")}
    return f"{err.code().name} {err.details()!r} {meta}"


def error_meta(err):
    return {k: v for k, v in (err.trailing_metadata() or ())}


def generate_stubs(proto_dir, out_dir):
    """Compiles the .proto files into out_dir and imports them (never committed)."""
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.glob("runnel/v1/*.proto"))
    check(protos, f"no .proto files under {proto_dir}/runnel/v1")
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos,
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    check(run.returncode == 0, f"protoc failed ({run.returncode}): {' '.join(cmd)}\n{run.stderr}")
    sys.path.insert(0, str(out_dir))
    global pb, broker_grpc, controller_pb, controller_grpc
    from runnel.v1 import broker_pb2 as pb
    from runnel.v1 import broker_pb2_grpc as broker_grpc
    from runnel.v1 import controller_pb2 as controller_pb
    from runnel.v1 import controller_pb2_grpc as controller_grpc
    return protos


def rec(key=None, value=None, headers=(), timestamp_ms=None):
    """A Record; None leaves an optional field unset (null)."""
    r = pb.Record(headers=[pb.RecordHeader(key=k, value=v) if v is not None else pb.RecordHeader(key=k)
                           for k, v in headers])
    if key is not None:
        r.key = key
    if value is not None:
        r.value = value
    if timestamp_ms is not None:
        r.timestamp_ms = timestamp_ms
    return r


def describe(r):
    """A Record as comparable plain data: None for an unset optional field."""
    return (
        r.key if r.HasField("key") else None,
        r.value if r.HasField("value") else None,
        [(h.key, h.value if h.HasField("value") else None) for h in r.headers],
        r.timestamp_ms if r.HasField("timestamp_ms") else None,
    )


class Run:
    def __init__(self, bootstrap):
        self.bootstrap = bootstrap
        self.channel = grpc.insecure_channel(bootstrap, options=CHANNEL_OPTIONS)
        self.controller = controller_grpc.ControllerServiceStub(self.channel)
        self.broker = broker_grpc.BrokerServiceStub(self.channel)
        self.topic = f"py-client-{uuid.uuid4().hex[:12]}"
        # Explicit timestamps an hour back, so they sort below the broker-assigned ones.
        self.t0 = int(time.time() * 1000) - 3_600_000
        self.expected = []  # (key, value, headers, timestamp or a (lo, hi) window), by offset
        self.notes = []  # surprises worth reporting, printed at the end

    def note(self, msg):
        self.notes.append(msg)
        print(f"  note: {msg}")

    # --- phases -------------------------------------------------------------------------

    def create_topic(self):
        req = controller_pb.CreateTopicRequest(name=self.topic, partitions=1, replication_factor=1)
        topic = self.controller.CreateTopic(req, timeout=RPC_TIMEOUT_S).topic
        eq(topic.name, self.topic, "CreateTopic answered topic name")
        eq(len(topic.partitions), 1, "CreateTopic answered partition count")
        eq(len(topic.topic_id), 16, "CreateTopic topic_id length (bytes)")
        return f"{self.topic} id={topic.topic_id.hex()}"

    def wait_for_leader(self):
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        polls, last = 0, None
        while True:
            polls += 1
            try:
                md = self.broker.Metadata(pb.MetadataRequest(topics=[self.topic]), timeout=RPC_TIMEOUT_S)
                last = md
                topics = [t for t in md.topics if t.name == self.topic]
                if topics and not topics[0].HasField("error") and topics[0].partitions:
                    leader = topics[0].partitions[0].leader
                    if leader >= 0:
                        brokers = {b.broker_id: b for b in md.brokers}
                        check(leader in brokers, f"leader {leader} is not among Metadata's brokers: {md}")
                        self.leader_addr = brokers[leader].grpc
                        break
            except grpc.RpcError as e:
                # Only a node still starting, or a leader being elected, is worth waiting for.
                retriable = (e.code() == grpc.StatusCode.UNAVAILABLE
                             or error_meta(e).get("runnel-error-name") in RETRIABLE)
                check(retriable, f"Metadata failed: {status_text(e)}")
                last = status_text(e)
            check(time.monotonic() < deadline,
                  f"no leader for {self.topic}/0 within {LEADER_TIMEOUT_S}s; last answer: {last}")
            time.sleep(POLL_INTERVAL_S)
        # A client talks to the leader at the address Metadata advertises, not the bootstrap.
        if self.leader_addr != self.bootstrap:
            self.channel = grpc.insecure_channel(self.leader_addr, options=CHANNEL_OPTIONS)
            self.broker = broker_grpc.BrokerServiceStub(self.channel)
        return f"leader {leader} at {self.leader_addr} after {polls} Metadata polls"

    def produce_unary(self):
        t0 = self.t0
        records = [
            # Headers: a repeated key, a null value and an empty one.
            rec(b"k0", b"v0", [("h", b"1"), ("h", b"2"), ("null", None), ("empty", b"")], t0),
            rec(None, b"value with a null key", [], t0 + 1),
            rec(b"", None, [], t0 + 2),  # empty key (not null), null value (a tombstone)
            rec(bytes(range(256)), os.urandom(10_000), [("bin", b"\x00\xff")], t0 + 3),
        ]
        before = int(time.time() * 1000)
        records.append(rec(b"k4", b"broker-assigned timestamp"))
        req = pb.ProduceRequest(topic=self.topic, partition=0, acks=pb.ACKS_ALL,
                                records=pb.RecordList(records=records))
        resp, retries = self.produce_with_retry(req)
        after = int(time.time() * 1000)
        eq((resp.base_offset, resp.last_offset, resp.log_start_offset), (0, 4, 0),
           "Produce (base_offset, last_offset, log_start_offset)")
        for r in records:
            self.expected.append(describe(r))
        # The last record's timestamp is the leader's clock at append: within our window.
        k, v, h, _ = self.expected[-1]
        self.expected[-1] = (k, v, h, (before, after))
        return "offsets 0..4" + (f" after {retries} retriable refusals" if retries else "")

    def produce_with_retry(self, req):
        """Produce, retrying the errors the contract calls retriable, against a deadline."""
        deadline = time.monotonic() + LEADER_TIMEOUT_S
        retries = 0
        while True:
            try:
                return self.broker.Produce(req, timeout=RPC_TIMEOUT_S), retries
            except grpc.RpcError as e:
                name = error_meta(e).get("runnel-error-name")
                if name not in RETRIABLE or time.monotonic() >= deadline:
                    raise
                if retries == 0:
                    self.note(f"Produce right after Metadata named a leader was refused: {status_text(e)}")
                retries += 1
                time.sleep(POLL_INTERVAL_S)

    def produce_stream(self):
        t0 = self.t0 + 100
        batches = {
            10: [rec(b"s0", b"stream 0", [("n", b"0")], t0), rec(None, b"stream 1", [], t0 + 1)],
            11: [rec(b"bad", b"to a partition that does not exist", [], t0 + 2)],
            12: [rec(b"s2", b"stream 2", [], t0 + 3), rec(b"s3", None, [("n", None)], t0 + 4)],
            13: [rec(b"s4", b"stream 4", [], t0 + 5)],
        }

        def requests():
            for id_, records in batches.items():
                partition = 7 if id_ == 11 else 0
                yield pb.ProduceStreamRequest(id=id_, request=pb.ProduceRequest(
                    topic=self.topic, partition=partition, acks=pb.ACKS_ALL,
                    records=pb.RecordList(records=records)))

        answers = list(self.broker.ProduceStream(requests(), timeout=RPC_TIMEOUT_S))
        eq([a.id for a in answers], list(batches), "ProduceStream response ids, in order")
        next_offset = len(self.expected)
        for a in answers:
            if a.id == 11:
                eq(a.WhichOneof("result"), "error", "ProduceStream id 11 (partition 7) result")
                eq((a.error.code, a.error.name), (UNKNOWN_TOPIC_OR_PARTITION, "UNKNOWN_TOPIC_OR_PARTITION"),
                   "ProduceStream id 11 (partition 7) error")
                continue
            eq(a.WhichOneof("result"), "response", f"ProduceStream id {a.id} result ({a})")
            n = len(batches[a.id])
            eq((a.response.base_offset, a.response.last_offset), (next_offset, next_offset + n - 1),
               f"ProduceStream id {a.id} offsets")
            next_offset += n
            self.expected.extend(describe(r) for r in batches[a.id])
        return f"{len(answers)} responses; offsets up to {next_offset - 1}; the bad partition refused with code 3"

    def fetch_all(self):
        want = len(self.expected)
        got, offset, fetches = [], 0, 0
        deadline = time.monotonic() + RPC_TIMEOUT_S
        while offset < want:
            check(time.monotonic() < deadline, f"Fetch did not reach offset {want} (stuck at {offset})")
            fetches += 1
            resp = self.broker.Fetch(pb.FetchRequest(topic=self.topic, partition=0, offset=offset,
                                                     format=pb.RECORD_FORMAT_RECORDS), timeout=RPC_TIMEOUT_S)
            eq(resp.high_watermark, want, f"Fetch at {offset}: high_watermark")
            eq(resp.log_start_offset, 0, f"Fetch at {offset}: log_start_offset")
            eq(len(resp.batches), 0, f"Fetch at {offset}: bytes in `batches` with RECORD_FORMAT_RECORDS")
            check(resp.records, f"Fetch at {offset} below the high watermark {want} returned no records: {resp}")
            for r in resp.records:
                eq(r.offset, len(got), "next record's offset (contiguous from 0)")
                got.append(r)
            eq(resp.next_offset, len(got), f"Fetch at {offset}: next_offset")
            offset = resp.next_offset
        for i, r in enumerate(got):
            self.check_record(i, r)
        # At the high watermark, with no wait, a fetch answers at once with nothing.
        resp = self.broker.Fetch(pb.FetchRequest(topic=self.topic, partition=0, offset=want,
                                                 format=pb.RECORD_FORMAT_RECORDS), timeout=RPC_TIMEOUT_S)
        eq((len(resp.records), resp.next_offset, resp.high_watermark), (0, want, want),
           "Fetch at the high watermark (records, next_offset, high_watermark)")
        return f"{len(got)} records in {fetches} fetch(es), each as produced"

    def check_record(self, offset, r):
        key, value, headers, ts = describe(r)
        ekey, evalue, eheaders, ets = self.expected[offset]
        eq(key, ekey, f"record {offset}: key")
        eq(value, evalue, f"record {offset}: value")
        eq(headers, eheaders, f"record {offset}: headers")
        if isinstance(ets, tuple):
            check(ts is not None and ets[0] <= ts <= ets[1],
                  f"record {offset}: broker-assigned timestamp {ts} outside the produce window {ets}")
        else:
            eq(ts, ets, f"record {offset}: timestamp_ms")

    def list_offsets(self):
        def lookup(spec, ts=0):
            return self.broker.ListOffsets(pb.ListOffsetsRequest(topic=self.topic, partition=0, spec=spec,
                                                                 timestamp_ms=ts), timeout=RPC_TIMEOUT_S)
        n = len(self.expected)
        earliest, latest = lookup(pb.OFFSET_SPEC_EARLIEST), lookup(pb.OFFSET_SPEC_LATEST)
        eq(earliest.offset, 0, "ListOffsets EARLIEST offset")
        eq(latest.offset, n, "ListOffsets LATEST offset (the high watermark)")
        by_ts = lookup(pb.OFFSET_SPEC_TIMESTAMP, self.t0 + 1)
        eq((by_ts.offset, by_ts.timestamp_ms), (1, self.t0 + 1), "ListOffsets TIMESTAMP t0+1 (offset, timestamp)")
        future = lookup(pb.OFFSET_SPEC_TIMESTAMP, int(time.time() * 1000) + 3_600_000)
        eq(future.offset, -1, "ListOffsets TIMESTAMP an hour ahead: offset")
        return f"earliest 0, latest {n}, t0+1 -> 1, future -> -1; leader epoch {latest.leader_epoch}"

    def unknown_topic(self):
        missing = f"no-such-topic-{uuid.uuid4().hex[:12]}"
        calls = {
            f"Produce to {missing}": lambda: self.broker.Produce(pb.ProduceRequest(
                topic=missing, partition=0, acks=pb.ACKS_ALL,
                records=pb.RecordList(records=[rec(b"k", b"v")])), timeout=RPC_TIMEOUT_S),
            f"Produce to {self.topic}/5": lambda: self.broker.Produce(pb.ProduceRequest(
                topic=self.topic, partition=5, acks=pb.ACKS_ALL,
                records=pb.RecordList(records=[rec(b"k", b"v")])), timeout=RPC_TIMEOUT_S),
            f"Fetch from {missing}": lambda: self.broker.Fetch(pb.FetchRequest(
                topic=missing, partition=0, offset=0), timeout=RPC_TIMEOUT_S),
            f"ListOffsets of {missing}": lambda: self.broker.ListOffsets(pb.ListOffsetsRequest(
                topic=missing, partition=0), timeout=RPC_TIMEOUT_S),
        }
        statuses = {}
        for what, call in calls.items():
            try:
                answer = call()
            except grpc.RpcError as e:
                meta = error_meta(e)
                eq((meta.get("runnel-error-name"), meta.get("runnel-error-code")),
                   ("UNKNOWN_TOPIC_OR_PARTITION", str(UNKNOWN_TOPIC_OR_PARTITION)),
                   f"{what}: (runnel-error-name, runnel-error-code) in trailing metadata of {status_text(e)}")
                check(e.code() != grpc.StatusCode.OK, f"{what}: an error with status OK")
                statuses[what] = e.code().name
            else:
                raise Failure(f"{what} succeeded: {answer}")
        if len(set(statuses.values())) != 1:
            self.note(f"unknown topic/partition errors use different gRPC statuses: {statuses}")
        md = self.broker.Metadata(pb.MetadataRequest(topics=[missing]), timeout=RPC_TIMEOUT_S)
        topics = {t.name: t for t in md.topics}
        check(missing in topics, f"Metadata for [{missing}] does not name it: {md}")
        t = topics[missing]
        check(t.HasField("error"), f"Metadata for {missing}: no error set: {t}")
        eq((t.error.code, t.error.name), (UNKNOWN_TOPIC_OR_PARTITION, "UNKNOWN_TOPIC_OR_PARTITION"),
           f"Metadata for {missing}: error")
        # Past the high watermark: OFFSET_OUT_OF_RANGE (1), with the fetchable range.
        hw = len(self.expected)
        try:
            answer = self.broker.Fetch(pb.FetchRequest(topic=self.topic, partition=0, offset=hw + 1),
                                       timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as e:
            meta = error_meta(e)
            eq(tuple(meta.get(k) for k in ("runnel-error-name", "runnel-error-code", "runnel-log-start-offset",
                                           "runnel-high-watermark")),
               ("OFFSET_OUT_OF_RANGE", "1", "0", str(hw)),
               f"Fetch at {hw + 1}, past the high watermark: trailing metadata of {status_text(e)}")
        else:
            raise Failure(f"Fetch at {hw + 1}, past the high watermark {hw}, succeeded: {answer}")
        return (f"code 3 in trailing metadata; gRPC statuses {sorted(set(statuses.values()))}; "
                "Metadata error set; past the high watermark: code 1 with the range")

    def fetch_stream(self):
        n = len(self.expected)
        call = self.broker.FetchStream(pb.FetchStreamRequest(topic=self.topic, partition=0, offset=0,
                                                             format=pb.RECORD_FORMAT_RECORDS),
                                       timeout=STREAM_TIMEOUT_S)
        # A reader thread, so that waiting for a record is bounded here, not by the stream.
        responses = queue.Queue()

        def read():
            try:
                for resp in call:
                    responses.put(resp)
                responses.put(None)
            except grpc.RpcError as e:
                responses.put(e)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            got = []
            deadline = time.monotonic() + STREAM_TIMEOUT_S

            def take_until(count, phase):
                while len(got) < count:
                    left = deadline - time.monotonic()
                    check(left > 0, f"FetchStream {phase}: {len(got)} of {count} records within {STREAM_TIMEOUT_S}s")
                    try:
                        item = responses.get(timeout=left)
                    except queue.Empty:
                        continue
                    if item is None:
                        raise Failure(f"FetchStream {phase}: the stream ended after {len(got)} records")
                    if isinstance(item, grpc.RpcError):
                        raise Failure(f"FetchStream {phase}: the stream failed after {len(got)} records: "
                                      f"{status_text(item)}")
                    for r in item.records:
                        eq(r.offset, len(got), f"FetchStream {phase}: next record's offset")
                        got.append(r)

            take_until(n, "catching up")
            for i, r in enumerate(got):
                self.check_record(i, r)
            # Caught up: a record produced now must arrive on the open stream.
            ts = self.t0 + 200
            late = rec(b"late", b"produced while tailing", [("tail", b"1")], ts)
            resp, _ = self.produce_with_retry(pb.ProduceRequest(
                topic=self.topic, partition=0, acks=pb.ACKS_ALL, records=pb.RecordList(records=[late])))
            eq(resp.base_offset, n, "Produce while tailing: base_offset")
            produced = time.monotonic()
            self.expected.append(describe(late))
            take_until(n + 1, "tailing")
            latency_ms = (time.monotonic() - produced) * 1000
            self.check_record(n, got[n])
        finally:
            call.cancel()
            reader.join(timeout=RPC_TIMEOUT_S)
        check(not reader.is_alive(), "the FetchStream reader did not stop after cancel")
        return f"caught up on {n} records, then saw offset {n} {latency_ms:.0f} ms after its produce answered"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("RUNNEL_BOOTSTRAP", "127.0.0.1:50051"),
                        help="a node's gRPC host:port (env RUNNEL_BOOTSTRAP; default 127.0.0.1:50051)")
    parser.add_argument("--proto-dir", type=pathlib.Path, default=REPO / "proto",
                        help="the directory holding runnel/v1/*.proto (default: the repo's proto/)")
    args = parser.parse_args()
    bootstrap = args.bootstrap.split(",")[0]

    started = time.monotonic()
    phase = "generate stubs"
    try:
        with tempfile.TemporaryDirectory(prefix="runnel-pystubs-") as out:
            protos = generate_stubs(args.proto_dir.resolve(), pathlib.Path(out))
            print(f"ok   {phase}: {', '.join(protos)} (grpcio {grpc.__version__})")
            run = Run(bootstrap)
            phases = [
                ("create topic", run.create_topic),
                ("wait for a leader", run.wait_for_leader),
                ("unary Produce", run.produce_unary),
                ("ProduceStream", run.produce_stream),
                ("Fetch from 0", run.fetch_all),
                ("ListOffsets", run.list_offsets),
                ("error metadata", run.unknown_topic),
                ("FetchStream tails", run.fetch_stream),
            ]
            for phase, step in phases:
                t = time.monotonic()
                detail = step()
                print(f"ok   {phase}: {detail} ({(time.monotonic() - t) * 1000:.0f} ms)", flush=True)
    except Failure as e:
        print(f"FAIL {phase}: {e}", flush=True)
        return 1
    except grpc.RpcError as e:
        print(f"FAIL {phase}: unexpected gRPC error {status_text(e)}", flush=True)
        return 1
    except Exception as e:  # noqa: BLE001 - any other surprise is a failure with its trace
        import traceback
        traceback.print_exc()
        print(f"FAIL {phase}: {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"PASS python client against {bootstrap} in {time.monotonic() - started:.1f}s")
    if run.notes:
        print("notes:\n" + "\n".join(f"  - {n}" for n in run.notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
