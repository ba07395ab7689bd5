# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate a block, and with ``repair`` re-bless checksums of committed slots only.

Checks: the header (magic, version, layout hash, layout checksum, geometry, size — found
by :func:`_block.inspect_header` on a leniently attached block), state sanity (slot state
values, writer_waiting, locks and reader counts against states, consumer count against
the heartbeat table, indexes), and every slot and flex-zone checksum *recomputed* from the
data (the cached "verified" byte is never trusted). Without repair nothing is written.
With repair, only COMMITTED slots whose checksum is wrong or missing get a new checksum,
each under our own write lock, and each is listed; everything else stays as found.
Hashing uses large zero-copy views and both cores (hashlib releases the GIL).

Validation runs against live processes too, so nothing they pass through is reported: a
state problem counts only when the same words are still there ~60 ms later, and a slot
checksum mismatch only when the slot's lock, generation, state and stored checksum read
after hashing equal those read before (a slot that keeps changing is "checksum-unverified",
severity info).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Tuple

from . import _layout as L
from ._errors import ConcurrentChange
from ._plan import Plan

SLOT = L.SLOT
_S = L.SlotState
_U64 = (1 << 64) - 1
Progress = Optional[Callable[[int, int], None]]
_BATCH_BYTES = 8 << 20


def finding(code: str, message: str, severity: str = "error", repairable: bool = False,
            **where: object) -> Dict[str, object]:
    out: Dict[str, object] = {"code": code, "severity": severity, "message": message,
                              "repairable": repairable}
    out.update(where)
    return out


def validate(plan: Plan, repair: bool = False, progress: Progress = None,
             producer_dead: bool = False) -> Dict[str, object]:
    """``producer_dead``: see :func:`state_findings`."""
    block = plan.block
    findings = [finding(p.code, p.message, field=p.details.get("field")) for p in block.problems]
    reblessed: List[Dict[str, object]] = []
    if block.geometry is not None:
        findings += state_findings(plan, producer_dead)
        bad = _checksum_findings(plan, progress)
        findings += bad
        findings += uncommitted_findings(plan)
        if repair:
            reblessed = _rebless(plan, [f for f in bad if f["repairable"]])
            fixed = {r["slot"] for r in reblessed}
            for f in findings:
                if f.get("slot") in fixed and f["code"].startswith("checksum"):
                    f["repaired"] = True
    errors = [f for f in findings if f["severity"] == "error" and not f.get("repaired")]
    return {"valid": not errors, "findings": findings, "reblessed": reblessed}


# Pauses after which a suspicious observation is looked at again. Live processes pass
# through states that look wrong for a few instructions (a reader's count goes up before it
# re-checks the state; a writer stores WRITING before clearing writer_waiting; a consumer
# claims its entry before counting itself) and a scan can be preempted between two words.
# Only what a later look still shows with the very same words is reported.
_SETTLE_S = (0.002, 0.01, 0.05)
_SLOT_WORDS = ("write_lock", "write_generation", "slot_state", "writer_waiting", "reader_count")


def _slot_words(plan: Plan, base: int) -> Tuple[int, ...]:
    return tuple(plan.get(SLOT[n], base) for n in _SLOT_WORDS)


def _slot_problems(i: int, words: Tuple[int, ...]) -> List[Dict[str, object]]:
    lock, _gen, state, waiting, readers = words
    out: List[Dict[str, object]] = []
    name = L.enum_name(_S, state)
    if state > max(_S):
        out.append(finding("invalid-slot-state", "slot %d: state value %d is not a slot "
                           "state" % (i, state), slot=i))
    if waiting > 1 or (waiting and state != _S.DRAINING):
        out.append(finding("invalid-writer-waiting", "slot %d: writer_waiting=%d in state %s"
                           % (i, waiting, name), "warning", slot=i))
    if lock == 0 and state in (_S.WRITING, _S.DRAINING):
        out.append(finding("orphaned-slot", "slot %d: %s with no write lock" % (i, name),
                           "warning", slot=i))
    if readers > 0x7FFFFFFF:
        out.append(finding("reader-count-underflow", "slot %d: reader_count %d (a count "
                           "went below zero)" % (i, readers), slot=i))
    elif readers and state in (_S.FREE, _S.WRITING):
        out.append(finding("readers-in-unreadable-slot", "slot %d: %d reader(s) in state %s"
                           % (i, readers, name), slot=i))
    return out


def _look(plan: Plan, key) -> Tuple[tuple, List[Dict[str, object]]]:
    """The words behind one group of checks, and the problems they show."""
    if key[0] == "slot":
        words = _slot_words(plan, plan.block.geo.slot_entry(key[1]))
        return words, _slot_problems(key[1], words)
    if key[0] == "consumers":
        registered = sum(1 for k in range(L.MAX_CONSUMERS)
                         if plan.get(L.CONSUMER["consumer_pid"], L.consumer_entry(k)))
        count = plan.hdr("active_consumer_count")
        out = []
        if count != registered:
            out.append(finding("consumer-count-mismatch", "active_consumer_count is %d but %d "
                               "consumer entr%s registered"
                               % (count, registered, "y is" if registered == 1 else "ies are"),
                               "warning", field="active_consumer_count"))
        beats = tuple(plan.get(L.CONSUMER["last_heartbeat_ns"], L.consumer_entry(k))
                      for k in range(L.MAX_CONSUMERS))     # move with every registration
        return (registered, count, beats), out
    # commit_index first: it never passes a write_index read after it
    commit_index, write_index = plan.hdr("commit_index"), plan.hdr("write_index")
    out = []
    if commit_index != L.NO_COMMIT and commit_index >= write_index:
        out.append(finding("index-inconsistent", "commit_index %d is not below write_index %d"
                           % (commit_index, write_index), field="commit_index"))
        return (commit_index, write_index), out
    step = index_step(plan)
    if step is None:
        return (commit_index, write_index), out
    producer_dead = key[1]
    ids = step["unexplained"]
    out.append(finding(
        "index-out-of-step", "write_index %d is %d ahead of the id after the last commit (%d)"
        " and no writer holds %s: %s" % (
            write_index, step["gap"], step["following"],
            "the claimed slot id(s) %s" % ", ".join(map(str, ids)) if ids else
            "that many slot ids", "left by a producer that is dead; heal gives the ids back"
            if producer_dead else "a live producer may be between claiming an id and locking "
            "its slot, or a producer died there"),
        "error" if producer_dead else "warning", field="write_index"))
    return (commit_index, write_index, step["holders"]), out


def index_step(plan: Plan) -> Optional[Dict[str, object]]:
    """write_index ahead of the commits with no writer explaining the claimed ids, or None.

    One producer claims slot id ``write_index`` (write_index += 1), locks the slot the id
    maps to, and commits it (commit_index = id); an abort gives the id back. So
    write_index is ``commit_index + 1`` (0 before the first commit) except for the ids of
    writers that still hold their slot (locked, or WRITING/DRAINING). Claimed ids no slot
    explains were left by a writer that died between its claim and its lock, or by a
    recovery killed half-way. Returns ``following`` (commit_index + 1), ``gap``, the
    ``unexplained`` ids and ``holders`` (the (lock, state) words looked at)."""
    geo = plan.block.geo
    commit_index, write_index = plan.hdr("commit_index"), plan.hdr("write_index")
    following = (commit_index + 1) & _U64
    gap = (write_index - following) & _U64
    if gap == 0 or (commit_index != L.NO_COMMIT and commit_index >= write_index):
        return None
    claimed = [following + k for k in range(min(gap, geo.capacity))]
    holders = tuple((plan.get(SLOT["write_lock"], geo.slot_entry(c % geo.capacity)),
                     plan.get(SLOT["slot_state"], geo.slot_entry(c % geo.capacity)))
                    for c in claimed)
    unexplained = [c for c, (lock, state) in zip(claimed, holders)
                   if not lock and state not in (_S.WRITING, _S.DRAINING)]
    if gap <= geo.capacity and not unexplained:
        return None
    return {"commit_index": commit_index, "write_index": write_index, "following": following,
            "gap": gap, "unexplained": unexplained, "holders": holders}


def state_findings(plan: Plan, producer_dead: bool = False) -> List[Dict[str, object]]:
    """Slot, consumer-count and index sanity. A problem is reported only when every later
    look (over about 60 ms) finds the very same words: never a live process's transient.

    ``producer_dead``: no live producer could be the writer behind an index out of step
    (then it is an error; otherwise a warning: a live producer passes through that state
    between claiming an id and locking its slot, and may be paused there)."""
    keys = [("slot", i) for i in range(plan.block.geo.capacity)]
    keys += [("consumers",), ("indexes", bool(producer_dead))]
    pending = {}
    for key in keys:
        words, problems = _look(plan, key)
        if problems:
            pending[key] = (words, problems)
    for pause in _SETTLE_S:
        if not pending:
            break
        time.sleep(pause)
        pending = {key: seen for key, seen in pending.items() if _look(plan, key)[0] == seen[0]}
    return [f for key in keys if key in pending for f in pending[key][1]]


def _checksum_findings(plan: Plan, progress: Progress) -> List[Dict[str, object]]:
    block, geo = plan.block, plan.block.geo
    enforced = plan.hdr("checksum_policy") == L.ChecksumPolicy.ENFORCED
    jobs: List[Tuple[int, bytes, tuple]] = []    # (slot, stored hash, (lock, gen, state))
    out: List[Dict[str, object]] = []
    for i in range(geo.capacity):
        base = geo.slot_entry(i)
        state = plan.get(SLOT["slot_state"], base)
        if state not in (_S.COMMITTED, _S.DRAINING):
            continue
        words = _slot_words(plan, base)[:3]
        stored = plan.read(geo.checksum_entry(i), L.HASH_SIZE)
        if any(stored):
            jobs.append((i, stored, words))
        elif enforced:
            out.append(finding("checksum-missing", "slot %d: %s under the Enforced policy but "
                               "has no checksum" % (i, L.enum_name(_S, state)), "warning",
                               state == _S.COMMITTED, slot=i))
    digests = _hash_slots(block, [j[0] for j in jobs], progress)
    for (i, stored, words), digest in zip(jobs, digests):
        if digest == stored:
            continue
        seen = _settle_slot(plan, i, words, stored, digest)
        if seen is None:
            out.append(finding("checksum-unverified", "slot %d: changed while being hashed "
                               "(a live writer); not verified" % i, "info", slot=i))
            continue
        state, stored, digest = seen
        if state in (_S.COMMITTED, _S.DRAINING) and any(stored) and digest != stored:
            out.append(finding("checksum-mismatch", "slot %d: stored checksum %s… but the data "
                               "hashes to %s…" % (i, stored[:4].hex(), digest[:4].hex()),
                               "error", state == _S.COMMITTED, slot=i))
    stored_flex = plan.read(L.HEADER["flexzone_checksum"].offset, L.HASH_SIZE)
    if geo.flex_size and any(stored_flex):
        digest = L.blake2b256(block.view(geo.flex_offset, geo.flex_size))
        if digest != stored_flex and _settle_flex(plan, stored_flex, digest):
            out.append(finding("flexzone-checksum-mismatch", "flexible zone: stored checksum "
                               "does not match its data", field="flexzone_checksum"))
    return out


def upstream_checked(plan: Plan) -> List[int]:
    """The slots pylabhub's own validate_integrity hashes (spec section 8): none before
    the first commit (total_slots_written 0), every slot once total_slots_written reaches
    the capacity (whatever their state: FREE and WRITING included), else slots
    0 .. commit_index mod capacity."""
    capacity = plan.block.geo.capacity
    written = plan.hdr("total_slots_written")
    if written == 0:
        return []
    if written >= capacity:
        return list(range(capacity))
    return list(range(min(capacity, plan.hdr("commit_index") % capacity + 1)))


def _uncommitted_look(plan: Plan, i: int) -> Optional[tuple]:
    """A FREE, unlocked slot that pylabhub's check fails: its words, checksum entry and
    data digest; None when the slot is held, not FREE, or passes (verified byte 1 is
    taken as valid without hashing, as pylabhub does; an all-zero checksum fails)."""
    geo = plan.block.geo
    base = geo.slot_entry(i)
    words = (plan.get(SLOT["write_lock"], base), plan.get(SLOT["slot_state"], base))
    if words != (0, _S.FREE):
        return None
    entry = plan.read(geo.checksum_entry(i), L.CHECKSUM_ENTRY_SIZE)
    if entry[L.HASH_SIZE] == 1:
        return None
    digest = L.blake2b256(plan.data(geo.slot_data(i), geo.stride))
    if any(entry[:L.HASH_SIZE]) and digest == entry[:L.HASH_SIZE]:
        return None
    return words, entry, digest


def uncommitted_findings(plan: Plan) -> List[Dict[str, object]]:
    """FREE slots (no lock) whose stored checksum does not vouch for their bytes, among
    the slots pylabhub's validate_integrity checks: pylabhub calls such a block corrupt
    (a writer killed mid-write and released, or aborted, leaves torn bytes under the old
    checksum). Under the Enforced policy this is an error that heal repairs (it scrubs the
    slot to zeros and sets the matching checksum: the slot holds no committed data); under
    Manual and None, checksums are the producer's business and no C++ reader checks
    them, so it is information only. Locked or WRITING/DRAINING slots are the writers'
    (a dead one's slot is stuck and its release scrubs it). Reported only when a look after
    the settle pauses sees the same words, entry and bytes."""
    enforced = plan.hdr("checksum_policy") == L.ChecksumPolicy.ENFORCED
    out: List[Dict[str, object]] = []
    for i in upstream_checked(plan):
        seen = _uncommitted_look(plan, i)
        for pause in _SETTLE_S:
            if seen is None:
                break
            time.sleep(pause)
            again = _uncommitted_look(plan, i)
            seen = seen if again == seen else None
        if seen is None:
            continue
        stored = seen[1][:L.HASH_SIZE]
        out.append(finding(
            "uncommitted-checksum-mismatch", "slot %d: FREE, and its %s does not match its "
            "bytes (torn by a writer that is gone): pylabhub's validate_integrity %s; %s" % (
                i, "stored checksum %s…" % stored[:4].hex() if any(stored) else
                "checksum is all zero and",
                "fails on it (it checks every slot once the ring has wrapped)" if enforced else
                "would report it, but under the %s policy no C++ reader checks it" % (
                    L.enum_name(L.ChecksumPolicy, plan.hdr("checksum_policy"))),
                "heal scrubs it to zeros with a matching checksum (no committed data is in it)"
                if enforced else "nothing to repair"),
            "error" if enforced else "info", slot=i))
    return out


def _settle_slot(plan: Plan, i: int, words: tuple, stored: bytes,
                 digest: bytes) -> Optional[Tuple[int, bytes, bytes]]:
    """Confirm a slot checksum mismatch against live writers.

    No writer changes a slot's data without holding its lock and, before it lets go,
    committing (generation + 1) or leaving the committed states; so when lock, generation,
    state and stored checksum read *after* hashing equal those read *before*, the bytes
    hashed are the slot's committed bytes. Returns (state, stored, digest) of a stable
    look, or None when the slot kept changing."""
    geo = plan.block.geo
    base = geo.slot_entry(i)

    def look() -> Tuple[tuple, bytes]:
        return _slot_words(plan, base)[:3], plan.read(geo.checksum_entry(i), L.HASH_SIZE)

    for pause in _SETTLE_S + (None,):
        if look() == (words, stored):
            return words[2], stored, digest
        if pause is None:
            return None
        time.sleep(pause)
        words, stored = look()
        if words[2] not in (_S.COMMITTED, _S.DRAINING):
            return words[2], stored, digest          # no longer committed: nothing to check
        digest = L.blake2b256(plan.block.view(geo.slot_data(i), geo.stride))
    return None


def _settle_flex(plan: Plan, stored: bytes, digest: bytes) -> bool:
    """A flex-zone mismatch counts only when a second look sees the same stored checksum
    and the same data digest (a live producer updates zone and checksum separately)."""
    geo = plan.block.geo
    offset = L.HEADER["flexzone_checksum"].offset
    for pause in _SETTLE_S:
        time.sleep(pause)
        now = (plan.read(offset, L.HASH_SIZE),
               L.blake2b256(plan.block.view(geo.flex_offset, geo.flex_size)))
        if now == (stored, digest):
            return True
        stored, digest = now
        if stored == digest or not any(stored):
            return False
    return False


def _hash_slots(block, slots: List[int], progress: Progress) -> List[bytes]:
    """BLAKE2b-256 of each slot's full stride, on zero-copy views, over both cores."""
    geo = block.geo
    if not slots:
        return []
    per_batch = max(1, _BATCH_BYTES // geo.stride)
    batches = [slots[i:i + per_batch] for i in range(0, len(slots), per_batch)]
    total, done = len(slots) * geo.stride, 0

    def work(batch: List[int]) -> List[bytes]:
        return [L.blake2b256(block.view(geo.slot_data(i), geo.stride)) for i in batch]

    digests: List[bytes] = []
    workers = min(len(batches), os.cpu_count() or 1, 4)
    if workers <= 1:
        results = map(work, batches)
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        results = pool.map(work, batches)
    for batch, result in zip(batches, results):
        digests.extend(result)
        done += len(batch) * geo.stride
        if progress:
            progress(done, total)
    if workers > 1:
        pool.shutdown()
    return digests


def _rebless(plan: Plan, bad: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Recompute the checksum of each COMMITTED slot listed, under our write lock."""
    geo = plan.block.geo
    done: List[Dict[str, object]] = []
    for f in bad:
        i = int(f["slot"])
        base, entry = geo.slot_entry(i), geo.checksum_entry(i)
        plan.begin()
        try:
            plan.cas("slot[%d].write_lock" % i, SLOT["write_lock"], base, 0, plan.pid)
            if plan.get(SLOT["slot_state"], base) != _S.COMMITTED:
                raise ConcurrentChange("slot %d is no longer COMMITTED" % i)
            before = plan.read(entry, L.CHECKSUM_ENTRY_SIZE)
            digest = L.blake2b256(plan.block.view(geo.slot_data(i), geo.stride))
            if before[:L.HASH_SIZE] == digest:     # a writer committed it meanwhile
                raise ConcurrentChange("slot %d was rewritten since it was checked" % i)
            plan.put("slot[%d].checksum" % i, entry, before, digest + b"\0")
            plan.cas("slot[%d].write_lock" % i, SLOT["write_lock"], base, plan.pid, 0)
        except ConcurrentChange as exc:
            plan.rollback()
            f["message"] += "; not re-blessed: %s" % exc
            continue
        plan.commit()
        done.append({"slot": i, "before": before[:L.HASH_SIZE].hex(), "after": digest.hex()})
    plan.count_recovery(len(done))
    return done
