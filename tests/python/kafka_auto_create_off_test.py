#!/usr/bin/env python3
"""A cluster started with --auto-create-topics-enable false: unknown topics stay unknown.

    python kafka_auto_create_off_test.py --bootstrap 127.0.0.1:9092[,...] [--brokers 3]

Checks, one line per phase:
  1. the listener answers;
  2. a Metadata v1 naming an unknown topic (v1 would always auto-create on Kafka with
     auto.create.topics.enable=true) answers UNKNOWN_TOPIC_OR_PARTITION, and the topic does
     not appear;
  3. a producer's records to it fail (no topic is created behind the client's back);
  4. an explicit CreateTopics still creates it.

Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import os
import struct
import sys
import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from kafka_testlib import (API_METADATA, Failure, Phases, Reader, check, eq, kstring, metadata_topics, parse_bootstrap,
                           roundtrip, wait_for_kafka)

UNKNOWN_TOPIC_OR_PARTITION = 3


def metadata_v1_named(host, port, topic):
    """Metadata v1 for one named topic: its error code."""
    r = Reader(roundtrip(host, port, API_METADATA, 1, struct.pack(">i", 1) + kstring(topic)))
    for _ in range(r.take(">i")):
        r.take(">i")
        r.string()
        r.take(">i")
        r.string()
    r.take(">i")  # controller id
    eq(r.take(">i"), 1, "topics in the answer")
    error = r.take(">h")
    eq(r.string(), topic, "the topic answered")
    return error


class Run:
    def __init__(self, args):
        self.bootstrap = args.bootstrap
        self.brokers = args.brokers
        self.topic = f"not-auto-{uuid.uuid4().hex[:8]}"
        self.host, self.port = parse_bootstrap(self.bootstrap)[0]

    def listener(self):
        return wait_for_kafka(self.bootstrap, self.brokers, 30.0)

    def metadata(self):
        eq(metadata_v1_named(self.host, self.port, self.topic), UNKNOWN_TOPIC_OR_PARTITION, "Metadata v1 error")
        check(self.topic not in metadata_topics(self.host, self.port), f"{self.topic} was created")
        return "UNKNOWN_TOPIC_OR_PARTITION, and nothing created"

    def produce(self):
        p = Producer({"bootstrap.servers": self.bootstrap, "message.timeout.ms": 3000})
        errors = []
        p.produce(self.topic, value=b"x", on_delivery=lambda err, msg: errors.append(err))
        p.flush(10)
        check(len(errors) == 1 and errors[0] is not None, f"the record's delivery report: {errors}")
        check(self.topic not in metadata_topics(self.host, self.port), f"{self.topic} was created by the produce")
        return f"the record failed ({errors[0].name()}), nothing created"

    def create(self):
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topic = NewTopic(self.topic, num_partitions=1, replication_factor=min(3, self.brokers))
        admin.create_topics([topic])[self.topic].result(timeout=20)
        check(self.topic in metadata_topics(self.host, self.port), f"{self.topic} missing after CreateTopics")
        return "CreateTopics still works"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("KAFKA_BROKERS", "3")))
    args = parser.parse_args()
    phases = Phases(f"auto-creation off against {args.bootstrap}")
    run = Run(args)
    phases.run("listener", run.listener)
    phases.run("metadata does not create", run.metadata, needs=["listener"])
    phases.run("produce does not create", run.produce, needs=["listener"])
    phases.run("explicit create", run.create, needs=["listener"])
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
