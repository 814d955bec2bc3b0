"""Interrupted, not lost: a storm of SIGINTs from another process against a reader (or a writer)
that catches `KeyboardInterrupt` and goes on. Every message carries its sequence number and a
checksum of its payload; the reader must see each one exactly once, in order, intact.

The children's SIGINT handler raises `KeyboardInterrupt` only while they are inside a transport
call (`armed`); elsewhere it only counts. So what is tested is the transport: a signal at any
moment of read/write loses and duplicates nothing, while the test's own bookkeeping (which is
not made signal safe) cannot be what loses a message.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from conftest import unique_name
from fixtures.storm import storm, storm_child, storm_result

STORM_SECONDS = 3.0

# The children. `armed` says "inside a transport call": the handler raises only then.
PRELUDE = """
import json, os, random, signal, struct, sys, time, zlib
armed = [False]
caught = [0]
signals = [0]

def handler(signum, frame):
    signals[0] += 1
    if armed[0]:
        raise KeyboardInterrupt

signal.signal(signal.SIGINT, handler)
HEAD = struct.Struct("<QI")  # sequence number, crc32 of the payload

def message(seq):
    rng = random.Random(seq)
    size = 100_000 + rng.randrange(1000) if seq % 40 == 7 else rng.randrange(1, 300)
    payload = rng.randbytes(size)
    return HEAD.pack(seq, zlib.crc32(payload)) + payload

def check(data, expected):
    seq, crc = HEAD.unpack_from(data)
    if seq != expected:
        return f"expected message {expected}, got {seq}"
    if zlib.crc32(data[HEAD.size:]) != crc:
        return f"message {seq}: checksum mismatch"
    return None
"""

READER = """
from transports.zerobuffer import BufferConfig, Frame, Reader
name, limit = sys.argv[1], int(sys.argv[2])
r = Reader(name, BufferConfig(0, 1 << 20), timeout=30)
print("ready", flush=True)
expected = 0
while True:
    try:
        armed[0] = True
        got = r.read_small(limit) if limit else r.read()
        armed[0] = False
    except KeyboardInterrupt:
        armed[0] = False
        caught[0] += 1
        continue
    if isinstance(got, Frame):
        data = bytes(got.data)
        if expected % 2:
            got.release()
        del got  # the others are released by the garbage collector
    else:
        data = got
    if data == b"END":
        break
    problem = check(data, expected)
    if problem:
        print(json.dumps({"error": problem}), flush=True)
        sys.exit(1)
    expected += 1
r.close()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the storm may outlive us
print(json.dumps({"messages": expected, "caught": caught[0], "signals": signals[0]}), flush=True)
"""

WRITER = """
from transports.errors import ReservationError
from transports.zerobuffer import Writer
name, seconds = sys.argv[1], float(sys.argv[2])
w = Writer(name, timeout=30)
print("ready", flush=True)
sys.stdin.readline()  # go
end = time.monotonic() + seconds
seq = 0
while time.monotonic() < end:
    data = message(seq)
    while True:
        try:
            armed[0] = True
            if len(data) > 60_000:  # the zero-copy path: reserve, fill, commit
                view = w.reserve(len(data))
                view[:] = data
                del view
                w.commit()
            else:
                w.write(data)
            armed[0] = False
            break
        except KeyboardInterrupt:
            armed[0] = False
            caught[0] += 1
            try:
                w.abort()  # a frame reserved but not committed goes back
            except ReservationError:
                pass
    seq += 1
while True:
    try:
        armed[0] = True
        w.write(b"END")
        armed[0] = False
        break
    except KeyboardInterrupt:
        armed[0] = False
w.close()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the storm may outlive us
print(json.dumps({"messages": seq, "caught": caught[0], "signals": signals[0]}), flush=True)
"""


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    return storm_child(PRELUDE + textwrap.dedent(script), *args)


def _run(victim: str, reader_limit: int) -> tuple[int, dict[str, int], dict[str, int]]:
    """A reader and a writer child; a SIGINT storm on `victim` while the writer writes.
    Returns (signals sent, the writer's summary, the reader's summary)."""
    name = unique_name("sig")
    reader = _child(READER, name, str(reader_limit))
    writer = None
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        writer = _child(WRITER, name, str(STORM_SECONDS))
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "ready"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        sent = storm((reader if victim == "reader" else writer).pid, STORM_SECONDS)
        got = storm_result(reader)
        wrote = storm_result(writer) if "error" not in got else {}
    finally:
        for proc in (writer, reader):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    return sent, wrote, got


@pytest.mark.parametrize("limit", [4096, 0], ids=["read_small", "read"])
def test_a_reader_in_a_sigint_storm_loses_and_duplicates_nothing(limit: int) -> None:
    sent, wrote, got = _run("reader", limit)
    assert "error" not in got, got["error"]
    assert sent > 1000
    assert got["messages"] == wrote["messages"] > 1000
    assert got["caught"] > 100  # the storm did interrupt reads


def test_a_writer_in_a_sigint_storm_loses_and_duplicates_nothing() -> None:
    sent, wrote, got = _run("writer", 4096)
    assert "error" not in got, got["error"]
    assert sent > 1000
    assert got["messages"] == wrote["messages"] > 1000
    assert wrote["caught"] > 100  # the storm did interrupt writes


def test_a_frame_whose_collection_is_interrupted_still_gives_its_space_back(
    shm_name: str,
) -> None:
    """A signal handler's exception at the first line of a Frame's __del__ skips it (CPython
    prints "Exception ignored" and goes on): the frame's space must still go back, through
    the frame's ticket, once nothing uses its data. The interrupt is injected by a profile hook
    raising KeyboardInterrupt as __del__ is called, which is where a real signal lands."""
    from transports.zerobuffer import BufferConfig, Frame, Reader, Writer

    def interrupt_del(frame: Any, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is Frame.__del__.__code__:
            raise KeyboardInterrupt

    unraisable: list[object] = []
    with Reader(shm_name, BufferConfig(0, 4096), timeout=2.0) as r, Writer(shm_name) as w:
        w.write(b"a" * 1000)
        w.write(b"b" * 1000)
        kept = r.read()
        dropped = r.read()
        view = np.frombuffer(kept.data, np.uint8)  # kept's data stays in use after it dies
        # (only the type: the traceback would keep the dying Frame alive)
        hook, sys.unraisablehook = sys.unraisablehook, lambda u: unraisable.append(u.exc_type)
        try:
            sys.setprofile(interrupt_del)  # a hook that raises is switched off: once per del
            del kept
            sys.setprofile(interrupt_del)
            del dropped
        finally:
            sys.setprofile(None)
            sys.unraisablehook = hook
        assert unraisable == [KeyboardInterrupt] * 2  # both __del__ were skipped
        assert r.stats().frames_held == 1  # dropped went back; kept's data is in use
        assert bytes(view[:3]) == b"aaa"
        del view
        stats = r.stats()
        assert (stats.frames_held, stats.free) == (0, 4096)
