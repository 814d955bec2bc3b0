"""zcser.Publisher / zcser.Subscriber with a tcp:// name: the same classes over ZeroMQ PUB/SUB."""

from __future__ import annotations

import time

import numpy as np
import pytest

import zcser
from zcser import errors

pytest.importorskip("zmq")


def _first(sub: zcser.Subscriber, pub: zcser.Publisher) -> dict:
    """PUB/SUB drops what is sent before the subscription arrives: send until it does."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pub.send({"i": -1})
        try:
            return sub.recv(timeout=0.05)
        except errors.Timeout:
            continue
    raise AssertionError("the subscription never arrived")


def test_tcp_names_build_the_zeromq_pair_and_fan_out() -> None:
    with zcser.Publisher("tcp://127.0.0.1:0") as pub:
        assert isinstance(pub, zcser.Publisher) and type(pub).__name__ == "NetPublisher"
        subs = [zcser.Subscriber(pub.name, policy=p) for p in ("drop", "latest")]
        assert all(isinstance(s, zcser.Subscriber) for s in subs)
        for s in subs:
            _first(s, pub)
        while True:  # drain the -1 messages still queued
            ready = zcser.wait(subs, timeout=0.2)
            if not ready:
                break
            for s in ready:
                s.recv()
        for i in range(5):
            pub.send({"i": i, "a": np.full(100_000, i)})
        got = subs[0]
        assert [got.recv(timeout=5)["i"] for _ in range(5)] == list(range(5))
        taken, missed = [], 0
        while not taken or taken[-1] != 4:  # the newest queued each time, the rest missed
            msg = subs[1].recv_message(timeout=5)
            taken.append(msg.value["i"])
            missed += msg.missed
            assert (msg.value["a"] == taken[-1]).all()
        assert len(taken) + missed == 5 and taken == sorted(taken)
        for s in subs:
            s.close()


def test_block_policy_is_refused_on_the_network() -> None:
    with pytest.raises(errors.UsageError, match="shared-memory"):
        zcser.Subscriber("tcp://127.0.0.1:1", policy="block")
