# -*- coding: utf-8 -*-
# Copyright: pylabhub.recovery contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate a block, and with ``repair`` re-bless checksums the block's policy stamps.

Checks: the header (magic, version, layout hash, layout checksum, geometry, size — found
by :func:`_block.inspect_header` on a leniently attached block), state sanity (slot state
values, writer_waiting, locks and reader counts against states, consumer count against
the heartbeat table, indexes), and every slot and flex-zone checksum *recomputed* from the
data (the cached "verified" byte is never trusted). Without repair nothing is written.
With repair, only COMMITTED slots whose checksum is wrong or missing get a new checksum,
each under our own write lock, and each is listed; everything else stays as found.
Hashing reads bounded ``pread`` windows (never a mapping: reading a hole through one
allocates it), skips holes as zeros, and uses both cores (hashlib releases the GIL).
Slots whose state entry lies in a hole are FREE with nothing in them and are not walked.

Checksums are judged as a C++ reader of the block's ``checksum_policy`` judges them
(pylabhub's ``release_consume_slot``; docs/configurations.md):

* Enforced: every read verifies the slot *and* the flexible zone at release, an all-zero
  hash included, so a committed slot whose hash is wrong or missing is an error, and a
  flex-zone hash that is wrong (or missing once anything was committed) is an error for the
  whole block: every checksummed read is rejected. Repair re-blesses them, as the producer
  would have stamped them: a slot under our write lock, the flexible zone only while no
  live producer can be writing it.
* Manual: the producer stamps only the slots it chooses and no DataBlock read checks, so a
  hash that does not match is information (not stamped this lap, or damaged: the bytes
  cannot tell which), never an error, and repair writes none.
* None: nothing is checked and nothing is written.

Validation runs against live processes too, so nothing they pass through is reported: a
state problem counts only when the same words are still there ~60 ms later, and a slot
checksum mismatch only when the slot's lock, generation, state and stored checksum read
after hashing equal those read before (a slot that keeps changing is "checksum-unverified",
severity info); a flex-zone mismatch only when later looks see the same hash and data.
"""

from __future__ import annotations

import time

from . import _layout as L
from ._block import WINDOW
from ._errors import ConcurrentChange
from ._liveness import Snapshot, judge
from ._observe import producer_verdict
from ._plan import Plan
from ._scan import SlotScan, positions_not, scan_slots

TYPE_CHECKING = False       # typing costs milliseconds at start-up: for the checkers only
if TYPE_CHECKING:  # pragma: no cover
    from typing import Callable, Dict, Iterable, List, Optional, Tuple
    Progress = Optional[Callable[[int, int], None]]

SLOT = L.SLOT
_S = L.SlotState
_P = L.ChecksumPolicy
FLEX_CHECKSUM = L.HEADER["flexzone_checksum"]
FLEX_VERIFIED = L.HEADER["flexzone_checksum_verified"]
FLEX = "flexzone_checksum"
_U64 = (1 << 64) - 1


def finding(code: str, message: str, severity: str = "error", repairable: bool = False,
            **where: object) -> Dict[str, object]:
    out: Dict[str, object] = {"code": code, "severity": severity, "message": message,
                              "repairable": repairable}
    out.update(where)
    return out


def validate(plan: Plan, repair: bool = False, progress: Progress = None,
             producer_dead: bool = False, scan: Optional[SlotScan] = None
             ) -> Dict[str, object]:
    """``producer_dead``: see :func:`state_findings`. ``scan``: this call's bulk scan of
    the slot table (taken when None)."""
    block = plan.block
    findings = [finding(p.code, p.message, field=p.details.get("field")) for p in block.problems]
    reblessed: List[Dict[str, object]] = []
    policy = None
    if block.geometry is not None:
        policy = plan.hdr("checksum_policy")
        scan = scan or scan_slots(plan)
        findings += state_findings(plan, producer_dead, scan)
        check = _checksum_findings(plan, progress, scan)
        findings += check.findings
        findings += uncommitted_findings(plan, scan)
        if repair:
            reblessed = _rebless(plan, check)
            fixed = {r["target"] for r in reblessed}
            for f in check.findings:
                if _target(f) in fixed:
                    f["repaired"] = True
    errors = unrepaired(findings)
    return {"valid": not errors, "findings": findings, "unrepaired": errors,
            "reblessed": reblessed,
            "checksum_policy": None if policy is None else L.enum_name(_P, policy)}


def unrepaired(findings: Iterable[Dict[str, object]]) -> List[Dict[str, object]]:
    """The error findings no repair fixed: what makes a block invalid and, by the one
    rule (:func:`_status.health`), corrupt."""
    return [f for f in findings if f.get("severity") == "error" and not f.get("repaired")]


def _target(f: Dict[str, object]) -> str:
    """What re-blessing a checksum finding writes: ``slot[i].checksum`` or the flex zone's."""
    return FLEX if f.get("field") == FLEX else "slot[%s].checksum" % f.get("slot")


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


def state_findings(plan: Plan, producer_dead: bool = False,
                   scan: Optional[SlotScan] = None) -> List[Dict[str, object]]:
    """Slot, consumer-count and index sanity. A problem is reported only when every later
    look (over about 60 ms) finds the very same words: never a live process's transient.

    ``producer_dead``: no live producer could be the writer behind an index out of step
    (then it is an error; otherwise a warning: a live producer passes through that state
    between claiming an id and locking its slot, and may be paused there). Only the
    slots a bulk scan finds not plain are looked at: a plain slot has no slot problem."""
    keys = [("slot", i) for i in (scan or scan_slots(plan)).interesting]
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


class ChecksumCheck:
    """Checksum findings, and what repair needs to know about them: the repairable ones
    and the flex zone's settled (checksum entry, digest), so a re-bless writes only over
    exactly what was judged."""

    def __init__(self, policy: int) -> None:
        self.policy = policy
        self.findings: List[Dict[str, object]] = []
        self.flex_seen: Optional[Tuple[bytes, bytes]] = None

    @property
    def enforced(self) -> bool:
        return self.policy == _P.ENFORCED

    @property
    def policy_name(self) -> str:
        return L.enum_name(_P, self.policy).capitalize()


# Why nothing is re-blessed under a policy other than Enforced: repair never writes a
# checksum that the block's own producer would not have written.
_NO_REBLESS = ("the %s checksum policy leaves stamping to the producer: repair never "
               "writes a checksum the producer would not")


def _checksum_findings(plan: Plan, progress: Progress,
                       scan: Optional[SlotScan] = None) -> ChecksumCheck:
    block, geo = plan.block, plan.block.geo
    check = ChecksumCheck(plan.hdr("checksum_policy"))
    out = check.findings
    if check.policy == _P.NONE:
        out.append(finding("checksums-not-checked", "checksum policy None: no pylabhub reader "
                           "checks a slot or flex-zone checksum, so none is checked here",
                           "info", field="checksum_policy"))
        return check
    if check.policy not in (_P.MANUAL, _P.ENFORCED):
        out.append(finding("checksum-policy-unknown", "checksum_policy is %d (None 0, Manual "
                           "1, Enforced 2): pylabhub readers then check no checksum; "
                           "mismatches are reported as under Manual" % check.policy,
                           "warning", field="checksum_policy"))
    scan = scan or scan_slots(plan)
    from ._hashing import hash_slots        # hashing only: a diagnosis hashes no slot
    odd = hash_slots(block, _committed(plan, scan), progress)
    for i, words, stored, dummy in odd:                  # missing first, in slot order
        state = words[2]              # as read with the checksum, before the data
        if any(stored) or state not in (_S.COMMITTED, _S.DRAINING):
            continue
        if check.enforced:
            out.append(finding("checksum-missing", "slot %d: %s under the Enforced policy but "
                               "has no checksum: every pylabhub read of it is rejected"
                               % (i, L.enum_name(_S, state)), "error",
                               state == _S.COMMITTED, slot=i))
        else:
            out.append(_unstamped(check, i, "has no checksum"))
    for i, words, stored, digest in odd:
        if not any(stored):
            continue
        if not check.enforced:       # information only: one look, no settling pauses
            if _slot_words(plan, geo.slot_entry(i))[:3] == words:
                out.append(_unstamped(check, i, "stored checksum %s… does not match its "
                                      "data (%s…)" % (stored[:4].hex(), digest[:4].hex())))
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
    _flex_check(plan, check)
    return check


def _committed(plan: Plan, scan: SlotScan) -> List[Tuple[int, int]]:
    """The slots to hash, as sorted ``(first, stop)`` ranges: COMMITTED or DRAINING as the
    bulk scan read them, and as the plan leaves the slots it holds planned words for (a
    dry run's earlier steps)."""
    geo = plan.block.geo
    planned = sorted({(off - geo.slot_table) // L.SLOT_ENTRY_SIZE for off in
                      plan.planned(geo.slot_table, geo.slot_entry(geo.capacity))})
    ranges = sorted(scan.runs.get(_S.COMMITTED, []) + scan.runs.get(_S.DRAINING, []))
    if planned:
        wanted = (_S.COMMITTED, _S.DRAINING)
        keep = {i for i in planned if plan.get(SLOT["slot_state"], geo.slot_entry(i)) in wanted}
        cut: List[Tuple[int, int]] = []
        for first, stop in ranges:               # planned slots out, then the kept ones in
            for i in [p for p in planned if first <= p < stop]:
                if first < i:
                    cut.append((first, i))
                first = i + 1
            if first < stop:
                cut.append((first, stop))
        ranges = sorted(cut + [(i, i + 1) for i in keep])
    merged: List[Tuple[int, int]] = []
    for first, stop in ranges:
        if merged and merged[-1][1] == first:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((first, stop))
    return merged


def _unstamped(check: ChecksumCheck, i: int, what: str) -> Dict[str, object]:
    return finding("checksum-unstamped", "slot %d: %s; under the %s policy the producer "
                   "stamps slots only when it chooses, so this slot was not stamped for this "
                   "data, or the data was damaged: unverifiable. pylabhub reads of it "
                   "succeed; a consumer that verifies explicitly rejects it"
                   % (i, what, check.policy_name), "info", slot=i)


def flex_findings(plan: Plan) -> List[Dict[str, object]]:
    """The flexible zone's checksum, judged under the block's policy (for diagnose: one
    bounded region, cheap to hash on every look)."""
    if plan.block.geometry is None:
        return []
    check = ChecksumCheck(plan.hdr("checksum_policy"))
    _flex_check(plan, check)
    return check.findings


def _flex_entry(plan: Plan) -> bytes:
    """The flex zone's checksum entry: 32-byte hash + "verified" byte, each read the way
    a re-bless writes it, so a dry run sees what the planned re-bless left."""
    return (plan.read(FLEX_CHECKSUM.offset, L.HASH_SIZE)
            + bytes([plan.get(FLEX_VERIFIED) & 0xFF]))


def _flex_digest(block) -> bytes:
    geo = block.geo
    return block.digest(geo.flex_offset, geo.flex_size)


def _flex_check(plan: Plan, check: ChecksumCheck) -> None:
    """Under Enforced every read verifies the zone at release (honouring no cached byte):
    a wrong hash, or none once slots were committed (the producer stamps the zone at every
    commit), rejects every read. Under Manual only explicit checks look: information."""
    geo = plan.block.geo
    if not geo.flex_size or check.policy == _P.NONE:
        return
    entry = _flex_entry(plan)
    digest = _flex_digest(plan.block)
    if entry[:L.HASH_SIZE] == digest:
        return
    if not any(entry[:L.HASH_SIZE]) and plan.hdr("commit_index") == L.NO_COMMIT:
        return                   # never stamped, never committed: nothing can be read yet
    if not check.enforced:
        check.findings.append(finding(
            "flexzone-checksum-unstamped", "flexible zone: %s; under the %s policy the "
            "producer stamps it only when it chooses, so it is unverifiable. pylabhub reads "
            "succeed; a consumer that verifies the zone explicitly rejects it"
            % ("no checksum" if not any(entry[:L.HASH_SIZE]) else
               "stored checksum does not match its data", check.policy_name),
            "info", field=FLEX))
        return
    seen = _settle_flex(plan, entry, digest)
    if seen is None:
        check.findings.append(finding("flexzone-checksum-unverified", "flexible zone: "
                                      "changed while being hashed (a live producer "
                                      "updating it); not verified", "info", field=FLEX))
        return
    entry, digest = seen
    stored = entry[:L.HASH_SIZE]
    if stored == digest:
        return
    check.flex_seen = seen
    what = ("has no checksum although slots were committed" if not any(stored) else
            "stored checksum %s… but the zone hashes to %s…"
            % (stored[:4].hex(), digest[:4].hex()))
    cached = (" (its cached \"verified\" byte says 1: stale, not trusted)"
              if entry[L.HASH_SIZE] == 1 else "")
    check.findings.append(finding(
        "flexzone-checksum-missing" if not any(stored) else "flexzone-checksum-mismatch",
        "flexible zone: %s%s; under the Enforced policy every checksummed read is rejected "
        "at release (the whole block is unreadable)" % (what, cached), "error", True,
        field=FLEX))


def upstream_checked(plan: Plan) -> List[int]:
    """The slots pylabhub's own validate_integrity hashes (spec section 8): none before
    the first commit (total_slots_written 0), every slot once total_slots_written reaches
    the capacity (whatever their state: FREE and WRITING included), else slots
    0 .. commit_index mod capacity."""
    return list(range(_upstream_count(plan)))


def _upstream_count(plan: Plan) -> int:
    """How many slots (from slot 0) :func:`upstream_checked` names."""
    capacity = plan.block.geo.capacity
    written = plan.hdr("total_slots_written")
    if written == 0:
        return 0
    if written >= capacity:
        return capacity
    return min(capacity, plan.hdr("commit_index") % capacity + 1)


def _uncommitted_look(plan: Plan, i: int, hash_data: bool = True) -> Optional[tuple]:
    """A FREE, unlocked slot that pylabhub's check fails: its words, checksum entry and
    data digest; None when the slot is held, not FREE, or passes (verified byte 1 is
    taken as valid without hashing, as pylabhub does; an all-zero checksum fails).
    Without ``hash_data`` a slot whose verdict needs its bytes hashed is ``False``."""
    geo = plan.block.geo
    base = geo.slot_entry(i)
    words = (plan.get(SLOT["write_lock"], base), plan.get(SLOT["slot_state"], base))
    if words != (0, _S.FREE):
        return None
    entry = plan.read(geo.checksum_entry(i), L.CHECKSUM_ENTRY_SIZE)
    if entry[L.HASH_SIZE] == 1:
        return None
    if not any(entry[:L.HASH_SIZE]):
        return words, entry, None          # an all-zero checksum fails whatever the bytes
    if not hash_data:
        return False
    digest = L.blake2b256(plan.data(geo.slot_data(i), geo.stride))
    if digest == entry[:L.HASH_SIZE]:
        return None
    return words, entry, digest


def _uncommitted_candidates(plan: Plan, scan: SlotScan, upto: int) -> List[int]:
    """Slots below ``upto`` that may be FREE slots pylabhub's check fails: the plain
    FREE slots whose checksum entry's "verified" byte is not 1 (read in bulk from the
    checksum table: a verified byte of 1 passes pylabhub's check unhashed), and every
    slot the scan found not plain (looked at one by one, through the plan)."""
    geo = plan.block.geo
    looked = {i for i in scan.interesting if i < upto}
    out = set(looked)
    per = WINDOW // L.CHECKSUM_ENTRY_SIZE
    for first, stop in scan.runs.get(_S.FREE, ()):
        stop = min(stop, upto)
        while first < stop:
            n = min(per, stop - first)
            sums = plan.block.read(geo.checksum_entry(first), n * L.CHECKSUM_ENTRY_SIZE)
            verified = sums[L.HASH_SIZE::L.CHECKSUM_ENTRY_SIZE]
            out.update(first + i for i in positions_not(verified, 1))
            first += n
    return sorted(out)


def uncommitted_findings(plan: Plan, scan: Optional[SlotScan] = None,
                         only_slot: Optional[int] = None) -> List[Dict[str, object]]:
    """FREE slots (no lock) whose stored checksum does not vouch for their bytes, among
    the slots pylabhub's validate_integrity checks: pylabhub calls such a block corrupt
    (a writer killed mid-write and released, or aborted, leaves torn bytes under the old
    checksum). Under the Enforced policy this is an error that heal repairs (it scrubs the
    slot to zeros and sets the matching checksum: the slot holds no committed data); under
    Manual and None, checksums are the producer's business and no C++ reader checks
    them, so it is information only. Locked or WRITING/DRAINING slots are the writers'
    (a dead one's slot is stuck and its release scrubs it). Reported only when a look after
    the settle pauses sees the same words, entry and bytes.

    Slots whose state entry lies in a hole were never written and are skipped; the
    others are found in bulk (:func:`_uncommitted_candidates`). ``only_slot``: hash the
    data of no other slot (``diagnose --slot N``); the FREE slots whose verdict needs
    their bytes are then counted in one info finding, ``uncommitted-not-hashed``."""
    enforced = plan.hdr("checksum_policy") == L.ChecksumPolicy.ENFORCED
    out: List[Dict[str, object]] = []
    scan = scan or scan_slots(plan)
    unhashed = 0
    for i in _uncommitted_candidates(plan, scan, _upstream_count(plan)):
        hash_data = only_slot is None or i == only_slot
        seen = _uncommitted_look(plan, i, hash_data)
        if seen is False:
            unhashed += 1
            continue
        for pause in _SETTLE_S:
            if seen is None:
                break
            time.sleep(pause)
            again = _uncommitted_look(plan, i, hash_data)
            seen = seen if again == seen else None
        if not seen:
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
    if unhashed:
        out.append(finding(
            "uncommitted-not-hashed", "%d FREE slot%s other than slot %d would need %s bytes "
            "hashed to tell whether pylabhub's validate_integrity passes %s; diagnose with "
            "--slot reads no other slot's data: diagnose without --slot, or validate, checks "
            "%s" % (unhashed, "" if unhashed == 1 else "s", only_slot,
                    "its" if unhashed == 1 else "their", "it" if unhashed == 1 else "them",
                    "it" if unhashed == 1 else "them"), "info"))
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
        digest = plan.block.digest(geo.slot_data(i), geo.stride)
    return None


def _settle_flex(plan: Plan, entry: bytes,
                 digest: bytes) -> Optional[Tuple[bytes, bytes]]:
    """Confirm a flex-zone mismatch against a live producer, which writes the zone and
    stamps it separately, under no lock: the mismatch counts only when a later look sees
    the same checksum entry and the same data digest. Returns that (entry, digest), one
    whose hash now matches (the producer restamped), or None when it kept changing."""
    for pause in _SETTLE_S:
        time.sleep(pause)
        now = (_flex_entry(plan), _flex_digest(plan.block))
        if now == (entry, digest) or now[0][:L.HASH_SIZE] == now[1]:
            return now
        entry, digest = now
    return None


def _rebless(plan: Plan, check: ChecksumCheck) -> List[Dict[str, object]]:
    """Re-bless what the policy would have stamped: under Enforced the committed slots and
    the flexible zone found wrong; under any other policy nothing (each finding says why)."""
    if not check.enforced:
        why = (_NO_REBLESS % check.policy_name if check.policy == _P.MANUAL else
               "under the None checksum policy no producer stamps: repair writes none"
               if check.policy == _P.NONE else
               "repair writes no checksum under an unknown checksum policy")
        for f in check.findings:
            if f["code"] in ("checksum-unstamped", "flexzone-checksum-unstamped",
                             "checksums-not-checked"):
                f["message"] += "; repair cannot re-bless it: " + why
        return []
    bad = [f for f in check.findings if f["repairable"]]
    done = _rebless_slots(plan, [f for f in bad if f.get("slot") is not None])
    flex = [f for f in bad if f.get("field") == FLEX]
    if flex and check.flex_seen is not None:
        one = _rebless_flex(plan, flex[0], check.flex_seen)
        if one:
            done.append(one)
    plan.count_recovery(len(done))
    return done


def _rebless_slots(plan: Plan, bad: List[Dict[str, object]]) -> List[Dict[str, object]]:
    """Recompute the checksum of each COMMITTED slot listed, under our write lock."""
    geo = plan.block.geo
    done: List[Dict[str, object]] = []
    for f in bad:
        i = int(f["slot"])  # type: ignore[arg-type]
        base, entry = geo.slot_entry(i), geo.checksum_entry(i)
        plan.begin()
        try:
            plan.cas("slot[%d].write_lock" % i, SLOT["write_lock"], base, 0, plan.pid)
            if plan.get(SLOT["slot_state"], base) != _S.COMMITTED:
                raise ConcurrentChange("slot %d is no longer COMMITTED" % i)
            before = plan.read(entry, L.CHECKSUM_ENTRY_SIZE)
            digest = plan.block.digest(geo.slot_data(i), geo.stride)
            if before[:L.HASH_SIZE] == digest:     # a writer committed it meanwhile
                raise ConcurrentChange("slot %d was rewritten since it was checked" % i)
            plan.put("slot[%d].checksum" % i, entry, before, digest + b"\0")
            plan.cas("slot[%d].write_lock" % i, SLOT["write_lock"], base, plan.pid, 0)
        except ConcurrentChange as exc:
            plan.rollback()
            f["message"] += "; repair cannot re-bless it: %s" % exc
            continue
        plan.commit()
        done.append({"target": "slot[%d].checksum" % i, "slot": i,
                     "before": before[:L.HASH_SIZE].hex(), "after": digest.hex()})
    return done


def _flex_writer_alive(plan: Plan) -> Optional[str]:
    """Why a live process may be writing the flexible zone now, or None.

    pylabhub's producer writes the zone through a plain span and stamps it (at each
    Enforced commit, or on an explicit call) under no lock of the format; the header
    spinlocks are handed to applications, which may guard the zone with one. So the zone
    is re-blessed only when the producer is dead (or none is recorded) and no header
    spinlock is held by a process that may be alive."""
    producer = producer_verdict(plan.hdr, Snapshot.take())
    if producer is not None and not producer.is_dead:
        return ("producer pid %d is %s: a live producer restamps the zone itself at its "
                "next commit and may be writing it now" % (producer.pid, producer.state))
    for k in range(L.SPINLOCK_COUNT):
        owner = plan.get(L.SPINLOCK_OWNER, L.spinlock(k))
        if owner and not judge(owner).is_dead:
            return ("header spinlock %d is held by pid %d, which may be alive and updating "
                    "the zone under it" % (k, owner))
    return None


def _rebless_flex(plan: Plan, f: Dict[str, object],
                  seen: Tuple[bytes, bytes]) -> Optional[Dict[str, object]]:
    """Stamp the flexible zone's checksum as pylabhub's producer does (the "verified" byte
    to 0, then the hash), by CAS on the byte and over exactly the hash judged wrong, and
    only when the zone still hashes to what was judged."""
    why = _flex_writer_alive(plan)
    if why:
        f["message"] += "; repair cannot re-bless it: %s" % why
        return None
    entry, judged = seen
    off = FLEX_CHECKSUM.offset
    plan.begin()
    try:
        if _flex_entry(plan) != entry or _flex_digest(plan.block) != judged:
            raise ConcurrentChange("the flexible zone or its checksum changed since it was "
                                   "checked")
        plan.cas("header.flexzone_checksum_verified", FLEX_VERIFIED, 0, entry[L.HASH_SIZE], 0)
        plan.put("header.flexzone_checksum", off, entry[:L.HASH_SIZE], judged)
    except ConcurrentChange as exc:
        plan.rollback()
        f["message"] += "; repair cannot re-bless it: %s" % exc
        return None
    plan.commit()
    return {"target": FLEX, "before": entry[:L.HASH_SIZE].hex(), "after": judged.hex()}
