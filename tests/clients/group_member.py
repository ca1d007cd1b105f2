"""One consumer group member, run as its own process so tests can SIGKILL it.

    python group_member.py BOOTSTRAP GROUP TOPIC OUTFILE [STRATEGY]

Prints `ASSIGNED p,p,...` whenever its assignment changes. For every batch it
processes it first appends `partition offset value` lines to OUTFILE, then
commits synchronously: at-least-once, with an uncommitted window of at most
one batch.
"""
import os
import signal
import sys

from confluent_kafka import Consumer, KafkaException

BATCH = 100

bootstrap, group, topic, outfile = sys.argv[1:5]
strategy = sys.argv[5] if len(sys.argv) > 5 else "range"
assigned = set()


def report():
    print("ASSIGNED " + ",".join(str(p) for p in sorted(assigned)), flush=True)


def on_assign(consumer, partitions):
    if strategy == "cooperative-sticky":
        assigned.update(p.partition for p in partitions)
    else:
        assigned.clear()
        assigned.update(p.partition for p in partitions)
    report()


def on_revoke(consumer, partitions):
    if strategy == "cooperative-sticky":
        assigned.difference_update(p.partition for p in partitions)
        print("REVOKED " + ",".join(str(p.partition) for p in partitions), flush=True)
    else:
        assigned.clear()
    report()


c = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": group,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "partition.assignment.strategy": strategy,
})
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
running = True
signal.signal(signal.SIGTERM, lambda *_: globals().__setitem__("running", False))
with open(outfile, "a") as out:
    while running:
        msgs = c.consume(BATCH, 0.2)
        good = [m for m in msgs if not m.error()]
        for m in msgs:
            if m.error():
                print("ERROR " + str(m.error()), flush=True)
        if not good:
            continue
        for m in good:
            out.write(f"{m.partition()} {m.offset()} {m.value().decode()}\n")
        out.flush()
        os.fsync(out.fileno())
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:
            # A rebalance took the partitions away: the next owner re-reads
            # from the last commit, as at-least-once allows.
            print("COMMIT-FAILED " + str(e), flush=True)
c.close()
