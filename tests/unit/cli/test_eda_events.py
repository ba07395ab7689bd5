"""The EDA event source (extensions/eda/plugins/event_source/datablock_events.py) through
ansible-rulebook's interface, ``main(queue, args)`` with a real asyncio queue, on real
blocks: a writer SIGKILLed holding a slot (a crash actor) gives one ``stuck`` event whose
``meta.hosts`` names the host; the same stuck state is announced once, a new one again;
a live holder gives none; a command that cannot run gives one error event."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

from ansible_collections.pylabhub.recovery.plugins.module_utils import _engine as E

# here, with the CLI's tests, because the source runs datablock-admin (src/, not shipped)

SOURCE = (Path(__file__).resolve().parents[3] / "extensions" / "eda" / "plugins"
          / "event_source" / "datablock_events.py")
WRITE = [("producer",), ("publish", 2), ("acquire",), ("write",), ("commit",)]
CLI = [sys.executable, "-m", "pylabhub.recovery.cli"]


def _plugin():
    spec = importlib.util.spec_from_file_location("datablock_events", str(SOURCE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _drain(queue):
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_one_event_per_stuck_block_with_its_host(block_name, actors, monkeypatch, tmp_path):
    monkeypatch.setenv("PYLABHUB_RECOVERY_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("PYLABHUB_RECOVERY_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    plugin = _plugin()
    args = {"command": CLI, "match": block_name, "host": "host17", "once": True}
    writer = actors(block_name, WRITE, pause="locked", mode="wait")
    pid = writer.wait_point()["pid"]

    async def scenario():
        queue = asyncio.Queue()
        await plugin.main(queue, args)                 # a live writer: nothing to say
        live = _drain(queue)
        writer.kill()                                  # SIGKILL holding the write lock
        await plugin.main(queue, args)
        return live, _drain(queue)
    live, stuck = asyncio.run(scenario())
    assert live == []
    assert len(stuck) == 1, stuck
    event = stuck[0]
    assert event["meta"] == {"hosts": "host17"}
    d = event["datablock"]
    assert d["address"] == block_name and d["kind"] == "stuck" and d["health"] == "stuck"
    assert d["stuck_slots"] == [0] and d["slots"][0]["write_lock"] == pid
    assert d["slots"][0]["is_stuck"] and d["next_steps"]


def test_polling_announces_a_stuck_state_once_and_a_new_one_again(
        crashes, names, monkeypatch, tmp_path):
    monkeypatch.setenv("PYLABHUB_RECOVERY_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("PYLABHUB_RECOVERY_SNAPSHOT_DIR", str(tmp_path / "snaps"))
    monkeypatch.setenv("PYLABHUB_RECOVERY_SYSLOG", "off")
    plugin = _plugin()
    first, second = names(), names()
    crashes.stuck_writer(first)
    args = {"command": CLI, "match": names.prefix + "*", "interval": 0.05}

    async def scenario():
        queue = asyncio.Queue()
        task = asyncio.ensure_future(plugin.main(queue, args))
        got = [await asyncio.wait_for(queue.get(), 120)]
        for dummy in range(3):                   # three more polls of the same state
            await asyncio.sleep(0.3)
        got += _drain(queue)
        E.heal(first)
        crashes.stuck_writer(second)             # a new stuck block while it polls
        got.append(await asyncio.wait_for(queue.get(), 120))
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return got
    got = asyncio.run(scenario())
    assert [e["datablock"]["address"] for e in got] == [first, second], got
    assert [e["datablock"]["kind"] for e in got] == ["stuck", "stuck"]


def test_a_command_that_cannot_run_is_one_error_event(tmp_path):
    plugin = _plugin()
    args = {"command": [str(tmp_path / "no-such-datablock-admin")], "host": "h1",
            "interval": 0.01}

    async def scenario():
        queue = asyncio.Queue()
        task = asyncio.ensure_future(plugin.main(queue, args))
        first = await asyncio.wait_for(queue.get(), 30)
        await asyncio.sleep(0.2)                 # many more failed polls: no more events
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return first, _drain(queue)
    first, more = asyncio.run(scenario())
    assert first["datablock_error"]["host"] == "h1" and "cannot run" in \
        first["datablock_error"]["message"]
    assert first["meta"] == {"hosts": "h1"} and more == []
