#!/usr/bin/env python3
"""Runnel's Kafka listener as a confluent-kafka (librdkafka 2.x) user meets it.

    python confluent_kafka_test.py --bootstrap 127.0.0.1:9092[,...] [--brokers 3]
        [--records 100000] [--partitions 6] [--replication-factor 3]
    (or env KAFKA_BOOTSTRAP, KAFKA_BROKERS)

Needs confluent-kafka (tests/python/requirements.txt). Against a running cluster whose nodes
all serve Kafka it checks, one line per phase:

  1. the listener answers ApiVersions and names every broker (raw socket, no client);
  2. AdminClient creates a 6-partition RF 3 topic and a small one; creating one again fails
     with TOPIC_ALREADY_EXISTS;
  3. AdminClient describes them: list_topics names every broker, and every partition has a
     leader and 3 replicas all in sync; describe_topics says the same;
  4. an idempotent producer (the default config plus enable.idempotence=true and acks=all)
     sends 100,000 small records; every delivery report is checked, and each partition's
     acknowledged offsets run 0, 1, 2, ... without a gap or a repeat;
  5. a consumer group of two members (two Consumer instances on two threads) splits the six
     partitions (each member's partitions are paused until the group has settled on a split
     covering all six, so neither reads the other's share) and reads every record exactly
     once, checked by the unique id in each value; offsets are committed on revocation;
  6. AdminClient deletes both topics, and they leave the cluster's metadata.

Every blocking call has a timeout; a healthy run takes well under a minute. Exits 0 when
every phase passed, 1 otherwise.
"""

import argparse
import os
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka import TopicCollection
import confluent_kafka

from kafka_testlib import Failure, Phases, check, deadline_after, eq, left, wait_for_kafka

LISTENER_TIMEOUT_S = 30.0
ADMIN_TIMEOUT_S = 20.0
PRODUCE_TIMEOUT_S = 50.0
CONSUME_TIMEOUT_S = 50.0
SETTLE_TIMEOUT_S = 30.0


class Run:
    def __init__(self, args, phases):
        self.bootstrap = args.bootstrap
        self.brokers = args.brokers
        self.records = args.records
        self.partitions = args.partitions
        self.rf = args.replication_factor
        self.phases = phases
        run_id = uuid.uuid4().hex[:8]
        self.topic = f"ck-idem-{run_id}"
        self.small = f"ck-small-{run_id}"
        self.group = f"ck-group-{run_id}"
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 10_000})
        self.produced = {}  # value -> (partition, offset)

    def listener(self):
        return wait_for_kafka(self.bootstrap, self.brokers, LISTENER_TIMEOUT_S)

    def admin_create(self):
        futures = self.admin.create_topics(
            [NewTopic(self.topic, num_partitions=self.partitions, replication_factor=self.rf),
             NewTopic(self.small, num_partitions=1, replication_factor=self.rf)],
            operation_timeout=ADMIN_TIMEOUT_S, request_timeout=ADMIN_TIMEOUT_S)
        for name, f in futures.items():
            eq(f.result(timeout=ADMIN_TIMEOUT_S), None, f"create_topics result for {name}")
        again = self.admin.create_topics([NewTopic(self.small, num_partitions=1, replication_factor=self.rf)],
                                         request_timeout=ADMIN_TIMEOUT_S)
        try:
            again[self.small].result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as e:
            eq(e.args[0].code(), KafkaError.TOPIC_ALREADY_EXISTS, f"creating {self.small} again: error {e}")
        else:
            raise Failure(f"creating {self.small} a second time succeeded")
        return f"{self.topic} ({self.partitions} partitions, RF {self.rf}) and {self.small}; a repeat: TOPIC_ALREADY_EXISTS"

    def admin_describe(self):
        deadline = deadline_after(ADMIN_TIMEOUT_S)
        want = {self.topic: self.partitions, self.small: 1}
        last = None
        while True:
            md = self.admin.list_topics(timeout=max(left(deadline), 1))
            problems = []
            if len(md.brokers) != self.brokers:
                problems.append(f"{len(md.brokers)} brokers: {sorted(md.brokers)}")
            for name, n in want.items():
                t = md.topics.get(name)
                if t is None or t.error is not None:
                    problems.append(f"{name}: {t.error if t else 'missing'}")
                    continue
                if len(t.partitions) != n:
                    problems.append(f"{name}: {len(t.partitions)} partitions")
                for p in t.partitions.values():
                    if (p.error is not None or p.leader < 0 or len(p.replicas) != self.rf
                            or sorted(p.isrs) != sorted(p.replicas) or p.leader not in p.replicas
                            or not set(p.replicas) <= set(md.brokers)):
                        problems.append(f"{name}/{p.id}: leader {p.leader} replicas {p.replicas} "
                                        f"isrs {p.isrs} error {p.error}")
            if not problems:
                break
            last = problems
            check(time.monotonic() < deadline, f"list_topics not as expected within {ADMIN_TIMEOUT_S}s: {last}")
            time.sleep(0.05)
        brokers = sorted(f"{b.id}@{b.host}:{b.port}" for b in md.brokers.values())

        futures = self.admin.describe_topics(TopicCollection([self.topic, self.small]),
                                             request_timeout=ADMIN_TIMEOUT_S)
        for name, f in futures.items():
            d = f.result(timeout=ADMIN_TIMEOUT_S)
            eq(d.name, name, "describe_topics name")
            eq(len(d.partitions), want[name], f"describe_topics({name}) partition count")
            for p in d.partitions:
                replicas = sorted(n.id for n in p.replicas)
                check(p.leader is not None and p.leader.id in replicas,
                      f"describe_topics({name})/{p.id}: leader {p.leader} not among replicas {replicas}")
                eq(len(replicas), self.rf, f"describe_topics({name})/{p.id} replica count")
                eq(sorted(n.id for n in p.isr), replicas, f"describe_topics({name})/{p.id} isr")
        return f"brokers {brokers}; every partition led, {self.rf} replicas in sync (list_topics and describe_topics)"

    def produce(self):
        producer = Producer({
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            # A bound on each record's delivery (the default is 300 s).
            "message.timeout.ms": int(PRODUCE_TIMEOUT_S * 1000),
        })
        errors = []
        delivered = {}

        def on_delivery(err, msg):
            if err is not None:
                errors.append(f"{msg.value()!r}: {err}")
            else:
                delivered[msg.value()] = (msg.partition(), msg.offset())

        deadline = deadline_after(PRODUCE_TIMEOUT_S)
        start = time.monotonic()
        for i in range(self.records):
            value = b"%08d" % i
            while True:
                try:
                    producer.produce(self.topic, key=b"k%d" % i, value=value, on_delivery=on_delivery)
                    break
                except BufferError:
                    check(time.monotonic() < deadline, f"the producer's queue stayed full: {i} queued in "
                                                       f"{PRODUCE_TIMEOUT_S}s, {len(delivered)} delivered")
                    producer.poll(0.05)
            producer.poll(0)
            if errors:
                break
        remaining = producer.flush(max(left(deadline), 1))
        took = time.monotonic() - start
        check(not errors, f"{len(errors)} delivery report(s) with an error; first ones: {errors[:5]}")
        eq(remaining, 0, f"records still undelivered after flush ({len(delivered)} delivered in {took:.1f}s)")
        eq(len(delivered), self.records, "records with a successful delivery report")
        per_partition = {}
        for p, o in delivered.values():
            per_partition.setdefault(p, []).append(o)
        for p, offsets in sorted(per_partition.items()):
            offsets.sort()
            bad = next((i for i, o in enumerate(offsets) if o != i), None)
            check(bad is None, f"partition {p}: acknowledged offsets are not 0..{len(offsets) - 1} (a gap or a "
                               f"repeat: lost or duplicated appends); at index {bad} came offset "
                               f"{offsets[bad] if bad is not None else None}")
        check(set(per_partition) <= set(range(self.partitions)), f"partitions outside 0..{self.partitions - 1}: "
                                                                 f"{sorted(per_partition)}")
        self.produced = delivered
        counts = {p: len(o) for p, o in sorted(per_partition.items())}
        return f"{self.records} delivered in {took:.1f}s ({self.records / took:.0f}/s); per partition {counts}"

    def consume_group(self):
        go = threading.Event()
        stop = threading.Event()
        lock = threading.Lock()
        members = []

        class Member:
            def __init__(self, n):
                self.n = n
                self.assignment = set()
                self.got = {}  # value -> (partition, offset)
                self.dups = []
                self.rebalances_after_go = 0
                self.error = None
                self.positions = None
                self.consumer = Consumer({
                    "bootstrap.servers": run.bootstrap,
                    "group.id": run.group,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": 10_000,
                    "heartbeat.interval.ms": 1000,
                })

        run = self

        def loop(m):
            c = m.consumer

            def on_assign(consumer, partitions):
                consumer.assign(partitions)
                if not go.is_set():
                    consumer.pause(partitions)
                else:
                    m.rebalances_after_go += 1
                with lock:
                    m.assignment = {p.partition for p in partitions}

            def on_revoke(consumer, partitions):
                with lock:
                    m.assignment = set()
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as e:
                    if e.args[0].code() != KafkaError._NO_OFFSET:
                        raise

            try:
                c.subscribe([run.topic], on_assign=on_assign, on_revoke=on_revoke)
                resumed = False
                while not stop.is_set():
                    if go.is_set() and not resumed:
                        c.resume(c.assignment())
                        resumed = True
                    for msg in c.consume(num_messages=5000, timeout=0.1):
                        if msg.error() is not None:
                            raise KafkaException(msg.error())
                        v = msg.value()
                        where = (msg.partition(), msg.offset())
                        if v in m.got:
                            m.dups.append((v, m.got[v], where))
                        m.got[v] = where
                # What is left to read: each assigned partition's position vs its end.
                assigned = c.assignment()
                pos = c.position(assigned)
                m.positions = {tp.partition: (tp.offset, c.get_watermark_offsets(tp, timeout=5, cached=False)[1])
                               for tp in pos}
                c.commit(asynchronous=False)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                m.error = f"{type(e).__name__}: {e}"
            finally:
                c.close()

        members = [Member(1), Member(2)]
        threads = [threading.Thread(target=loop, args=(m,), daemon=True) for m in members]
        for t in threads:
            t.start()
        try:
            # The group settles when the two members hold disjoint, non-empty shares of all
            # the partitions; until then every assigned partition stays paused.
            deadline = deadline_after(SETTLE_TIMEOUT_S)
            while True:
                with lock:
                    a, b = (set(m.assignment) for m in members)
                if a and b and not (a & b) and a | b == set(range(self.partitions)):
                    break
                errs = [m.error for m in members if m.error]
                check(not errs, f"a member failed while the group formed: {errs}")
                check(time.monotonic() < deadline,
                      f"the group did not split the {self.partitions} partitions between its two members within "
                      f"{SETTLE_TIMEOUT_S}s: member 1 has {sorted(a)}, member 2 has {sorted(b)}")
                time.sleep(0.05)
            settled = time.monotonic() - (deadline - SETTLE_TIMEOUT_S)
            go.set()
            shares = [sorted(a), sorted(b)]

            deadline = deadline_after(CONSUME_TIMEOUT_S)
            want = set(self.produced)
            while True:
                errs = [m.error for m in members if m.error]
                check(not errs, f"a member failed: {errs}")
                with lock:
                    seen = len(members[0].got.keys() | members[1].got.keys())
                if seen >= len(want):
                    break
                check(time.monotonic() < deadline,
                      f"the group read {seen} of {len(want)} records within {CONSUME_TIMEOUT_S}s "
                      f"(member 1: {len(members[0].got)}, member 2: {len(members[1].got)})")
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)
        check(not any(t.is_alive() for t in threads), "a consumer thread did not stop within 15 s")
        errs = [m.error for m in members if m.error]
        check(not errs, f"a member failed: {errs}")

        one, two = members
        dups = one.dups + two.dups + [(v, one.got[v], two.got[v]) for v in one.got.keys() & two.got.keys()]
        check(not dups, f"{len(dups)} record(s) read more than once, e.g. (value, first, second) {dups[:5]}")
        got = {**one.got, **two.got}
        eq(set(got), set(self.produced), "the set of values read vs the set produced")
        for v, where in got.items():
            if where != self.produced[v]:
                raise Failure(f"{v!r} read at {where} but acknowledged at {self.produced[v]}")
        check(one.got and two.got, f"one member read nothing: {len(one.got)} and {len(two.got)}")
        for m in members:
            for p, (pos, end) in (m.positions or {}).items():
                eq(pos, end, f"member {m.n}, partition {p}: position vs high watermark at the end")
        rebalances = one.rebalances_after_go + two.rebalances_after_go
        if rebalances == 0:
            for m, share in zip(members, shares):
                parts = {p for p, _ in m.got.values()}
                check(parts <= set(share), f"member {m.n} read partitions {sorted(parts)} outside its share {share}")
        else:
            self.phases.note(f"{rebalances} rebalance(s) after the group settled")
        return (f"settled in {settled:.1f}s on {shares[0]} + {shares[1]}; member 1 read {len(one.got)}, "
                f"member 2 read {len(two.got)}: all {len(got)} exactly once")

    def admin_delete(self):
        futures = self.admin.delete_topics([self.topic, self.small], operation_timeout=ADMIN_TIMEOUT_S,
                                           request_timeout=ADMIN_TIMEOUT_S)
        for name, f in futures.items():
            eq(f.result(timeout=ADMIN_TIMEOUT_S), None, f"delete_topics result for {name}")
        deadline = deadline_after(ADMIN_TIMEOUT_S)
        while True:
            # All topics: asking for one by name could auto-create it again.
            left_over = {self.topic, self.small} & set(self.admin.list_topics(timeout=max(left(deadline), 1)).topics)
            if not left_over:
                break
            check(time.monotonic() < deadline, f"{sorted(left_over)} still listed {ADMIN_TIMEOUT_S}s after deletion")
            time.sleep(0.05)
        return f"{self.topic} and {self.small} deleted and gone from list_topics"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        help="Kafka listeners host:port[,...] (env KAFKA_BOOTSTRAP; default 127.0.0.1:9092)")
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("KAFKA_BROKERS", "3")))
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--replication-factor", type=int, default=3)
    args = parser.parse_args()

    print(f"confluent-kafka {confluent_kafka.__version__}, librdkafka {confluent_kafka.libversion()[0]}", flush=True)
    phases = Phases(f"confluent-kafka against {args.bootstrap}")
    run = Run(args, phases)
    phases.run("listener", run.listener)
    phases.run("admin create", run.admin_create, needs=["listener"])
    phases.run("admin describe", run.admin_describe, needs=["admin create"])
    phases.run("idempotent produce", run.produce, needs=["admin create"])
    phases.run("group of two consumes", run.consume_group, needs=["idempotent produce"])
    phases.run("admin delete", run.admin_delete, needs=["admin create"])
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
