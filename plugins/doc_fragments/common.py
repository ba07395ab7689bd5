# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment(object):
    """Shared documentation of the pylabhub.recovery datablock modules.

    ``pylabhub.recovery.common``: attributes every module has, and notes.
    ``pylabhub.recovery.common.name``: the required ``name`` option (one block).
    ``pylabhub.recovery.common.name_or_all``: ``name`` or ``all`` (one or every block).
    ``pylabhub.recovery.common.mutating``: attributes of modules that may change bytes.
    ``pylabhub.recovery.common.read_only``: attributes of modules that never do.
    ``pylabhub.recovery.common.budget``: the ``max_bytes`` option (work per block).
    ``pylabhub.recovery.common.record``: the before-image and audit options of writes.
    """

    DOCUMENTATION = r'''
options: {}
attributes:
  check_mode:
    description:
      - Can run in check mode and return changed status prediction without modifying target.
      - Check mode runs the very same recovery plan as a real run with writes going to an
        in-memory overlay only, so the prediction (C(changed), the changes list and the
        diff) is exact and no byte of the block is written.
    support: full
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details:
      - Linux only in practice; DataBlocks live in C(/dev/shm) (or memfds) and liveness
        verdicts read C(/proc).
  action_group:
    description: Use C(group/pylabhub.recovery.datablock) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - pylabhub.recovery.datablock
notes:
  - A block is opened with C(O_NOFOLLOW) and must be a regular file. Reading it (diagnose,
    validate, check mode) needs only read permission and opens it read-only, never mapped;
    changing it needs the user who owns it or root (see C(become)).
  - Untrusted text (file names, names read from a block) is escaped in C(msg) and
    warnings (control characters, escape sequences, newlines, invalid UTF-8 shown as
    backslash escapes); the structured results keep exact values.
  - Every module result carries the recovery engine's own structured data (schema
    C(pylabhub.recovery/v1)) unchanged; the modules only translate arguments.
'''

    BUDGET = r'''
options:
  max_bytes:
    description:
      - The most bytes one operation may examine in one block; a block that needs more is
        refused with code V(over-budget) naming its geometry (with O(pylabhub.recovery.datablock_recover#module:all=true)
        and similar it is skipped with a warning and the others go on).
      - Counted - the 4096-byte header; the allocated bytes of the slot-state table (read
        in bulk); 4 KiB per slot examined one by one (every slot when the answer lists
        them all - a diagnosis of all slots, a slot action on V(all) - else only the slots
        that are not plain); and, when validating
        or healing, the full stride of every slot whose data holds allocated bytes, one
        stride for the all-zero digest, and the flexible zone. Holes (never-written parts
        of a sparse segment) are free.
      - Accepts a number of bytes or a size such as V(512M) or V(2G). The engine default
        (256 MiB) applies when omitted.
    type: bytes
'''

    NAME = r'''
options:
  name:
    description:
      - The block to work on. One of a POSIX shared-memory name (V(my_datablock) or
        V(/my_datablock), meaning C(/dev/shm/my_datablock)), an absolute path to a block
        image (V(/var/tmp/copy_of_block)), or a memfd address V(memfd:<pid>:<fd>) as
        listed by M(pylabhub.recovery.datablock_info).
    type: str
    required: true
'''

    NAME_OR_ALL = r'''
options:
  name:
    description:
      - The block to work on. One of a POSIX shared-memory name (V(my_datablock) or
        V(/my_datablock), meaning C(/dev/shm/my_datablock)), an absolute path to a block
        image, or a memfd address V(memfd:<pid>:<fd>) as listed by
        M(pylabhub.recovery.datablock_info).
      - Exactly one of O(name) and O(all=true) is required.
    type: str
  all:
    description:
      - Work on every DataBlock found on the host (named segments in C(/dev/shm) and
        memfds held by processes), as M(pylabhub.recovery.datablock_info) lists them.
      - Exactly one of O(name) and O(all=true) is required.
    type: bool
    default: false
  pattern:
    description:
      - With O(all=true) only - restrict to the blocks whose name or address matches this
        shell-style pattern (C(fnmatch), case-sensitive), as O(pylabhub.recovery.datablock_info#module:pattern).
    type: str
'''

    MUTATING = r'''
options: {}
attributes:
  diff_mode:
    description:
      - Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
      - The diff shows, for each slot entry, consumer entry and header field touched, its
        words before and after (a word changed twice, such as a write lock claimed by the
        recovery and then released, shows its first and last value).
    support: full
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
    support: full
'''

    RECORD = r'''
options:
  snapshot:
    description:
      - Write the before-image of a real run first (every store with the value it found
        and the value it writes, fsynced before the store), so that
        M(pylabhub.recovery.datablock_undo) can put it back. When it cannot be written
        the task fails with C(code=snapshot-failed) and nothing is changed.
      - V(false) writes none (the run cannot be undone). Check mode never writes one.
    type: bool
    default: true
  snapshot_dir:
    description:
      - Where before-images go. Default - E(PYLABHUB_RECOVERY_SNAPSHOT_DIR), else
        C(/var/lib/pylabhub-recovery/snapshots) for root and
        C($XDG_STATE_HOME/pylabhub-recovery/snapshots) for anyone else; created 0700.
    type: path
  audit_log:
    description:
      - The audit log every real run appends one JSON line to (also sent to syslog).
        Default - E(PYLABHUB_RECOVERY_AUDIT_LOG), else
        C(/var/log/pylabhub-recovery/audit.jsonl) for root and
        C($XDG_STATE_HOME/pylabhub-recovery/audit.jsonl) for anyone else.
      - The task's result carries the same lines under C(audit).
    type: path
'''

    READ_ONLY = r'''
options: {}
attributes:
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: N/A
    details:
      - This module never changes anything.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled/queried by the module has not changed in a relevant way.
    support: full
    details:
      - This module never changes anything.
'''
