#!/usr/bin/env python3
"""A librdkafka load generator for Runnel's Kafka listener, in the manner of Kafka's
kafka-producer-perf-test and kafka-consumer-perf-test. Run it with the pinned venv's Python
(confluent-kafka, librdkafka 2.x bundled); scripts/bench-kafka.sh runs it next to the gRPC
bench on the cluster of scripts/cluster.sh.

    bench-kafka.py produce --bootstrap H:P[,...] --topic T [--records N] [--record-size 1024]
        [--acks all|1|0] [--partition P] [--max-seconds S] [--config key=value ...]
    bench-kafka.py consume --bootstrap H:P[,...] --topic T [--partition P] [--records N]
        [--max-seconds S] [--config key=value ...]

produce: one Producer (librdkafka's defaults but acks, e.g. linger.ms 5, batch.size 1 MB, up
to 1,000,000 requests in flight per connection; no idempotence, as the gRPC bench) sends
--records records of --record-size random bytes (a pool of 64 distinct payloads) to one
partition as fast as librdkafka takes them. Throughput counts from the first produce() to the
last delivery report; latency is librdkafka's per-record latency (rd_kafka_message_latency:
from produce() to the broker's acknowledgement, so it includes the time queued in the client).

consume: one Consumer assigned to the partition from its log start (no group) reads until it
has --records records (default: the high watermark at the start), counting the bytes of every
value.

Prints one JSON object on stdout (megabytes are 10^6 bytes of record values, as Kafka's tools
count). Every wait is bounded by --max-seconds; exit status 1 when a record failed or the run
did not finish in time.
"""

import argparse
import json
import os
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def configs(pairs):
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--config wants key=value, got {pair!r}")
        out[key] = value
    return out


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-p / 100.0 * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def produce(args):
    conf = {"bootstrap.servers": args.bootstrap, "acks": args.acks, "client.id": "runnel-bench-kafka"}
    conf.update(configs(args.config))
    latencies = []
    errors = {}

    def on_delivery(err, msg):
        if err is not None:
            errors[err.name()] = errors.get(err.name(), 0) + 1
        else:
            latencies.append(msg.latency())

    conf["on_delivery"] = on_delivery
    producer = Producer(conf)
    # Connect and learn the leader before the clock starts.
    producer.list_topics(args.topic, timeout=10)
    payloads = [os.urandom(args.record_size) for _ in range(64)]
    deadline = time.monotonic() + args.max_seconds
    topic, partition = args.topic, args.partition
    produce_one = producer.produce
    poll = producer.poll
    start = time.monotonic()
    sent = 0
    timed_out = False
    while sent < args.records:
        if time.monotonic() >= deadline:
            timed_out = True
            break
        try:
            produce_one(topic, payloads[sent & 63], partition=partition)
            sent += 1
        except BufferError:
            poll(0.001)
            continue
        if sent & 1023 == 0:
            poll(0)
    sending_s = time.monotonic() - start
    left = producer.flush(max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - start
    if left:
        timed_out = True
    acked = len(latencies)
    latencies.sort()
    ms = lambda s: round(s * 1000.0, 3)  # noqa: E731
    return {
        "client": "librdkafka " + __import__("confluent_kafka").libversion()[0],
        "topic": args.topic,
        "partition": args.partition,
        "acks": args.acks,
        "record_size": args.record_size,
        "records_sent": sent,
        "records_acked": acked,
        "errors": errors,
        "undelivered": left,
        "timed_out": timed_out,
        "seconds": round(elapsed, 3),
        "sending_seconds": round(sending_s, 3),
        "records_per_s": round(acked / elapsed, 1) if elapsed > 0 else 0.0,
        "mb_per_s": round(acked * args.record_size / elapsed / 1e6, 1) if elapsed > 0 else 0.0,
        "latency_ms": {
            "avg": ms(sum(latencies) / acked) if acked else 0.0,
            "p50": ms(percentile(latencies, 50)),
            "p99": ms(percentile(latencies, 99)),
            "p999": ms(percentile(latencies, 99.9)),
            "max": ms(latencies[-1]) if latencies else 0.0,
        },
        "config": {k: v for k, v in conf.items() if k != "on_delivery"},
    }


def consume(args):
    conf = {
        "bootstrap.servers": args.bootstrap,
        "group.id": "runnel-bench-kafka",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "client.id": "runnel-bench-kafka",
    }
    conf.update(configs(args.config))
    consumer = Consumer(conf)
    tp = TopicPartition(args.topic, args.partition)
    low, high = consumer.get_watermark_offsets(tp, timeout=10)
    want = args.records if args.records else high - low
    consumer.assign([TopicPartition(args.topic, args.partition, low)])
    deadline = time.monotonic() + args.max_seconds
    records = 0
    value_bytes = 0
    errors = {}
    start = None
    while records < want and time.monotonic() < deadline:
        batch = consumer.consume(num_messages=10000, timeout=1.0)
        if start is None and batch:
            # From the first answer: the consumer's start-up (metadata, fetch session) is not
            # the broker's throughput.
            start = time.monotonic()
        for m in batch:
            err = m.error()
            if err is not None:
                errors[err.name()] = errors.get(err.name(), 0) + 1
                continue
            records += 1
            value_bytes += len(m.value())
    end = time.monotonic()
    consumer.close()
    elapsed = (end - start) if start is not None else 0.0
    return {
        "client": "librdkafka " + __import__("confluent_kafka").libversion()[0],
        "topic": args.topic,
        "partition": args.partition,
        "log_start": low,
        "high_watermark": high,
        "records": records,
        "bytes": value_bytes,
        "errors": errors,
        "timed_out": records < want,
        "seconds": round(elapsed, 3),
        "records_per_s": round(records / elapsed, 1) if elapsed > 0 else 0.0,
        "mb_per_s": round(value_bytes / elapsed / 1e6, 1) if elapsed > 0 else 0.0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("produce", "consume"):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--partition", type=int, default=0)
        p.add_argument("--max-seconds", type=float, default=300.0)
        p.add_argument("--config", action="append", help="a librdkafka property, key=value (repeatable)")
    p = sub.choices["produce"]
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--record-size", type=int, default=1024)
    p.add_argument("--acks", default="all", choices=["all", "1", "0", "-1"])
    p = sub.choices["consume"]
    p.add_argument("--records", type=int, default=0, help="default: up to the high watermark at the start")
    args = parser.parse_args()
    report = produce(args) if args.command == "produce" else consume(args)
    print(json.dumps(report))
    bad = report.get("timed_out") or report.get("errors") or report.get("undelivered")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
