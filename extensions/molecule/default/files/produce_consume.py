# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prove a healed host usable: on every DataBlock whose producer is gone, a new producer
(our runtime, pylabhub 1.0's protocol) commits through every slot and a consumer reads
the last commit back with its checksum verified; on a block whose producer is alive, a
consumer reads the latest commit. A brand-new block is also created, committed to, read
and removed. Prints one JSON document. Run on a lab host with PYTHONPATH = a directory
holding ansible_collections/pylabhub/recovery."""

from __future__ import annotations

import json
import signal
import socket

from ansible_collections.pylabhub.recovery.plugins.module_utils import _discovery as D
from ansible_collections.pylabhub.recovery.plugins.module_utils import _runtime as R

signal.alarm(60)   # a writer waiting forever (a reader left inside) must not hang verify


def read_latest(block, name):
    consumer = R.Consumer(block, name=name)
    try:
        rs = consumer.acquire()
        if rs is None:
            return None
        try:
            return consumer.read(rs)          # raises on a checksum mismatch
        finally:
            consumer.release(rs)
    finally:
        consumer.unregister()


def exercise(address, take_over):
    out = {"address": address, "mode": "produced" if take_over else "read-only",
           "commits": 0, "read_ok": False, "error": None}
    block = R.attach(address)
    try:
        payload = None
        if take_over:
            producer = R.Producer(block)
            for i in range(block.geo.capacity + 1):   # every slot, and wrap once
                payload = ("molecule verify %s commit %d" % (address, i)).encode()
                producer.publish(payload, timeout=5.0)
                out["commits"] += 1
        data = read_latest(block, "molecule-verify")
        out["read_ok"] = data is not None and (payload is None or data.startswith(payload))
    except Exception as exc:  # pylint: disable=broad-except
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
    finally:
        block.close()
    return out


def main():
    report = {"host": socket.gethostname(), "blocks": []}
    for found in D.discover():
        if found["kind"] != "shm" or found["status"] != "ok":
            continue
        report["blocks"].append(exercise(found["address"], not found.get("producer_alive")))
    name = "molecule_verify_new"
    R.create(name).close()
    try:
        report["new_block"] = exercise(name, True)
    finally:
        R.destroy(name)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
