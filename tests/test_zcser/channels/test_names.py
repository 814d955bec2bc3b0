"""A channel (zcser.Receiver) and a fan-out (zcser.Publisher) never share a name: the creating
side refuses a name the other kind holds, and a Sender or Subscriber pointed at the other kind
is told what is there and which class connects to it (zcser/channels/names.py)."""

from __future__ import annotations

import os
import time

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
    with zcser.Receiver(shm_name, SMALL, senders=senders):
        start = time.monotonic()
        with pytest.raises(errors.ChannelError, match=r"is a shared-memory channel.*zcser\.Sender"):
            zcser.Subscriber(shm_name, timeout=60)
        assert time.monotonic() - start < 30  # at once, not after the timeout


def test_a_sender_pointed_at_a_publisher_is_told_to_use_a_subscriber(shm_name: str) -> None:
    with zcser.Publisher(shm_name, capacity=SMALL):
        start = time.monotonic()
        with pytest.raises(errors.ChannelError, match=r"is a fan-out publisher.*zcser\.Subscriber"):
            zcser.Sender(shm_name, timeout=60)
        assert time.monotonic() - start < 30


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
