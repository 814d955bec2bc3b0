"""What a new user runs into with channels: threads sharing one end, held views filling the ring,
wrong arguments, closed ends, `empty()` arrays left out of a send, logging, and a first run in a
container whose /dev/shm is Docker's default 64 MiB."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import zlib
from typing import Any

import numpy as np
import pytest
from fixtures.procs import REPO, namespaces_work

import zcser
from zcser import errors

MIB = 1 << 20
WAIT = 10.0


def _payload(sender: int, i: int) -> dict[str, Any]:
    """Mixed sizes: small dicts (in band) and arrays above the threshold (out of band)."""
    n = (i * 7919 + sender * 104729) % 6000
    data = np.full(n, (sender * 1000 + i) % 251, np.uint8)
    return {"s": sender, "i": i, "data": data, "crc": zlib.crc32(data.tobytes())}


def test_threads_sharing_one_sender_lose_and_duplicate_nothing(shm_name: str) -> None:
    threads, per_thread = 4, 400
    with zcser.Receiver(shm_name, capacity=4 * MIB) as rx, zcser.Sender(shm_name) as tx:
        got: list[tuple[int, int]] = []

        def consume() -> None:
            for _ in range(threads * per_thread):
                msg = rx.recv(timeout=WAIT)
                assert zlib.crc32(np.asarray(msg["data"]).tobytes()) == msg["crc"]
                got.append((msg["s"], msg["i"]))

        def produce(sender: int) -> None:
            for i in range(per_thread):
                tx.send(_payload(sender, i), timeout=WAIT)

        reader = threading.Thread(target=consume)
        reader.start()
        workers = [threading.Thread(target=produce, args=(s,)) for s in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        reader.join(timeout=60)
        assert not reader.is_alive()
    assert sorted(got) == [(s, i) for s in range(threads) for i in range(per_thread)]
    for s in range(threads):  # each thread's messages in the order it sent them
        assert [i for t, i in got if t == s] == list(range(per_thread))


def test_threads_sharing_one_receiver_each_take_distinct_messages(shm_name: str) -> None:
    total, readers = 2000, 4
    with zcser.Receiver(shm_name, capacity=4 * MIB) as rx, zcser.Sender(shm_name) as tx:
        got: list[list[int]] = [[] for _ in range(readers)]

        def consume(k: int) -> None:
            while True:
                try:
                    msg = rx.recv(timeout=WAIT)
                except errors.Closed:
                    return
                assert zlib.crc32(np.asarray(msg["data"]).tobytes()) == msg["crc"]
                got[k].append(msg["i"])

        workers = [threading.Thread(target=consume, args=(k,)) for k in range(readers)]
        for w in workers:
            w.start()
        for i in range(total):
            tx.send(_payload(0, i), timeout=WAIT)
        tx.close()
        for w in workers:
            w.join(timeout=60)
        assert not any(w.is_alive() for w in workers)
    assert sorted(i for part in got for i in part) == list(range(total))
    for part in got:  # each thread sees its share in stream order
        assert part == sorted(part)


@pytest.mark.parametrize("senders", [1, 2])
def test_close_ends_every_thread_waiting_in_recv_with_closed(shm_name: str, senders: int) -> None:
    """Several threads in recv: one waits for a message, the others for the gate. close() from
    another thread ends all of them with Closed; a thread that got the gate after close() began
    used to wait for a message (for its whole timeout; forever with None), and close() with it."""
    rx = zcser.Receiver(shm_name, capacity=MIB, senders=senders)
    got: list[str] = []

    def consume() -> None:
        try:
            rx.recv(timeout=WAIT)
            got.append("message")
        except errors.ZcserError as exc:
            got.append(type(exc).__name__)

    workers = [threading.Thread(target=consume) for _ in range(3)]
    for w in workers:
        w.start()
    while not rx._gate.lock.locked():  # one of them waits in the pool, the others queue
        threading.Event().wait(0.001)
    threading.Event().wait(0.05)
    closer = threading.Thread(target=rx.close)
    closer.start()
    closer.join(timeout=60)
    for w in workers:
        w.join(timeout=60)
    assert not closer.is_alive() and not any(w.is_alive() for w in workers)
    assert got == ["Closed"] * 3


_EXIT_WITH_A_DAEMON_READER = """
import multiprocessing as mp, sys, threading, time
import zcser

def send(make):
    tx = make()
    while True:
        tx.send(0)
        time.sleep(0.0002)

make, rx = zcser.channel(sys.argv[1], capacity=1 << 20, senders=int(sys.argv[2]))
mp.get_context("fork").Process(target=send, args=(make,), daemon=True).start()
rx.recv(timeout=30)

def loop():
    while True:
        rx.recv()

threading.Thread(target=loop, daemon=True).start()
time.sleep(0.05)
"""


@pytest.mark.parametrize("senders", [1, 2])
def test_a_program_exits_cleanly_while_a_daemon_thread_waits_in_recv(
    shm_name: str, senders: int
) -> None:
    """At exit the receiver's finalizer removes the names while a daemon thread may still sleep
    on the ring's semaphore (or poll the pool's rings) with the GIL released: it used to close
    the semaphore and unmap the memory under it (a segfault in most runs with senders=1, in
    some with a pool). The exit now leaves handles and mappings to the kernel."""
    for run in range(3):
        done = subprocess.run(
            [sys.executable, "-c", _EXIT_WITH_A_DAEMON_READER, f"{shm_name}{run}", str(senders)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"{shm_name}{run}")]


def test_a_receiver_holding_the_ring_is_told_so_on_both_sides(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        held = []
        for _ in range(3):
            tx.send({"a": np.ones(40_000)}, timeout=WAIT)
            held.append(rx.recv(timeout=WAIT))
        with pytest.raises(errors.BufferFull) as full:
            tx.send({"a": np.ones(40_000)}, timeout=0.1)
        text = str(full.value)
        assert "has read every message but still holds" in text
        assert "copy=True" in text and "capacity" in text and "payload_size" not in text
        with pytest.raises(errors.Timeout) as idle:
            rx.recv(timeout=0.1)
        text = str(idle.value)
        assert "this receiver itself holds 3 messages" in text
        assert "copy=True" in text and "capacity" in text and "wait longer" not in text
        held.clear()
        tx.send({"a": np.ones(40_000)}, timeout=0)  # room again


def test_a_slow_receiver_is_not_blamed_for_holding(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        for _ in range(3):
            tx.send({"a": np.ones(40_000)}, timeout=WAIT)
        with pytest.raises(errors.BufferFull, match="waiting to be read"):
            tx.send({"a": np.ones(40_000)}, timeout=0.1)
        assert rx.stats().frames_pinned == 0


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan"), "1", True])
def test_send_and_recv_refuse_the_same_timeouts(shm_name: str, timeout: object) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        with pytest.raises(errors.UsageError, match="timeout"):
            tx.send({"x": 1}, timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(errors.UsageError, match="timeout"):
            tx.empty(10, timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(errors.UsageError, match="timeout"):
            rx.recv(timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(errors.UsageError, match="timeout"):
            rx.recv_message(timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"capacity": "big"}, "capacity"),
        ({"capacity": 1.5}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"capacity": 10}, "capacity"),
        ({"codec": "zcser"}, "codec"),
    ],
)
def test_wrong_argument_types_are_usage_errors_naming_the_argument(
    shm_name: str, kwargs: dict[str, Any], word: str
) -> None:
    with pytest.raises(errors.UsageError, match=word):
        zcser.Receiver(shm_name, **kwargs)


@pytest.mark.parametrize(
    ("public", "built", "options"),
    [
        ("Sender", "ShmSender", {"name", "codec", "timeout"}),
        ("Receiver", "ShmReceiver", {"name", "capacity", "codec", "senders"}),
        ("Publisher", "ShmPublisher", {"name", "capacity", "subscribers", "codec"}),
        ("Subscriber", "ShmSubscriber", {"name", "policy", "codec", "timeout"}),
    ],
)
def test_help_shows_the_parameters_of_the_classes_users_construct(
    public: str, built: str, options: set[str]
) -> None:
    """Regression: inspect.signature (and so help()) showed `__new__`'s (*args, **kwargs) for
    zcser.Receiver and the others. Now the parameters of the class a bare name builds; its
    subclasses keep their own (a network receiver's options are not a shm one's)."""
    import inspect
    import pydoc

    from zcser import channels

    shown = inspect.signature(getattr(zcser, public))
    own = inspect.signature(getattr(channels, built))
    assert list(shown.parameters) == list(own.parameters)
    assert options <= set(shown.parameters) and "args" not in shown.parameters
    assert f"{public}(name" in pydoc.render_doc(getattr(zcser, public), renderer=pydoc.plaintext)
    net = inspect.signature(getattr(channels, "Net" + built.removeprefix("Shm")))
    assert list(net.parameters) != list(shown.parameters)


def test_a_closed_receiver_says_receiver_not_reader(shm_name: str) -> None:
    rx = zcser.Receiver(shm_name, capacity=MIB)
    rx.close()
    with pytest.raises(errors.Closed, match="create a new Receiver"):
        rx.recv(timeout=0)


def test_for_loop_over_a_receiver_ends_when_the_sender_closes(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        for i in range(5):
            tx.send({"i": i})
        tx.close()
        assert [m["i"] for m in rx] == list(range(5))


def test_default_capacity_fits_the_free_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from zcser.channels import shm

    monkeypatch.setattr(shm, "shm_available", lambda: 64 * MIB)
    assert shm.default_capacity() == 32 * MIB
    monkeypatch.setattr(shm, "shm_available", lambda: 100 * MIB)
    assert shm.default_capacity() == 32 * MIB
    monkeypatch.setattr(shm, "shm_available", lambda: 3 * MIB)
    assert shm.default_capacity() == shm.MIN_CAPACITY
    monkeypatch.setattr(shm, "shm_available", lambda: 64 << 30)
    assert shm.default_capacity() == zcser.DEFAULT_CAPACITY
    monkeypatch.setattr(shm, "shm_available", lambda: None)
    assert shm.default_capacity() == zcser.DEFAULT_CAPACITY


def test_the_library_logs_to_its_own_loggers_and_is_silent_by_default(
    shm_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("zcser").handlers)
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("transports").handlers)
    with (
        caplog.at_level(logging.WARNING, logger="zcser"),
        zcser.Receiver(shm_name, capacity=MIB) as rx,
        zcser.Sender(shm_name) as tx,
    ):
        dropped = tx.empty(50_000, np.uint8)
        tx.send({"other": 1})  # dropped was not part of this message
        with pytest.raises(errors.UsageError, match="sent without it"):
            tx.send({"late": dropped})
        rx.recv(timeout=WAIT)
    assert any("empty()" in r.getMessage() and r.name.startswith("zcser") for r in caplog.records)


def test_an_empty_array_left_out_of_a_send_is_read_only_and_explained(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx, zcser.Sender(shm_name) as tx:
        kept = tx.empty(50_000, np.uint8)
        kept[:] = 1
        tx.send({"small": 1})
        assert not kept.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            kept[0] = 2
        with pytest.raises(errors.UsageError, match="sent without it") as why:
            tx.send({"late": kept})
        assert "already sent" not in str(why.value)
        sent = tx.empty(50_000, np.uint8)
        tx.send({"a": sent})
        with pytest.raises(errors.UsageError, match="already sent"):
            tx.send({"again": sent})
        assert rx.recv(timeout=WAIT) == {"small": 1}


NAMESPACE_64M = (
    "unshare",
    "-m",
    "sh",
    "-c",
    "mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm && mkdir -p /tmp/zerobuffer && "
    'mount -t tmpfs -o size=1m,mode=1777 tmpfs /tmp/zerobuffer && exec "$0" "$@"',
)


def _readme_quickstart() -> str:
    text = (REPO / "README.md").read_text()
    block = text.split("```python", 1)[1].split("```", 1)[0]
    assert "zcser.channel()" in block  # the first example, with default capacity
    return block


@pytest.mark.skipif(not namespaces_work(), reason="needs root and unshare -m for a 64 MiB /dev/shm")
def test_the_readme_example_runs_in_dockers_default_64_mib_shm() -> None:
    code = _readme_quickstart().replace(
        "    make_sender, rx = zcser.channel()",
        "    make_sender, rx = zcser.channel()\n"
        "    import json as _j; print(_j.dumps({'capacity': rx.stats().capacity}), flush=True)",
    )
    done = subprocess.run(
        [*NAMESPACE_64M, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert json.loads(first)["capacity"] <= 32 * MIB
    assert rest[0].startswith("7 (1080, 1920, 4) False")


def test_stale_cleanup_and_peer_death_are_logged(
    shm_name: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
) -> None:
    import multiprocessing as mp
    import signal

    # A private lock directory: no other process's stale sweep can remove the ring first.
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    monkeypatch.setenv("ZEROBUFFER_LOCK_DIR", str(locks))

    ready = mp.get_context("fork").Event()

    def leave_a_ring() -> None:
        kept = zcser.Receiver(shm_name, capacity=MIB)
        ready.set()
        assert kept
        signal.pause()

    child = mp.get_context("fork").Process(target=leave_a_ring, daemon=True)
    child.start()
    assert ready.wait(WAIT)
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join(WAIT)
    with caplog.at_level(logging.INFO), zcser.Receiver(shm_name, capacity=MIB) as rx:
        assert any("stale" in r.getMessage() and r.name.startswith("transports")
                   for r in caplog.records)  # fmt: skip

        def die() -> None:
            tx = zcser.Sender(shm_name)
            tx.send({"last": 1})
            os.kill(os.getpid(), signal.SIGKILL)

        writer = mp.get_context("fork").Process(target=die, daemon=True)
        writer.start()
        writer.join(WAIT)
        assert rx.recv(timeout=WAIT) == {"last": 1}
        with pytest.raises(errors.WriterDead):
            rx.recv(timeout=WAIT)
    assert any(r.levelno == logging.WARNING and "died" in r.getMessage() for r in caplog.records)


def test_a_clean_close_behind_held_messages_is_closed_not_writer_dead(shm_name: str) -> None:
    """The receiver holds every message, so the sender's close() finds no room for its end
    mark within its timeout; the receiver still learns that the sender closed (before:
    WriterDead, and the getting-started loop that catches Closed crashed)."""
    with zcser.Receiver(shm_name, capacity=MIB) as rx:
        tx = zcser.Sender(shm_name)
        held = []
        for _ in range(3):
            tx.send({"a": np.ones(40_000)}, timeout=WAIT)
            held.append(rx.recv(timeout=WAIT))
        tx.close(timeout=0.05)
        assert [type(m) for m in rx] == []  # the loop ends: Closed, not WriterDead
        with pytest.raises(errors.Closed):
            rx.recv(timeout=WAIT)
        assert len(held) == 3
