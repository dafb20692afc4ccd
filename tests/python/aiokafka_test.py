#!/usr/bin/env python3
"""Runnel's Kafka listener through aiokafka (asyncio, its own protocol implementation).

    python aiokafka_test.py --bootstrap 127.0.0.1:9092[,...] [--brokers 3] [--records 2000]
    (or env KAFKA_BOOTSTRAP, KAFKA_BROKERS)

Checks, one line per phase:
  1. the listener answers (raw ApiVersions and Metadata);
  2. an idempotent producer (enable_idempotence=True, acks='all') sends keyed records to an
     auto-created topic; every send is acknowledged, offsets without gaps;
  3. a consumer in a group (the classic protocol, aiokafka's own assignor) reads them all once
     from 'earliest', commits, and a second consumer of the same group, started after more
     records are produced, reads exactly the new ones.

Every await has a timeout. Exits 0 when every phase passed, 1 otherwise.
"""

import argparse
import asyncio
import os
import sys
import uuid

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kafka_testlib import Failure, Phases, check, eq, wait_for_kafka

LISTENER_TIMEOUT_S = 30.0
STEP_TIMEOUT_S = 40.0


class Run:
    def __init__(self, args):
        self.bootstrap = args.bootstrap
        self.brokers = args.brokers
        self.records = args.records
        run_id = uuid.uuid4().hex[:8]
        self.topic = f"aio-{run_id}"
        self.group = f"aio-g-{run_id}"

    def listener(self):
        return wait_for_kafka(self.bootstrap, self.brokers, LISTENER_TIMEOUT_S)

    async def _produce(self, start, count):
        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all")
        await p.start()
        try:
            sends = [await p.send(self.topic, key=f"k{i}".encode(), value=f"v{i}".encode())
                     for i in range(start, start + count)]
            return [await s for s in sends]
        finally:
            await p.stop()

    def produce(self):
        metas = asyncio.run(asyncio.wait_for(self._produce(0, self.records), STEP_TIMEOUT_S))
        eq(len(metas), self.records, "acknowledged sends")
        by_partition = {}
        for m in metas:
            by_partition.setdefault(m.partition, []).append(m.offset)
        for partition, offsets in by_partition.items():
            eq(sorted(offsets), list(range(len(offsets))), f"offsets of partition {partition}")
        return f"{len(metas)} records acknowledged (idempotent, acks=all) in {len(by_partition)} partition(s)"

    async def _consume(self, want):
        c = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, group_id=self.group,
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        try:
            values = []
            while len(values) < want:
                batch = await c.getmany(timeout_ms=500)
                for msgs in batch.values():
                    values.extend(m.value.decode() for m in msgs)
            await c.commit()
            return values
        finally:
            await c.stop()

    def group_consume(self):
        first = asyncio.run(asyncio.wait_for(self._consume(self.records), STEP_TIMEOUT_S))
        eq(sorted(first), sorted(f"v{i}" for i in range(self.records)), "records read by the group")
        more = 10
        asyncio.run(asyncio.wait_for(self._produce(self.records, more), STEP_TIMEOUT_S))
        second = asyncio.run(asyncio.wait_for(self._consume(more), STEP_TIMEOUT_S))
        expected = sorted(f"v{i}" for i in range(self.records, self.records + more))
        eq(sorted(second), expected, "a restarted member reads only what came after the commit")
        return f"{len(first)} read once and committed; the next member read the {more} new ones"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    parser.add_argument("--brokers", type=int, default=int(os.environ.get("KAFKA_BROKERS", "3")))
    parser.add_argument("--records", type=int, default=2000)
    args = parser.parse_args()
    print(f"aiokafka {aiokafka.__version__}", flush=True)
    phases = Phases(f"aiokafka against {args.bootstrap}")
    run = Run(args)
    phases.run("listener", run.listener)
    phases.run("idempotent produce", run.produce, needs=["listener"])
    phases.run("group consume and resume", run.group_consume, needs=["idempotent produce"])
    return phases.finish()


if __name__ == "__main__":
    sys.exit(main())
