"""`python -m zcser ls | inspect | gc` over fan-out segments (zcser.Publisher) owned by real
processes: ls shows each segment with its publisher and subscribers, gc removes a dead
publisher's segment (also when its lock file is gone) and nothing live, nor another user's."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from conftest import RUN_TOKEN, unique_name
from fixtures.foreign import SHM, as_nobody, needs_root, remove
from fixtures.procs import run_zcser, script

from transports.admin import collect_garbage, inspect_fanout, list_fanouts
from transports.fanout import layout as F
from transports.zerobuffer import layout as L

PUBLISHER = """
import zcser
pub = zcser.Publisher({name!r}, capacity=1 << 20, subscribers=3)
say("ready", os.getpid())
sys.stdin.readline()
for i in range(5):
    pub.send({{"i": i}})
say("sent")
sys.stdin.readline()
pub.close()
say("closed")
sys.stdin.readline()
"""

SUBSCRIBER = """
import zcser
sub = zcser.Subscriber({name!r}, timeout=30)
say("ready", os.getpid())
for _ in range({take}):
    sub.recv(timeout=30)
say("took")
sys.stdin.readline()
"""


def _rows() -> dict[str, dict[str, Any]]:
    result = run_zcser("ls", "--prefix", RUN_TOKEN, "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout) if row.get("kind") == "fanout"}


def test_ls_shows_a_publisher_and_its_subscribers_and_gc_removes_it_once_dead() -> None:
    name, other = unique_name("fl"), unique_name("fl")
    with (
        script(PUBLISHER.format(name=name)) as pub,
        script(PUBLISHER.format(name=other)) as live,
    ):
        pub_pid = int(pub.expect("ready")[0])
        live.expect("ready")
        with (
            script(SUBSCRIBER.format(name=name, take=5)) as sub,
            script(SUBSCRIBER.format(name=name, take=0)) as idle,
        ):
            sub_pid = int(sub.expect("ready")[0])
            idle_pid = int(idle.expect("ready")[0])
            pub.send()
            pub.expect("sent")
            sub.expect("took")
            row = _rows()[name]
            assert (row["state"], row["lock"], row["lock_pid"]) == ("live", "held", pub_pid)
            assert (row["publisher_pid"], row["publisher_alive"]) == (pub_pid, True)
            assert (row["connected"], row["slots"], row["messages"]) == (2, 3, 5)
            assert row["capacity"] == 1 << 20 and row["shm_bytes"] > 1 << 20
            slots = {slot["pid"]: slot for slot in row["subscribers"]}
            assert set(slots) == {sub_pid, idle_pid}
            assert all(s["alive"] and s["policy"] == "block" for s in slots.values())
            assert (slots[sub_pid]["lag"], slots[idle_pid]["lag"]) == (0, 5)
            text = run_zcser("ls", "--prefix", RUN_TOKEN).stdout
            assert "FAN-OUT" in text and f"{pub_pid}(alive)" in text and "2/3" in text
            shown = run_zcser("inspect", name)
            assert shown.returncode == 0 and "publisher_alive  True" in shown.stdout
            assert name not in collect_garbage(RUN_TOKEN)  # live: never removed
            pub.kill()  # SIGKILL: its segment, bells and lock file stay behind
            row = _rows()[name]
            assert row["state"] == "stale" and row["publisher_alive"] is False
            assert inspect_fanout(name).connected == 2  # its subscribers still map it
        removed = collect_garbage(RUN_TOKEN)
        assert name in removed and other not in removed
        assert not (SHM / name).exists() and not Path(L.lock_path(F.lock_stem(name))).exists()
        assert [f.name for f in list_fanouts(RUN_TOKEN)] == [other]
        assert _rows()[other]["state"] == "live"
        live.send()
        live.expect("sent")
        live.send()
        live.expect("closed")  # a closed publisher leaves nothing behind
        assert list_fanouts(RUN_TOKEN) == []


def test_gc_removes_a_dead_publishers_segment_whose_lock_file_is_gone() -> None:
    name = unique_name("fl")
    with script(PUBLISHER.format(name=name)) as pub:
        pub.expect("ready")
        pub.kill()
    os.unlink(L.lock_path(F.lock_stem(name)))  # e.g. the lock directory was cleaned
    assert [f.state for f in list_fanouts(RUN_TOKEN)] == ["stale"]
    assert collect_garbage(RUN_TOKEN) == [name]
    assert not (SHM / name).exists() and list_fanouts(RUN_TOKEN) == []


@needs_root
def test_gc_leaves_another_users_segment_alone_even_with_a_dead_publisher() -> None:
    name = unique_name("fl")
    header = bytearray(F.HEADER_SIZE + F.SLOT_SIZE)
    header[: len(F.MAGIC)] = F.MAGIC
    for off, value in (
        (F.OFF_VERSION, F.VERSION),
        (F.OFF_SLOTS, 1),
        (F.OFF_META_SIZE, 64),
        (F.OFF_PAYLOAD_SIZE, F.PAGE),
        (F.OFF_PUB_PID, 1 << 30),  # no such process
        (F.OFF_READY, 1),
    ):
        F.U64.pack_into(header, off, value)

    def plant() -> None:
        fd = os.open(SHM / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, F.total_size(1, 64, F.PAGE))
            os.pwrite(fd, bytes(header), 0)
        finally:
            os.close(fd)

    as_nobody(plant)
    try:
        (info,) = list_fanouts(RUN_TOKEN)
        assert (info.name, info.state, info.publisher_alive) == (name, "stale", False)
        assert name not in collect_garbage(RUN_TOKEN)
        assert (SHM / name).exists()  # only this user's stale files are ever removed
    finally:
        remove(SHM / name)
