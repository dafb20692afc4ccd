"""Kafka-side steps of scripts/docker-test.sh, with kafka-python (the pinned test venv).

    docker-test-client.py snippet BOOTSTRAP                 the README's snippet, bounded
    docker-test-client.py produce BOOTSTRAP TOPIC N          N records, acks=all; prints the count
    docker-test-client.py count BOOTSTRAP TOPIC EXPECTED     reads TOPIC from the start until
                                                             EXPECTED records (or a deadline)
    docker-test-client.py run-producer BOOTSTRAP TOPIC ACKED STOP
        an idempotent acks=all producer sending a numbered record every few ms until the file
        STOP exists; each acknowledged number is appended to ACKED with its time
    docker-test-client.py verify BOOTSTRAP TOPIC ACKED       every acknowledged number is in
                                                             TOPIC; prints counts and the
                                                             longest gap between acks
    docker-test-client.py metadata BOOTSTRAP                 the brokers' advertised addresses

Every wait has a deadline; exit status 1 with a reason on failure.
"""

import os
import sys
import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

DEADLINE_S = float(os.environ.get("RUNNEL_TEST_CLIENT_DEADLINE_S", "60"))


def fail(msg):
    print(f"docker-test-client: {msg}", file=sys.stderr)
    sys.exit(1)


def servers(bootstrap):
    return bootstrap.split(",")


def snippet(bootstrap):
    # The README's snippet, with a bound on the consumer's wait.
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send("salary-updates", key=b"employee_id_123", value=b"Salary update for employee 123")
    producer.flush(timeout=DEADLINE_S)
    producer.close()
    consumer = KafkaConsumer(
        "salary-updates",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(DEADLINE_S * 1000),
    )
    for message in consumer:
        print(message.value.decode())
        break
    else:
        fail("the snippet's consumer read nothing")
    consumer.close()


def produce(bootstrap, topic, n):
    producer = KafkaProducer(bootstrap_servers=servers(bootstrap), acks="all", linger_ms=5)
    futures = [producer.send(topic, key=str(i).encode(), value=f"{topic}-{i}".encode()) for i in range(n)]
    producer.flush(timeout=DEADLINE_S)
    acked = sum(1 for f in futures if f.succeeded())
    producer.close()
    if acked != n:
        fail(f"{acked} of {n} records acknowledged")
    print(acked)


def read_all(bootstrap, topic, expected, deadline_s=DEADLINE_S):
    """Every value of TOPIC from the start, until `expected` are read or the deadline."""
    consumer = KafkaConsumer(bootstrap_servers=servers(bootstrap), enable_auto_commit=False)
    deadline = time.monotonic() + deadline_s
    parts = None
    while time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            break
        time.sleep(0.2)
    if not parts:
        fail(f"no partitions for {topic}")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values = []
    while len(values) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(r.value.decode() for r in records)
    consumer.close()
    return values


def count(bootstrap, topic, expected):
    values = read_all(bootstrap, topic, expected)
    print(len(values))
    if len(values) < expected:
        fail(f"{topic}: read {len(values)} records, expected {expected}")


def run_producer(bootstrap, topic, acked_path, stop_path):
    producer = KafkaProducer(
        bootstrap_servers=servers(bootstrap),
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        retry_backoff_ms=50,
        request_timeout_ms=5000,
        delivery_timeout_ms=60000,
        reconnect_backoff_max_ms=500,
        metadata_max_age_ms=5000,
    )
    out = open(acked_path, "a", buffering=1)
    failed = []

    def on_ack(i):
        return lambda _meta: out.write(f"{time.time():.3f} {i}\n")

    def on_err(i):
        return lambda exc: failed.append((i, repr(exc)))

    i = 0
    while not os.path.exists(stop_path):
        producer.send(topic, key=str(i).encode(), value=str(i).encode()).add_callback(on_ack(i)).add_errback(
            on_err(i)
        )
        i += 1
        time.sleep(0.005)
    producer.flush(timeout=DEADLINE_S)
    producer.close(timeout=10)
    out.close()
    print(f"sent {i}, failed {len(failed)}" + (f" (first: {failed[0]})" if failed else ""))


def verify(bootstrap, topic, acked_path):
    acked = {}
    for line in open(acked_path):
        t, i = line.split()
        acked[i] = float(t)
    if not acked:
        fail("no record was acknowledged")
    values = read_all(bootstrap, topic, len(acked))
    # A little longer for stragglers past the acknowledged ones (unacked retries that landed).
    present = set(values)
    lost = sorted((i for i in acked if i not in present), key=int)
    duplicates = len(values) - len(present)
    times = sorted(acked.values())
    gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
    print(f"acked={len(acked)} read={len(values)} lost={len(lost)} duplicates={duplicates} max_ack_gap_s={gap:.2f}")
    if lost:
        fail(f"{len(lost)} acknowledged records lost, e.g. {lost[:10]}")
    if duplicates:
        fail(f"{duplicates} duplicates from an idempotent producer")


def metadata(bootstrap):
    admin = KafkaAdminClient(bootstrap_servers=servers(bootstrap))
    cluster = admin.describe_cluster()
    admin.close()
    print(" ".join(sorted(f"{b['node_id']}={b['host']}:{b['port']}" for b in cluster["brokers"])))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "snippet":
        snippet(*args)
    elif cmd == "produce":
        produce(args[0], args[1], int(args[2]))
    elif cmd == "count":
        count(args[0], args[1], int(args[2]))
    elif cmd == "run-producer":
        run_producer(*args)
    elif cmd == "verify":
        verify(*args)
    elif cmd == "metadata":
        metadata(*args)
    else:
        fail(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
