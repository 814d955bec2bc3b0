"""A channel (zcser.Receiver) and a fan-out (zcser.Publisher) never share a name: the creating
side refuses a name the other kind holds, and a Sender or Subscriber pointed at the other kind
is told what is there and which class connects to it (zcser/channels/names.py)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from typing import Any

import pytest
from fixtures.procs import script

import zcser
from zcser import errors
from zcser.channels import names

SMALL = 1 << 16


@pytest.mark.parametrize("senders", [1, 2])
def test_a_publisher_refuses_a_channels_name(shm_name: str, senders: int) -> None:
    """Regression: with senders=2 (no /dev/shm/NAME, only NAME--pool and NAME--i) the
    Publisher was created beside the channel; with one sender it blamed "another program"."""
    with zcser.Receiver(shm_name, SMALL, senders=senders):
        with pytest.raises(errors.ChannelError) as caught:
            zcser.Publisher(shm_name, capacity=SMALL)
        said = str(caught.value)
        assert "shared-memory channel" in said and f"pid {os.getpid()}" in said
        assert "zcser.Sender" in said and "another program" not in said


@pytest.mark.parametrize("senders", [1, 2])
def test_a_receiver_refuses_a_publishers_name(shm_name: str, senders: int) -> None:
    with zcser.Publisher(shm_name, capacity=SMALL):
        with pytest.raises(errors.ChannelError) as caught:
            zcser.Receiver(shm_name, SMALL, senders=senders)
        said = str(caught.value)
        assert "fan-out publisher" in said and "zcser.Subscriber" in said
        assert "ZeroBuffer" not in said
    with zcser.Receiver(shm_name, SMALL, senders=senders):  # the name is free again
        pass


@pytest.mark.parametrize("senders", [1, 2])
def test_a_subscriber_pointed_at_a_channel_is_told_to_use_a_sender(
    shm_name: str, senders: int
) -> None:
    """Regression: it waited its whole timeout, then said there was no publisher."""
    # The old code waited out the timeout, then raised Timeout ("no publisher"): this error
    # can only come from the name check, which runs before any wait.
    expected = r"is a shared-memory channel.*zcser\.Sender"
    with (
        zcser.Receiver(shm_name, SMALL, senders=senders),
        pytest.raises(errors.ChannelError, match=expected),
    ):
        zcser.Subscriber(shm_name, timeout=60)


@pytest.mark.parametrize("senders", [1, 2])
def test_a_second_receiver_is_told_the_channel_has_one(shm_name: str, senders: int) -> None:
    """Regression: the error named the control segment NAME--pool and "a live reader", not
    the channel the user created."""
    with zcser.Receiver(shm_name, SMALL, senders=senders):
        with pytest.raises(errors.ChannelError) as caught:
            zcser.Receiver(shm_name, SMALL, senders=senders)
        said = str(caught.value)
        assert f"channel {shm_name!r} already has a live Receiver" in said
        assert "--pool" not in said


def test_a_sender_pointed_at_a_publisher_is_told_to_use_a_subscriber(shm_name: str) -> None:
    expected = r"is a fan-out publisher.*zcser\.Subscriber"
    with (
        zcser.Publisher(shm_name, capacity=SMALL),
        pytest.raises(errors.ChannelError, match=expected),
    ):
        zcser.Sender(shm_name, timeout=60)  # the name check, before any wait


def test_a_dead_owner_is_named_with_the_way_to_clean_up(shm_name: str) -> None:
    """A Publisher killed without closing leaves its segment: a Receiver of that name is told
    it is a dead publisher's, and that `zcser gc` removes it."""
    with script(f"""
        import zcser
        pub = zcser.Publisher({shm_name!r}, capacity={SMALL})
        say("ready")
        sys.stdin.readline()
        """) as child:
        child.expect("ready")
        child.kill()
    assert names.publisher_pid(shm_name) is not None
    with pytest.raises(errors.ChannelError, match="process is gone: `zcser gc`"):
        zcser.Receiver(shm_name, SMALL, senders=2)
    from transports.admin import collect_garbage

    assert shm_name in collect_garbage(shm_name)
    assert names.publisher_pid(shm_name) is None


def _make_all(kind: str, batch: list[str], barrier: Any, out: Any) -> None:
    """In a child: make a Receiver (senders=2) or a Publisher under each name, both children
    starting each name at the same moment; report the names made, and close them only once
    the other child has made (or failed to make) all of its own."""
    made: list[Any] = []
    got: list[str] = []
    for name in batch:
        barrier.wait(30)
        try:
            if kind == "channel":
                made.append(zcser.Receiver(name, SMALL, senders=2))
            else:
                made.append(zcser.Publisher(name, capacity=SMALL))
            got.append(name)
        except errors.ChannelError:
            pass
    out.put((kind, got))
    barrier.wait(30)
    for end in made:
        end.close()


def test_a_receiver_and_a_publisher_made_at_once_never_both_succeed() -> None:
    """Two processes create a channel (senders=2: no file in common with a fan-out) and a
    publisher under each of many names at the same moment: at least one of each pair is
    refused (each side looks again once its own names exist)."""
    from conftest import unique_name

    batch = [unique_name("nr") for _ in range(60)]
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_make_all, args=(k, batch, barrier, out)) for k in ("channel", "fan-out")
    ]
    for proc in procs:
        proc.start()
    try:
        got = dict(out.get(timeout=120) for _ in procs)
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0, 0]
    both = set(got["channel"]) & set(got["fan-out"])
    assert not both, sorted(both)


def _being_created(name: str) -> int:
    """/dev/shm/NAME as its creator leaves it for an instant: created (0600), still empty. Its
    inode (the caller holds the creator's lock, as the creator does until it is done)."""
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def _inode(name: str) -> int | None:
    try:
        return os.stat(f"/dev/shm/{name}").st_ino
    except FileNotFoundError:
        return None


def test_a_publisher_never_removes_a_channels_ring_being_created(shm_name: str) -> None:
    """Regression (Receiver(senders=1) and Publisher made under one name at once, 1 of 200
    names in a race): the Publisher took the Receiver's ring, still empty, for a segment of a
    publisher cut short (judged under the publisher lock, which a Receiver does not take),
    removed it and made its own; its second look found NAME--pool and it closed, taking NAME
    with it. The Receiver had been created and no Sender could reach it."""
    from transports.zerobuffer import posix as _shm

    lock = _shm.acquire_lock(shm_name)  # what a Reader holds while it creates NAME
    made = None
    try:
        inode = _being_created(shm_name)
        with pytest.raises(errors.ChannelError, match="being created"):
            made = zcser.Publisher(shm_name, capacity=SMALL)
        assert _inode(shm_name) == inode  # still the ring its Receiver is making
    finally:
        if made is not None:
            made.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{shm_name}")
        _shm.release_lock(shm_name, lock)


def test_a_receiver_never_removes_a_publishers_segment_being_created(shm_name: str) -> None:
    """Regression, the other way: the Receiver's ring creation took the publisher's segment,
    still empty, for a ZeroBuffer creation cut short (judged under NAME's ZeroBuffer lock,
    which a publisher does not take) and replaced it."""
    from transports.fanout import layout as F
    from transports.zerobuffer import posix as _shm

    lock = _shm.acquire_lock(F.lock_stem(shm_name))  # what a Publisher holds while it creates
    made = None
    try:
        inode = _being_created(shm_name)
        with pytest.raises(errors.ChannelError, match="being created"):
            made = zcser.Receiver(shm_name, SMALL, senders=1)
        assert _inode(shm_name) == inode  # still the segment its Publisher is making
    finally:
        if made is not None:
            made.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{shm_name}")
        _shm.release_lock(F.lock_stem(shm_name), lock)
