#!/usr/bin/env python3
"""Kafka clients over TLS: a cluster whose Kafka listener is named SSL (security protocol SSL)
and whose nodes run with --tls-cert/--tls-key/--tls-ca.

    python kafka_tls_test.py --bootstrap 127.0.0.1:9092[,...] --ca ca.pem

Checks, one line per phase:
  1. kafka-python with security_protocol="SSL" and the cluster CA (host names checked)
     produces records with acks=all and reads them back;
  2. librdkafka (confluent-kafka) with security.protocol=ssl does the same, and sees both
     clients' records in order;
  3. a plaintext client gets nowhere: no broker answers it;
  4. a client that does not trust the cluster CA (the system's roots) refuses the brokers.

Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import sys
import uuid

from confluent_kafka import Consumer, Producer
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import NoBrokersAvailable

from kafka_testlib import Failure, Phases, check, eq

RECORDS = 20
TIMEOUT_S = 30


class Run:
    def __init__(self, args):
        self.args = args
        self.topic = f"tls-{uuid.uuid4().hex[:8]}"
        self.sent = []

    def kafka_python(self):
        producer = KafkaProducer(bootstrap_servers=self.args.bootstrap, security_protocol="SSL",
                                 ssl_cafile=self.args.ca, ssl_check_hostname=True, acks="all")
        try:
            for i in range(RECORDS):
                value = f"kafka-python-{i}".encode()
                producer.send(self.topic, value=value, partition=0).get(timeout=TIMEOUT_S)
                self.sent.append(value)
        finally:
            producer.close(timeout=10)
        consumer = KafkaConsumer(self.topic, bootstrap_servers=self.args.bootstrap, security_protocol="SSL",
                                 ssl_cafile=self.args.ca, auto_offset_reset="earliest",
                                 consumer_timeout_ms=TIMEOUT_S * 1000)
        try:
            got = []
            for message in consumer:
                got.append(message.value)
                if len(got) == len(self.sent):
                    break
        finally:
            consumer.close()
        eq(got, self.sent, "kafka-python read back over TLS")
        return f"{len(got)} records produced and read back over TLS"

    def confluent(self):
        tls = {"bootstrap.servers": self.args.bootstrap, "security.protocol": "ssl", "ssl.ca.location": self.args.ca}
        producer = Producer({**tls, "acks": "all", "enable.idempotence": True})
        errors = []
        for i in range(RECORDS):
            value = f"librdkafka-{i}".encode()
            producer.produce(self.topic, value=value, partition=0,
                             on_delivery=lambda err, _msg: errors.append(err) if err else None)
            self.sent.append(value)
        left = producer.flush(TIMEOUT_S)
        eq((left, errors), (0, []), "librdkafka deliveries outstanding, errors")
        consumer = Consumer({**tls, "group.id": f"tls-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest",
                             "enable.auto.commit": False})
        try:
            consumer.subscribe([self.topic])
            got = []
            polls = 0
            while len(got) < len(self.sent) and polls < TIMEOUT_S * 2:
                polls += 1
                message = consumer.poll(0.5)
                if message is None:
                    continue
                check(message.error() is None, f"consume error: {message.error()}")
                got.append(message.value())
        finally:
            consumer.close()
        eq(got, self.sent, "librdkafka read back both clients' records")
        return f"{len(got)} records in order, both clients'"

    def plaintext_refused(self):
        try:
            producer = KafkaProducer(bootstrap_servers=self.args.bootstrap, request_timeout_ms=3000,
                                     api_version_auto_timeout_ms=3000, max_block_ms=3000)
        except NoBrokersAvailable:
            return "NoBrokersAvailable, as expected"
        producer.close(timeout=5)
        raise Failure("a plaintext client connected to the SSL listener")

    def untrusted_refused(self):
        consumer = Consumer({"bootstrap.servers": self.args.bootstrap, "security.protocol": "ssl",
                             "group.id": "untrusted", "socket.timeout.ms": 3000})
        try:
            metadata_error = None
            try:
                consumer.list_topics(timeout=5)
            except Exception as e:  # noqa: BLE001 - any refusal will do; success will not
                metadata_error = e
            check(metadata_error is not None, "a client without the cluster CA got metadata")
        finally:
            consumer.close()
        return f"refused: {type(metadata_error).__name__}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--ca", required=True)
    args = parser.parse_args()
    phases = Phases(f"Kafka over TLS against {args.bootstrap}")
    run = Run(args)
    phases.run("kafka-python over TLS", run.kafka_python)
    phases.run("librdkafka over TLS", run.confluent, needs=["kafka-python over TLS"])
    phases.run("plaintext refused", run.plaintext_refused)
    phases.run("untrusted CA refused", run.untrusted_refused)
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
