"""Interrupted, not lost, on a fan-out: a storm of SIGINTs from another process against a
"block" `zcser.Subscriber` (or the `zcser.Publisher`) that catches `KeyboardInterrupt` and goes
on: the publisher sends the same message again. Small messages (taken in runs), large ones
(arrays out of band, views pinning their frame), copy=True and recv_message: each carries its
sequence number and a checksum and must arrive exactly once, in order, intact; and the
subscriber must not keep a pin for a message it never got."""

from __future__ import annotations

import json
import subprocess
import textwrap

import numpy as np
import pytest
from conftest import unique_name
from fixtures.storm import CHILD_PRELUDE, storm, storm_child, storm_result

import zcser

STORM_SECONDS = 3.0


SUBSCRIBER = """
name = sys.argv[1]
sub = zcser.Subscriber(name, policy="block", timeout=30)
print("ready", flush=True)
expected = 0
while True:
    try:
        obj = receive(sub, expected, copy=expected % 3 == 0)
    except KeyboardInterrupt:
        armed[0] = False
        caught[0] += 1
        continue
    except errors.Closed:
        armed[0] = False
        break
    a = obj["a"]
    if obj["seq"] != expected:
        print(json.dumps({"error": f"expected message {expected}, got {obj['seq']}"}))
        sys.exit(1)
    if zlib.crc32(np.ascontiguousarray(a).tobytes()) != obj["crc"]:
        print(json.dumps({"error": f"message {expected}: checksum mismatch"}))
        sys.exit(1)
    del obj, a  # views pin their frame until dropped
    expected += 1
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the storm may outlive us
stats = sub.stats()  # every view dropped: nothing may stay pinned
sub.close()
print(json.dumps({"messages": expected, "caught": caught[0], "missed": stats.missed,
                  "pinned": stats.frames_pinned}), flush=True)
"""

PUBLISHER = """
name, seconds, victim = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
if not victim:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
pub = zcser.Publisher(name, capacity=4 << 20, subscribers=2)
print("ready", flush=True)
sys.stdin.readline()  # go: the subscriber has joined
end = time.monotonic() + seconds
seq = 0
while time.monotonic() < end:
    obj = message(seq)
    while True:
        try:
            armed[0] = True
            pub.send(obj, timeout=30)  # lossless: a pin kept for nothing would stop this
            armed[0] = False
            break
        except KeyboardInterrupt:
            armed[0] = False
            caught[0] += 1
    seq += 1
pub.close()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the storm may outlive us
print(json.dumps({"messages": seq, "caught": caught[0]}), flush=True)
"""


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    return storm_child(CHILD_PRELUDE + textwrap.dedent(script), *args)


@pytest.mark.parametrize("victim", ["subscriber", "publisher"])
def test_a_fanout_in_a_sigint_storm_loses_and_duplicates_nothing(victim: str) -> None:
    name = unique_name("fosig")
    pub = _child(PUBLISHER, name, str(STORM_SECONDS), "1" if victim == "publisher" else "0")
    sub = None
    try:
        assert pub.stdout is not None and pub.stdin is not None
        assert pub.stdout.readline().strip() == "ready"
        sub = _child(SUBSCRIBER, name)
        assert sub.stdout is not None
        assert sub.stdout.readline().strip() == "ready"
        pub.stdin.write("go\n")
        pub.stdin.flush()
        sent = storm((sub if victim == "subscriber" else pub).pid, STORM_SECONDS)
        got = storm_result(sub)
        wrote = storm_result(pub) if "error" not in got else {}
    finally:
        for proc in (pub, sub):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "error" not in got, got["error"]
    assert sent > 1000
    assert got["missed"] == 0 and got["pinned"] == 0
    assert got["messages"] == wrote["messages"] > 1000
    assert (got if victim == "subscriber" else wrote)["caught"] > 100  # the storm did interrupt


PIN_SUBSCRIBER = """
from transports.fanout.reader import FanoutReader
from transports.fanout.ring import Holds

name, count, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
sub = zcser.Subscriber(name, policy="block", timeout=30)
print("ready", flush=True)
if where == "pop":  # as the hold's record leaves Holds.release (its first call returns)
    code, when = Holds.release.__code__, "c_return"
else:  # as FanoutFrame.release enters the reader's _give_back (its first eval-breaker check)
    code, when = FanoutReader._give_back.__code__, "call"

def after_the_pop(frame, event, arg):
    # A real SIGINT there: the default handler's KeyboardInterrupt surfaces at that point, as
    # from a signal that arrived just before (CPython runs handlers right after a call returns
    # and as a function starts).
    if event == when and frame.f_code is code:
        sys.setprofile(None)
        signal.raise_signal(signal.SIGINT)

signal.signal(signal.SIGINT, signal.default_int_handler)
sys.setprofile(after_the_pop)
try:
    sub.recv(timeout=30, copy=True)  # a large message: held, given back inside recv
    print(json.dumps({"error": "the signal did not land"}), flush=True)
    sys.exit(1)
except KeyboardInterrupt:
    pass
sys.setprofile(None)
first = sub.recv(timeout=30, copy=True)  # interrupted, not lost
got = [first["seq"]] + [sub.recv(timeout=30)["seq"] for _ in range(count)]
print(json.dumps({"in_order": got == list(range(count + 1))}), flush=True)
sys.stdin.readline()  # the publisher looked at our pin
print(json.dumps({"pinned": sub.stats().bytes_pinned}), flush=True)
sub.close()
"""


@pytest.mark.parametrize("where", ["pop", "give_back"])
def test_a_signal_while_a_frame_goes_back_leaves_no_pin_behind(where: str) -> None:
    """A KeyboardInterrupt landing inside recv while the frame of a message copied out goes
    back (the hold's record dropped, the pin the publisher sees not yet moved) must leave no
    pin: the publisher kept writing around the frame given back (and the subscriber counted
    its bytes as pinned) until the subscriber next held a frame."""
    name = unique_name("fopin")
    count = 10  # small messages: they pin nothing
    sub = None
    with zcser.Publisher(name, capacity=1 << 20, subscribers=1) as pub:
        try:
            sub = _child(PIN_SUBSCRIBER, name, str(count), where)
            assert sub.stdout is not None and sub.stdin is not None
            assert sub.stdout.readline().strip() == "ready"
            pub.send({"seq": 0, "a": np.arange(20_000, dtype=np.int64)}, timeout=10)
            for seq in range(1, count + 1):
                pub.send({"seq": seq}, timeout=10)
            got = json.loads(sub.stdout.readline())
            seen = [s.pinned_bytes for s in pub.stats().subscribers]
            sub.stdin.write("done\n")
            sub.stdin.flush()
            got.update(json.loads(sub.communicate(timeout=30)[0]))
        finally:
            if sub is not None and sub.poll() is None:
                sub.kill()
                sub.communicate()
    assert seen == [0]
    assert got == {"in_order": True, "pinned": 0}


KEPT_SUBSCRIBER = """
from transports.fanout.ring import Holds

name = sys.argv[1]
sub = zcser.Subscriber(name, policy="block", timeout=30)
print("ready", flush=True)

def before_the_hold(frame, event, arg):
    # A real SIGINT after the frame object of a held message was made, as the hold is about to
    # be taken (Holds.take starts: an eval-breaker check).
    if event == "call" and frame.f_code is Holds.take.__code__:
        sys.setprofile(None)
        signal.raise_signal(signal.SIGINT)

signal.signal(signal.SIGINT, signal.default_int_handler)
sys.setprofile(before_the_hold)
try:
    sub.recv(timeout=30)
    print(json.dumps({"error": "the signal did not land"}), flush=True)
    sys.exit(1)
except KeyboardInterrupt:
    sys.setprofile(None)
    obj = sub.recv(timeout=30)  # the usual "finish what you have, then quit", in the handler
# The interrupted call's frame object died with the exception; obj's views pin their frame.
print(json.dumps({"seq": obj["seq"]}), flush=True)
sys.stdin.readline()  # the publisher looked at our pin
ok = bool((obj["a"] == np.arange(20_000, dtype=np.int64)).all())
del obj
print(json.dumps({"intact": ok}), flush=True)
sub.close()
"""


def test_an_interrupted_take_gives_back_no_hold_of_the_next() -> None:
    """A KeyboardInterrupt inside recv after the frame object of a held message was made but
    before its hold was taken: that object, dying after the next recv took the same frame
    again (here: recv called in the `except` block), must not give back the new hold, which
    the message's live views rely on (the publisher would write over them)."""
    name = unique_name("fokept")
    sub = None
    with zcser.Publisher(name, capacity=1 << 20, subscribers=1) as pub:
        try:
            sub = _child(KEPT_SUBSCRIBER, name)
            assert sub.stdout is not None and sub.stdin is not None
            assert sub.stdout.readline().strip() == "ready"
            pub.send({"seq": 0, "a": np.arange(20_000, dtype=np.int64)}, timeout=10)
            got = json.loads(sub.stdout.readline())
            seen = [s.pinned_bytes for s in pub.stats().subscribers]
            sub.stdin.write("done\n")
            sub.stdin.flush()
            got.update(json.loads(sub.communicate(timeout=30)[0]))
        finally:
            if sub is not None and sub.poll() is None:
                sub.kill()
                sub.communicate()
    assert got == {"seq": 0, "intact": True}
    assert seen[0] > 160_000  # the message's frame, pinned while its views live
