#!/usr/bin/env python3
"""A librdkafka (confluent-kafka) produce workload whose every delivery report is a line on
stdout, for a Rust driver to record as a produce history and judge: the Kafka-client mode of
the testkit's workload (runnel_testkit::workload, ProduceMode::Kafka), used by the failover
test crates/cli/tests/kafka_failover.rs and by `scripts/chaos.sh --client kafka`.

    python kafka_failover.py produce --bootstrap H:P[,...] --topic T --partitions N
        [--rate RECORDS_PER_S] [--window RECORDS] [--progress-every 1000]
        [--max-seconds S] [--flush-timeout S] [--config key=value ...]
    python kafka_failover.py read --bootstrap H:P[,...] --topic T --partitions N
        [--ends P:OFFSET,...] [--timeout S]

produce: one idempotent producer (enable.idempotence=true, acks=all, librdkafka's defaults
otherwise: it retries on its own, for up to message.timeout.ms) sends record after record,
round robin over the partitions, each to an explicit partition; partition P's records are
numbered 0, 1, 2, ... and their value is `producer-P-seq-N` (the testkit's record_value, one
producer per partition), so every value names one record. At most --rate records a second are
sent and at most --window are outstanding (sent, no delivery report yet): a stalled partition
does not queue without bound. It stops when its stdin closes (the driver's stop; also when the
driver dies) or after --max-seconds, then flushes for at most --flush-timeout and purges what
is left (those records get an error report like any other).

Lines on stdout, times from CLOCK_MONOTONIC in nanoseconds (the driver's clock too):
  start <ns>                                    the producer exists
  ack <partition> <seq> <offset> <sent_ns> <done_ns>
  err <partition> <seq> <code> <name> <sent_ns> <done_ns>
  progress <acknowledged records in all>        every --progress-every acknowledgements
  error <name> <text>                           librdkafka's error callback (not fatal)
  fatal <name> <text>                           a fatal producer error (exit status 3)
  stats <key=value ...>                         at the end
  done

`sent_ns` is when produce() took the record, `done_ns` when its delivery report was served.

read: a consumer (no group: assign) reads each partition from its beginning to its high
watermark, after waiting (bounded by --timeout) for the high watermark to reach --ends, and
prints `read <partition> <offset> <value>` per record and `log <partition> <log_start>
<high_watermark>` per partition, then `done`.

Every wait is bounded; the exit status is 0 on a clean run, 3 after a fatal producer error, 2
when the script could not run (bad arguments, no broker).
"""

import argparse
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition


def mono_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Out:
    """Lines for stdout, written in one piece per loop turn (a write per delivery report
    would cost more than the report)."""

    def __init__(self):
        self.lines = []

    def add(self, line):
        self.lines.append(line)

    def flush(self):
        if self.lines:
            self.lines.append("")
            sys.stdout.write("\n".join(self.lines))
            sys.stdout.flush()
            self.lines = []


def one_word(text):
    return "_".join(str(text).split()) or "-"


def produce(args):
    out = Out()
    stop = threading.Event()

    def watch_stdin():
        # The driver closes our stdin to stop us; EOF also comes when it dies.
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()

    fatal = []

    def on_error(err):
        if err.fatal():
            fatal.append(err)
            out.add(f"fatal {err.name()} {one_word(err.str())}")
            stop.set()
        else:
            out.add(f"error {err.name()} {one_word(err.str())}")

    conf = {
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "client.id": "runnel-kafka-workload",
        "error_cb": on_error,
    }
    # Extra librdkafka properties (e.g. debug=broker,topic,eos to see a failover's steps on
    # stderr); the tests and chaos.sh pass none.
    for pair in args.config or []:
        key, _, value = pair.partition("=")
        conf[key] = value
    producer = Producer(conf)
    out.add(f"start {mono_ns()}")
    out.flush()

    counts = {"acked": 0, "failed": 0, "outstanding": 0}

    def report(partition, seq, sent):
        def on_delivery(err, msg):
            counts["outstanding"] -= 1
            done = mono_ns()
            if err is None:
                counts["acked"] += 1
                out.add(f"ack {partition} {seq} {msg.offset()} {sent} {done}")
                if counts["acked"] % args.progress_every == 0:
                    out.add(f"progress {counts['acked']}")
            else:
                counts["failed"] += 1
                out.add(f"err {partition} {seq} {err.code()} {err.name()} {sent} {done}")

        return on_delivery

    seqs = [0] * args.partitions
    produced = 0
    next_partition = 0
    started = time.monotonic()
    end = started + args.max_seconds
    while not stop.is_set() and time.monotonic() < end:
        allowed = int((time.monotonic() - started) * args.rate) + 1 - produced
        room = args.window - counts["outstanding"]
        for _ in range(max(0, min(allowed, room, 500))):
            p = next_partition
            seq = seqs[p]
            try:
                sent = mono_ns()
                producer.produce(
                    args.topic,
                    value=f"producer-{p}-seq-{seq}".encode(),
                    partition=p,
                    on_delivery=report(p, seq, sent),
                )
            except BufferError:
                break
            seqs[p] += 1
            produced += 1
            counts["outstanding"] += 1
            next_partition = (next_partition + 1) % args.partitions
        producer.poll(0.002)
        out.flush()

    stopped = time.monotonic()
    left = producer.flush(args.flush_timeout)
    purged = 0
    if left > 0:
        # What is still queued or in flight gets a _PURGE_QUEUE / _PURGE_INFLIGHT report.
        purged = left
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(5.0)
    out.add(
        f"stats produced={produced} acked={counts['acked']} failed={counts['failed']} "
        f"outstanding={counts['outstanding']} purged={purged} "
        f"flush_s={time.monotonic() - stopped:.3f} ran_s={stopped - started:.3f}"
    )
    out.add("done")
    out.flush()
    return 3 if fatal else 0


def parse_ends(text):
    ends = {}
    for part in filter(None, (text or "").split(",")):
        p, _, offset = part.partition(":")
        ends[int(p)] = int(offset)
    return ends


def read(args):
    ends = parse_ends(args.ends)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": "runnel-kafka-workload-reader",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
        }
    )
    deadline = time.monotonic() + args.timeout
    lines = []
    try:
        for p in range(args.partitions):
            tp = TopicPartition(args.topic, p)
            while True:
                try:
                    low, high = consumer.get_watermark_offsets(tp, timeout=2.0)
                    if high >= ends.get(p, 0):
                        break
                except KafkaException:  # a leader moving: ask again
                    if time.monotonic() >= deadline:
                        raise
                if time.monotonic() >= deadline:
                    print(f"read: partition {p} high watermark below {ends.get(p)} at the deadline", file=sys.stderr)
                    break
                time.sleep(0.05)
            low, high = consumer.get_watermark_offsets(tp, timeout=5.0)
            lines.append(f"log {p} {low} {high}")
            if high <= low:
                continue
            consumer.assign([TopicPartition(args.topic, p, low)])
            next_offset = low
            while next_offset < high:
                if time.monotonic() >= deadline:
                    print(f"read: partition {p} read to {next_offset} of {high} at the deadline", file=sys.stderr)
                    return 2
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    print(f"read: {msg.error()}", file=sys.stderr)
                    continue
                if msg.offset() < high:
                    value = msg.value().decode(errors="replace") if msg.value() is not None else "<null>"
                    lines.append(f"read {p} {msg.offset()} {value}")
                next_offset = msg.offset() + 1
            consumer.unassign()
    finally:
        consumer.close()
    lines.append("done")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("produce", "read"):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--partitions", type=int, required=True)
    p = sub.choices["produce"]
    p.add_argument("--rate", type=float, default=3000.0, help="records a second at most, in all")
    p.add_argument("--window", type=int, default=3000, help="records outstanding at most")
    p.add_argument("--progress-every", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop by itself after this long")
    p.add_argument("--flush-timeout", type=float, default=30.0)
    p.add_argument("--config", action="append", help="an extra librdkafka property, key=value")
    p = sub.choices["read"]
    p.add_argument("--ends", default="", help="P:OFFSET,... high watermarks to wait for")
    p.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.partitions < 1:
        parser.error("--partitions must be at least 1")
    return produce(args) if args.command == "produce" else read(args)


if __name__ == "__main__":
    sys.exit(main())
