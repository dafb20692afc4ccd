#!/usr/bin/env python3
"""Bad bytes on the Kafka port: every malformed request gets its answer, and the node goes on
serving everyone else.

    python kafka_bad_input_test.py --bootstrap 127.0.0.1:9092[,...] [--brokers 3]
    (or env KAFKA_BOOTSTRAP, KAFKA_BROKERS)

Raw sockets only, except that confluent-kafka's admin client creates the Produce case's topic
and finds its leader (and kafka-python's decoder checks the test's own record batches). Against the first bootstrap address (the Produce cases: against the
partition's leader), one line per phase:

  1. the listener answers ApiVersions and names every broker;
  2. an oversized frame (a length prefix of 100 MiB + 1, above Kafka's
     socket.request.max.bytes): the broker closes the connection rather than wait for it;
  3. a negative length prefix: closed;
  4. a truncated frame (a length prefix of 100, 10 bytes, then our side shuts down): the
     broker closes its side too; and so it does after a clean end between frames;
  5. garbage: an HTTP request on the Kafka port (its first four bytes read as a ~1.1 GiB
     length), and a 3-byte frame too short for a request header: each closed;
  6. an unknown API key (9999 in a well-formed header): closed (what Kafka does), or an error
     response carrying our correlation id;
  7. ApiVersions at an unsupported version (v999): Kafka's answer, a v0 response with
     UNSUPPORTED_VERSION (35) and the supported versions (KIP-511);
  8. Produce (v3..v8, a record batch v2 built here) to an RF 3 topic: a good batch is appended
     (error 0, offset 0); then hostile batches, each refused in its partition response: a
     wrong CRC (CORRUPT_MESSAGE, 2), one record claiming 2^31 offsets (a last_offset_delta of
     i32::MAX: INVALID_RECORD, 87), a create time ten years ahead (INVALID_TIMESTAMP, 32),
     garbage records under a valid CRC (CORRUPT_MESSAGE), and a gzip bomb (64 KiB inflating to
     64 MiB: MESSAGE_TOO_LARGE, 10); another good batch then lands at offset 1: nothing of
     the hostile ones was appended.

After every case a connection opened before all of them, and a new one, still get ApiVersions
answered. Every socket call has a timeout. Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import gzip
import os
import socket
import struct
import sys
import time
import uuid

from confluent_kafka.admin import AdminClient, NewTopic

from kafka_testlib import (API_PRODUCE, API_VERSIONS, Failure, Phases, Reader, api_versions, check, connect,
                           deadline_after, eq, kstring, parse_api_versions_v0, parse_bootstrap, read_response,
                           request_frame, wait_for_kafka)

LISTENER_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 5.0
ADMIN_TIMEOUT_S = 20.0
MAX_REQUEST_BYTES = 100 << 20  # Kafka's socket.request.max.bytes default
CORRUPT_MESSAGE = 2
MESSAGE_TOO_LARGE = 10
INVALID_TIMESTAMP = 32
INVALID_RECORD = 87
UNSUPPORTED_VERSION = 35


# --- record batch v2 --------------------------------------------------------------------------

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = CRC32C_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def varint(n):
    """A zig-zag varint (Kafka's record fields)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def record_v2(offset_delta, key, value):
    body = bytes([0]) + varint(0) + varint(offset_delta)
    body += varint(-1) if key is None else varint(len(key)) + key
    body += varint(-1) if value is None else varint(len(value)) + value
    body += varint(0)  # no headers
    return varint(len(body)) + body


def record_batch(records, timestamp_ms, corrupt_crc=False, last_offset_delta=None, section=None, attributes=0):
    """A magic-2 record batch of (key, value) records, no producer id; by default uncompressed
    with the last offset delta its records give. `section` replaces the encoded records (so a
    test can send garbage or a compressed section under a valid CRC)."""
    recs = b"".join(record_v2(i, k, v) for i, (k, v) in enumerate(records)) if section is None else section
    if last_offset_delta is None:
        last_offset_delta = len(records) - 1
    # attributes .. records: what the CRC covers.
    after_crc = struct.pack(">hiqqqhii", attributes, last_offset_delta, timestamp_ms, timestamp_ms, -1, -1, -1,
                            len(records)) + recs
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0x5A5A5A5A
    # partition leader epoch, magic, crc, then the rest; batch length counts from the epoch.
    tail = struct.pack(">ibI", -1, 2, crc) + after_crc
    return struct.pack(">qi", 0, len(tail)) + tail


def produce_request(version, topic, partition, batch, acks=-1, timeout_ms=10_000):
    """Produce v3..v8 (all one layout): transactional id, acks, timeout, topic data."""
    return (kstring(None) + struct.pack(">hi", acks, timeout_ms) + struct.pack(">i", 1) + kstring(topic)
            + struct.pack(">i", 1) + struct.pack(">ii", partition, len(batch)) + batch)


def parse_produce_response(version, body):
    """[(topic, partition, error_code, base_offset, error_message)] of a v3..v8 response."""
    r = Reader(body)
    out = []
    for _ in range(r.take(">i")):
        topic = r.string()
        for _ in range(r.take(">i")):
            partition, error, base = r.take(">ihq")
            r.take(">q")  # log_append_time_ms (v2+)
            if version >= 5:
                r.take(">q")  # log_start_offset
            message = None
            if version >= 8:
                for _ in range(max(r.take(">i"), 0)):  # record_errors
                    r.take(">i")
                    r.string()
                message = r.string()
            out.append((topic, partition, error, base, message))
    return out


# --- the cases --------------------------------------------------------------------------------

def closed_by_peer(sock, what, timeout=CLOSE_TIMEOUT_S):
    """Reads until the broker closes the connection (EOF or reset); answers what it sent first.
    Fails when the connection is still open `timeout` later."""
    sock.settimeout(timeout)
    deadline = deadline_after(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
            check(time.monotonic() < deadline, f"{what}: the broker keeps sending ({len(data)} bytes) and does "
                                               f"not close the connection")
    except (ConnectionResetError, BrokenPipeError):
        return data
    except socket.timeout:
        raise Failure(f"{what}: the connection is still open {timeout}s later (expected the broker to close it)"
                      + (f"; it sent {data[:64]!r}" if data else ""))


def send_ignoring_reset(sock, data):
    """Sends, treating a connection the broker already closed as sent (it may close as soon as
    it has read a bad length prefix)."""
    try:
        sock.sendall(data)
    except (ConnectionResetError, BrokenPipeError):
        pass


class Run:
    def __init__(self, args, phases):
        self.bootstrap = args.bootstrap
        self.brokers = args.brokers
        self.phases = phases
        self.host, self.port = parse_bootstrap(args.bootstrap)[0]
        self.keeper = None  # a connection opened before the bad input, used after each case
        self.correlation = 1000

    def next_id(self):
        self.correlation += 1
        return self.correlation

    def still_serving(self, after):
        """The connection opened before the bad input, and a new one, get ApiVersions answered."""
        cid = self.next_id()
        try:
            self.keeper.sendall(request_frame(API_VERSIONS, 0, cid, b""))
            error, apis = parse_api_versions_v0(read_response(self.keeper, cid))
        except OSError as e:
            raise Failure(f"after {after}: the connection opened before it failed: {type(e).__name__}: {e}")
        eq(error, 0, f"after {after}: ApiVersions on the earlier connection: error code")
        try:
            error, apis = api_versions(self.host, self.port)
        except OSError as e:
            raise Failure(f"after {after}: a new connection's ApiVersions failed: {type(e).__name__}: {e} "
                          f"(did the node die?)")
        eq(error, 0, f"after {after}: ApiVersions on a new connection: error code")
        return apis

    def guarded(self, case, what):
        """Runs `case`; when it fails, says whether the node still serves others all the same."""
        def run():
            try:
                return case()
            except Failure as e:
                try:
                    self.still_serving(what)
                except Failure as e2:
                    raise Failure(f"{e}; and then: {e2}")
                raise Failure(f"{e} (the node still serves: ApiVersions answered on the earlier connection "
                              f"and on a new one)")
        return run

    def listener(self):
        summary = wait_for_kafka(self.bootstrap, self.brokers, LISTENER_TIMEOUT_S)
        self.keeper = connect(self.host, self.port)
        self.still_serving("nothing")
        return summary

    def oversized(self):
        with connect(self.host, self.port) as s:
            send_ignoring_reset(s, struct.pack(">i", MAX_REQUEST_BYTES + 1) + request_frame(API_VERSIONS, 0, 1, b"")[4:])
            got = closed_by_peer(s, f"a frame announcing {MAX_REQUEST_BYTES + 1} bytes")
        self.still_serving("the oversized frame")
        return f"closed{' after ' + repr(got[:32]) if got else ''}; still serving"

    def negative_length(self):
        with connect(self.host, self.port) as s:
            send_ignoring_reset(s, struct.pack(">i", -1) + b"\x00" * 16)
            closed_by_peer(s, "a frame with length prefix -1")
        self.still_serving("the negative length")
        return "closed; still serving"

    def truncated(self):
        with connect(self.host, self.port) as s:
            s.sendall(struct.pack(">i", 100) + request_frame(API_VERSIONS, 0, 1, b"")[4:14])
            s.shutdown(socket.SHUT_WR)
            got = closed_by_peer(s, "a frame of 100 bytes cut off after 10, then EOF")
        check(not got, f"a truncated frame was answered: {got[:64]!r}")
        # And one closed outright, mid-frame.
        s = connect(self.host, self.port)
        s.sendall(struct.pack(">i", 100) + b"\x00" * 10)
        s.close()
        # The ordinary end of a connection, for comparison: a request answered, then our side
        # shuts down between frames. A broker that keeps its side open here keeps every
        # finished client's socket (CLOSE-WAIT) until it stops.
        with connect(self.host, self.port) as s:
            cid = self.next_id()
            s.sendall(request_frame(API_VERSIONS, 0, cid, b""))
            read_response(s, cid)
            s.shutdown(socket.SHUT_WR)
            closed_by_peer(s, "a connection our side shut down after an answered request (a clean end)")
        self.still_serving("the truncated frames")
        return "the broker closed its side, also after a clean end between frames; still serving"

    def garbage(self):
        with connect(self.host, self.port) as s:
            send_ignoring_reset(s, b"GET / HTTP/1.1\r\nHost: kafka\r\nConnection: close\r\n\r\n")
            closed_by_peer(s, "an HTTP request on the Kafka port")
        self.still_serving("the HTTP request")
        with connect(self.host, self.port) as s:
            send_ignoring_reset(s, struct.pack(">i", 3) + b"\x00\x12\x00")
            got = closed_by_peer(s, "a 3-byte frame (too short for a request header)")
        self.still_serving("the 3-byte frame")
        return f"both closed{' (after ' + repr(got[:32]) + ')' if got else ''}; still serving"

    def unknown_api_key(self):
        cid = self.next_id()
        with connect(self.host, self.port) as s:
            s.sendall(request_frame(9999, 0, cid, b""))
            s.settimeout(CLOSE_TIMEOUT_S)
            try:
                head = s.recv(4)
            except (ConnectionResetError, BrokenPipeError):
                head = b""
            except socket.timeout:
                raise Failure(f"API key 9999: neither an answer nor a close within {CLOSE_TIMEOUT_S}s")
            if not head:
                how = "closed the connection (as Kafka does)"
            else:
                check(len(head) == 4, f"API key 9999: a partial length prefix {head!r}")
                (size,) = struct.unpack(">i", head)
                check(4 <= size <= 1 << 20, f"API key 9999: answered a frame of size {size}")
                body = b""
                while len(body) < size:
                    chunk = s.recv(size - len(body))
                    check(chunk, f"API key 9999: the answer was cut off after {len(body)} of {size} bytes")
                    body += chunk
                (got_cid,) = struct.unpack_from(">i", body)
                eq(got_cid, cid, "API key 9999: the error response's correlation id")
                how = f"answered with {size} bytes for correlation id {cid}"
        self.still_serving("the unknown API key")
        return f"{how}; still serving"

    def unsupported_version(self):
        cid = self.next_id()
        with connect(self.host, self.port) as s:
            s.sendall(request_frame(API_VERSIONS, 999, cid, b""))
            try:
                body = read_response(s, cid)
            except (ConnectionError, socket.timeout) as e:
                raise Failure(f"ApiVersions v999: no answer ({type(e).__name__}: {e}); Kafka answers with "
                              f"UNSUPPORTED_VERSION (35) in a v0 response")
        error, apis = parse_api_versions_v0(body)
        eq(error, UNSUPPORTED_VERSION, "ApiVersions v999: error code")
        check(API_VERSIONS in apis, f"ApiVersions v999: the answer does not list ApiVersions itself: {apis}")
        self.still_serving("ApiVersions v999")
        return f"UNSUPPORTED_VERSION with {len(apis)} APIs listed; still serving"

    def hostile_batches(self):
        # The batch builder against kafka-python's own decoder, first: a test bug is not a
        # broker bug.
        from kafka.record.default_records import DefaultRecordBatch
        eq(crc32c(b"123456789"), 0xE3069283, "crc32c check value")
        now = int(time.time() * 1000)
        good = record_batch([(b"k", b"good one")], now)
        check(DefaultRecordBatch(bytearray(good)).validate_crc(), "kafka-python rejects our good batch's CRC")
        bad = record_batch([(b"k", b"corrupt")], now, corrupt_crc=True)
        check(not DefaultRecordBatch(bytearray(bad)).validate_crc(), "kafka-python accepts our corrupt batch's CRC")

        apis = api_versions(self.host, self.port)[1]
        check(API_PRODUCE in apis, f"ApiVersions does not list Produce: {apis}")
        lo, hi = apis[API_PRODUCE]
        version = max(3, lo)
        check(version <= min(hi, 8), f"Produce versions {lo}..{hi}: none of v3..v8 (non-flexible) to test with")

        # Plumbing, not the subject: confluent-kafka's admin client creates the topic and
        # names its leader.
        topic = f"bad-crc-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=min(3, self.brokers))],
                                      request_timeout=ADMIN_TIMEOUT_S)
        futures[topic].result(timeout=ADMIN_TIMEOUT_S)
        deadline = deadline_after(ADMIN_TIMEOUT_S)
        while True:
            md = admin.list_topics(topic=topic, timeout=ADMIN_TIMEOUT_S)
            t = md.topics.get(topic)
            if t is not None and t.error is None and 0 in t.partitions and t.partitions[0].leader >= 0:
                leader = t.partitions[0].leader
                break
            check(time.monotonic() < deadline, f"{topic}/0 has no leader within {ADMIN_TIMEOUT_S}s: {t}")
            time.sleep(0.05)
        brokers = {b.id: (b.host, b.port) for b in md.brokers.values()}
        host, port = brokers[leader]

        def produce(batch, what):
            deadline = deadline_after(ADMIN_TIMEOUT_S)
            while True:
                cid = self.next_id()
                with connect(host, port) as s:
                    s.sendall(request_frame(API_PRODUCE, version, cid, produce_request(version, topic, 0, batch)))
                    try:
                        answer = parse_produce_response(version, read_response(s, cid))
                    except (ConnectionError, socket.timeout) as e:
                        raise Failure(f"Produce v{version} of {what}: no answer ({type(e).__name__}: {e})")
                eq([(t, p) for t, p, *_ in answer], [(topic, 0)], f"Produce of {what}: partitions answered")
                _, _, error, base, message = answer[0]
                # NOT_LEADER_OR_FOLLOWER (6) / LEADER_NOT_AVAILABLE (5): a leader still loading;
                # UNKNOWN_TOPIC_OR_PARTITION (3): the leader's metadata has not reached the new
                # topic yet (another broker answered the listing first).
                if error in (3, 5, 6) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                return error, base, message

        error, base, message = produce(good, "a good batch")
        eq((error, base), (0, 0), f"Produce v{version} of a good batch: (error code, base offset) (message {message!r})")
        ten_years_ms = 10 * 365 * 24 * 3600 * 1000
        bomb_record = record_v2(0, None, bytes(64 << 20))
        hostile = [
            ("a batch with a wrong CRC", bad, CORRUPT_MESSAGE),
            ("one record claiming 2^31 offsets", record_batch([(b"k", b"v")], now, last_offset_delta=2**31 - 1),
             INVALID_RECORD),
            ("a record dated ten years ahead", record_batch([(b"k", b"v")], now + ten_years_ms), INVALID_TIMESTAMP),
            ("garbage records under a valid CRC", record_batch([(b"k", b"v")], now, section=b"\xff" * 40),
             CORRUPT_MESSAGE),
            ("a gzip bomb", record_batch([(None, None)], now, section=gzip.compress(bomb_record), attributes=1),
             MESSAGE_TOO_LARGE),
        ]
        del bomb_record
        for what, batch, expected in hostile:
            error, base, message = produce(batch, what)
            eq(error, expected, f"Produce v{version} of {what} ({len(batch)} bytes): error code (message {message!r})")
        error, base, message = produce(good, "a good batch after the hostile ones")
        eq((error, base), (0, 1), f"Produce v{version} of a good batch after the hostile ones: (error code, base offset) "
                                  f"(1: nothing of them was appended)")
        self.still_serving("the hostile batches")
        return (f"Produce v{version} to {topic} on broker {leader}: good -> 0, bad CRC / 2^31 offsets / future "
                f"timestamp / garbage records / gzip bomb -> {[e for _, _, e in hostile]}, good -> 1")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="Kafka listeners host:port[,...] (env KAFKA_BOOTSTRAP); the first one is attacked")
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("KAFKA_BROKERS", "3")))
    args = parser.parse_args()

    phases = Phases(f"bad input against {args.bootstrap.split(',')[0]}")
    run = Run(args, phases)
    try:
        phases.run("listener", run.listener)
        for name, case in [
            ("oversized frame", run.oversized),
            ("negative length", run.negative_length),
            ("truncated frame", run.truncated),
            ("garbage", run.garbage),
            ("unknown API key", run.unknown_api_key),
            ("unsupported ApiVersions version", run.unsupported_version),
            ("Produce of hostile batches", run.hostile_batches),
        ]:
            phases.run(name, run.guarded(case, f"the {name}"), needs=["listener"])
    finally:
        if run.keeper is not None:
            run.keeper.close()
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
