# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The names and numbers the engine shares with its faces, each written once.

Part of the front door: :mod:`_engine` re-exports every name here, and the faces read
them from the engine. This file imports nothing, so the one face that must know them
before it may load the engine - the CLI's argument parser, whose ``--help`` and
``--version`` load no engine module - reads them here directly.
"""

#: The schema id of every JSON document the engine returns (docs/schema.md).
SCHEMA = "pylabhub.recovery/v1"

#: The slot actions of ``recover`` (and of ``datablock_recover`` beside ``heal``).
SLOT_ACTIONS = ("release_writer", "release_readers", "force_reset")

#: The result of one slot or consumer entry (pylabhub's names; ``RecoveryResult``).
SUCCESS, FAILED, UNSAFE, NOT_STUCK, INVALID_SLOT = (
    "SUCCESS", "FAILED", "UNSAFE", "NOT_STUCK", "INVALID_SLOT")

#: The crash drill's defaults: iterations, slots per scratch block, bytes per slot.
DRILL_ITERATIONS, DRILL_CAPACITY, DRILL_STRIDE = 20, 4, 4096

#: The format of an audit line (docs/audit-and-undo.md): the engine writes it, the
#: fleet_summary callback recognises it in the modules' ``audit`` results.
AUDIT_FORMAT = "pylabhub.recovery/audit-v1"
