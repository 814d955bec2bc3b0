"""Interrupted, not lost, through the channel API: a storm of SIGINTs from another process
against a `zcser.Receiver` (or a `zcser.Sender`) that catches `KeyboardInterrupt` and goes on.
Small and large messages (arrays out of band), received with copy=True, as views and with
recv_message; each one carries its sequence number and a checksum and must arrive exactly
once, in order, intact.

The children's SIGINT handler raises `KeyboardInterrupt` only inside `send`/`recv` (`armed`);
elsewhere it only counts, so the test's own bookkeeping cannot be what loses a message.
"""

from __future__ import annotations

import subprocess
import textwrap

import pytest
from conftest import unique_name
from fixtures.storm import CHILD_PRELUDE, storm, storm_child, storm_result

STORM_SECONDS = 3.0


RECEIVER = """
name = sys.argv[1]
rx = zcser.Receiver(name, capacity=4 << 20)
print("ready", flush=True)
expected = 0
while True:
    try:
        msg = receive(rx, expected, copy=expected % 2 == 0)
    except KeyboardInterrupt:
        armed[0] = False
        caught[0] += 1
        continue
    except errors.Closed:
        armed[0] = False
        break
    a = msg["a"]
    if msg["seq"] != expected:
        print(json.dumps({"error": f"expected message {expected}, got {msg['seq']}"}))
        sys.exit(1)
    if zlib.crc32(np.ascontiguousarray(a).tobytes()) != msg["crc"]:
        print(json.dumps({"error": f"message {expected}: checksum mismatch"}))
        sys.exit(1)
    del msg, a  # views pin their frame until dropped
    expected += 1
rx.close()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the storm may outlive us
print(json.dumps({"messages": expected, "caught": caught[0]}), flush=True)
"""

SENDER = """
name, seconds = sys.argv[1], float(sys.argv[2])
tx = zcser.Sender(name)
print("ready", flush=True)
sys.stdin.readline()  # go
end = time.monotonic() + seconds
seq = 0
while time.monotonic() < end:
    obj = message(seq)
    while True:
        try:
            armed[0] = True
            tx.send(obj, timeout=30)
            armed[0] = False
            break
        except KeyboardInterrupt:
            armed[0] = False
            caught[0] += 1
    seq += 1
tx.close()
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the storm may outlive us
print(json.dumps({"messages": seq, "caught": caught[0]}), flush=True)
"""


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    return storm_child(CHILD_PRELUDE + textwrap.dedent(script), *args)


@pytest.mark.parametrize("victim", ["receiver", "sender"])
def test_a_channel_in_a_sigint_storm_loses_and_duplicates_nothing(victim: str) -> None:
    name = unique_name("chsig")
    rx = _child(RECEIVER, name)
    tx = None
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        tx = _child(SENDER, name, str(STORM_SECONDS))
        assert tx.stdout is not None and tx.stdin is not None
        assert tx.stdout.readline().strip() == "ready"
        tx.stdin.write("go\n")
        tx.stdin.flush()
        sent = storm((rx if victim == "receiver" else tx).pid, STORM_SECONDS)
        got = storm_result(rx)
        wrote = storm_result(tx) if "error" not in got else {}
    finally:
        for proc in (tx, rx):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "error" not in got, got["error"]
    assert sent > 1000
    assert got["messages"] == wrote["messages"] > 1000
    assert (got if victim == "receiver" else wrote)["caught"] > 100  # the storm did interrupt


POOL_RECEIVER = """
name = sys.argv[1]
rx = zcser.Receiver(name, capacity=4 << 20, senders=2)
print("ready", flush=True)
expected = {0: 0, 1: 0}
while True:
    try:
        got = sum(expected.values())
        msg = receive(rx, got, copy=got % 5 == 0)
    except KeyboardInterrupt:
        armed[0] = False
        caught[0] += 1
        continue
    except errors.Closed:
        armed[0] = False
        break
    who, a = msg["who"], msg["a"]
    if msg["seq"] != expected[who]:
        print(json.dumps({"error": f"sender {who}: expected {expected[who]}, got {msg['seq']}"}))
        sys.exit(1)
    if zlib.crc32(np.ascontiguousarray(a).tobytes()) != msg["crc"]:
        print(json.dumps({"error": f"sender {who} message {msg['seq']}: checksum mismatch"}))
        sys.exit(1)
    del msg, a
    expected[who] += 1
rx.close()
signal.signal(signal.SIGINT, signal.SIG_IGN)
print(json.dumps({"messages": sum(expected.values()), "caught": caught[0]}), flush=True)
"""

POOL_SENDER = """
name, seconds, who = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGINT, signal.SIG_IGN)
tx = zcser.Sender(name)
print("ready", flush=True)
sys.stdin.readline()  # go
end = time.monotonic() + seconds
seq = 0
while time.monotonic() < end:
    obj = message(seq)
    obj["who"] = who
    tx.send(obj, timeout=30)
    seq += 1
tx.close()
print(json.dumps({"messages": seq, "caught": 0}), flush=True)
"""


def test_a_pool_receiver_in_a_sigint_storm_loses_and_duplicates_nothing() -> None:
    """senders=2: the pool's read path (a waiting small frame of the sender whose turn it is,
    taken by recv itself, and the whole way through the pool) under a SIGINT storm delivers
    every message of each sender once, in that sender's order."""
    name = unique_name("plsig")
    rx = _child(POOL_RECEIVER, name)
    txs: list[subprocess.Popen[str]] = []
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        for who in range(2):
            tx = _child(POOL_SENDER, name, str(STORM_SECONDS), str(who))
            assert tx.stdout is not None
            assert tx.stdout.readline().strip() == "ready"
            txs.append(tx)
        for tx in txs:
            assert tx.stdin is not None
            tx.stdin.write("go\n")
            tx.stdin.flush()
        sent = storm(rx.pid, STORM_SECONDS)
        got = storm_result(rx)
        wrote = [storm_result(tx) for tx in txs] if "error" not in got else []
    finally:
        for proc in (*txs, rx):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "error" not in got, got["error"]
    assert sent > 1000
    assert got["messages"] == sum(w["messages"] for w in wrote) > 1000
    assert got["caught"] > 100
