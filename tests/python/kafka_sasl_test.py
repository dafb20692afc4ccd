#!/usr/bin/env python3
"""Kafka clients with SASL and ACLs: a cluster started with --auth (every node with --tls-*
and its Kafka listener named SASL_SSL), users and ACLs made beforehand with `runnel user` and
`runnel acl`:

  alice   (SCRAM-SHA-256 and -512)  WRITE and READ on TOPIC, READ on group GROUP
  reader  (SCRAM-SHA-256 and -512)  READ on TOPIC and on group GROUP
  OTHER, a topic nobody but the admin may touch

    python kafka_sasl_test.py --bootstrap 127.0.0.1:9092[,...] --ca ca.pem --topic T --other O \
        --group G --password-alice A --password-reader R

Checks, one line per phase:
  1. kafka-python, SCRAM-SHA-256 over TLS as alice: produces with acks=all and reads back;
  2. librdkafka, SCRAM-SHA-512 over TLS as alice: an idempotent producer, then a group
     consumer that sees both clients' records in order;
  3. kafka-python, PLAIN over TLS as reader: reads the topic, but is refused writing it
     (TOPIC_AUTHORIZATION_FAILED);
  4. librdkafka as reader: a produce to the topic and a group read of OTHER fail with
     TOPIC_AUTHORIZATION_FAILED;
  5. no SASL at all (TLS only): the brokers close the connection, nothing is produced;
  6. a wrong password: authentication fails, nothing is produced.

Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError as PyKafkaError
from kafka.errors import TopicAuthorizationFailedError

from kafka_testlib import Failure, Phases, check, eq

RECORDS = 20
TIMEOUT_S = 30


class Run:
    def __init__(self, args):
        self.args = args
        self.sent = []

    def python_sasl(self, mechanism, user, password):
        return dict(bootstrap_servers=self.args.bootstrap, security_protocol="SASL_SSL",
                    ssl_cafile=self.args.ca, ssl_check_hostname=True, sasl_mechanism=mechanism,
                    sasl_plain_username=user, sasl_plain_password=password)

    def rdkafka_sasl(self, mechanism, user, password):
        return {"bootstrap.servers": self.args.bootstrap, "security.protocol": "sasl_ssl",
                "ssl.ca.location": self.args.ca, "sasl.mechanism": mechanism,
                "sasl.username": user, "sasl.password": password}

    def read_python(self, config, topic, count):
        consumer = KafkaConsumer(**config, auto_offset_reset="earliest", consumer_timeout_ms=TIMEOUT_S * 1000)
        try:
            consumer.assign([TopicPartition(topic, 0)])
            consumer.seek_to_beginning()
            got = []
            for message in consumer:
                got.append(message.value)
                if len(got) == count:
                    break
            return got
        finally:
            consumer.close()

    def kafka_python_scram(self):
        config = self.python_sasl("SCRAM-SHA-256", "alice", self.args.password_alice)
        # The users and ACLs were made just before: each node learns them from the metadata
        # within moments. Until then a first attempt may be refused; retry it, bounded.
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            producer = None
            try:
                producer = KafkaProducer(**config, acks="all", max_block_ms=5000)
                producer.send(self.args.topic, value=b"probe", partition=0).get(timeout=TIMEOUT_S)
                self.sent.append(b"probe")
                break
            except PyKafkaError as e:
                if producer is not None:
                    producer.close(timeout=5)
                if time.monotonic() > deadline:
                    raise Failure(f"alice could not produce within {TIMEOUT_S}s: {e!r}") from e
                time.sleep(0.2)
        try:
            for i in range(RECORDS):
                value = f"kafka-python-{i}".encode()
                producer.send(self.args.topic, value=value, partition=0).get(timeout=TIMEOUT_S)
                self.sent.append(value)
        finally:
            producer.close(timeout=10)
        got = self.read_python(config, self.args.topic, len(self.sent))
        eq(got, self.sent, "kafka-python read back with SCRAM-SHA-256")
        return f"{len(got)} records produced and read back as alice"

    def librdkafka_scram(self):
        config = self.rdkafka_sasl("SCRAM-SHA-512", "alice", self.args.password_alice)
        producer = Producer({**config, "acks": "all", "enable.idempotence": True})
        errors = []
        for i in range(RECORDS):
            value = f"librdkafka-{i}".encode()
            producer.produce(self.args.topic, value=value, partition=0,
                             on_delivery=lambda err, _msg: errors.append(err) if err else None)
            self.sent.append(value)
        left = producer.flush(TIMEOUT_S)
        eq((left, errors), (0, []), "librdkafka deliveries outstanding, errors")
        consumer = Consumer({**config, "group.id": self.args.group, "auto.offset.reset": "earliest",
                             "enable.auto.commit": False})
        try:
            consumer.subscribe([self.args.topic])
            got = []
            polls = 0
            while len(got) < len(self.sent) and polls < TIMEOUT_S * 2:
                polls += 1
                message = consumer.poll(0.5)
                if message is None:
                    continue
                check(message.error() is None, f"consume error: {message.error()}")
                got.append(message.value())
            consumer.commit(asynchronous=False)
        finally:
            consumer.close()
        eq(got, self.sent, "librdkafka (group member) read both clients' records")
        return f"{len(got)} records in order, the group's offsets committed"

    def reader_plain(self):
        config = self.python_sasl("PLAIN", "reader", self.args.password_reader)
        got = self.read_python(config, self.args.topic, len(self.sent))
        eq(got, self.sent, "reader's read with PLAIN")
        producer = KafkaProducer(**config, acks="all", max_block_ms=10_000)
        try:
            refused = None
            try:
                producer.send(self.args.topic, value=b"forbidden", partition=0).get(timeout=TIMEOUT_S)
            except TopicAuthorizationFailedError as e:
                refused = e
            check(refused is not None, "reader wrote the topic")
        finally:
            producer.close(timeout=10)
        return f"read {len(got)} records; the write refused with TOPIC_AUTHORIZATION_FAILED"

    def reader_librdkafka_write(self):
        config = self.rdkafka_sasl("SCRAM-SHA-256", "reader", self.args.password_reader)
        producer = Producer({**config, "acks": "all", "message.timeout.ms": 10_000})
        errors = []
        producer.produce(self.args.topic, value=b"forbidden", partition=0,
                         on_delivery=lambda err, _msg: errors.append(err))
        producer.flush(TIMEOUT_S)
        check(len(errors) == 1 and errors[0] is not None, f"the delivery report: {errors}")
        eq(errors[0].code(), KafkaError.TOPIC_AUTHORIZATION_FAILED, "the delivery error")
        # Reading the other topic: the subscription reports the refusal, and no record comes.
        consumer = Consumer({**config, "group.id": self.args.group, "auto.offset.reset": "earliest"})
        try:
            consumer.subscribe([self.args.other])
            error = None
            for _ in range(TIMEOUT_S * 2):
                message = consumer.poll(0.5)
                if message is None:
                    continue
                if message.error() is None:
                    raise Failure(f"reader read {self.args.other}: {message.value()!r}")
                error = message.error()
                break
            check(error is not None, f"no error reading {self.args.other}")
            eq(error.code(), KafkaError.TOPIC_AUTHORIZATION_FAILED, f"the error reading {self.args.other}")
        finally:
            consumer.close()
        return f"the write and a read of {self.args.other} refused with TOPIC_AUTHORIZATION_FAILED"

    def produce_refused(self, config, value, who):
        """A producer with `config` gets nowhere: its construction or its first send fails."""
        try:
            producer = KafkaProducer(**config, request_timeout_ms=3000, api_version_auto_timeout_ms=3000,
                                     max_block_ms=3000)
        except PyKafkaError as e:
            return f"refused: {type(e).__name__}"
        try:
            producer.send(self.args.topic, value=value, partition=0).get(timeout=10)
        except PyKafkaError as e:
            return f"refused: {type(e).__name__}"
        finally:
            producer.close(timeout=5)
        raise Failure(f"{who} produced")

    def no_sasl_refused(self):
        config = dict(bootstrap_servers=self.args.bootstrap, security_protocol="SSL", ssl_cafile=self.args.ca)
        return self.produce_refused(config, b"anonymous", "a client without SASL")

    def wrong_password_refused(self):
        config = self.python_sasl("SCRAM-SHA-512", "alice", "not-her-password")
        return self.produce_refused(config, b"impostor", "a wrong password")

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ["--bootstrap", "--ca", "--topic", "--other", "--group", "--password-alice", "--password-reader"]:
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    phases = Phases(f"Kafka with SASL and ACLs against {args.bootstrap}")
    run = Run(args)
    phases.run("kafka-python SCRAM-SHA-256", run.kafka_python_scram)
    phases.run("librdkafka SCRAM-SHA-512", run.librdkafka_scram, needs=["kafka-python SCRAM-SHA-256"])
    phases.run("reader with PLAIN", run.reader_plain, needs=["librdkafka SCRAM-SHA-512"])
    phases.run("reader's librdkafka write and read refused", run.reader_librdkafka_write)
    phases.run("no SASL refused", run.no_sasl_refused)
    phases.run("wrong password refused", run.wrong_password_refused)
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
