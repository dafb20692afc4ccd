#!/usr/bin/env python3
"""Runnel's Kafka listener as a kafka-python user meets it.

    python kafka_python_test.py --bootstrap 127.0.0.1:9092[,...] [--brokers 3]
    (or env KAFKA_BOOTSTRAP, KAFKA_BROKERS)

Needs kafka-python (tests/python/requirements.txt; scripts/python-env.sh builds the venv).
Against a running cluster whose nodes all serve Kafka it checks, one line per phase:

  1. the listener answers ApiVersions and names every broker (raw socket, no client);
  2. the acceptance snippet, as written (a producer sends one keyed record to 'salary-updates'
     and flushes; a consumer subscribes and iterates), but with a bounded loop
     (consumer_timeout_ms and a count). As written the consumer starts at the latest offset,
     so the record produced before it is checked with a second consumer from 'earliest', and
     one more record is produced once the snippet's consumer has its partition and position;
  3. Metadata v8 answers the authorized-operations bitfields kafka-python's admin client asks
     for (raw, so a wrong answer is named rather than met as the admin client's ValueError);
     'salary-updates' was auto-created by that first Produce/Metadata: one partition, with a
     leader and min(3, brokers) replicas all in sync;
  4. keyed records go to Kafka's murmur2 partition: the admin client creates a 6-partition
     topic, the default partitioner sends keyed records, and both the partition each record
     was acknowledged in and the partition it is read back from equal
     (murmur2(key) & 0x7fffffff) % 6, with murmur2 computed here (and checked against Java's
     test vectors and kafka-python's own);
  5. a consumer group: a member with group_id and auto_offset_reset='earliest' reads every
     record exactly once and commits; after it closes, records are produced, and a new member
     of the same group reads exactly those (it resumes from the commit).

Every blocking call has a timeout. Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import os
import sys
import time
import uuid

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from kafka_testlib import (INT32_MIN, Failure, Phases, check, deadline_after, eq, left,
                           metadata_topics, metadata_v8_authorized_operations, parse_bootstrap, wait_for_kafka)

LISTENER_TIMEOUT_S = 30.0
PHASE_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_MS = 20_000
SESSION_TIMEOUT_MS = 10_000
CONSUMER_TIMEOUT_MS = 10_000
SNIPPET_TOPIC = "salary-updates"
MURMUR_PARTITIONS = 6


def murmur2(data):
    """Kafka's murmur2 (org.apache.kafka.common.utils.Utils.murmur2), as a signed 32-bit int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[i * 4:i * 4 + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & 3
    base = length & ~3
    if tail == 3:
        h ^= data[base + 2] << 16
    if tail >= 2:
        h ^= data[base + 1] << 8
    if tail >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


# Kafka's own test vectors (UtilsTest.testMurmur2).
MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def kafka_partition(key, partitions):
    """The Java client's (and kafka-python's) default partition for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def signed32(x):
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


class Run:
    def __init__(self, bootstrap, brokers, phases):
        self.bootstrap = bootstrap
        self.servers = bootstrap.split(",")
        self.brokers = brokers
        self.phases = phases
        self.run_id = uuid.uuid4().hex[:8]
        self.snippet_offset = None

    # --- helpers --------------------------------------------------------------------------

    def admin(self):
        return KafkaAdminClient(bootstrap_servers=self.servers, request_timeout_ms=REQUEST_TIMEOUT_MS,
                                client_id=f"runnel-test-admin-{self.run_id}")

    def producer(self, **extra):
        config = dict(bootstrap_servers=self.servers, request_timeout_ms=REQUEST_TIMEOUT_MS, max_block_ms=20_000)
        config.update(extra)
        return KafkaProducer(**config)

    def consumer(self, *topics, **extra):
        config = dict(bootstrap_servers=self.servers, request_timeout_ms=REQUEST_TIMEOUT_MS,
                      session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=1000,
                      consumer_timeout_ms=CONSUMER_TIMEOUT_MS)
        config.update(extra)
        return KafkaConsumer(*topics, **config)

    def topic_partitions(self, admin, topic):
        """The Metadata partitions of `topic` (error-free), or a Failure."""
        topics = admin.describe_topics([topic])
        eq(len(topics), 1, f"describe_topics([{topic!r}]) answer count")
        t = topics[0]
        eq(t["error_code"], 0, f"describe_topics({topic}) error code")
        return sorted(t["partitions"], key=lambda p: p["partition"])

    def wait_topic_ready(self, admin, topic, partitions, replicas, timeout_s=PHASE_TIMEOUT_S):
        """Polls Metadata until `topic` has `partitions` partitions, each with a leader, and
        `replicas` replicas all in sync; answers the partitions."""
        deadline = deadline_after(timeout_s)
        last = None
        while True:
            try:
                ps = self.topic_partitions(admin, topic)
                last = ps
                ok = len(ps) == partitions and all(
                    p["error_code"] == 0 and p["leader"] >= 0 and len(p["replicas"]) == replicas
                    and sorted(p["isr"]) == sorted(p["replicas"]) for p in ps)
                if ok:
                    return ps
            except Failure as e:
                last = str(e)
            check(time.monotonic() < deadline,
                  f"{topic}: not {partitions} partition(s) each with a leader and {replicas} in-sync replicas "
                  f"within {timeout_s}s; last Metadata: {last}")
            time.sleep(0.05)

    def create_topic(self, admin, topic, partitions, replicas):
        resp = admin.create_topics([NewTopic(topic, partitions, replicas)], timeout_ms=REQUEST_TIMEOUT_MS)
        errors = [(e[0], e[1]) for e in resp.topic_errors]
        eq(errors, [(topic, 0)], f"CreateTopics({topic}, {partitions} partitions, RF {replicas}) (topic, error code)")
        return self.wait_topic_ready(admin, topic, partitions, replicas)

    # --- phases -----------------------------------------------------------------------------

    def listener(self):
        return wait_for_kafka(self.bootstrap, self.brokers, LISTENER_TIMEOUT_S)

    def snippet(self):
        # Plumbing, not the subject: a raw Metadata v1 for all topics (which never creates one).
        host, port = parse_bootstrap(self.bootstrap)[0]
        existing = metadata_topics(host, port)
        check(SNIPPET_TOPIC not in existing,
              f"{SNIPPET_TOPIC!r} exists before the snippet ran, so auto-creation cannot be checked "
              f"(run against a fresh cluster)")

        # The snippet, as written (bootstrap from the test's cluster: one address, a
        # string, as in the snippet).
        producer = KafkaProducer(bootstrap_servers=self.servers[0])
        try:
            future = producer.send(SNIPPET_TOPIC, key=b"employee_id_123", value=b"Salary update for employee 123")
            producer.flush(timeout=PHASE_TIMEOUT_S)
            md = future.get(timeout=1)  # flushed: resolved already, or it failed
            self.snippet_offset = (md.partition, md.offset)
            eq(md.partition, 0, "the snippet's record partition (an auto-created topic has 1)")

            # The snippet's producer asks acks=1 (kafka-python's default): the leader answers
            # before the followers have the record, and 'latest' is the high watermark, which
            # moves once they do. Wait for that, so 'latest' is past the record.
            hw = self.wait_high_watermark(SNIPPET_TOPIC, 0, md.offset + 1)

            consumer = KafkaConsumer(SNIPPET_TOPIC, bootstrap_servers=self.servers[0],
                                     consumer_timeout_ms=CONSUMER_TIMEOUT_MS, request_timeout_ms=REQUEST_TIMEOUT_MS)
            try:
                # As written the consumer starts at the latest offset: wait until it has its
                # partition and its position, then produce what it should see.
                deadline = deadline_after(PHASE_TIMEOUT_S)
                early = []
                while not consumer.assignment():
                    check(time.monotonic() < deadline, f"the snippet's consumer has no assignment within "
                                                       f"{PHASE_TIMEOUT_S}s")
                    for records in consumer.poll(timeout_ms=100).values():
                        early.extend(records)
                tp = TopicPartition(SNIPPET_TOPIC, 0)
                eq(consumer.assignment(), {tp}, "the snippet's consumer assignment")
                position = consumer.position(tp, timeout_ms=int(left(deadline) * 1000))
                eq(position, md.offset + 1, "the snippet's consumer starting position (latest)")
                eq(early, [], "records polled before anything new was produced (it starts at latest)")

                second = producer.send(SNIPPET_TOPIC, key=b"employee_id_123", value=b"Salary update for employee 123 #2")
                producer.flush(timeout=PHASE_TIMEOUT_S)
                md2 = second.get(timeout=1)
                eq((md2.partition, md2.offset), (0, md.offset + 1), "the second record's (partition, offset)")

                printed = []
                for message in consumer:  # the snippet's loop, bounded by consumer_timeout_ms
                    print(f"  consumed: {message.value.decode()}")
                    printed.append(message)
                    if len(printed) >= 1:
                        break
            finally:
                consumer.close()
        finally:
            producer.close(timeout=10)
        eq([(m.offset, m.key, m.value) for m in printed],
           [(md2.offset, b"employee_id_123", b"Salary update for employee 123 #2")],
           "the snippet's consumer read (offset, key, value)")

        # The first record, from the start.
        consumer = self.consumer(SNIPPET_TOPIC, auto_offset_reset="earliest")
        try:
            got = []
            for message in consumer:
                got.append(message)
                if len(got) >= 2:
                    break
        finally:
            consumer.close()
        eq([(m.partition, m.offset, m.key, m.value) for m in got],
           [(0, md.offset, b"employee_id_123", b"Salary update for employee 123"),
            (0, md2.offset, b"employee_id_123", b"Salary update for employee 123 #2")],
           "a consumer from 'earliest' read (partition, offset, key, value)")
        return (f"produced at offset {md.offset} (high watermark {hw} after {self.hw_polls} ListOffsets); the "
                f"snippet's consumer started at {position} and printed the next record; from earliest both "
                f"records read back")

    def wait_high_watermark(self, topic, partition, want):
        """Polls ListOffsets (latest) until the partition's high watermark reaches `want`."""
        tp = TopicPartition(topic, partition)
        consumer = self.consumer(enable_auto_commit=False)
        try:
            deadline = deadline_after(PHASE_TIMEOUT_S)
            self.hw_polls = 0
            while True:
                self.hw_polls += 1
                hw = consumer.end_offsets([tp])[tp]
                if hw >= want:
                    return hw
                check(time.monotonic() < deadline, f"{topic}/{partition}: high watermark {hw}, not {want}, "
                                                   f"{PHASE_TIMEOUT_S}s after the record was acknowledged")
                time.sleep(0.02)
        finally:
            consumer.close()

    def auto_created(self):
        admin = self.admin()
        try:
            check(SNIPPET_TOPIC in admin.list_topics(), f"{SNIPPET_TOPIC!r} is not listed after the snippet")
            rf = min(3, self.brokers)
            ps = self.wait_topic_ready(admin, SNIPPET_TOPIC, 1, rf)
        finally:
            admin.close()
        p = ps[0]
        check(p["leader"] in p["isr"], f"leader {p['leader']} not in its ISR {p['isr']}")
        return f"1 partition, leader {p['leader']}, replicas {p['replicas']}, isr {p['isr']}"

    def authorized_operations(self):
        """kafka-python's KafkaAdminClient asks Metadata v8 for the cluster's and each topic's
        authorized operations and decodes the bitfields it gets; Kafka answers them when asked
        (without an authorizer: every operation of the resource type). Checked raw here, so a
        broker that leaves them at their "not provided" default (INT32_MIN) is named as such
        rather than by the admin client's ValueError ('31 is not a valid ACLOperation')."""
        host, port = parse_bootstrap(self.bootstrap)[0]
        cluster_ops, topics = metadata_v8_authorized_operations(host, port, SNIPPET_TOPIC)
        check(SNIPPET_TOPIC in topics, f"Metadata v8 for {SNIPPET_TOPIC!r} does not name it: {topics}")
        error, topic_ops = topics[SNIPPET_TOPIC]
        eq(error, 0, f"Metadata v8 {SNIPPET_TOPIC} error code")
        bad = {name: v for name, v in (("cluster_authorized_operations", cluster_ops),
                                       ("topic_authorized_operations", topic_ops)) if v < 0}
        check(not bad, f"Metadata v8 with include_cluster_authorized_operations and "
                       f"include_topic_authorized_operations set answered {bad} (INT32_MIN = {INT32_MIN}: "
                       f"'not provided'); Kafka answers the operations' bitfield, and kafka-python's "
                       f"KafkaAdminClient, which asks for them, cannot decode the sign bit")
        return f"cluster {cluster_ops:#x}, topic {topic_ops:#x}"

    def murmur2_partitioning(self):
        for data, want in MURMUR2_VECTORS.items():
            eq(murmur2(data), want, f"murmur2({data!r}) against Kafka's test vector")
        topic = f"kp-murmur2-{self.run_id}"
        keys = [f"key-{i}".encode() for i in range(200)] + [
            b"", b"a", b"ab", b"abc", b"\x00", b"\xff\xfe\xfd\xfc\xfb", b"employee_id_123", bytes(range(256)),
        ]
        for k in keys:
            eq(signed32(kafka_python_murmur2(k)), murmur2(k), f"kafka-python's murmur2({k[:16]!r}) vs ours")
        admin = self.admin()
        try:
            self.create_topic(admin, topic, MURMUR_PARTITIONS, min(3, self.brokers))
        finally:
            admin.close()
        producer = self.producer(acks="all")
        try:
            futures = [(k, producer.send(topic, key=k, value=b"v-" + k)) for k in keys]
            producer.flush(timeout=PHASE_TIMEOUT_S)
            acked = {}
            for k, f in futures:
                md = f.get(timeout=1)
                eq(md.partition, kafka_partition(k, MURMUR_PARTITIONS),
                   f"partition the producer sent key {k[:24]!r} to")
                acked[k] = (md.partition, md.offset)
        finally:
            producer.close(timeout=10)

        # Read every partition back: each record is where it was acknowledged.
        consumer = self.consumer(auto_offset_reset="earliest", enable_auto_commit=False)
        try:
            tps = [TopicPartition(topic, p) for p in range(MURMUR_PARTITIONS)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            want_total = sum(ends.values())
            eq(want_total, len(keys), f"sum of end offsets of {topic}")
            found = {}
            deadline = deadline_after(PHASE_TIMEOUT_S)
            while len(found) < len(keys):
                check(time.monotonic() < deadline,
                      f"read {len(found)} of {len(keys)} records back within {PHASE_TIMEOUT_S}s")
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for m in records:
                        check(m.key not in found, f"key {m.key!r} read twice: {found.get(m.key)} and "
                                                  f"{(tp.partition, m.offset)}")
                        found[m.key] = (tp.partition, m.offset)
                        eq(m.value, b"v-" + m.key, f"value of key {m.key!r}")
        finally:
            consumer.close()
        for k in keys:
            eq(found.get(k), acked[k], f"key {k[:24]!r}: (partition, offset) read back vs acknowledged")
        spread = {p: sum(1 for k in keys if acked[k][0] == p) for p in range(MURMUR_PARTITIONS)}
        return f"{len(keys)} keys on their murmur2 partitions (records per partition {spread})"

    def group_resume(self):
        topic = f"kp-group-{self.run_id}"
        group = f"kp-group-{self.run_id}"
        partitions = 3
        admin = self.admin()
        try:
            self.create_topic(admin, topic, partitions, min(3, self.brokers))
        finally:
            admin.close()
        first = [f"first-{i}".encode() for i in range(30)]
        later = [f"later-{i}".encode() for i in range(12)]
        self.produce_all(topic, first)

        a = self.consumer(topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
        try:
            got_a = self.read_exactly(a, first, "member 1")
            a.commit(timeout_ms=REQUEST_TIMEOUT_MS)
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            ends = a.end_offsets(tps)
            committed = {tp: a.committed(tp, timeout_ms=REQUEST_TIMEOUT_MS) for tp in tps}
            eq(committed, ends, "offsets committed by member 1 (OffsetFetch) vs the end offsets")
        finally:
            a.close()

        self.produce_all(topic, later)
        b = self.consumer(topic, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
        try:
            got_b = self.read_exactly(b, later, "member 2 (restarted)", committed=committed)
            # Nothing else is pending: its position is the end of every partition.
            ends2 = b.end_offsets(tps)
            positions = {tp: b.position(tp, timeout_ms=REQUEST_TIMEOUT_MS) for tp in tps}
            eq(positions, ends2, "member 2's positions after reading the new records vs the end offsets")
            b.commit(timeout_ms=REQUEST_TIMEOUT_MS)
        finally:
            b.close()
        return (f"member 1 read {len(got_a)} once and committed {sorted((tp.partition, o) for tp, o in committed.items())}; "
                f"member 2 read only the {len(got_b)} produced after")

    def produce_all(self, topic, values):
        producer = self.producer(acks="all")
        try:
            futures = [producer.send(topic, key=v, value=v) for v in values]
            producer.flush(timeout=PHASE_TIMEOUT_S)
            for v, f in zip(values, futures):
                f.get(timeout=1)
        finally:
            producer.close(timeout=10)

    def read_exactly(self, consumer, expected, who, committed=None):
        """Polls until every value of `expected` was read once; fails on a duplicate, on a value
        not expected, or (given `committed`) on a record below its partition's commit."""
        want = set(expected)
        got = {}
        deadline = deadline_after(PHASE_TIMEOUT_S)
        while len(got) < len(want):
            check(time.monotonic() < deadline,
                  f"{who} read {len(got)} of {len(want)} records within {PHASE_TIMEOUT_S}s "
                  f"(assignment {sorted(tp.partition for tp in consumer.assignment())})")
            for tp, records in consumer.poll(timeout_ms=200).items():
                for m in records:
                    where = (tp.partition, m.offset)
                    if committed is not None:
                        check(m.offset >= committed[tp],
                              f"{who} read {m.value!r} at {where}, below the committed offset {committed[tp]}: "
                              f"it did not resume from the commit")
                    check(m.value in want, f"{who} read {m.value!r} at {where}, not among the records expected")
                    check(m.value not in got, f"{who} read {m.value!r} twice: at {got.get(m.value)} and {where}")
                    got[m.value] = where
        return got


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="Kafka listeners host:port[,...] (env KAFKA_BOOTSTRAP; default 127.0.0.1:9092)")
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("KAFKA_BROKERS", "3")),
                        help="how many brokers the cluster has (env KAFKA_BROKERS; default 3)")
    args = parser.parse_args()

    phases = Phases(f"kafka-python against {args.bootstrap}")
    import kafka
    print(f"kafka-python {kafka.__version__}", flush=True)
    run = Run(args.bootstrap, args.brokers, phases)
    phases.run("listener", run.listener)
    phases.run("snippet", run.snippet, needs=["listener"])
    phases.run("authorized operations (for the admin client)", run.authorized_operations, needs=["snippet"])
    phases.run("auto-created topic", run.auto_created, needs=["snippet"])
    phases.run("murmur2 partitioning", run.murmur2_partitioning, needs=["listener"])
    phases.run("group commit and resume", run.group_resume, needs=["listener"])
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
