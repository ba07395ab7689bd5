# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pylabhub.recovery.datablock_events: an ansible-rulebook event source that puts one
event per stuck or suspect pylabhub DataBlock on the queue.

It polls ``datablock-admin diagnose --all --json`` (decision: the CLI, run as a
subprocess, and not the metrics or audit files: diagnose gives each slot's holder, its
verdict and the next step, and needs no exporter to have run; the rule stays the
engine's, this plugin only forwards it). Arguments (all optional):

``interval``   seconds between polls (default 10)
``command``    the command to run, a string (split as a shell would) or a list; default
               ``datablock-admin``. A list such as ``["ssh", "host17", "datablock-admin"]``
               polls another host
``host``       the inventory host the events are about (``meta.hosts``, so
               ``run_playbook`` runs on that host only); default this machine's host name
``match``      only blocks whose name or address matches this shell pattern
``suspect``    also an event for a block with suspect slots only (default true)
``repeat``     an event on every poll while a block stays stuck (default false: one event
               when a block's stuck/suspect slots first appear or change)
``once``       poll once and return (tests; default false)

Event::

    {"datablock": {"host", "address", "health", "kind" ("stuck" or "suspect"),
                   "stuck_slots", "suspect_slots", "dead_consumers", "slots" (the stuck
                   and suspect slots: index, state, write_lock, reason, action, next),
                   "next_steps"},
     "meta": {"hosts": host}}

A poll that fails (the command is missing, exits with an error document, prints no
JSON) puts one ``{"datablock_error": {"host", "message", "code"}}`` event, once until
the next successful poll, and the source keeps polling.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
from typing import Any, Dict, List, Optional, Tuple

DOCUMENTATION = r"""
---
short_description: Events for stuck or suspect pylabhub DataBlocks
description:
  - Polls C(datablock-admin diagnose --all --json) and puts one event per block with
    stuck or suspect slots (or dead consumers) on the queue, with C(meta.hosts) set so
    that C(run_playbook) runs on the host that raised it.
options:
  interval:
    description: Seconds between polls.
    type: float
    default: 10
  command:
    description: The datablock-admin command (a string or a list, e.g. through ssh).
    type: raw
    default: datablock-admin
  host:
    description: The inventory host the events are about (meta.hosts).
    type: str
  match:
    description: Only blocks whose name or address matches this shell pattern.
    type: str
  suspect:
    description: Also announce blocks with suspect slots only.
    type: bool
    default: true
  repeat:
    description: Announce a block on every poll while it stays stuck.
    type: bool
    default: false
  once:
    description: Poll once, then return.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Heal DataBlocks that get stuck
  hosts: all
  sources:
    - pylabhub.recovery.datablock_events:
        interval: 10
  rules:
    - name: Heal a block with stuck slots
      condition: event.datablock.kind == "stuck"
      action:
        run_playbook:
          name: pylabhub.recovery.heal
"""


def _argv(args: Dict[str, Any]) -> List[str]:
    command = args.get("command") or "datablock-admin"
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    argv += ["diagnose", "--all", "--json"]
    if args.get("match"):
        argv += ["--match", str(args["match"])]
    return argv


async def poll(args: Dict[str, Any]) -> Dict[str, Any]:
    """One ``diagnose --all --json``: the document, or ``{"error": {...}}``."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *_argv(args), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        return {"error": {"code": "command", "message": "cannot run %s: %s"
                          % (_argv(args)[0], exc.strerror or exc)}}
    out, err = await proc.communicate()
    try:
        doc = json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        line = err.decode("utf-8", "replace").strip().splitlines()
        return {"error": {"code": "output", "message": "%s exited %s without JSON%s"
                          % (_argv(args)[0], proc.returncode,
                             ": " + line[-1] if line else "")}}
    if not isinstance(doc, dict):
        return {"error": {"code": "output", "message": "not a diagnose document"}}
    return doc


def events(doc: Dict[str, Any], host: str, suspect: bool = True) -> List[Dict[str, Any]]:
    """The events of one poll: one per block with stuck slots or dead consumers
    (``kind`` stuck) or, with ``suspect``, suspect slots only (``kind`` suspect)."""
    out = []
    for entry in doc.get("blocks") or []:
        result = entry.get("result") or {}
        stuck = list(result.get("stuck_slots") or [])
        suspects = list(result.get("suspect_slots") or [])
        dead = sum(1 for c in result.get("consumers") or [] if c.get("action") == "cleanup")
        if stuck or dead:
            kind = "stuck"
        elif suspects and suspect:
            kind = "suspect"
        else:
            continue
        slots = [{k: s.get(k) for k in ("index", "state", "write_lock", "reason", "action",
                                        "next", "is_stuck", "suspect")}
                 for s in result.get("slots") or [] if s.get("is_stuck") or s.get("suspect")]
        out.append({"datablock": {
            "host": host, "address": entry.get("address"), "health": entry.get("health"),
            "kind": kind, "stuck_slots": stuck, "suspect_slots": suspects,
            "dead_consumers": dead, "slots": slots,
            "next_steps": result.get("next_steps") or []},
            "meta": {"hosts": host}})
    return out


def _key(event: Dict[str, Any]) -> Tuple[Any, ...]:
    d = event["datablock"]
    return (d["kind"], tuple(d["stuck_slots"]), tuple(d["suspect_slots"]), d["dead_consumers"],
            json.dumps(d["slots"], sort_keys=True))


async def main(queue: "asyncio.Queue[Dict[str, Any]]", args: Dict[str, Any]) -> None:
    """ansible-rulebook's entry point: poll every ``interval`` seconds, put the events."""
    interval = float(args.get("interval", 10))
    host = str(args.get("host") or socket.gethostname())
    suspect = bool(args.get("suspect", True))
    repeat = bool(args.get("repeat", False))
    announced: Dict[str, Tuple[Any, ...]] = {}
    failing: Optional[str] = None
    while True:
        doc = await poll(args)
        if "error" in doc and "blocks" not in doc:
            message = str((doc["error"] or {}).get("message"))
            if message != failing:
                await queue.put({"datablock_error": dict(doc["error"], host=host),
                                 "meta": {"hosts": host}})
            failing = message
        else:
            failing = None
            now: Dict[str, Tuple[Any, ...]] = {}
            for event in events(doc, host, suspect):
                address = str(event["datablock"]["address"])
                now[address] = _key(event)
                if repeat or announced.get(address) != now[address]:
                    await queue.put(event)
            announced = now
        if args.get("once"):
            return
        await asyncio.sleep(interval)


if __name__ == "__main__":
    # datablock_events.py [INTERVAL]: print the events of this host (no rulebook needed)
    import sys

    class _Print:
        async def put(self, event: Dict[str, Any]) -> None:
            print(json.dumps(event), flush=True)

    asyncio.run(main(_Print(), {"interval": float(sys.argv[1]) if sys.argv[1:] else 10}))
