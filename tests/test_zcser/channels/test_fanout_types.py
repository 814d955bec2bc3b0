"""Every type family of the channel tests, published once and read by two subscribers, equal
and zero-copy (the big parts inside each subscriber's own mapping of the segment)."""

from __future__ import annotations

import pytest
from conftest import unique_name
from test_channel_types import MIB, check, make_codec, objects

import zcser


def test_every_type_family_reaches_every_subscriber_zero_copy() -> None:
    name = unique_name("fy")
    with zcser.Publisher(name, capacity=64 * MIB, subscribers=2, codec=make_codec()) as pub:
        subs = [zcser.Subscriber(name, codec=make_codec()) for _ in range(2)]
        for _, obj in objects():
            pub.send(obj, timeout=30)
    for sub in subs:
        span = (sub._r._addr, sub._r._addr + len(sub._r._mm))
        received = [sub.recv(timeout=30) for _ in objects()]
        for (family, want), got in zip(objects(), received, strict=True):
            check(family, want, got, span)
        with pytest.raises(zcser.errors.Closed):
            sub.recv(timeout=30)
        del received, got
        assert sub.stats().frames_pinned == 0
        sub.close()


def test_an_unregistered_class_is_refused_by_the_schema() -> None:
    name = unique_name("fy")
    with (
        zcser.Publisher(name, capacity=MIB, codec=make_codec()) as pub,
        zcser.Subscriber(name) as sub,
    ):
        pub.send({"x": 1})
        with pytest.raises(zcser.errors.IncompatibleStream, match=r"tests\.Reading"):
            sub.recv(timeout=30)
