"""One receiver, senders one after another (issue: many producers, `senders=1` part): a new
Sender connects after the previous one closed or died, its codec checked against the stream
schema already written; a Sender started before its Receiver waits for it (`timeout`)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time

import numpy as np
import pytest

import zcser
from zcser import errors

MIB = 1 << 20
WAIT = 10.0


def test_a_new_sender_continues_the_stream_after_a_clean_close(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx:
        with zcser.Sender(shm_name) as first:
            first.send({"n": 1})
        assert list(rx) == [{"n": 1}]
        with zcser.Sender(shm_name) as second:  # before: "already served a Sender"
            second.send({"n": 2})
            second.send({"a": np.arange(10_000)})
        got = list(rx)
        assert got[0] == {"n": 2} and (got[1]["a"] == np.arange(10_000)).all()


def _send_then_die(name: str) -> None:
    tx = zcser.Sender(name)
    tx.send({"last": "words"})
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_new_sender_connects_after_the_previous_one_was_killed(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx:
        child = mp.get_context("fork").Process(target=_send_then_die, args=(shm_name,))
        child.start()
        child.join(WAIT)
        assert child.exitcode == -signal.SIGKILL
        assert rx.recv(timeout=WAIT) == {"last": "words"}  # what it committed is delivered
        with pytest.raises(errors.WriterDead):
            rx.recv(timeout=WAIT)
        with zcser.Sender(shm_name) as tx:
            tx.send({"next": 1})
        assert list(rx) == [{"next": 1}]


def test_a_new_sender_with_another_codec_is_refused(shm_name: str) -> None:
    with zcser.Receiver(shm_name, capacity=MIB) as rx:
        with zcser.Sender(shm_name) as tx:
            tx.send(1)
        other = zcser.Codec(threshold=64)
        with pytest.raises(errors.IncompatibleStream, match="same codec"):
            zcser.Sender(shm_name, other)
        assert list(rx) == [1]


def test_a_sender_started_first_waits_for_its_receiver(shm_name: str) -> None:
    made: list[zcser.Receiver] = []

    def create_later() -> None:
        time.sleep(0.3)
        made.append(zcser.Receiver(shm_name, capacity=MIB))

    maker = threading.Thread(target=create_later)
    maker.start()
    try:
        with zcser.Sender(shm_name, timeout=WAIT) as tx:
            tx.send("hello")
        maker.join()
        assert made[0].recv(timeout=WAIT) == "hello"
    finally:
        maker.join()
        for rx in made:
            rx.close()


def test_a_sender_gives_up_after_its_timeout_naming_the_channel(shm_name: str) -> None:
    with pytest.raises(errors.ChannelError, match=f"no channel {shm_name!r}.*Receiver first"):
        zcser.Sender(shm_name, timeout=0.05)
    with pytest.raises(errors.ChannelError):
        zcser.Sender(shm_name, timeout=0)
