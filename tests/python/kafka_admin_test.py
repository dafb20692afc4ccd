#!/usr/bin/env python3
"""Runnel's Kafka admin APIs and KIP-848 groups, through confluent-kafka (librdkafka 2.x).

    python kafka_admin_test.py --bootstrap 127.0.0.1:9092[,...] [--brokers 3]
    (or env KAFKA_BOOTSTRAP, KAFKA_BROKERS)

Against a running cluster whose nodes all serve Kafka it checks, one line per phase:

  1. the listener answers (raw ApiVersions and Metadata);
  2. CreatePartitions: a 1-partition topic grows to 3, the new partitions take records and
     have leaders; a shrink is refused with INVALID_PARTITIONS;
  3. DescribeConfigs: a topic's override shows as a topic config, the others as defaults
     with the value in force; the answering broker describes its own settings;
  4. IncrementalAlterConfigs: SET of max.message.bytes takes effect (a larger record is
     refused with MSG_SIZE_TOO_LARGE, a smaller one accepted) and DELETE of an override brings
     the default back; a config Runnel does not have is refused with INVALID_CONFIG;
  5. KIP-848 (`group.protocol=consumer`): two members of one group split a 4-partition topic
     (the broker assigns) and read every record exactly once;
  6. ListGroups, DescribeGroups and DeleteGroups on a classic group: listed, described as
     Empty once its member left, deleted, and gone.

Every blocking call has a timeout. Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import os
import sys
import threading
import time
import uuid

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions,
                                   NewTopic)

from kafka_testlib import Failure, Phases, check, deadline_after, eq, left, wait_for_kafka

LISTENER_TIMEOUT_S = 30.0
ADMIN_TIMEOUT_S = 20.0
CONSUME_TIMEOUT_S = 40.0


def result(future, what):
    try:
        return future.result(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as e:
        raise Failure(f"{what}: {e}") from e


def refused(future, code, what):
    try:
        future.result(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as e:
        err = e.args[0]
        eq(err.code(), code, f"{what}: error code ({err})")
        return err.name()
    raise Failure(f"{what}: accepted, expected {code}")


class Run:
    def __init__(self, args):
        self.bootstrap = args.bootstrap
        self.brokers = args.brokers
        run_id = uuid.uuid4().hex[:8]
        self.grow = f"adm-grow-{run_id}"
        self.conf = f"adm-conf-{run_id}"
        self.k848 = f"adm-848-{run_id}"
        self.classic = f"adm-classic-{run_id}"
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap})

    def listener(self):
        return wait_for_kafka(self.bootstrap, self.brokers, LISTENER_TIMEOUT_S)

    def create(self, name, partitions, config=None):
        topic = NewTopic(name, num_partitions=partitions, replication_factor=min(3, self.brokers), config=config or {})
        result(self.admin.create_topics([topic], operation_timeout=ADMIN_TIMEOUT_S)[name], f"create {name}")

    def produce(self, topic, n, partition=None, size=10, producer_conf=None):
        p = Producer({"bootstrap.servers": self.bootstrap, "acks": "all", **(producer_conf or {})})
        errors = []
        acked = []

        def on_delivery(err, msg):
            (errors if err else acked).append(err or (msg.partition(), msg.offset()))

        for i in range(n):
            kwargs = {"partition": partition} if partition is not None else {}
            p.produce(topic, key=f"k{i}", value=(f"{i}:".encode() + b"x" * size), on_delivery=on_delivery, **kwargs)
        left_over = p.flush(ADMIN_TIMEOUT_S)
        eq(left_over, 0, f"records of {topic} still queued after the flush")
        return acked, errors

    def partitions(self, topic):
        md = self.admin.list_topics(topic, timeout=ADMIN_TIMEOUT_S)
        t = md.topics.get(topic)
        check(t is not None and t.error is None, f"metadata for {topic}: {t and t.error}")
        return t.partitions

    def create_partitions(self):
        self.create(self.grow, 1)
        result(self.admin.create_partitions([NewPartitions(self.grow, 3)], operation_timeout=ADMIN_TIMEOUT_S)[self.grow],
               "grow to 3")
        deadline = deadline_after(ADMIN_TIMEOUT_S)
        while True:
            parts = self.partitions(self.grow)
            if len(parts) == 3 and all(p.leader >= 0 for p in parts.values()):
                break
            check(left(deadline) > 0, f"{self.grow} has {len(parts)} partitions with leaders "
                                      f"{[p.leader for p in parts.values()]} after the grow")
            time.sleep(0.05)
        for partition in (1, 2):
            acked, errors = self.produce(self.grow, 5, partition=partition)
            check(not errors, f"produce to new partition {partition}: {errors[:3]}")
            eq(sorted(o for _, o in acked), list(range(5)), f"offsets in new partition {partition}")
        name = refused(self.admin.create_partitions([NewPartitions(self.grow, 2)])[self.grow],
                       KafkaError.INVALID_PARTITIONS, "shrink to 2")
        return f"1 -> 3 partitions, new ones take records; a shrink is refused ({name})"

    def describe(self, resource):
        return result(self.admin.describe_configs([resource])[resource], f"describe {resource}")

    def describe_configs(self):
        self.create(self.conf, 1, {"retention.ms": "3600000"})
        configs = self.describe(ConfigResource("topic", self.conf))
        for name in ("retention.ms", "max.message.bytes", "segment.bytes", "min.insync.replicas"):
            check(name in configs, f"DescribeConfigs lacks {name}: {sorted(configs)}")
        eq(configs["retention.ms"].value, "3600000", "retention.ms override")
        eq(configs["retention.ms"].source, confluent_kafka.admin.ConfigSource.DYNAMIC_TOPIC_CONFIG.value,
           "retention.ms source")
        eq(configs["segment.bytes"].source, confluent_kafka.admin.ConfigSource.DEFAULT_CONFIG.value,
           "segment.bytes source")
        broker = self.describe(ConfigResource("broker", "1"))
        check("auto.create.topics.enable" in broker, f"broker 1's settings: {sorted(broker)}")
        return f"{len(configs)} topic configs (retention.ms overridden, the rest defaults); broker 1: {sorted(broker)}"

    def alter_configs(self):
        def alter(*entries):
            r = ConfigResource("topic", self.conf, incremental_configs=list(entries))
            return self.admin.incremental_alter_configs([r])[r]

        result(alter(ConfigEntry("max.message.bytes", "20000", incremental_operation=AlterConfigOpType.SET),
                     ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)),
               "set max.message.bytes, delete retention.ms")
        configs = self.describe(ConfigResource("topic", self.conf))
        eq(configs["max.message.bytes"].value, "20000", "max.message.bytes after SET")
        eq(configs["retention.ms"].source, confluent_kafka.admin.ConfigSource.DEFAULT_CONFIG.value,
           "retention.ms source after DELETE")
        # A batch over the new limit is refused; the client must not split it for us.
        acked, errors = self.produce(self.conf, 1, partition=0, size=50_000,
                                     producer_conf={"message.max.bytes": 1_000_000, "retries": 0})
        check(not acked and errors, f"a 50 kB record under max.message.bytes=20000 was acknowledged: {acked}")
        eq(errors[0].code(), KafkaError.MSG_SIZE_TOO_LARGE, f"error of the oversized record ({errors[0]})")
        acked, errors = self.produce(self.conf, 3, partition=0, size=1_000)
        check(not errors and len(acked) == 3, f"small records after the change: acked {acked}, errors {errors}")
        name = refused(alter(ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)),
                       KafkaError.INVALID_CONFIG, "an unknown config")
        return f"SET and DELETE took effect; a 50 kB record refused (MSG_SIZE_TOO_LARGE); unknown config {name}"

    def kip848(self):
        self.create(self.k848, 4)
        n = 2_000
        acked, errors = self.produce(self.k848, n)
        check(not errors, f"produce: {errors[:3]}")
        seen = {}
        assigned = {}
        lock = threading.Lock()
        failures = []
        deadline = deadline_after(CONSUME_TIMEOUT_S)

        def member(name):
            c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"g-{self.k848}",
                          "group.protocol": "consumer", "auto.offset.reset": "earliest"})
            try:
                c.subscribe([self.k848])
                while left(deadline) > 0:
                    with lock:
                        if len(seen) >= n:
                            break
                    m = c.poll(0.2)
                    if m is None:
                        continue
                    if m.error():
                        if m.error().fatal():
                            failures.append(f"{name}: {m.error()}")
                            return
                        continue
                    with lock:
                        seen.setdefault(m.value(), []).append(name)
                        assigned.setdefault(name, set()).add(m.partition())
            finally:
                c.close()

        threads = [threading.Thread(target=member, args=(f"m{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CONSUME_TIMEOUT_S + 10)
        check(not failures, f"fatal consumer errors: {failures}")
        eq(len(seen), n, "distinct records read by the group")
        dups = [v for v, who in seen.items() if len(who) > 1]
        check(not dups, f"{len(dups)} records read twice, e.g. {dups[:3]}")
        return f"{n} records read once by {len(assigned)} member(s) with partitions {dict((k, sorted(v)) for k, v in assigned.items())}"

    def classic_groups(self):
        self.create(self.classic, 1)
        self.produce(self.classic, 3)
        group = f"g-{self.classic}"
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                      "enable.auto.commit": False})
        c.subscribe([self.classic])
        deadline = deadline_after(CONSUME_TIMEOUT_S)
        got = 0
        while got < 3 and left(deadline) > 0:
            m = c.poll(0.2)
            if m is not None and not m.error():
                got += 1
        eq(got, 3, "records read by the classic member")
        c.commit(asynchronous=False)
        c.close()
        listed = result(self.admin.list_consumer_groups(), "list groups")
        ids = [g.group_id for g in listed.valid]
        check(group in ids, f"{group} not in ListGroups: {ids}")
        described = result(self.admin.describe_consumer_groups([group])[group], "describe group")
        eq(str(described.state.name), "EMPTY", f"state of {group} after its member left")
        result(self.admin.delete_consumer_groups([group])[group], "delete group")
        listed = result(self.admin.list_consumer_groups(), "list groups after the delete")
        check(group not in [g.group_id for g in listed.valid], f"{group} still listed after DeleteGroups")
        return f"listed, described Empty, deleted"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("KAFKA_BROKERS", "3")))
    args = parser.parse_args()
    print(f"confluent-kafka {confluent_kafka.__version__}, librdkafka {confluent_kafka.libversion()[0]}", flush=True)
    phases = Phases(f"Kafka admin and KIP-848 against {args.bootstrap}")
    run = Run(args)
    phases.run("listener", run.listener)
    phases.run("create partitions", run.create_partitions, needs=["listener"])
    phases.run("describe configs", run.describe_configs, needs=["listener"])
    phases.run("alter configs", run.alter_configs, needs=["describe configs"])
    phases.run("KIP-848 group", run.kip848, needs=["listener"])
    phases.run("classic group admin", run.classic_groups, needs=["listener"])
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
