#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: datablock_drill
short_description: Prove on a host that DataBlock crash recovery works there
version_added: 0.1.0
description:
  - Runs the crash drill on the managed host - each iteration creates a scratch DataBlock
    in C(/dev/shm) (named C(plh_drill_<pid>_<n>)), commits known data, starts real producer
    and consumer processes, SIGKILLs them at a protocol point chosen by a seeded random
    generator, heals the block and checks the invariants (the block validates and is
    healthy, no committed slot was lost or altered, a new producer commits and a consumer
    reads it back, a writer left waiting behind a dead reader finishes).
  - Each scratch block's configuration (buffer policy, consumer sync, flexible zone, checksum policy) is drawn from
    the 54-cell matrix with the same seed, and that configuration's own rules are checked too (RV(drill.configurations),
    RV(drill.schedule)).
  - So every fleet can prove recovery works on its own kernel and container runtime.
  - Touches no existing block. Every scratch block is removed before the module returns, so
    C(changed) is always false.
author:
  - pylabhub maintainers (!UNKNOWN)
options:
  iterations:
    description: Number of kill-heal-check rounds.
    type: int
    default: 20
  seed:
    description: Seed of the random choices; the same seed replays the same protocol points. Random when omitted (reported in RV(drill.seed)).
    type: int
  capacity:
    description: Slots of each scratch block.
    type: int
    default: 4
  stride:
    description: Slot stride in bytes of each scratch block (a multiple of 64).
    type: int
    default: 4096
  fail_on_failure:
    description: Fail the task when any iteration broke an invariant.
    type: bool
    default: true
extends_documentation_fragment:
  - pylabhub.recovery.common
  - pylabhub.recovery.common.read_only
  - pylabhub.recovery.dependencies
attributes:
  check_mode:
    support: partial
    details:
      - In check mode the drill does not run (it would start and kill processes); the
        module returns what it would do.
notes:
  - The drill forks processes and uses about capacity x stride bytes of C(/dev/shm) at a
    time; 20 iterations take well under a second on an idle host.
seealso:
  - module: pylabhub.recovery.datablock_recover
'''

EXAMPLES = r'''
- name: Prove recovery on every host (repeatable with a fixed seed)
  pylabhub.recovery.datablock_drill:
    iterations: 50
    seed: 1234
  register: drill

- name: Show the figures
  ansible.builtin.debug:
    msg: "{{ drill.drill.survived }}/{{ drill.drill.iterations }} survived, {{ drill.drill.committed_lost }} committed slots lost"
'''

RETURN = r'''
drill:
  description: The drill's summary (schema C(pylabhub.recovery/v1), operation V(drill)); null in check mode.
  returned: always
  type: dict
  contains:
    seed:
      description: The seed used.
      type: int
      sample: 1234
    iterations:
      description: Rounds run.
      type: int
      sample: 50
    kills:
      description: Processes SIGKILLed.
      type: int
      sample: 78
    survived:
      description: Rounds after which every invariant held.
      type: int
      sample: 50
    committed_checked:
      description: Committed slots checked across the rounds.
      type: int
      sample: 150
    committed_lost:
      description: Committed slots lost or altered (must be 0).
      type: int
      sample: 0
    forced:
      description: >-
        Rounds where heal rightly refused a live writer's drain (the kernel scan is partial) and the drill ran the forced
        command heal named.
      type: int
      sample: 0
    reheals:
      description: >-
        Heals run again because heal kept the consumer count for want of proof (another process had the block open).
      type: int
      sample: 0
    seconds:
      description: Wall time of the drill.
      type: float
      sample: 0.61
    ok:
      description: Whether every round survived.
      type: bool
      sample: true
    points:
      description: How many rounds used each protocol point.
      type: dict
      sample: {"writer_locked": 7, "reader_inside": 6, "deadlock": 5}
    configurations:
      description: >-
        Rounds per value of each dimension of the configuration matrix (C(policy), C(consumer_sync), C(flex_size),
        C(checksum_policy); every value, 0 included) and per cell used (C(cells)). Each round draws its scratch
        block's configuration from the matrix with the seed.
      type: dict
      sample: {"policy": {"SINGLE": 3, "DOUBLE_BUFFER": 4, "RING_BUFFER": 3}, "cells": {"SINGLE/LATEST_ONLY/flex0/NONE": 1}}
    schedule:
      description: Every round's C(iteration), C(point), C(configuration) (its cell) and C(ok).
      type: list
      elements: dict
      sample: [{"iteration": 0, "point": "deadlock", "configuration": "RING_BUFFER/SEQUENTIAL_SYNC/flex4096/MANUAL", "ok": true}]
    failures:
      description: The failed rounds (C(iteration), C(point), C(configuration), C(problems)).
      type: list
      elements: dict
      sample: []
'''

from ansible_collections.pylabhub.recovery.plugins.module_utils.ansible_adapter import (
    DRILL_DEFAULTS, DataBlockModule,
)


def main():
    m = DataBlockModule(dict(iterations=dict(type="int", default=DRILL_DEFAULTS["iterations"]),
                             seed=dict(type="int"),
                             capacity=dict(type="int", default=DRILL_DEFAULTS["capacity"]),
                             stride=dict(type="int", default=DRILL_DEFAULTS["stride"]),
                             fail_on_failure=dict(type="bool", default=True)))
    p = m.params
    # the engine checks the arguments, in check mode too (which runs nothing)
    summary = m.call(m.engine.drill, p["iterations"], p["seed"], p["capacity"], p["stride"],
                     dry_run=m.check_mode)
    if m.check_mode:
        m.exit(changed=False, drill=None,
               msg="check mode: would run %d drill iteration(s)" % p["iterations"])
    if not summary["ok"] and p["fail_on_failure"]:
        m.fail("crash drill: %d of %d iteration(s) broke an invariant (seed %d)"
               % (summary["iterations"] - summary["survived"], summary["iterations"],
                  summary["seed"]), drill=summary, code="drill-failed")
    m.exit(changed=False, drill=summary)


if __name__ == "__main__":
    main()
