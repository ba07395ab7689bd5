#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: datablock_undo
short_description: Put back what a recovery run stored in a pylabhub DataBlock
version_added: 0.2.0
description:
  - Every real run of M(pylabhub.recovery.datablock_recover),
    M(pylabhub.recovery.datablock_cleanup) and M(pylabhub.recovery.datablock_validate)
    (with O(pylabhub.recovery.datablock_validate#module:repair=true)) that changes a block
    first writes a before-image on the host - every store with the value it found and the
    value it writes, fsynced before the store - and returns its id (C(snapshot.id)).
  - This module puts those values back, newest store first, each by compare-and-swap on
    the value the run wrote (scrubbed pages get their bytes back).
  - Every store is checked first. If any word the run wrote holds another value now (a
    live process wrote since), the task fails with C(code=undo-refused) naming the field,
    and nothing is changed. A block re-created since (another inode, size or header
    identity) fails with C(code=snapshot-mismatch).
  - A run killed mid-way is undone as far as it got. The undo writes its own
    before-image, so an undo can be undone.
author:
  - pylabhub maintainers (!UNKNOWN)
options:
  snapshot_id:
    description:
      - The before-image to put back - an id as returned in C(snapshot.id) (looked up in
        O(snapshot_dir)), or the absolute path of a C(.jsonl) before-image.
    type: str
    required: true
extends_documentation_fragment:
  - pylabhub.recovery.common
  - pylabhub.recovery.common.mutating
  - pylabhub.recovery.common.record
  - pylabhub.recovery.dependencies
seealso:
  - module: pylabhub.recovery.datablock_recover
'''

EXAMPLES = r'''
- name: Heal, keeping the result
  pylabhub.recovery.datablock_recover:
    name: my_datablock
    action: heal
  register: healed

- name: Put it back (preview with --check --diff)
  pylabhub.recovery.datablock_undo:
    snapshot_id: "{{ healed.recovery.snapshot.id }}"
  when: healed.recovery.snapshot is not none
'''

RETURN = r'''
undo:
  description: The engine's result (schema C(pylabhub.recovery/v1), operation V(undo)).
  returned: when the snapshot could be read and the block attached
  type: dict
  contains:
    undo_of:
      description: The id of the before-image put back.
      type: str
      sample: 20261201T031200.000000Z-heal-4242-0a1b2c3d
    undone_operation:
      description: The operation of the run undone.
      type: str
      sample: heal
    complete:
      description: False when the run undone was killed before its end.
      type: bool
      sample: true
    changes:
      description: Every word or byte range put back, in order.
      type: list
      elements: dict
      sample: [{"target": "slot[0].write_lock", "before": 0, "after": 16533}]
    snapshot:
      description: The before-image of this undo (C(id), C(path)); null in check mode.
      type: dict
      sample: {"id": "20261201T031300.000000Z-undo-4250-1a2b3c4d",
               "path": "/var/lib/pylabhub-recovery/snapshots/20261201T031300.000000Z-undo-4250-1a2b3c4d.jsonl"}
audit:
  description: The audit line of this undo, as appended to the host's audit log.
  returned: when a real run (not check mode) reached the block
  type: list
  elements: dict
  sample: [{"operation": "undo", "undo_of": "20261201T031200.000000Z-heal-4242-0a1b2c3d"}]
msg:
  description: What the task did (or, in check mode, would do), in one line.
  returned: success
  type: str
  sample: "my_datablock: restored 12 stores of 20261201T031200.000000Z-heal-4242-0a1b2c3d"
'''

from ansible_collections.pylabhub.recovery.plugins.module_utils.ansible_adapter import (
    DataBlockModule, argument_spec, printable,
)


def main():
    m = DataBlockModule(argument_spec("snapshot", "snapshot_dir", "audit_log",
                                      snapshot_id=dict(type="str", required=True)))
    result = m.call(m.engine.undo, m.params["snapshot_id"], dry_run=m.check_mode)
    m.record(result)
    count = len(result["changes"])
    what = (m.engine.did(result["dry_run"], "restore", "%d store%s of %s" % (
        count, "" if count == 1 else "s", result["undo_of"])) if count
        else "nothing to put back from %s" % result["undo_of"])
    m.exit(changed=result["changed"], undo=result,
           msg=printable("%s: %s" % (result["block"]["address"], what)))


if __name__ == "__main__":
    main()
